//! What the in-memory provider's peek-lock costs, against baselines measured in the same
//! run, with the ratios printed at the end of each group.
//!
//! * `round_trip/c{consumers}_b{batch}_d{depth}/*`: each of `consumers` tasks sends
//!   `batch` 1 KiB messages (one `send_batch`), receives `batch` messages and completes
//!   each, until 1000 messages went through; the queue holds `depth` other messages the
//!   whole time (received first: FIFO), so a deep queue is really deep. Baselines:
//!   `mpsc` = a tokio unbounded channel (the floor for an in-process queue; no lock, no
//!   settle), `omniqueue` = the `omniqueue` crate's in-memory backend (receive + ack).
//!   Several consumers share one channel receiver (or omniqueue consumer) behind a tokio
//!   mutex, since both are single-consumer; the in-memory provider needs no wrapper.
//!   `memory` calls the provider's inherent methods (as code holding an
//!   `InMemoryProvider` does; `omniqueue`'s backend is called the same way, on its concrete
//!   types), `memory_dyn` the same through `dyn QueueProvider` (as the `Processor` does:
//!   one boxed future per call). Printed: `memory/mpsc` and `memory/omniqueue` throughput
//!   ratios of both (targets: at least 0.3 and 1.0).
//! * `scaling/d{depth}`: one consumer, batch 1, at depth 1k, 100k and 1M; printed: time
//!   per message and its ratio to depth 1k (flat means O(1)/O(log n) operations).
//! * `sessions/*`: 1000 session messages drained through `accept_session(Next)` and
//!   session receives: one session of 1000, or fifty of twenty.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use omniqueue::backends::{InMemoryBackend, InMemoryConsumer, InMemoryProducer};
use queue_core::{
    Message, QueueName, QueueProvider, QueueSpec, ReceiveOptions, SessionId, SessionSelector,
    SharedQueueProvider,
};
use queue_memory::InMemoryProvider;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// The name of the benchmarks that call the provider through `dyn QueueProvider`.
const DYN: &str = "memory_dyn";

/// Messages through the queue per measured iteration.
const N: usize = 1000;
/// A receive never needs to wait long: the workload keeps messages available.
const WAIT: Duration = Duration::from_secs(5);

fn body() -> Bytes {
    Bytes::from(vec![b'x'; 1024])
}

fn runtime(consumers: usize) -> tokio::runtime::Runtime {
    if consumers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    }
    .enable_all()
    .build()
    .expect("runtime")
}

/// Per-message times (ns) of each benchmark, for the ratio lines.
#[derive(Default)]
struct Results(Mutex<BTreeMap<String, Vec<f64>>>);

impl Results {
    fn record(&self, id: &str, total: Duration, iters: u64) {
        let per_msg = total.as_nanos() as f64 / (iters as f64 * N as f64);
        let mut map = self.0.lock().expect("results");
        map.entry(id.to_owned()).or_default().push(per_msg);
    }

    /// The median per-message time of `id`, in ns (`None` when it did not run).
    fn median(&self, id: &str) -> Option<f64> {
        let mut v = self.0.lock().expect("results").get(id)?.clone();
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }
}

#[expect(clippy::print_stdout, reason = "the ratios are the benchmark's report")]
fn report(line: &str) {
    println!("{line}");
}

// ---- workloads: one worker = one consumer that also produces what it consumes ----

#[derive(Clone, Copy)]
struct Shape {
    consumers: usize,
    batch: usize,
    depth: usize,
}

impl Shape {
    fn rounds(self) -> usize {
        N / (self.consumers * self.batch)
    }

    fn id(self) -> String {
        format!("c{}_b{}_d{}", self.consumers, self.batch, self.depth)
    }
}

/// Calls the provider's inherent methods, as code holding an `InMemoryProvider` does.
async fn memory_worker(p: InMemoryProvider, q: QueueName, s: Shape, body: Bytes) {
    for _ in 0..s.rounds() {
        if s.batch == 1 {
            p.send(&q, Message::new(body.clone())).await.expect("send");
        } else {
            let msgs = (0..s.batch).map(|_| Message::new(body.clone())).collect();
            p.send_batch(&q, msgs).await.expect("send");
        }
        let mut got = 0;
        while got < s.batch {
            let batch = p
                .receive(&q, ReceiveOptions::new(s.batch - got, WAIT))
                .await
                .expect("receive");
            for m in &batch {
                p.complete(&m.receipt).await.expect("complete");
            }
            got += batch.len();
        }
    }
}

/// The same through `dyn QueueProvider`, as the `Processor` and generic code call it
/// (every call allocates its boxed future).
async fn memory_dyn_worker(p: SharedQueueProvider, q: QueueName, s: Shape, body: Bytes) {
    for _ in 0..s.rounds() {
        if s.batch == 1 {
            p.send(&q, Message::new(body.clone())).await.expect("send");
        } else {
            let msgs = (0..s.batch).map(|_| Message::new(body.clone())).collect();
            p.send_batch(&q, msgs).await.expect("send");
        }
        let mut got = 0;
        while got < s.batch {
            let batch = p
                .receive(&q, ReceiveOptions::new(s.batch - got, WAIT))
                .await
                .expect("receive");
            for m in &batch {
                p.complete(&m.receipt).await.expect("complete");
            }
            got += batch.len();
        }
    }
}

/// A single-consumer receiver: held for the whole run by one consumer, or shared by
/// several behind a mutex.
enum Rx<T> {
    Owned(tokio::sync::OwnedMutexGuard<T>),
    Shared(Arc<tokio::sync::Mutex<T>>),
}

impl<T> Rx<T> {
    fn for_shape(rx: &Arc<tokio::sync::Mutex<T>>, s: Shape) -> Self {
        if s.consumers == 1 {
            Self::Owned(rx.clone().try_lock_owned().expect("an idle receiver"))
        } else {
            Self::Shared(rx.clone())
        }
    }
}

async fn mpsc_worker(
    tx: UnboundedSender<Message>,
    mut rx: Rx<UnboundedReceiver<Message>>,
    s: Shape,
    body: Bytes,
) {
    let mut buf = Vec::with_capacity(s.batch);
    for _ in 0..s.rounds() {
        for _ in 0..s.batch {
            tx.send(Message::new(body.clone())).expect("open channel");
        }
        while buf.len() < s.batch {
            let want = s.batch - buf.len();
            match &mut rx {
                Rx::Owned(rx) => rx.recv_many(&mut buf, want).await,
                Rx::Shared(rx) => rx.lock().await.recv_many(&mut buf, want).await,
            };
        }
        buf.clear();
    }
}

async fn omni_worker(
    tx: Arc<InMemoryProducer>,
    mut rx: Rx<InMemoryConsumer>,
    s: Shape,
    body: Bytes,
) {
    for _ in 0..s.rounds() {
        for _ in 0..s.batch {
            tx.send_raw(&body).await.expect("send");
        }
        let mut got = 0;
        while got < s.batch {
            let want = s.batch - got;
            let batch = match &mut rx {
                Rx::Owned(rx) => rx.receive_all(want, WAIT).await,
                Rx::Shared(rx) => rx.lock().await.receive_all(want, WAIT).await,
            }
            .expect("receive");
            got += batch.len();
            for d in batch {
                d.ack().await.map_err(|(e, _)| e).expect("ack");
            }
        }
    }
}

/// Runs `s.consumers` workers made by `worker` to completion; returns the elapsed time.
async fn run_workers<F, Fut>(s: Shape, mut worker: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    if s.consumers == 1 {
        worker().await;
    } else {
        let tasks: Vec<_> = (0..s.consumers).map(|_| tokio::spawn(worker())).collect();
        for t in tasks {
            t.await.expect("worker");
        }
    }
    start.elapsed()
}

// ---- set-up: a queue pre-filled to the shape's depth ----

async fn memory_queue(depth: usize, body: &Bytes) -> (InMemoryProvider, QueueName) {
    let p = InMemoryProvider::new();
    let q = QueueName::new("bench").expect("name");
    p.create_queue(&q, &QueueSpec::default())
        .await
        .expect("create");
    let mut left = depth;
    while left > 0 {
        let n = left.min(10_000);
        let msgs = (0..n).map(|_| Message::new(body.clone())).collect();
        p.send_batch(&q, msgs).await.expect("prefill");
        left -= n;
    }
    (p, q)
}

fn bench_memory(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    results: &Arc<Results>,
    s: Shape,
    name: &str,
) {
    let body = body();
    let key = format!("{}/{name}", s.id());
    let dyn_calls = name == DYN;
    g.bench_function(&key, |b| {
        // Set up here, so a filtered-out benchmark costs nothing.
        let (p, q) = rt.block_on(memory_queue(s.depth, &body));
        let shared: SharedQueueProvider = Arc::new(p.clone());
        b.to_async(rt).iter_custom(|iters| {
            let (p, shared, q, body, results, key) = (
                p.clone(),
                shared.clone(),
                q.clone(),
                body.clone(),
                results.clone(),
                key.clone(),
            );
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += if dyn_calls {
                        run_workers(s, || {
                            memory_dyn_worker(shared.clone(), q.clone(), s, body.clone())
                        })
                        .await
                    } else {
                        run_workers(s, || memory_worker(p.clone(), q.clone(), s, body.clone()))
                            .await
                    };
                }
                results.record(&key, total, iters);
                total
            }
        });
    });
}

fn bench_mpsc(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    results: &Arc<Results>,
    s: Shape,
) {
    let body = body();
    let key = format!("{}/mpsc", s.id());
    g.bench_function(&key, |b| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..s.depth {
            tx.send(Message::new(body.clone())).expect("open channel");
        }
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        b.to_async(rt).iter_custom(|iters| {
            let (tx, rx, body, results, key) = (
                tx.clone(),
                rx.clone(),
                body.clone(),
                results.clone(),
                key.clone(),
            );
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += run_workers(s, || {
                        mpsc_worker(tx.clone(), Rx::for_shape(&rx, s), s, body.clone())
                    })
                    .await;
                }
                results.record(&key, total, iters);
                total
            }
        });
    });
}

fn bench_omniqueue(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    results: &Arc<Results>,
    s: Shape,
) {
    let body = body();
    let key = format!("{}/omniqueue", s.id());
    g.bench_function(&key, |b| {
        let (tx, rx) = rt.block_on(async {
            let (tx, rx) = InMemoryBackend::builder()
                .build_pair()
                .await
                .expect("omniqueue");
            for _ in 0..s.depth {
                tx.send_raw(&body).await.expect("prefill");
            }
            (Arc::new(tx), rx)
        });
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        b.to_async(rt).iter_custom(|iters| {
            let (tx, rx, body, results, key) = (
                tx.clone(),
                rx.clone(),
                body.clone(),
                results.clone(),
                key.clone(),
            );
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += run_workers(s, || {
                        omni_worker(tx.clone(), Rx::for_shape(&rx, s), s, body.clone())
                    })
                    .await;
                }
                results.record(&key, total, iters);
                total
            }
        });
    });
}

fn round_trip(c: &mut Criterion) {
    let results = Arc::new(Results::default());
    let mut shapes = Vec::new();
    for consumers in [1, 8] {
        for batch in [1, 10] {
            for depth in [1, 100_000] {
                shapes.push(Shape {
                    consumers,
                    batch,
                    depth,
                });
            }
        }
    }
    let mut g = c.benchmark_group("round_trip");
    g.throughput(Throughput::Elements(N as u64));
    for &s in &shapes {
        let rt = runtime(s.consumers);
        bench_mpsc(&mut g, &rt, &results, s);
        bench_omniqueue(&mut g, &rt, &results, s);
        bench_memory(&mut g, &rt, &results, s, "memory");
        bench_memory(&mut g, &rt, &results, s, DYN);
    }
    g.finish();
    report(
        "\nround_trip ratios (throughput of memory relative to the baseline; targets >= 0.3 mpsc, >= 1.0 omniqueue):",
    );
    for s in shapes {
        let id = s.id();
        let (Some(mpsc), Some(omni)) = (
            results.median(&format!("{id}/mpsc")),
            results.median(&format!("{id}/omniqueue")),
        ) else {
            continue;
        };
        for name in ["memory", DYN] {
            let Some(mem) = results.median(&format!("{id}/{name}")) else {
                continue;
            };
            report(&format!(
                "  {id:<15} {name:<11} {mem:>6.0} ns/msg  mpsc {mpsc:>5.0}  omniqueue {omni:>5.0}  memory/mpsc {:>5.2}x  memory/omniqueue {:>5.2}x",
                mpsc / mem,
                omni / mem
            ));
        }
    }
}

fn scaling(c: &mut Criterion) {
    let results = Arc::new(Results::default());
    let depths = [1_000, 100_000, 1_000_000];
    let mut g = c.benchmark_group("scaling");
    g.throughput(Throughput::Elements(N as u64));
    let rt = runtime(1);
    for depth in depths {
        let s = Shape {
            consumers: 1,
            batch: 1,
            depth,
        };
        bench_memory(&mut g, &rt, &results, s, "memory");
    }
    g.finish();
    report("\nscaling (memory, 1 consumer, batch 1; flat = independent of depth):");
    let Some(base) = results.median("c1_b1_d1000/memory") else {
        return;
    };
    for depth in depths {
        let Some(t) = results.median(&format!("c1_b1_d{depth}/memory")) else {
            continue;
        };
        report(&format!(
            "  depth {depth:>9}: {t:>7.0} ns/msg  ({:.2}x depth 1k)",
            t / base
        ));
    }
}

async fn drain_sessions(sessions: usize) -> Duration {
    let provider = InMemoryProvider::new();
    let q = QueueName::new("bench-sessions").expect("name");
    provider
        .create_queue(&q, &QueueSpec::default().with_sessions(true))
        .await
        .expect("create");
    let per = N / sessions;
    let ids: Vec<SessionId> = (0..sessions)
        .map(|s| SessionId::new(format!("pr-{s}")).expect("session id"))
        .collect();
    let mut msgs = Vec::with_capacity(N);
    for n in 0..per {
        for id in &ids {
            msgs.push(Message::new(format!("{n}")).with_session_id(id.clone()));
        }
    }
    provider.send_batch(&q, msgs).await.expect("send");
    let start = Instant::now();
    let mut got = 0;
    while let Some(session) = provider
        .accept_session(&q, SessionSelector::Next, Duration::ZERO)
        .await
        .expect("accept")
    {
        loop {
            let batch = session
                .receive(ReceiveOptions::new(100, Duration::ZERO))
                .await
                .expect("receive");
            if batch.is_empty() {
                break;
            }
            for m in batch {
                session.complete(&m.receipt).await.expect("complete");
                got += 1;
            }
        }
        session.close().await.expect("close");
    }
    assert_eq!(got, N);
    start.elapsed()
}

fn sessions(c: &mut Criterion) {
    let rt = runtime(1);
    let mut group = c.benchmark_group("sessions");
    group.throughput(Throughput::Elements(N as u64));
    for (name, count) in [("1x1000", 1), ("50x20", 50)] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += drain_sessions(count).await;
                }
                total
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = round_trip, scaling, sessions
}
criterion_main!(benches);
