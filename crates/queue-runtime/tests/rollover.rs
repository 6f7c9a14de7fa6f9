//! Session roll-over under stress (issue 19): many short sessions, idle timeouts of a few
//! milliseconds, handlers that finish as the idle timeout runs out, locks that expire while
//! sessions are accepted. Every run asserts that each message is handled exactly once per
//! delivery, in order within its session, that nothing is left locked in the broker, and that
//! a drained session is released at once (no idle wait per session).
//!
//! Bounded for CI (a few seconds per provider). `QUEUE_RUNTIME_SOAK_RUNS=<n>` repeats every
//! scenario `n` times instead (the soak behind issue 19's 500 consecutive runs).

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use queue_runtime::{
    Message, Outcome, Processor, ProcessorSettings, QueueName, QueueSpec, SessionId, SessionMode,
    SharedQueueProvider, ShutdownReport, handler_fn,
};

/// One stress scenario.
#[derive(Clone, Copy, Debug)]
struct Scenario {
    sessions: usize,
    per_session: usize,
    idle: Duration,
    /// How long each handler takes (equal to `idle`: finishes as the idle timeout runs out).
    work: Duration,
    concurrent: usize,
}

/// The scenarios of one pass: issue 19's 6 x 5 with a 1 ms idle timeout, and variants.
fn scenarios() -> Vec<Scenario> {
    let ms = Duration::from_millis;
    let s = |sessions, per_session, idle, work, concurrent| Scenario {
        sessions,
        per_session,
        idle,
        work,
        concurrent,
    };
    vec![
        s(6, 5, ms(1), Duration::ZERO, 8),
        s(1, 20, ms(1), Duration::ZERO, 8),
        s(50, 2, Duration::from_micros(1), Duration::ZERO, 8),
        s(12, 3, ms(2), ms(2), 4),
        s(20, 4, ms(10), Duration::ZERO, 3),
        s(8, 4, ms(5), ms(5), 8),
    ]
}

/// How many passes over [`scenarios`]: the soak count, or a CI-sized default.
fn passes(default: usize) -> usize {
    std::env::var("QUEUE_RUNTIME_SOAK_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What handlers saw: per session, the bodies in handling order.
#[derive(Clone, Default)]
struct Seen {
    bodies: Arc<Mutex<HashMap<String, Vec<usize>>>>,
    count: Arc<AtomicUsize>,
}

impl Seen {
    fn processor(
        &self,
        provider: SharedQueueProvider,
        queue: QueueName,
        sc: Scenario,
    ) -> Processor {
        let seen = self.clone();
        let settings = ProcessorSettings::default()
            .with_session_mode(SessionMode::Required)
            .with_max_concurrent_sessions(sc.concurrent)
            .with_session_idle_timeout(sc.idle)
            .with_receive_wait(Duration::from_millis(200))
            .with_lock_renewal_interval(Duration::from_millis(100))
            .with_shutdown_timeout(Duration::from_secs(5));
        Processor::new(
            provider,
            queue,
            handler_fn(move |msg, _ctx| {
                let seen = seen.clone();
                async move {
                    let body = String::from_utf8(msg.body().to_vec()).unwrap();
                    let (session, n) = body.split_once(':').unwrap();
                    if !sc.work.is_zero() {
                        tokio::time::sleep(sc.work).await;
                    }
                    seen.bodies
                        .lock()
                        .unwrap()
                        .entry(session.to_owned())
                        .or_default()
                        .push(n.parse().unwrap());
                    seen.count.fetch_add(1, Ordering::SeqCst);
                    Ok(Outcome::Complete)
                }
            }),
        )
        .with_settings(settings)
    }

    /// Exactly once, in order, for every session.
    fn check(&self, sc: Scenario, report: &ShutdownReport, run: &str) {
        let bodies = self.bodies.lock().unwrap();
        let want: Vec<usize> = (0..sc.per_session).collect();
        for s in 0..sc.sessions {
            let got = bodies.get(&format!("s{s}")).cloned().unwrap_or_default();
            assert_eq!(got, want, "{run}: session s{s} handled {got:?}");
        }
        let total = (sc.sessions * sc.per_session) as u64;
        // Every delivery ends completed. On a loaded machine a completion may time out after
        // the broker applied it; its retry then finds the lock gone and the report counts a
        // lost lock. The message was handled once and is gone (checked by the caller).
        assert_eq!(
            report.completed + report.lock_lost,
            total,
            "{run}: {report:?}"
        );
        assert_eq!(
            report.retried + report.dead_lettered,
            0,
            "{run}: {report:?}"
        );
        assert_eq!(
            report.received, total,
            "{run}: one delivery each: {report:?}"
        );
    }
}

/// Sends the scenario's messages, interleaved across sessions.
async fn send(provider: &SharedQueueProvider, queue: &QueueName, sc: Scenario) {
    let mut batch = Vec::new();
    for n in 0..sc.per_session {
        for s in 0..sc.sessions {
            let sid = SessionId::new(format!("s{s}")).unwrap();
            batch.push(Message::new(format!("s{s}:{n}")).with_session_id(sid));
        }
    }
    for chunk in batch.chunks(10) {
        provider.send_batch(queue, chunk.to_vec()).await.unwrap();
    }
}

/// Runs one scenario to completion on `queue` (which must be empty) and checks it.
/// `left` counts what the broker still holds (locked or not).
async fn run_scenario(
    provider: &SharedQueueProvider,
    queue: &QueueName,
    sc: Scenario,
    run: &str,
    left: impl Fn() -> usize,
) {
    send(provider, queue, sc).await;
    let seen = Seen::default();
    let total = sc.sessions * sc.per_session;
    let running = common::start(seen.processor(provider.clone(), queue.clone(), sc));
    let count = seen.count.clone();
    // A lost message shows up here: its run does not finish.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let done = || count.load(Ordering::SeqCst) >= total && left() == 0;
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let finished = done();
    let report = running.stop().await;
    assert!(
        finished,
        "{run}: handled {} of {total}, {} left in the broker; {report:?}",
        count.load(Ordering::SeqCst),
        left()
    );
    seen.check(sc, &report, run);
    assert_eq!(left(), 0, "{run}: nothing may stay locked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollover_stress_on_memory() {
    let (mem, provider, queue) = common::memory(
        "rollover",
        QueueSpec::default()
            .with_sessions(true)
            .with_lock_duration(Duration::from_millis(300)),
    )
    .await;
    for pass in 0..passes(15) {
        for (i, sc) in scenarios().into_iter().enumerate() {
            let run = format!("memory pass {pass} scenario {i} {sc:?}");
            run_scenario(&provider, &queue, sc, &run, || {
                mem.message_count(&queue).unwrap()
            })
            .await;
        }
    }
}

/// With a one-second idle timeout, 200 one-message sessions take far less than 200 idle
/// waits: each worker moves on as soon as its session is drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_sessions_are_released_without_idle_wait_on_memory() {
    let (mem, provider, queue) =
        common::memory("no-idle", QueueSpec::default().with_sessions(true)).await;
    let sc = Scenario {
        sessions: 200,
        per_session: 1,
        idle: Duration::from_secs(1),
        work: Duration::ZERO,
        concurrent: 4,
    };
    let started = std::time::Instant::now();
    run_scenario(&provider, &queue, sc, "memory no-idle", || {
        mem.message_count(&queue).unwrap()
    })
    .await;
    // Idle waits would take 200 x 1 s / 4 workers = 50 s.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[cfg(feature = "azure")]
mod emulator {
    use super::*;
    use queue_runtime::{QueueProvider, QueueRuntimeConfig, build_provider};
    use servicebus_emulator::{
        Emulator, EmulatorConfig, QueueConfig,
        broker::{EntityRef, SubQueue},
    };

    /// An emulator with one session queue, and the provider built for it from configuration.
    async fn bus(lock: Duration) -> (Emulator, SharedQueueProvider, QueueName) {
        let cfg = EmulatorConfig::new()
            .with_key("RootManageSharedAccessKey", "CANARY-rollover-key")
            .with_queue(
                "rollover",
                QueueConfig::new()
                    .with_requires_session(true)
                    .with_lock_duration(lock)
                    .with_max_delivery_count(10),
            );
        let emu = Emulator::start(cfg, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("emulator starts");
        let config = QueueRuntimeConfig::from_toml_str(&format!(
            "queue = \"rollover\"\n[provider]\nkind = \"service-bus\"\nconnection_string = \"{}\"\n",
            emu.connection_string(true)
        ))
        .unwrap();
        let provider = build_provider(&config.provider).await.unwrap();
        assert_eq!(provider.name(), "service-bus");
        (emu, provider, QueueName::new("rollover").unwrap())
    }

    fn left(emu: &Emulator) -> usize {
        emu.broker().count(&EntityRef {
            queue: "rollover".to_owned(),
            sub: SubQueue::Main,
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rollover_stress_on_emulator() {
        let (emu, provider, queue) = bus(Duration::from_secs(5)).await;
        for pass in 0..passes(3) {
            for (i, sc) in scenarios().into_iter().enumerate() {
                let run = format!("emulator pass {pass} scenario {i} {sc:?}");
                run_scenario(&provider, &queue, sc, &run, || left(&emu)).await;
            }
        }
    }

    /// As on memory: one-message sessions with a one-second idle timeout roll over without
    /// waiting it out (the drain check is one short receive).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drained_sessions_are_released_without_idle_wait_on_emulator() {
        let (emu, provider, queue) = bus(Duration::from_secs(5)).await;
        let sc = Scenario {
            sessions: 40,
            per_session: 1,
            idle: Duration::from_secs(1),
            work: Duration::ZERO,
            concurrent: 4,
        };
        let started = std::time::Instant::now();
        run_scenario(&provider, &queue, sc, "emulator no-idle", || left(&emu)).await;
        // Idle waits would take 40 x 1 s / 4 workers = 10 s.
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert!(provider.name() == "service-bus");
    }
}
