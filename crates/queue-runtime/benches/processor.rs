//! Processor overhead on the memory provider, against the bare provider calls in the same run.
//!
//! * `throughput/*`: 1000 session-less messages; baselines = a loop of batch receive +
//!   complete, on the concrete `InMemoryProvider` (`bare_provider`: unboxed inherent
//!   methods) and through a `SharedQueueProvider` (`bare_provider_dyn`: a boxed future per
//!   call, as the processor calls it); processor = the same messages through a
//!   [`Processor`] with a handler that completes at once.
//! * `handoff/*`: 200 messages in one session (one key); baseline = accept the session and
//!   loop receive(1) + complete; processor = the same through a [`Processor`]. The time per
//!   message is the per-key hand-off latency: how soon message N+1 reaches the handler after
//!   N was handled.
//! * `sessions/*`: 20 sessions x 25 messages, processor only, to show concurrency across keys.
//!
//! Only the consumption is timed (messages are enqueued before the clock starts).
//!
//! Before criterion's groups, the bench prints, from `RUNS` runs of each side in the same
//! process, the median time per message of the processor and of the bare loop with their
//! ratio (issue 18 target: <= 2x), and the per-key hand-off latency p50/p99 from timestamps
//! (processor: handler N returns -> handler N+1 of the key starts; bare: N's receive
//! returned and was completed -> N+1's receive returns; target p99 < 100 us).
//!
//! `PROCESSOR_BENCH_ONLY` (see [`only_one_side`]) runs one side alone, for counting
//! instructions under callgrind (recipe in `docs/runtime.md`, *Performance*).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use queue_memory::InMemoryProvider;
use queue_runtime::{
    CancellationToken, Message, Outcome, Processor, ProcessorSettings, QueueName, QueueProvider,
    QueueSpec, ReceiveOptions, SessionId, SessionMode, SessionSelector, SharedQueueProvider,
    handler_fn,
};

const THROUGHPUT_MESSAGES: usize = 1000;
const HANDOFF_MESSAGES: usize = 200;
const SESSIONS: usize = 20;
const PER_SESSION: usize = 25;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn filled(sessions: usize, per_session: usize) -> (InMemoryProvider, QueueName) {
    let provider = InMemoryProvider::new();
    let queue = QueueName::new("bench").unwrap();
    provider
        .create_queue(&queue, &QueueSpec::default())
        .await
        .unwrap();
    let mut batch = Vec::new();
    for s in 0..sessions.max(1) {
        for n in 0..per_session {
            let msg = Message::new(format!("{s}:{n}"));
            batch.push(if sessions == 0 {
                msg
            } else {
                msg.with_session_id(SessionId::new(format!("key-{s}")).unwrap())
            });
        }
    }
    provider.send_batch(&queue, batch).await.unwrap();
    (provider, queue)
}

/// Settings for `sessions` messages per key (0: session-less): the session mode a user sets
/// for that kind of queue, so no idle consumer of the other kind polls during the run.
fn settings(sessions: bool) -> ProcessorSettings {
    let mode = if sessions {
        SessionMode::Required
    } else {
        SessionMode::None
    };
    ProcessorSettings::default()
        .with_session_mode(mode)
        .with_max_concurrent_messages(100)
        .with_max_concurrent_sessions(8)
        .with_receive_wait(Duration::from_millis(1))
        .with_session_idle_timeout(Duration::from_millis(1))
}

/// Runs a processor until `expected` messages were handled; returns the elapsed time.
async fn run_processor(
    provider: InMemoryProvider,
    queue: QueueName,
    expected: usize,
    sessions: bool,
) -> Duration {
    let shared: SharedQueueProvider = Arc::new(provider);
    let done = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let (d, s) = (done.clone(), shutdown.clone());
    let handler = handler_fn(move |_msg, _ctx| {
        if d.fetch_add(1, Ordering::Relaxed) + 1 == expected {
            s.cancel();
        }
        async { Ok(Outcome::Complete) }
    });
    let start = Instant::now();
    let report = Processor::new(shared, queue, handler)
        .with_settings(settings(sessions))
        .run(shutdown)
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(report.completed as usize, expected);
    took
}

/// The bare loop on the concrete type: `InMemoryProvider`'s inherent methods, whose futures
/// are not boxed.
async fn bare_receive_complete(
    provider: InMemoryProvider,
    queue: QueueName,
    expected: usize,
) -> Duration {
    let start = Instant::now();
    let mut done = 0;
    let max = provider.capabilities().max_batch_size;
    while done < expected {
        let batch = provider
            .receive(&queue, ReceiveOptions::new(max, Duration::from_millis(1)))
            .await
            .unwrap();
        for m in batch {
            provider.complete(&m.receipt).await.unwrap();
            done += 1;
        }
    }
    start.elapsed()
}

/// The same loop through a [`SharedQueueProvider`], the way the processor (and any code
/// holding a provider built from configuration) calls it: a boxed future per call.
async fn bare_dyn(provider: InMemoryProvider, queue: QueueName, expected: usize) -> Duration {
    let provider: SharedQueueProvider = Arc::new(provider);
    let start = Instant::now();
    let mut done = 0;
    let max = provider.capabilities().max_batch_size;
    while done < expected {
        let batch = provider
            .receive(&queue, ReceiveOptions::new(max, Duration::from_millis(1)))
            .await
            .unwrap();
        for m in batch {
            provider.complete(&m.receipt).await.unwrap();
            done += 1;
        }
    }
    start.elapsed()
}

async fn bare_session(provider: InMemoryProvider, queue: QueueName, expected: usize) -> Duration {
    let start = Instant::now();
    let session = provider
        .accept_session(&queue, SessionSelector::Next, Duration::from_millis(1))
        .await
        .unwrap()
        .unwrap();
    let mut done = 0;
    while done < expected {
        for m in session
            .receive(ReceiveOptions::new(1, Duration::from_millis(1)))
            .await
            .unwrap()
        {
            session.complete(&m.receipt).await.unwrap();
            done += 1;
        }
    }
    session.close().await.unwrap();
    start.elapsed()
}

/// Runs of each side for the printed figures.
const RUNS: usize = 15;

/// The processor run of [`run_processor`], with the handler's entry and exit times.
async fn processor_stamps(
    provider: InMemoryProvider,
    queue: QueueName,
    expected: usize,
) -> (Duration, Vec<(Instant, Instant)>) {
    let shared: SharedQueueProvider = Arc::new(provider);
    let stamps = Arc::new(std::sync::Mutex::new(Vec::with_capacity(expected)));
    let shutdown = CancellationToken::new();
    let (st, s) = (stamps.clone(), shutdown.clone());
    let handler = handler_fn(move |_msg, _ctx| {
        let entry = Instant::now();
        let mut st = st.lock().unwrap();
        st.push((entry, Instant::now()));
        if st.len() == expected {
            s.cancel();
        }
        async { Ok(Outcome::Complete) }
    });
    let start = Instant::now();
    Processor::new(shared, queue, handler)
        .with_settings(settings(true))
        .run(shutdown)
        .await
        .unwrap();
    let took = start.elapsed();
    let stamps = stamps.lock().unwrap().clone();
    (took, stamps)
}

/// The bare session loop of [`bare_session`], with the time each message was received and
/// the time its completion returned.
async fn bare_session_stamps(
    provider: InMemoryProvider,
    queue: QueueName,
    expected: usize,
) -> Vec<(Instant, Instant)> {
    let session = provider
        .accept_session(&queue, SessionSelector::Next, Duration::from_millis(1))
        .await
        .unwrap()
        .unwrap();
    let mut stamps = Vec::with_capacity(expected);
    while stamps.len() < expected {
        for m in session
            .receive(ReceiveOptions::new(1, Duration::from_millis(1)))
            .await
            .unwrap()
        {
            let got = Instant::now();
            session.complete(&m.receipt).await.unwrap();
            stamps.push((got, got));
        }
    }
    session.close().await.unwrap();
    stamps
}

/// Gaps between one message's handler exit and the next one's entry.
fn handoffs(stamps: &[(Instant, Instant)]) -> Vec<Duration> {
    stamps.windows(2).map(|w| w[1].0 - w[0].1).collect()
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn median(v: Vec<Duration>) -> Duration {
    percentile(v, 0.5)
}

/// Prints the processor/bare ratios and hand-off percentiles measured in this run.
#[allow(clippy::print_stdout, reason = "the bench prints its figures")]
fn print_figures(rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        let (mut bare, mut dyn_, mut proc_) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let (p, q) = filled(0, THROUGHPUT_MESSAGES).await;
            bare.push(bare_receive_complete(p, q, THROUGHPUT_MESSAGES).await);
            let (p, q) = filled(0, THROUGHPUT_MESSAGES).await;
            dyn_.push(bare_dyn(p, q, THROUGHPUT_MESSAGES).await);
            let (p, q) = filled(0, THROUGHPUT_MESSAGES).await;
            proc_.push(run_processor(p, q, THROUGHPUT_MESSAGES, false).await);
        }
        let per = |d: Duration| d / THROUGHPUT_MESSAGES as u32;
        let (b, d, p) = (per(median(bare)), per(median(dyn_)), per(median(proc_)));
        let ratio = |x: Duration, y: Duration| x.as_secs_f64() / y.as_secs_f64();
        println!(
            "throughput (1000 session-less messages, median of {RUNS}): processor {p:?}/msg; \
             bare receive+complete through SharedQueueProvider {d:?}/msg, ratio {:.2}x \
             (target <= 2x); bare on the concrete type {b:?}/msg, ratio {:.2}x",
            ratio(p, d),
            ratio(p, b)
        );
        let (mut bare, mut proc_, mut bare_h, mut proc_h) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let (p, q) = filled(1, HANDOFF_MESSAGES).await;
            let start = Instant::now();
            let stamps = bare_session_stamps(p, q, HANDOFF_MESSAGES).await;
            bare.push(start.elapsed());
            bare_h.extend(handoffs(&stamps));
            let (p, q) = filled(1, HANDOFF_MESSAGES).await;
            let (took, stamps) = processor_stamps(p, q, HANDOFF_MESSAGES).await;
            proc_.push(took);
            proc_h.extend(handoffs(&stamps));
        }
        let per = |d: Duration| d / HANDOFF_MESSAGES as u32;
        let (b, p) = (per(median(bare)), per(median(proc_)));
        println!(
            "handoff (200 messages of one key, median of {RUNS}): processor {p:?}/msg, bare \
             session receive(1)+complete {b:?}/msg, ratio {:.2}x",
            p.as_secs_f64() / b.as_secs_f64()
        );
        println!(
            "per-key hand-off: processor p50 {:?} p99 {:?}; bare p50 {:?} p99 {:?} (target p99 < 100us)",
            percentile(proc_h.clone(), 0.5),
            percentile(proc_h, 0.99),
            percentile(bare_h.clone(), 0.5),
            percentile(bare_h, 0.99),
        );
    });
}

/// With `PROCESSOR_BENCH_ONLY=bare|bare_dyn|processor|none` set, runs only that side of the
/// throughput scenario `RUNS` times (`none`: only the set-up) and exits: for counting
/// instructions per message under `valgrind --tool=callgrind`, which, unlike time on a
/// shared machine, is the same from run to run.
fn only_one_side(rt: &tokio::runtime::Runtime) {
    let Ok(side) = std::env::var("PROCESSOR_BENCH_ONLY") else {
        return;
    };
    rt.block_on(async {
        for _ in 0..RUNS {
            let (p, q) = filled(0, THROUGHPUT_MESSAGES).await;
            match side.as_str() {
                "bare" => drop(bare_receive_complete(p, q, THROUGHPUT_MESSAGES).await),
                "bare_dyn" => drop(bare_dyn(p, q, THROUGHPUT_MESSAGES).await),
                "processor" => drop(run_processor(p, q, THROUGHPUT_MESSAGES, false).await),
                _ => {}
            }
        }
    });
    std::process::exit(0);
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    only_one_side(&rt);
    print_figures(&rt);

    let mut group = c.benchmark_group("throughput");
    group.throughput(Throughput::Elements(THROUGHPUT_MESSAGES as u64));
    group.bench_function("bare_provider", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (p, q) = filled(0, THROUGHPUT_MESSAGES).await;
                total += bare_receive_complete(p, q, THROUGHPUT_MESSAGES).await;
            }
            total
        })
    });
    group.bench_function("bare_provider_dyn", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (p, q) = filled(0, THROUGHPUT_MESSAGES).await;
                total += bare_dyn(p, q, THROUGHPUT_MESSAGES).await;
            }
            total
        })
    });
    group.bench_function("processor", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (p, q) = filled(0, THROUGHPUT_MESSAGES).await;
                total += run_processor(p, q, THROUGHPUT_MESSAGES, false).await;
            }
            total
        })
    });
    group.finish();

    let mut group = c.benchmark_group("handoff");
    group.throughput(Throughput::Elements(HANDOFF_MESSAGES as u64));
    group.bench_function("bare_session", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (p, q) = filled(1, HANDOFF_MESSAGES).await;
                total += bare_session(p, q, HANDOFF_MESSAGES).await;
            }
            total
        })
    });
    group.bench_function("processor", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (p, q) = filled(1, HANDOFF_MESSAGES).await;
                total += run_processor(p, q, HANDOFF_MESSAGES, true).await;
            }
            total
        })
    });
    group.finish();

    let mut group = c.benchmark_group("sessions");
    group.throughput(Throughput::Elements((SESSIONS * PER_SESSION) as u64));
    group.bench_function("processor_20x25", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (p, q) = filled(SESSIONS, PER_SESSION).await;
                total += run_processor(p, q, SESSIONS * PER_SESSION, true).await;
            }
            total
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
