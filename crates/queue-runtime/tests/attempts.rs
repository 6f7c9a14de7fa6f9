//! Attempt budgets that only the message's own handler runs spend (issue 13 item 1): one key
//! holding three messages that always fail, then a good one. Short retries run in process on
//! the same delivery, so the failing messages get exactly `retry.max_attempts` handler runs
//! and the good one, behind them, is handled on its first delivery instead of being
//! dead-lettered by the broker's receive limit.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use queue_runtime::{
    HandlerError, Outcome, Processor, ProcessorSettings, QueueName, QueueProvider, QueueSpec,
    ReceiveOptions, RetrySettings, SessionMode, SharedQueueProvider, ShutdownReport, handler_fn,
};

const MAX_ATTEMPTS: u32 = 5;

/// Handler runs per body: (attempt, delivery count) of each.
type Runs = Arc<Mutex<HashMap<String, Vec<(u32, u32)>>>>;

fn processor(provider: SharedQueueProvider, queue: QueueName, runs: Runs) -> Processor {
    Processor::new(
        provider,
        queue,
        handler_fn(move |msg, ctx| {
            let runs = runs.clone();
            async move {
                let body = String::from_utf8(msg.body().to_vec()).unwrap();
                runs.lock()
                    .unwrap()
                    .entry(body.clone())
                    .or_default()
                    .push((ctx.attempt(), ctx.delivery_count()));
                if body.starts_with("bad") {
                    return Err(HandlerError::transient("downstream says 502"));
                }
                Ok(Outcome::Complete)
            }
        }),
    )
    .with_settings(
        ProcessorSettings::default()
            .with_session_mode(SessionMode::Auto)
            .with_receive_wait(Duration::from_millis(200))
            .with_retry(
                RetrySettings::default()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_delay(Duration::from_millis(10))
                    .with_max_delay(Duration::from_millis(40)),
            ),
    )
}

fn bodies() -> Vec<String> {
    vec![
        "bad-1".into(),
        "bad-2".into(),
        "bad-3".into(),
        "good".into(),
    ]
}

fn check(runs: &Runs, report: &ShutdownReport) {
    let runs = runs.lock().unwrap();
    for bad in ["bad-1", "bad-2", "bad-3"] {
        let attempts: Vec<u32> = runs[bad].iter().map(|r| r.0).collect();
        assert_eq!(
            attempts,
            (1..=MAX_ATTEMPTS).collect::<Vec<_>>(),
            "{bad}: {runs:?}"
        );
    }
    assert_eq!(
        runs["good"],
        vec![(1, 1)],
        "the good message's first delivery: {runs:?}"
    );
    assert_eq!(report.completed, 1, "{report:?}");
    assert_eq!(report.dead_lettered, 3, "{report:?}");
    assert_eq!(report.abandoned_for_order, 0, "{report:?}");
}

/// SQS FIFO semantics (the memory provider's `sqs` profile counts receives and redrives at
/// 10, like a redrive policy with `maxReceiveCount` 10).
#[tokio::test(start_paused = true)]
async fn failing_messages_do_not_spend_the_budget_of_the_rest_of_their_group() {
    let (mem, provider, queue) = common::sqs_fifo("events.fifo", Duration::from_secs(30), 10).await;
    common::send_to_session(&provider, &queue, "pr-1", bodies()).await;
    let runs = Runs::default();
    let report = common::run_until_drained(
        processor(provider.clone(), queue.clone(), runs.clone()),
        &mem,
        &queue,
        Duration::from_secs(120),
    )
    .await;
    check(&runs, &report);
    let dead: Vec<String> = provider
        .receive_dead_letters(&queue, ReceiveOptions::new(10, Duration::ZERO))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.dead_letter.expect("a reason").reason)
        .collect();
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(dead.iter().all(|r| r == "RetriesExhausted"), "{dead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_messages_do_not_spend_the_budget_of_the_rest_of_their_session_on_memory() {
    let (mem, provider, queue) = common::memory(
        "attempts",
        QueueSpec::default()
            .with_sessions(true)
            .with_max_delivery_count(3),
    )
    .await;
    common::send_to_session(&provider, &queue, "pr-1", bodies()).await;
    let runs = Runs::default();
    let report = common::run_until(
        processor(provider, queue.clone(), runs.clone()),
        Duration::from_secs(30),
        || mem.message_count(&queue).unwrap() == 0,
    )
    .await;
    // A broker limit below the attempt budget no longer cuts retries short: the deliveries
    // are not released between attempts.
    check(&runs, &report);
    assert_eq!(mem.dead_letter_count(&queue).unwrap(), 3);
}

#[cfg(feature = "azure")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_messages_do_not_spend_the_budget_of_the_rest_of_their_session_on_emulator() {
    use queue_runtime::build_provider;
    use servicebus_emulator::{
        QueueConfig,
        broker::{EntityRef, SubQueue},
    };
    let (emu, config) = common::emulator_with_queue(
        "attempts",
        "CANARY-attempts-key",
        QueueConfig::new()
            .with_requires_session(true)
            .with_lock_duration(Duration::from_secs(5))
            .with_max_delivery_count(3),
    )
    .await;
    let provider = build_provider(&config.provider).await.unwrap();
    let queue = QueueName::new("attempts").unwrap();
    common::send_to_session(&provider, &queue, "pr-1", bodies()).await;
    let count = |sub| {
        emu.broker().count(&EntityRef {
            queue: "attempts".to_owned(),
            sub,
        })
    };
    let runs = Runs::default();
    let report = common::run_until(
        processor(provider, queue, runs.clone()).with_settings(
            ProcessorSettings::default()
                .with_session_mode(SessionMode::Required)
                .with_receive_wait(Duration::from_millis(200))
                .with_retry(
                    RetrySettings::default()
                        .with_max_attempts(MAX_ATTEMPTS)
                        .with_initial_delay(Duration::from_millis(10))
                        .with_max_delay(Duration::from_millis(40)),
                ),
        ),
        Duration::from_secs(30),
        || count(SubQueue::Main) == 0,
    )
    .await;
    check(&runs, &report);
    assert_eq!(count(SubQueue::DeadLetter), 3);
}
