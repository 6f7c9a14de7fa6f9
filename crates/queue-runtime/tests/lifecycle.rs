//! How a processor starts and stops at the edges (issue 13 items 2-4): a `session_mode`
//! that cannot work on the queue is a configuration error from `run`, a plain Service Bus
//! queue holding session-id messages is consumed, and `run` returns within
//! `shutdown_timeout` + `SHUTDOWN_GRACE` with the broker up or down.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use queue_runtime::{
    CancellationToken, Message, Outcome, Processor, ProcessorSettings, QueueName, QueueSpec,
    SharedQueueProvider, handler_fn, processor::SHUTDOWN_GRACE,
};

/// A handler that never returns unless cancelled late: it ignores its cancellation token.
fn stuck_processor(
    provider: SharedQueueProvider,
    queue: QueueName,
    started: Arc<AtomicUsize>,
) -> Processor {
    Processor::new(
        provider,
        queue,
        handler_fn(move |_msg, _ctx| {
            let started = started.clone();
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Outcome::Complete)
            }
        }),
    )
    .with_settings(
        ProcessorSettings::default()
            .with_receive_wait(Duration::from_secs(30))
            .with_shutdown_timeout(Duration::from_millis(500)),
    )
}

/// `run` returns within `shutdown_timeout` + `SHUTDOWN_GRACE` though the handler ignores
/// cancellation and a receive with a 30 s wait is under way; the report counts the
/// abandoned delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_with_a_stuck_handler_on_memory() {
    let (mem, provider, queue) = common::memory("stuck", QueueSpec::default()).await;
    provider.send(&queue, Message::new("x")).await.unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        stuck_processor(provider.clone(), queue.clone(), started.clone()).run(shutdown.clone()),
    );
    assert!(
        common::wait_until(Duration::from_secs(10), || started.load(Ordering::SeqCst)
            == 1)
        .await
    );
    let asked = Instant::now();
    shutdown.cancel();
    let report = run.await.unwrap().unwrap();
    let took = asked.elapsed();
    assert!(
        took < Duration::from_millis(500) + SHUTDOWN_GRACE,
        "run took {took:?} after shutdown"
    );
    assert!(!report.drained_in_time);
    assert_eq!(report.abandoned_at_shutdown, 1, "{report:?}");
    assert_eq!(report.unsettled, 0, "{report:?}");
    // Abandoned, so at once available again.
    assert_eq!(mem.message_count(&queue).unwrap(), 1);
}

/// Shutdown while the start-up access check or the first receive is under way returns at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_of_an_idle_processor_is_prompt_on_memory() {
    let (_mem, provider, queue) = common::memory("idle", QueueSpec::default()).await;
    let started = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(stuck_processor(provider, queue, started).run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    shutdown.cancel();
    let report = run.await.unwrap().unwrap();
    assert!(
        asked.elapsed() < Duration::from_millis(300),
        "{:?}",
        asked.elapsed()
    );
    assert!(report.drained_in_time);
}

#[cfg(feature = "azure")]
mod emulator {
    use super::*;
    use queue_runtime::{QueueError, QueueProvider, QueueRuntimeConfig, build_provider};
    use queue_runtime::{SessionId, SessionMode};
    use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};
    use std::{collections::HashMap, sync::Mutex};

    /// An emulator with a session queue `prs` and a plain queue `plain`.
    async fn bus() -> (Emulator, SharedQueueProvider) {
        let queue = |sessions: bool| {
            QueueConfig::new()
                .with_requires_session(sessions)
                .with_lock_duration(Duration::from_secs(5))
        };
        let cfg = EmulatorConfig::new()
            .with_key("RootManageSharedAccessKey", "CANARY-lifecycle-key")
            .with_queue("prs", queue(true))
            .with_queue("plain", queue(false));
        let emu = Emulator::start(cfg, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("emulator starts");
        let config = QueueRuntimeConfig::from_toml_str(&format!(
            "queue = \"prs\"\n[provider]\nkind = \"service-bus\"\nconnection_string = \"{}\"\n",
            emu.connection_string(true)
        ))
        .unwrap();
        (emu, build_provider(&config.provider).await.unwrap())
    }

    fn complete_all(seen: Arc<Mutex<Vec<String>>>) -> impl queue_runtime::Handler {
        handler_fn(move |msg, _ctx| {
            let seen = seen.clone();
            async move {
                let body = String::from_utf8(msg.body().to_vec()).unwrap();
                // Small, uneven work so concurrent handling of one key would reorder it.
                let n: u64 = body.bytes().map(u64::from).sum();
                tokio::time::sleep(Duration::from_millis(n % 7)).await;
                seen.lock().unwrap().push(body);
                Ok(Outcome::Complete)
            }
        })
    }

    async fn expect_mode_error(provider: SharedQueueProvider, queue: &str, mode: SessionMode) {
        let processor = Processor::new(
            provider,
            QueueName::new(queue).unwrap(),
            complete_all(Arc::default()),
        )
        .with_settings(ProcessorSettings::default().with_session_mode(mode));
        let started = Instant::now();
        // Never cancelled: the processor must stop by itself.
        let res = tokio::time::timeout(
            Duration::from_secs(15),
            processor.run(CancellationToken::new()),
        )
        .await
        .expect("run returns by itself");
        let err = res.expect_err("a session mode that cannot work is an error");
        assert!(
            matches!(&err, QueueError::Config { field, .. } if field == "processor.session_mode"),
            "{err:?}"
        );
        // One receive attempt (an immediate refusal), not a receive wait or a retry loop.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn required_on_a_plain_queue_is_a_config_error() {
        let (_emu, provider) = bus().await;
        expect_mode_error(provider, "plain", SessionMode::Required).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn none_on_a_session_queue_is_a_config_error() {
        let (_emu, provider) = bus().await;
        expect_mode_error(provider, "prs", SessionMode::None).await;
    }

    /// Service Bus accepts session-id messages on a queue without sessions. They are all
    /// handled, in `auto` and `none` mode, and one processor keeps their per-key order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_queue_with_session_ids_is_consumed_in_key_order() {
        let (_emu, provider) = bus().await;
        let queue = QueueName::new("plain").unwrap();
        for mode in [SessionMode::Auto, SessionMode::None] {
            for n in 0..10 {
                for key in ["a", "b", "c"] {
                    let msg = Message::new(format!("{key}:{n}"))
                        .with_session_id(SessionId::new(key).unwrap());
                    provider.send(&queue, msg).await.unwrap();
                }
            }
            let seen: Arc<Mutex<Vec<String>>> = Arc::default();
            let processor =
                Processor::new(provider.clone(), queue.clone(), complete_all(seen.clone()))
                    .with_settings(
                        ProcessorSettings::default()
                            .with_session_mode(mode)
                            .with_max_concurrent_messages(8)
                            .with_receive_wait(Duration::from_millis(200)),
                    );
            let done = seen.clone();
            let report = common::run_until(processor, Duration::from_secs(20), move || {
                done.lock().unwrap().len() == 30
            })
            .await;
            assert_eq!(report.completed, 30, "{mode:?}: {report:?}");
            let mut per_key: HashMap<String, Vec<u32>> = HashMap::new();
            for body in seen.lock().unwrap().iter() {
                let (key, n) = body.split_once(':').unwrap();
                per_key
                    .entry(key.to_owned())
                    .or_default()
                    .push(n.parse().unwrap());
            }
            for key in ["a", "b", "c"] {
                assert_eq!(
                    per_key[key],
                    (0..10).collect::<Vec<_>>(),
                    "{mode:?} key {key}"
                );
            }
        }
    }

    /// With the broker gone (emulator stopped) and a handler that ignores cancellation,
    /// `run` still returns within `shutdown_timeout` + `SHUTDOWN_GRACE`, and the report
    /// says the delivery was left unsettled or abandoned.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_is_bounded_with_the_broker_down() {
        let (emu, provider) = bus().await;
        let queue = QueueName::new("plain").unwrap();
        provider.send(&queue, Message::new("x")).await.unwrap();
        let started = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let processor = stuck_processor(provider.clone(), queue, started.clone());
        let handle = processor.handle();
        let run = tokio::spawn(processor.run(shutdown.clone()));
        let running = || started.load(Ordering::SeqCst) == 1;
        assert!(common::wait_until(Duration::from_secs(10), running).await);
        assert!(handle.is_ready());
        drop(emu);
        // The handle shows the outage (a readiness probe turns red).
        let degraded = || {
            matches!(
                handle.state(),
                queue_runtime::ProcessorState::Degraded { .. }
            )
        };
        assert!(
            common::wait_until(Duration::from_secs(20), degraded).await,
            "{:?}",
            handle.state()
        );
        let asked = Instant::now();
        shutdown.cancel();
        let report = run.await.unwrap().unwrap();
        let took = asked.elapsed();
        assert!(
            took < Duration::from_millis(500) + SHUTDOWN_GRACE + Duration::from_millis(300),
            "run took {took:?} after shutdown"
        );
        assert_eq!(report.received, 1, "{report:?}");
        assert_eq!(report.completed, 0, "{report:?}");
        assert_eq!(
            report.unsettled + report.abandoned_at_shutdown + report.settle_failures,
            1,
            "{report:?}"
        );
        assert!(provider.name() == "service-bus");
    }
}
