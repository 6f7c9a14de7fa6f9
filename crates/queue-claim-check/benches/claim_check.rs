//! Throughput of 1 MiB and 10 MiB messages through the claim-check layer, against a
//! baseline measured in the same run, on a memory store and on a local directory.
//!
//! `raw_store` = one `put`, one `get` (read to the end) and one `delete` of the body straight
//! on the `object_store` (the least a claim-checked message costs: its bytes go in and come
//! out once). `layer` = `send` + `receive` + `complete` through `ClaimCheck` over the
//! in-memory provider: SHA-256 on both sides, the size-bounded fetch, the reference, the
//! queue operations and the delete after the complete. Printed at the end: `layer /
//! raw_store` per store and size.
//!
//! Quick run: `cargo bench -p queue-claim-check -- --warm-up-time 1 --measurement-time 3`.

#![allow(clippy::print_stdout)] // the ratio report

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use queue_claim_check::{
    BlobStore, ClaimCheck,
    object_store::{
        ObjectStore, ObjectStoreExt as _, PutPayload, local::LocalFileSystem, memory::InMemory,
        path::Path,
    },
};
use queue_core::{Message, QueueName, QueueProvider, QueueSpec, ReceiveOptions};
use queue_memory::InMemoryProvider;
use tokio::runtime::Runtime;

static RESULTS: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

fn record(id: &str, total: Duration, iters: u64) {
    let per_call = total.as_nanos() as f64 / iters as f64;
    let mut results = RESULTS.lock().expect("results");
    results.entry(id.to_owned()).or_default().push(per_call);
}

fn median(id: &str) -> Option<f64> {
    let mut v = RESULTS.lock().expect("results").get(id)?.clone();
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

async fn raw_round_trip(store: &dyn ObjectStore, path: &Path, body: &Bytes) {
    store
        .put(path, PutPayload::from_bytes(body.clone()))
        .await
        .expect("put");
    let got = store
        .get(path)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("read");
    assert_eq!(got.len(), body.len());
    store.delete(path).await.expect("delete");
}

async fn layer_round_trip(provider: &ClaimCheck<InMemoryProvider>, q: &QueueName, body: &Bytes) {
    provider
        .send(q, Message::new(body.clone()))
        .await
        .expect("send");
    let got = provider
        .receive(q, ReceiveOptions::new(1, Duration::from_secs(1)))
        .await
        .expect("receive");
    assert_eq!(got[0].body().len(), body.len());
    provider.complete(&got[0].receipt).await.expect("complete");
}

fn stores() -> Vec<(
    &'static str,
    Arc<dyn ObjectStore>,
    Option<std::path::PathBuf>,
)> {
    let dir = std::env::temp_dir().join(format!("claim-check-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let local = LocalFileSystem::new_with_prefix(&dir).expect("local store");
    vec![
        ("memory", Arc::new(InMemory::new()), None),
        ("fs", Arc::new(local), Some(dir)),
    ]
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let q = QueueName::new("bench").expect("queue");
    for (kind, objects, dir) in stores() {
        let provider = ClaimCheck::new(InMemoryProvider::new(), BlobStore::new(objects.clone()));
        rt.block_on(provider.create_queue(&q, &QueueSpec::default()))
            .expect("queue");
        for mib in [1usize, 10] {
            let body = Bytes::from(vec![b'{'; mib << 20]);
            let mut group = c.benchmark_group(format!("claim_check/{kind}/{mib}MiB"));
            group.throughput(Throughput::Bytes(body.len() as u64));
            group.sample_size(10);
            let raw_id = format!("{kind}/{mib}MiB/raw_store");
            let path = Path::from("bench/raw");
            group.bench_function("raw_store", |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        rt.block_on(raw_round_trip(objects.as_ref(), &path, &body));
                    }
                    let total = start.elapsed();
                    record(&raw_id, total, iters);
                    total
                });
            });
            let layer_id = format!("{kind}/{mib}MiB/layer");
            group.bench_function("layer", |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        rt.block_on(layer_round_trip(&provider, &q, &body));
                    }
                    let total = start.elapsed();
                    record(&layer_id, total, iters);
                    total
                });
            });
            group.finish();
        }
        if let Some(dir) = dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    report();
}

fn report() {
    println!("\nclaim-check layer / raw store (send+receive+complete vs put+get+delete):");
    for kind in ["memory", "fs"] {
        for mib in [1, 10] {
            let raw = median(&format!("{kind}/{mib}MiB/raw_store"));
            let layer = median(&format!("{kind}/{mib}MiB/layer"));
            if let (Some(raw), Some(layer)) = (raw, layer) {
                let mib_s = |ns: f64| (mib as f64) / (ns / 1e9);
                println!(
                    "  {kind:>6} {mib:>2} MiB: layer {:8.1} MiB/s, raw {:8.1} MiB/s, ratio {:.2}x",
                    mib_s(layer),
                    mib_s(raw),
                    layer / raw
                );
            }
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
