//! Session roll-over (issue 13 item 5, issue 19): 10,000 messages of 1 KiB over 500 keys,
//! 8 sessions at once, on the memory provider and (feature `azure`) on the in-process
//! Service Bus emulator.
//!
//! * `rollover/<provider>/bare`: the baseline, measured in the same run: 8 tasks that accept
//!   the next session, receive and complete one message at a time until the session is
//!   drained (`receive_available`), then close it. No handler, retry, renewal or metrics.
//! * `rollover/<provider>/processor`: the same messages through a [`Processor`].
//!
//! Besides criterion's timings, each provider prints its throughput (msg/s) and, from handler
//! timestamps per session worker, the per-key hand-off latency (handler N returns -> handler
//! N+1 of the same session starts) and the roll-over latency (last handler of a session
//! returns -> first handler of the worker's next session starts), p50 and p99.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use queue_runtime::{
    CancellationToken, Message, Outcome, Processor, ProcessorSettings, QueueName, QueueProvider,
    QueueSpec, ReceiveOptions, SessionId, SessionMode, SessionSelector, SharedQueueProvider,
    handler_fn,
};

const MESSAGES: usize = 10_000;
const KEYS: usize = 500;
const CONCURRENT: usize = 8;
const BODY: usize = 1024;

/// One handled message: which worker task, which session, when the handler ran.
#[derive(Clone, Copy)]
struct Span {
    worker: Option<tokio::task::Id>,
    session: usize,
    start: Instant,
    end: Instant,
}

/// A provider under test: how to fill the queue, and what the broker still holds.
struct Target {
    name: &'static str,
    provider: SharedQueueProvider,
    queue: QueueName,
    /// Keeps the emulator alive.
    _guard: Option<Box<dyn std::any::Any + Send>>,
}

impl Target {
    async fn fill(&self) {
        let body = "x".repeat(BODY);
        let mut batch = Vec::with_capacity(MESSAGES);
        for n in 0..MESSAGES {
            let key = n % KEYS;
            batch.push(
                Message::new(format!("{key}:{n}:{body}"))
                    .with_session_id(SessionId::new(format!("key-{key}")).unwrap()),
            );
        }
        for chunk in batch.chunks(100) {
            self.provider
                .send_batch(&self.queue, chunk.to_vec())
                .await
                .unwrap();
        }
    }
}

fn settings() -> ProcessorSettings {
    ProcessorSettings::default()
        .with_session_mode(SessionMode::Required)
        .with_max_concurrent_sessions(CONCURRENT)
        .with_receive_wait(Duration::from_millis(200))
}

/// Runs a processor until every message was handled; returns the time and the spans.
async fn run_processor(t: &Target) -> (Duration, Vec<Span>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::new(Mutex::new(Vec::with_capacity(MESSAGES)));
    let shutdown = CancellationToken::new();
    let (s, stop) = (spans.clone(), shutdown.clone());
    let handler = handler_fn(move |msg, _ctx| {
        let start = Instant::now();
        let session = std::str::from_utf8(msg.body())
            .ok()
            .and_then(|b| b.split(':').next())
            .and_then(|k| k.parse().ok())
            .unwrap_or(usize::MAX);
        let mut all = s.lock().unwrap();
        all.push(Span {
            worker: tokio::task::try_id(),
            session,
            start,
            end: Instant::now(),
        });
        if all.len() == MESSAGES {
            stop.cancel();
        }
        async { Ok(Outcome::Complete) }
    });
    let started = Instant::now();
    let report = Processor::new(t.provider.clone(), t.queue.clone(), handler)
        .with_settings(settings())
        .run(shutdown)
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(report.completed as usize, MESSAGES, "{report:?}");
    let spans = std::mem::take(&mut *spans.lock().unwrap());
    (took, spans)
}

/// The baseline: bare accept / receive / complete / drained-check loops, stopping as soon
/// as every message is completed (no trailing accept wait).
async fn run_bare(t: &Target) -> Duration {
    let started = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENT {
        let (provider, queue, done) = (t.provider.clone(), t.queue.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            use std::sync::atomic::Ordering::SeqCst;
            while done.load(SeqCst) < MESSAGES {
                let Some(s) = provider
                    .accept_session(&queue, SessionSelector::Next, Duration::from_millis(5))
                    .await
                    .unwrap()
                else {
                    continue;
                };
                let mut batch = s
                    .receive(ReceiveOptions::new(1, Duration::from_millis(200)))
                    .await
                    .unwrap();
                while let Some(m) = batch.pop() {
                    s.complete(&m.receipt).await.unwrap();
                    done.fetch_add(1, SeqCst);
                    batch = s
                        .receive_available(ReceiveOptions::new(1, Duration::from_millis(20)))
                        .await
                        .unwrap();
                }
                s.close().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), MESSAGES);
    started.elapsed()
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// Hand-off and roll-over gaps per worker, from the spans.
fn gaps(spans: &[Span]) -> (Vec<Duration>, Vec<Duration>) {
    let mut per_worker: HashMap<Option<tokio::task::Id>, Vec<Span>> = HashMap::new();
    for s in spans {
        per_worker.entry(s.worker).or_default().push(*s);
    }
    let (mut handoff, mut rollover) = (Vec::new(), Vec::new());
    for list in per_worker.values_mut() {
        list.sort_by_key(|s| s.start);
        for w in list.windows(2) {
            let gap = w[1].start.saturating_duration_since(w[0].end);
            if w[0].session == w[1].session {
                handoff.push(gap);
            } else {
                rollover.push(gap);
            }
        }
    }
    (handoff, rollover)
}

/// One measured run of each, printed (criterion's figures follow).
fn report(rt: &tokio::runtime::Runtime, t: &Target) {
    rt.block_on(t.fill());
    let bare = rt.block_on(run_bare(t));
    rt.block_on(t.fill());
    let (took, spans) = rt.block_on(run_processor(t));
    let (handoff, rollover) = gaps(&spans);
    let rate = |d: Duration| MESSAGES as f64 / d.as_secs_f64();
    #[allow(clippy::print_stdout)]
    {
        println!(
            "rollover/{}: processor {:.0} msg/s, bare {:.0} msg/s (processor/bare {:.2}); \
             hand-off p50 {:?} p99 {:?}; roll-over p50 {:?} p99 {:?} ({} roll-overs)",
            t.name,
            rate(took),
            rate(bare),
            rate(took) / rate(bare),
            percentile(handoff.clone(), 0.5),
            percentile(handoff, 0.99),
            percentile(rollover.clone(), 0.5),
            percentile(rollover.clone(), 0.99),
            rollover.len(),
        );
    }
}

fn bench_target(c: &mut Criterion, rt: &tokio::runtime::Runtime, t: &Target) {
    report(rt, t);
    let mut group = c.benchmark_group(format!("rollover/{}", t.name));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(MESSAGES as u64));
    group.bench_function("bare", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                rt.block_on(t.fill());
                total += rt.block_on(run_bare(t));
            }
            total
        })
    });
    group.bench_function("processor", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                rt.block_on(t.fill());
                total += rt.block_on(run_processor(t)).0;
            }
            total
        })
    });
    group.finish();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn memory() -> Target {
    let provider = queue_memory::InMemoryProvider::new();
    let queue = QueueName::new("rollover").unwrap();
    provider
        .create_queue(&queue, &QueueSpec::default().with_sessions(true))
        .await
        .unwrap();
    Target {
        name: "memory",
        provider: Arc::new(provider),
        queue,
        _guard: None,
    }
}

#[cfg(feature = "azure")]
async fn emulator() -> Target {
    use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};
    let cfg = EmulatorConfig::new()
        .with_key("RootManageSharedAccessKey", "bench-key")
        .with_queue(
            "rollover",
            QueueConfig::new()
                .with_requires_session(true)
                .with_lock_duration(Duration::from_secs(30)),
        );
    let emu = Emulator::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let config = queue_runtime::QueueRuntimeConfig::from_toml_str(&format!(
        "queue = \"rollover\"\n[provider]\nkind = \"service-bus\"\nconnection_string = \"{}\"\n",
        emu.connection_string(true)
    ))
    .unwrap();
    let provider = queue_runtime::build_provider(&config.provider)
        .await
        .unwrap();
    Target {
        name: "emulator",
        provider,
        queue: QueueName::new("rollover").unwrap(),
        _guard: Some(Box::new(emu)),
    }
}

fn rollover(c: &mut Criterion) {
    let rt = runtime();
    let mem = rt.block_on(memory());
    bench_target(c, &rt, &mem);
    #[cfg(feature = "azure")]
    {
        let emu = rt.block_on(emulator());
        bench_target(c, &rt, &emu);
    }
}

criterion_group!(benches, rollover);
criterion_main!(benches);
