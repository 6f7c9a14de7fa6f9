//! Throughput of queue-azure against the official Python SDK doing the same work against
//! the same in-process emulator, in the same run. The Python side runs only when
//! `QUEUE_TEST_PYTHON` names a Python with `azure-servicebus` (`cargo xtask test` sets one
//! up); compare the lines of each group.
//!
//! - `receive_complete_1k`: per iteration, send 100 messages of 1 KiB in one batch, then
//!   receive and complete them all. `queue_azure` completes one message after the other,
//!   as the Python SDK does; `queue_azure_concurrent` completes each received batch
//!   concurrently (as the runtime's processor does), so the completions are coalesced.
//! - `sessions_20x50`: per iteration, 20 sessions of 50 messages of 1 KiB each: send, then
//!   accept each session in turn, receive and complete its messages.
//! - `session_handoff`: 200 messages in one session, received one at a time and completed:
//!   the time per message is the per-key hand-off latency of a consumer (receive N+1 after
//!   N is settled).

use std::{path::PathBuf, time::Duration};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use queue_azure::ServiceBusProvider;
use queue_core::{
    Message, QueueName, QueueProvider, ReceiveOptions, ReceivedMessage, SessionId, SessionSelector,
};
use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};

const N: usize = 100;
const SIZE: usize = 1024;
const SESSIONS: usize = 20;
const PER_SESSION: usize = 50;
const KEY: &str = "bench-key";
const HANDOFF: usize = 200;

async fn complete_all(p: &ServiceBusProvider, msgs: &[ReceivedMessage], concurrent: bool) {
    if concurrent {
        let done = futures::future::join_all(msgs.iter().map(|m| p.complete(&m.receipt))).await;
        done.into_iter().for_each(|r| r.expect("complete"));
    } else {
        for m in msgs {
            p.complete(&m.receipt).await.expect("complete");
        }
    }
}

async fn plain_round(p: &ServiceBusProvider, queue: &QueueName, concurrent: bool) {
    let batch = (0..N).map(|_| Message::new(vec![b'x'; SIZE])).collect();
    p.send_batch(queue, batch).await.expect("send");
    let mut got = 0;
    while got < N {
        let msgs = p
            .receive(queue, ReceiveOptions::new(N - got, Duration::from_secs(5)))
            .await
            .expect("receive");
        assert!(!msgs.is_empty(), "stalled at {got}");
        complete_all(p, &msgs, concurrent).await;
        got += msgs.len();
    }
}

async fn sessions_round(p: &ServiceBusProvider, queue: &QueueName, round: u64) {
    for s in 0..SESSIONS {
        let sid = SessionId::new(format!("rs-{round}-{s}")).expect("session id");
        let batch = (0..PER_SESSION)
            .map(|_| Message::new(vec![b'x'; SIZE]).with_session_id(sid.clone()))
            .collect();
        p.send_batch(queue, batch).await.expect("send");
    }
    for _ in 0..SESSIONS {
        let r = p
            .accept_session(queue, SessionSelector::Next, Duration::from_secs(5))
            .await
            .expect("accept")
            .expect("a session");
        let mut got = 0;
        while got < PER_SESSION {
            let msgs = r
                .receive(ReceiveOptions::new(
                    PER_SESSION - got,
                    Duration::from_secs(5),
                ))
                .await
                .expect("receive");
            assert!(!msgs.is_empty(), "stalled at {got}");
            let done = futures::future::join_all(msgs.iter().map(|m| r.complete(&m.receipt))).await;
            done.into_iter().for_each(|d| d.expect("complete"));
            got += msgs.len();
        }
        r.close().await.expect("close");
    }
}

/// Sends the hand-off session's messages (set-up, not timed).
async fn handoff_fill(p: &ServiceBusProvider, queue: &QueueName, round: u64) -> SessionId {
    let sid = SessionId::new(format!("handoff-{round}")).expect("session id");
    let batch: Vec<Message> = (0..HANDOFF)
        .map(|_| Message::new(vec![b'x'; SIZE]).with_session_id(sid.clone()))
        .collect();
    for chunk in batch.chunks(100) {
        p.send_batch(queue, chunk.to_vec()).await.expect("send");
    }
    sid
}

/// Accepts the session and consumes it one message at a time.
async fn handoff_drain(p: &ServiceBusProvider, queue: &QueueName, sid: SessionId) {
    let r = p
        .accept_session(queue, SessionSelector::Named(sid), Duration::from_secs(5))
        .await
        .expect("accept")
        .expect("the session");
    for _ in 0..HANDOFF {
        let m = r
            .receive(ReceiveOptions::new(1, Duration::from_secs(5)))
            .await
            .expect("receive");
        r.complete(&m[0].receipt).await.expect("complete");
    }
    r.close().await.expect("close");
}

/// Runs a Python SDK script and returns the seconds it reports.
fn python(py: &str, script: &str, args: &[String]) -> Duration {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("benches")
        .join(script);
    let out = std::process::Command::new(py)
        .arg(&path)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secs: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("seconds");
    Duration::from_secs_f64(secs)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let emu = rt.block_on(async {
        let sessions = || QueueConfig::new().with_requires_session(true);
        let cfg = EmulatorConfig::new()
            .with_key("RootManageSharedAccessKey", KEY)
            .with_queue("rust", QueueConfig::new())
            .with_queue("python", QueueConfig::new())
            .with_queue("rust-sessions", sessions())
            .with_queue("python-sessions", sessions());
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
    let squeue = QueueName::new("rust-sessions").expect("name");
    rt.block_on(provider.check_access(&queue)).expect("access");
    let py = std::env::var("QUEUE_TEST_PYTHON")
        .ok()
        .filter(|p| !p.is_empty());

    let mut group = c.benchmark_group("receive_complete_1k");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for (name, concurrent) in [("queue_azure", false), ("queue_azure_concurrent", true)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = std::time::Instant::now();
                    for _ in 0..iters {
                        plain_round(&provider, &queue, concurrent).await;
                    }
                    start.elapsed()
                })
            });
        });
    }
    if let Some(py) = &py {
        group.bench_function("python_sdk", |b| {
            b.iter_custom(|iters| {
                let args = [
                    &conn,
                    "python",
                    &iters.to_string(),
                    &N.to_string(),
                    &SIZE.to_string(),
                ];
                python(py, "bench_sdk.py", &args.map(|a| a.to_string()))
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("sessions_20x50");
    group.throughput(Throughput::Elements((SESSIONS * PER_SESSION) as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    let mut round = 0u64;
    group.bench_function("queue_azure", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    round += 1;
                    sessions_round(&provider, &squeue, round).await;
                }
                start.elapsed()
            })
        });
    });
    if let Some(py) = &py {
        group.bench_function("python_sdk", |b| {
            b.iter_custom(|iters| {
                let args = [
                    conn.clone(),
                    "python-sessions".to_owned(),
                    iters.to_string(),
                    SESSIONS.to_string(),
                    PER_SESSION.to_string(),
                    SIZE.to_string(),
                ];
                python(py, "bench_sdk_sessions.py", &args)
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("session_handoff");
    group.throughput(Throughput::Elements(HANDOFF as u64));
    group.sample_size(10);
    group.bench_function("queue_azure", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    let sid = handoff_fill(&provider, &squeue, round).await;
                    let start = std::time::Instant::now();
                    handoff_drain(&provider, &squeue, sid).await;
                    total += start.elapsed();
                }
                total
            })
        });
    });
    group.finish();
    if py.is_none() {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("python_sdk baselines skipped: QUEUE_TEST_PYTHON is not set");
        }
    }
    drop(emu);
}

criterion_group!(benches, bench);
criterion_main!(benches);
