//! Property: with many keys and random failures, each key's messages reach the handler in
//! send order (a retry is never overtaken), and every message is completed or dead-lettered
//! exactly once. Runs on the memory provider with session locks and with its `sqs` profile (SQS
//! FIFO message groups), with tokio's paused clock.

mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use proptest::prelude::*;
use queue_memory::InMemoryProvider;
use queue_runtime::{
    HandlerError, Outcome, Processor, ProcessorSettings, QueueName, QueueProvider, QueueSpec,
    ReceiveOptions, ReceivedMessage, RetrySettings, SharedQueueProvider, handler_fn,
};

/// How a message behaves: fail this many deliveries (by error, panic or retry outcome),
/// then complete; or dead-letter itself.
#[derive(Clone, Copy, Debug)]
enum Plan {
    FailThenComplete { failures: u32, mode: u8 },
    DeadLetter,
}

const MAX_ATTEMPTS: u32 = 3;

fn plan() -> impl Strategy<Value = Plan> {
    prop_oneof![
        6 => Just(Plan::FailThenComplete { failures: 0, mode: 0 }),
        3 => (1u32..=3, 0u8..3).prop_map(|(failures, mode)| Plan::FailThenComplete { failures, mode }),
        1 => Just(Plan::DeadLetter),
    ]
}

fn workload() -> impl Strategy<Value = Vec<Vec<Plan>>> {
    prop::collection::vec(prop::collection::vec(plan(), 1..6), 1..8)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    Completed,
    DeadLettered,
}

fn expected(plan: Plan) -> (Expect, u32) {
    match plan {
        Plan::DeadLetter => (Expect::DeadLettered, 1),
        Plan::FailThenComplete { failures, .. } if failures >= MAX_ATTEMPTS => {
            (Expect::DeadLettered, MAX_ATTEMPTS)
        }
        Plan::FailThenComplete { failures, .. } => (Expect::Completed, failures + 1),
    }
}

fn settings() -> ProcessorSettings {
    ProcessorSettings::default()
        .with_max_concurrent_sessions(3)
        .with_receive_wait(Duration::from_millis(500))
        .with_session_idle_timeout(Duration::from_millis(200))
        .with_lock_renewal_interval(Duration::from_secs(2))
        .with_retry(
            RetrySettings::default()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(1)),
        )
}

type Calls = Arc<Mutex<Vec<(usize, usize, u32)>>>;

fn handler(plans: Arc<Vec<Vec<Plan>>>, calls: Calls) -> impl queue_runtime::Handler {
    handler_fn(move |msg: ReceivedMessage, ctx| {
        let plans = plans.clone();
        let calls = calls.clone();
        async move {
            let body = String::from_utf8(msg.body().to_vec()).unwrap();
            let (k, n) = body.split_once(':').unwrap();
            let (k, n): (usize, usize) = (k.parse().unwrap(), n.parse().unwrap());
            calls.lock().unwrap().push((k, n, ctx.attempt()));
            // Let other keys interleave.
            tokio::time::sleep(Duration::from_millis(10 * (1 + (k as u64 % 3)))).await;
            match plans[k][n] {
                Plan::DeadLetter => Ok(Outcome::dead_letter("Poison", "planned")),
                Plan::FailThenComplete { failures, mode } if ctx.attempt() <= failures => {
                    match mode {
                        0 => Err(HandlerError::transient("planned failure")),
                        1 => panic!("planned panic"),
                        _ => Ok(Outcome::retry("planned retry")),
                    }
                }
                Plan::FailThenComplete { .. } => Ok(Outcome::Complete),
            }
        }
    })
}

fn check(
    plans: &[Vec<Plan>],
    calls: &[(usize, usize, u32)],
    report: &queue_runtime::ShutdownReport,
    dead: &BTreeMap<String, String>,
) {
    let mut want_completed = 0;
    let mut want_dead = 0;
    for (k, key_plans) in plans.iter().enumerate() {
        let per_key: Vec<(usize, u32)> = calls
            .iter()
            .filter(|c| c.0 == k)
            .map(|c| (c.1, c.2))
            .collect();
        // In send order: sequence numbers never go back, and each attempt number grows by one.
        let mut expected_calls = Vec::new();
        for (n, p) in key_plans.iter().enumerate() {
            let (outcome, deliveries) = expected(*p);
            for d in 1..=deliveries {
                expected_calls.push((n, d));
            }
            match outcome {
                Expect::Completed => want_completed += 1,
                Expect::DeadLettered => {
                    want_dead += 1;
                    assert!(
                        dead.contains_key(&format!("{k}:{n}")),
                        "{k}:{n} not dead-lettered"
                    );
                }
            }
        }
        assert_eq!(per_key, expected_calls, "key {k}");
    }
    assert_eq!(report.completed, want_completed, "{report:?}");
    assert_eq!(report.dead_lettered, want_dead, "{report:?}");
    assert_eq!(dead.len() as u64, want_dead);
}

/// Sends each key's messages, in order, to session `key-{k}` with bodies `{k}:{n}`.
async fn send_plans(provider: &SharedQueueProvider, queue: &QueueName, plans: &[Vec<Plan>]) {
    for (k, key_plans) in plans.iter().enumerate() {
        send_to_session(
            provider,
            queue,
            &format!("key-{k}"),
            (0..key_plans.len()).map(|n| format!("{k}:{n}")),
        )
        .await;
    }
}

/// The memory queue's dead letters: body -> reason.
async fn memory_dead_letters(
    provider: &SharedQueueProvider,
    queue: &QueueName,
) -> BTreeMap<String, String> {
    provider
        .receive_dead_letters(queue, ReceiveOptions::new(1000, Duration::from_millis(10)))
        .await
        .unwrap()
        .into_iter()
        .map(|m| {
            (
                String::from_utf8(m.body().to_vec()).unwrap(),
                m.dead_letter.unwrap().reason,
            )
        })
        .collect()
}

/// Sends `plans` to the memory queue `name` (session locks), runs a processor until the
/// queue is drained (within `limit`) and checks order and exactly-once settlement.
async fn check_on_memory(
    name: &str,
    plans: Vec<Vec<Plan>>,
    settings: ProcessorSettings,
    limit: Duration,
) {
    let queue = memory(name, QueueSpec::default().with_max_delivery_count(50)).await;
    check_on(queue, plans, settings, limit).await;
}

/// The same on an SQS FIFO queue `name` (the memory provider's `sqs` profile: groups through
/// the plain receive, receives counted towards a redrive at 50).
async fn check_on_grouped(
    name: &str,
    plans: Vec<Vec<Plan>>,
    settings: ProcessorSettings,
    limit: Duration,
) {
    let queue = sqs_fifo(name, Duration::from_secs(30), 50).await;
    check_on(queue, plans, settings, limit).await;
}

async fn check_on(
    (mem, provider, queue): (InMemoryProvider, SharedQueueProvider, QueueName),
    plans: Vec<Vec<Plan>>,
    settings: ProcessorSettings,
    limit: Duration,
) {
    send_plans(&provider, &queue, &plans).await;
    let plans = Arc::new(plans);
    let calls: Calls = Arc::default();
    let report = run_until_drained(
        Processor::new(
            provider.clone(),
            queue.clone(),
            handler(plans.clone(), calls.clone()),
        )
        .with_settings(settings),
        &mem,
        &queue,
        limit,
    )
    .await;
    let dead = memory_dead_letters(&provider, &queue).await;
    check(&plans, &calls.lock().unwrap(), &report, &dead);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn per_key_order_and_exactly_once_on_sessions(plans in workload()) {
        paused_runtime().block_on(check_on_memory("prop", plans, settings(), Duration::from_secs(600)));
    }

    #[test]
    fn per_key_order_and_exactly_once_on_groups(plans in workload()) {
        paused_runtime().block_on(check_on_grouped("prop.fifo", plans, settings(), Duration::from_secs(600)));
    }
}

/// The same checks on a multi-threaded runtime in real time (short delays), so handlers,
/// renewers and receive loops really run in parallel.
async fn multi_threaded(grouped: bool) {
    let plans: Vec<Vec<Plan>> = (0..6)
        .map(|k| {
            (0..6)
                .map(|n| match (k + n) % 5 {
                    0 => Plan::FailThenComplete {
                        failures: 1,
                        mode: (n % 3) as u8,
                    },
                    3 if k == 2 => Plan::DeadLetter,
                    _ => Plan::FailThenComplete {
                        failures: 0,
                        mode: 0,
                    },
                })
                .collect()
        })
        .collect();
    let fast = settings().with_retry(
        RetrySettings::default()
            .with_max_attempts(MAX_ATTEMPTS)
            .with_initial_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_millis(50)),
    );
    let fast = fast
        .with_receive_wait(Duration::from_millis(50))
        .with_session_idle_timeout(Duration::from_millis(30));
    if grouped {
        check_on_grouped("mt.fifo", plans, fast, Duration::from_secs(20)).await;
    } else {
        check_on_memory("mt", plans, fast, Duration::from_secs(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_threaded_sessions_keep_order_and_settle_once() {
    multi_threaded(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_threaded_groups_keep_order_and_settle_once() {
    multi_threaded(true).await;
}
