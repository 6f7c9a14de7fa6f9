//! The processor on Azure Service Bus: the provider built by `build_provider` from a
//! `service-bus` configuration, against the in-process Service Bus emulator, in real time.
//!
//! These are the runtime guarantees the memory-provider tests check with a virtual clock
//! (ordering per session, retries that keep order, quick session roll-over, poison to the DLQ,
//! lock renewal, draining shutdown, fail-fast start-up), checked here over AMQP. Durations are
//! short, but the assertions leave wide margins: the tests share a small, loaded machine.
#![cfg(feature = "azure")]

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use queue_runtime::{
    CancellationToken, HandlerError, Message, Outcome, Processor, ProcessorSettings, QueueError,
    QueueName, QueueProvider, QueueRuntimeConfig, ReceiveOptions, ReceivedMessage, RetrySettings,
    SessionId, SessionMode, SharedQueueProvider, build_provider, handler_fn,
};
use servicebus_emulator::{
    Emulator, EmulatorConfig, QueueConfig,
    broker::{EntityRef, SubQueue},
};

const KEY_NAME: &str = "RootManageSharedAccessKey";
const KEY: &str = "CANARY-runtime-emulator-key";
const SESSIONS: &str = "prs";
const PLAIN: &str = "plain";

/// An emulator holding a session queue and a plain queue, and the provider that
/// `build_provider` makes from a `service-bus` configuration pointing at it.
struct Bus {
    emu: Emulator,
    provider: SharedQueueProvider,
    sessions: QueueName,
    plain: QueueName,
}

impl Bus {
    async fn start(lock_duration: Duration, max_delivery_count: u32) -> Self {
        let queue = |sessions: bool| {
            QueueConfig::new()
                .with_requires_session(sessions)
                .with_lock_duration(lock_duration)
                .with_max_delivery_count(max_delivery_count)
        };
        let cfg = EmulatorConfig::new()
            .with_key(KEY_NAME, KEY)
            .with_queue(SESSIONS, queue(true))
            .with_queue(PLAIN, queue(false));
        let emu = Emulator::start(cfg, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("emulator starts");
        // The same path an application takes: a configuration file, then `build_provider`.
        let config = QueueRuntimeConfig::from_toml_str(&format!(
            "queue = \"{SESSIONS}\"\n[provider]\nkind = \"service-bus\"\nconnection_string = \"{}\"\n",
            emu.connection_string(true)
        ))
        .unwrap();
        let provider = build_provider(&config.provider).await.unwrap();
        assert_eq!(provider.name(), "service-bus");
        assert!(!format!("{config:?}{provider:?}").contains(KEY));
        Self {
            emu,
            provider,
            sessions: QueueName::new(SESSIONS).unwrap(),
            plain: QueueName::new(PLAIN).unwrap(),
        }
    }

    /// Both queues, each with the session mode it needs.
    fn both(&self) -> [(QueueName, SessionMode); 2] {
        [
            (self.sessions.clone(), SessionMode::Required),
            (self.plain.clone(), SessionMode::None),
        ]
    }

    fn count(&self, queue: &QueueName, sub: SubQueue) -> usize {
        self.emu.broker().count(&EntityRef {
            queue: queue.as_str().to_owned(),
            sub,
        })
    }

    async fn send_sessions(&self, sessions: usize, per_session: usize) {
        // Interleaved: message n of every session before message n+1 of any.
        for n in 0..per_session {
            for s in 0..sessions {
                let msg = Message::new(format!("{s}:{n}"))
                    .with_session_id(SessionId::new(format!("octo/repo#{s}")).unwrap());
                self.provider.send(&self.sessions, msg).await.unwrap();
            }
        }
    }

    async fn dead_letters(&self, queue: &QueueName) -> Vec<ReceivedMessage> {
        let mut all = Vec::new();
        loop {
            let batch = self
                .provider
                .receive_dead_letters(queue, ReceiveOptions::new(50, Duration::from_millis(500)))
                .await
                .unwrap();
            if batch.is_empty() {
                return all;
            }
            for m in &batch {
                self.provider.complete(&m.receipt).await.unwrap();
            }
            all.extend(batch);
        }
    }
}

fn settings() -> ProcessorSettings {
    ProcessorSettings::default()
        .with_receive_wait(Duration::from_secs(1))
        .with_session_idle_timeout(Duration::from_millis(300))
        .with_lock_renewal_interval(Duration::from_millis(500))
        .with_shutdown_timeout(Duration::from_secs(20))
        .with_retry(
            RetrySettings::default()
                .with_max_attempts(3)
                .with_initial_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_millis(400)),
        )
}

/// Settings for the session queue: a Service Bus queue is either session-enabled or not.
fn session_settings() -> ProcessorSettings {
    settings().with_session_mode(SessionMode::Required)
}

/// Polls `cond` every 50 ms until it holds or `limit` passes.
async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

fn parse(msg: &ReceivedMessage) -> (usize, usize) {
    let body = std::str::from_utf8(msg.body()).unwrap();
    let (s, n) = body.split_once(':').unwrap();
    (s.parse().unwrap(), n.parse().unwrap())
}

type Seen = Arc<Mutex<HashMap<usize, Vec<usize>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_sessions_are_ordered_per_session_and_concurrent_across_sessions() {
    let bus = Bus::start(Duration::from_secs(30), 10).await;
    let (sessions, per_session) = (6, 4);
    bus.send_sessions(sessions, per_session).await;

    let seen: Seen = Arc::default();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (s, r, p) = (seen.clone(), running.clone(), peak.clone());
    let handler = handler_fn(move |msg: ReceivedMessage, ctx| {
        let (s, r, p) = (s.clone(), r.clone(), p.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            let (session, n) = parse(&msg);
            assert_eq!(
                ctx.session_id().unwrap().as_str(),
                format!("octo/repo#{session}")
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
            s.lock().unwrap().entry(session).or_default().push(n);
            r.fetch_sub(1, Ordering::SeqCst);
            Ok(Outcome::Complete)
        }
    });
    let run = common::start(
        Processor::new(bus.provider.clone(), bus.sessions.clone(), handler)
            .with_settings(session_settings().with_max_concurrent_sessions(3)),
    );
    let total = sessions * per_session;
    assert!(
        wait_until(Duration::from_secs(60), || {
            seen.lock().unwrap().values().map(Vec::len).sum::<usize>() == total
        })
        .await,
        "not all messages were handled: {:?}",
        seen.lock().unwrap()
    );
    let report = run.stop().await;
    assert_eq!(report.completed, total as u64, "{report:?}");
    assert_eq!(report.dead_lettered + report.retried, 0, "{report:?}");
    assert_eq!(bus.count(&bus.sessions, SubQueue::Main), 0);
    let expected: Vec<usize> = (0..per_session).collect();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), sessions);
    for (session, order) in seen.iter() {
        assert_eq!(order, &expected, "session {session} out of order");
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&peak),
        "sessions must run concurrently, up to max_concurrent_sessions = 3; peak {peak}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_message_is_not_overtaken_by_the_next_one_of_its_session() {
    let bus = Bus::start(Duration::from_secs(30), 10).await;
    let (sessions, per_session) = (3, 4);
    bus.send_sessions(sessions, per_session).await;

    // Message 1 of every session fails twice before it succeeds.
    let calls: Seen = Arc::default();
    let failures: Arc<Mutex<HashMap<usize, u32>>> = Arc::default();
    let (c, f) = (calls.clone(), failures.clone());
    let handler = handler_fn(move |msg: ReceivedMessage, ctx| {
        let (c, f) = (c.clone(), f.clone());
        async move {
            let (session, n) = parse(&msg);
            c.lock().unwrap().entry(session).or_default().push(n);
            if n == 1 {
                let mut f = f.lock().unwrap();
                let failed = f.entry(session).or_default();
                if *failed < 2 {
                    *failed += 1;
                    assert_eq!(ctx.attempt(), *failed, "attempts count deliveries");
                    return Ok(Outcome::retry("flaky downstream"));
                }
            }
            Ok(Outcome::Complete)
        }
    });
    let run = common::start(
        Processor::new(bus.provider.clone(), bus.sessions.clone(), handler)
            .with_settings(session_settings().with_max_concurrent_sessions(3)),
    );
    let total = sessions * (per_session + 2);
    assert!(
        wait_until(Duration::from_secs(60), || {
            calls.lock().unwrap().values().map(Vec::len).sum::<usize>() == total
        })
        .await,
        "calls: {:?}",
        calls.lock().unwrap()
    );
    let report = run.stop().await;
    assert_eq!(
        report.completed,
        (sessions * per_session) as u64,
        "{report:?}"
    );
    assert_eq!(report.retried, (sessions * 2) as u64, "{report:?}");
    assert_eq!(report.dead_lettered, 0, "{report:?}");
    assert_eq!(bus.count(&bus.sessions, SubQueue::Main), 0);
    for (session, order) in calls.lock().unwrap().iter() {
        assert_eq!(order, &vec![0, 1, 1, 1, 2, 3], "session {session}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_roll_over_without_waiting_out_the_accept_wait() {
    let bus = Bus::start(Duration::from_secs(30), 10).await;
    let (sessions, per_session) = (10, 3);
    bus.send_sessions(sessions, per_session).await;
    // One worker, so sessions are taken strictly one after another, and a long accept wait:
    // releasing a session only after a receive of `receive_wait` came back empty would cost
    // at least 10 x 5 s.
    let accept_wait = Duration::from_secs(5);
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let handler = handler_fn(move |msg: ReceivedMessage, _ctx| {
        let s = s.clone();
        async move {
            let (session, n) = parse(&msg);
            s.lock().unwrap().entry(session).or_default().push(n);
            Ok(Outcome::Complete)
        }
    });
    let started = Instant::now();
    let run = common::start(
        Processor::new(bus.provider.clone(), bus.sessions.clone(), handler).with_settings(
            session_settings()
                .with_max_concurrent_sessions(1)
                .with_receive_wait(accept_wait),
        ),
    );
    let total = sessions * per_session;
    assert!(
        wait_until(Duration::from_secs(60), || {
            seen.lock().unwrap().values().map(Vec::len).sum::<usize>() == total
        })
        .await
    );
    let took = started.elapsed();
    let report = run.stop().await;
    assert_eq!(report.completed, total as u64, "{report:?}");
    assert_eq!(report.sessions, sessions as u64, "{report:?}");
    for (session, order) in seen.lock().unwrap().iter() {
        assert_eq!(order, &vec![0, 1, 2], "session {session}");
    }
    // 10 x (3 messages + a 300 ms idle wait) is a few seconds; half of 10 x the accept wait
    // is a wide margin for a loaded machine.
    assert!(
        took < accept_wait * sessions as u32 / 2,
        "10 sessions took {took:?}"
    );
}

/// Completes, fails or rejects a message by its body, recording the calls in order.
fn poison_handler(order: &Arc<Mutex<Vec<String>>>) -> impl queue_runtime::Handler {
    let o = order.clone();
    handler_fn(move |msg: ReceivedMessage, _ctx| {
        let o = o.clone();
        async move {
            let body = std::str::from_utf8(msg.body()).unwrap().to_owned();
            o.lock().unwrap().push(body.clone());
            match body.as_str() {
                "always-fails" => Err(HandlerError::transient("downstream keeps failing")),
                "rejected" => Ok(Outcome::dead_letter(
                    "UnknownEvent",
                    "the bot does not handle this event",
                )),
                "plain-permanent" => Err(HandlerError::permanent("malformed request")),
                _ => Ok(Outcome::Complete),
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dead_letter_queue_with_their_reason() {
    let bus = Bus::start(Duration::from_secs(30), 10).await;
    let sid = SessionId::new("octo/repo#7").unwrap();
    for body in ["ok-1", "always-fails", "rejected", "ok-2"] {
        bus.provider
            .send(
                &bus.sessions,
                Message::new(body).with_session_id(sid.clone()),
            )
            .await
            .unwrap();
    }
    for body in ["plain-ok", "plain-permanent"] {
        bus.provider
            .send(&bus.plain, Message::new(body))
            .await
            .unwrap();
    }
    let order: Arc<Mutex<Vec<String>>> = Arc::default();
    for (queue, mode) in bus.both() {
        let run = common::start(
            Processor::new(bus.provider.clone(), queue.clone(), poison_handler(&order))
                .with_settings(settings().with_session_mode(mode)),
        );
        let done = wait_until(Duration::from_secs(60), || {
            bus.count(&queue, SubQueue::Main) == 0
        })
        .await;
        let report = run.stop().await;
        assert!(done, "{queue} not drained: {report:?}");
    }
    let mut order = order.lock().unwrap().clone();
    // Session-less messages run in parallel: their relative order is not guaranteed.
    let plain = order.split_off(6);
    assert_eq!(
        order,
        [
            "ok-1",
            "always-fails",
            "always-fails",
            "always-fails",
            "rejected",
            "ok-2",
        ]
    );
    assert_eq!(plain.len(), 2, "{plain:?}");
    assert!(
        plain.contains(&"plain-ok".to_owned()) && plain.contains(&"plain-permanent".to_owned())
    );

    let dlq = bus.dead_letters(&bus.sessions).await;
    let mut reasons: Vec<(String, String, String)> = dlq
        .iter()
        .map(|m| {
            let why = m.dead_letter.clone().expect("dead-letter reason");
            (
                std::str::from_utf8(m.body()).unwrap().to_owned(),
                why.reason,
                why.description,
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[0].0, "always-fails");
    assert_eq!(reasons[0].1, "RetriesExhausted");
    assert!(
        reasons[0].2.contains("downstream keeps failing"),
        "{reasons:?}"
    );
    assert_eq!(
        (
            reasons[1].0.as_str(),
            reasons[1].1.as_str(),
            reasons[1].2.as_str()
        ),
        (
            "rejected",
            "UnknownEvent",
            "the bot does not handle this event"
        )
    );
    for m in &dlq {
        assert_eq!(m.session_id(), Some(&sid));
    }

    let dlq = bus.dead_letters(&bus.plain).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].body().as_ref(), b"plain-permanent");
    let why = dlq[0].dead_letter.clone().unwrap();
    assert_eq!(why.reason, "PermanentFailure");
    assert!(why.description.contains("malformed request"), "{why:?}");
    assert_eq!(bus.count(&bus.sessions, SubQueue::DeadLetter), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_renewal_keeps_a_slow_handler_message() {
    // Locks of 3 s; the handler takes 7 s.
    let bus = Bus::start(Duration::from_secs(3), 10).await;
    bus.provider
        .send(
            &bus.sessions,
            Message::new("slow-session").with_session_id(SessionId::new("s").unwrap()),
        )
        .await
        .unwrap();
    bus.provider
        .send(&bus.plain, Message::new("slow-plain"))
        .await
        .unwrap();
    for (queue, mode) in bus.both() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let handler = handler_fn(move |_msg, ctx| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(7)).await;
                assert!(
                    !ctx.cancellation().is_cancelled(),
                    "the lock must not be lost"
                );
                Ok(Outcome::Complete)
            }
        });
        let run = common::start(
            Processor::new(bus.provider.clone(), queue.clone(), handler).with_settings(
                settings()
                    .with_session_mode(mode)
                    .with_max_lock_renewal(Duration::from_secs(60)),
            ),
        );
        assert!(
            wait_until(Duration::from_secs(60), || bus
                .count(&queue, SubQueue::Main)
                == 0)
            .await,
            "{queue}: the message was not completed"
        );
        let report = run.stop().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{queue} was redelivered");
        assert_eq!(report.completed, 1, "{queue}: {report:?}");
        assert_eq!(report.lock_lost, 0, "{queue}: {report:?}");
        assert_eq!(report.retried, 0, "{queue}: {report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_handlers_and_reports() {
    let bus = Bus::start(Duration::from_secs(30), 10).await;
    bus.send_sessions(2, 3).await;
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let (s, f) = (started.clone(), finished.clone());
    let handler = handler_fn(move |_msg, _ctx| {
        let (s, f) = (s.clone(), f.clone());
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            f.fetch_add(1, Ordering::SeqCst);
            Ok(Outcome::Complete)
        }
    });
    let run = common::start(
        Processor::new(bus.provider.clone(), bus.sessions.clone(), handler)
            .with_settings(session_settings().with_max_concurrent_sessions(2)),
    );
    // Shut down while the first handlers are running.
    assert!(
        wait_until(Duration::from_secs(30), || started.load(Ordering::SeqCst)
            >= 1)
        .await
    );
    let report = tokio::time::timeout(Duration::from_secs(30), run.stop())
        .await
        .expect("shutdown returns");
    let (started, finished) = (
        started.load(Ordering::SeqCst),
        finished.load(Ordering::SeqCst),
    );
    assert!(report.drained_in_time, "{report:?}");
    assert_eq!(started, finished, "in-flight handlers finish");
    assert_eq!(report.completed, finished as u64, "{report:?}");
    assert!(
        started < 6,
        "nothing new is taken after shutdown: {report:?}"
    );
    // Nothing is lost: the rest is still in the queue and is consumed by the next run.
    let remaining = bus.count(&bus.sessions, SubQueue::Main);
    assert_eq!(remaining, 6 - finished, "{report:?}");

    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let handler = handler_fn(move |_msg, _ctx| {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            Ok(Outcome::Complete)
        }
    });
    let run = common::start(
        Processor::new(bus.provider.clone(), bus.sessions.clone(), handler)
            .with_settings(session_settings().with_max_concurrent_sessions(2)),
    );
    assert!(
        wait_until(Duration::from_secs(60), || {
            bus.count(&bus.sessions, SubQueue::Main) == 0
        })
        .await
    );
    let second = run.stop().await;
    assert_eq!(handled.load(Ordering::SeqCst), remaining, "{second:?}");
    assert_eq!(second.completed, remaining as u64, "{second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_fails_fast_on_a_missing_queue() {
    let bus = Bus::start(Duration::from_secs(30), 10).await;
    let processor = Processor::new(
        bus.provider.clone(),
        QueueName::new("no-such-queue").unwrap(),
        handler_fn(|_m, _c| async { Ok(Outcome::Complete) }),
    )
    .with_settings(settings());
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        processor.run(CancellationToken::new()),
    )
    .await
    .expect("run returns instead of spinning")
    .unwrap_err();
    assert!(matches!(err, QueueError::QueueNotFound { .. }), "{err:?}");
    assert!(!format!("{err:?}{err}").contains(KEY));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_session_mode_keeps_the_guarantees_on_both_kinds_of_queue() {
    let bus = Bus::start(Duration::from_secs(3), 10).await;
    let (sessions, per_session) = (3, 3);
    bus.send_sessions(sessions, per_session).await;
    for i in 0..3 {
        bus.provider
            .send(&bus.plain, Message::new(format!("plain-{i}")))
            .await
            .unwrap();
    }
    for queue in [bus.sessions.clone(), bus.plain.clone()] {
        let seen: Seen = Arc::default();
        let plain_calls = Arc::new(AtomicUsize::new(0));
        let (s, p) = (seen.clone(), plain_calls.clone());
        let handler = handler_fn(move |msg: ReceivedMessage, _ctx| {
            let (s, p) = (s.clone(), p.clone());
            async move {
                if msg.session_id().is_some() {
                    let (session, n) = parse(&msg);
                    s.lock().unwrap().entry(session).or_default().push(n);
                } else {
                    p.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Outcome::Complete)
            }
        });
        let run = common::start(
            Processor::new(bus.provider.clone(), queue.clone(), handler)
                .with_settings(settings().with_max_concurrent_sessions(2)),
        );
        assert!(
            wait_until(Duration::from_secs(60), || bus
                .count(&queue, SubQueue::Main)
                == 0)
            .await,
            "{queue} not drained"
        );
        let report = run.stop().await;
        if queue == bus.sessions {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), sessions, "{seen:?}");
            for (session, order) in seen.iter() {
                assert_eq!(order, &vec![0, 1, 2], "session {session}: {report:?}");
            }
            assert_eq!(
                report.completed,
                (sessions * per_session) as u64,
                "{report:?}"
            );
        } else {
            assert_eq!(plain_calls.load(Ordering::SeqCst), 3);
            assert_eq!(report.completed, 3, "{report:?}");
        }
        assert_eq!(report.dead_lettered, 0, "{report:?}");
    }
}
