//! Throughput of queue-azure against the official Python SDK doing the same work (send a
//! batch of messages, receive and complete them all) against the same in-process emulator,
//! in the same run. The Python side runs only when `QUEUE_TEST_PYTHON` names a Python with
//! `azure-servicebus`; compare the two lines of the `send_receive_complete` group.

use std::{path::PathBuf, time::Duration};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use queue_azure::ServiceBusProvider;
use queue_core::{Message, QueueName, QueueProvider, ReceiveOptions};
use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};

const N: usize = 100;
const SIZE: usize = 1024;
const KEY: &str = "bench-key";

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let emu = rt.block_on(async {
        let cfg = EmulatorConfig::new()
            .with_key("RootManageSharedAccessKey", KEY)
            .with_queue("rust", QueueConfig::new())
            .with_queue("python", QueueConfig::new());
        Emulator::start(cfg, "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("emulator")
    });
    let conn = emu.connection_string(true);
    let provider = ServiceBusProvider::builder()
        .with_connection_string(&conn)
        .build()
        .expect("provider");
    let queue = QueueName::new("rust").expect("name");
    rt.block_on(provider.check_access(&queue)).expect("access");

    let mut group = c.benchmark_group("send_receive_complete");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("queue_azure", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    let batch = (0..N).map(|_| Message::new(vec![b'x'; SIZE])).collect();
                    provider.send_batch(&queue, batch).await.expect("send");
                    let mut got = 0;
                    while got < N {
                        let msgs = provider
                            .receive(&queue, ReceiveOptions::new(N - got, Duration::from_secs(5)))
                            .await
                            .expect("receive");
                        assert!(!msgs.is_empty(), "stalled at {got}");
                        for m in &msgs {
                            provider.complete(&m.receipt).await.expect("complete");
                        }
                        got += msgs.len();
                    }
                }
                start.elapsed()
            })
        });
    });
    match std::env::var("QUEUE_TEST_PYTHON") {
        Ok(py) if !py.is_empty() => {
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/bench_sdk.py");
            group.bench_function("python_sdk", |b| {
                b.iter_custom(|iters| {
                    let out = std::process::Command::new(&py)
                        .arg(&script)
                        .arg(&conn)
                        .arg("python")
                        .arg(iters.to_string())
                        .arg(N.to_string())
                        .arg(SIZE.to_string())
                        .output()
                        .expect("run python");
                    assert!(
                        out.status.success(),
                        "bench_sdk.py failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let secs: f64 = String::from_utf8_lossy(&out.stdout)
                        .trim()
                        .parse()
                        .expect("seconds");
                    Duration::from_secs_f64(secs)
                });
            });
        }
        _ => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("python_sdk baseline skipped: QUEUE_TEST_PYTHON is not set");
            }
        }
    }
    group.finish();
    drop(emu);
}

criterion_group!(benches, bench);
criterion_main!(benches);
