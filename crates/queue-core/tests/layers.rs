//! The layers on a recording provider, under tokio's paused clock: `Retrying` retries only
//! transient failures, within its attempt and time bounds, and never re-sends a message
//! without an id; `FaultInjecting` fires by schedule and by seed; `Instrumented` forwards.
#![cfg(feature = "layers")]

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use queue_core::{
    Capabilities, DeadLetterReason, Message, MessageId, QueueError, QueueName, QueueProvider,
    Receipt, ReceiveOptions, ReceivedMessage, Result, RetryClass,
    backoff::Backoff,
    layer::{
        Fault, FaultInjecting, Faults, Instrumented, RetryConfig, Retrying, SendIds, When,
        default_stack,
    },
};

/// Accepts every send and remembers the message ids it stored, in order.
#[derive(Debug, Default)]
struct Recorder {
    sent: Mutex<Vec<MessageId>>,
}

impl Recorder {
    fn ids(&self) -> Vec<MessageId> {
        self.sent.lock().unwrap().clone()
    }
}

fn no(op: &'static str) -> QueueError {
    QueueError::unsupported("recorder", op)
}

#[async_trait]
impl QueueProvider for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    async fn send(&self, _: &QueueName, message: Message) -> Result<MessageId> {
        let id = message.message_id.unwrap_or_else(MessageId::random);
        self.sent.lock().unwrap().push(id.clone());
        Ok(id)
    }
    async fn send_batch(&self, q: &QueueName, messages: Vec<Message>) -> Result<Vec<MessageId>> {
        let mut ids = Vec::new();
        for m in messages {
            ids.push(self.send(q, m).await?);
        }
        Ok(ids)
    }
    async fn receive(&self, _: &QueueName, _: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        Ok(Vec::new())
    }
    async fn complete(&self, _: &Receipt) -> Result<()> {
        Ok(())
    }
    async fn abandon(&self, _: &Receipt, _: Option<Duration>) -> Result<()> {
        Err(no("abandon"))
    }
    async fn dead_letter(&self, _: &Receipt, _: DeadLetterReason) -> Result<()> {
        Err(no("dead_letter"))
    }
    async fn renew_lock(&self, _: &Receipt) -> Result<SystemTime> {
        Err(no("renew_lock"))
    }
    async fn receive_dead_letters(
        &self,
        _: &QueueName,
        _: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        Err(no("receive_dead_letters"))
    }
    async fn check_access(&self, _: &QueueName) -> Result<()> {
        Ok(())
    }
}

fn q() -> QueueName {
    QueueName::new("orders").unwrap()
}

/// `Retrying(FaultInjecting(Recorder))` with a seeded, quick backoff.
fn stack(faults: Faults, config: RetryConfig) -> (Retrying<FaultInjecting<Recorder>>, Arc<Faults>) {
    let faults = Arc::new(faults);
    let flaky = FaultInjecting::from_arc(Arc::new(Recorder::default()), faults.clone());
    let config = config.with_seed(1).with_backoff(Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(1),
    ));
    (Retrying::new(flaky, config), faults)
}

fn recorder(r: &Retrying<FaultInjecting<Recorder>>) -> &Recorder {
    use queue_core::layer::Forward;
    Forward::inner(Forward::inner(r))
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_under_one_message_id() {
    let faults = Faults::seeded(0).on("send", When::Calls(vec![1, 2]), Fault::LostReply);
    let (p, faults) = stack(faults, RetryConfig::default().with_max_attempts(3));
    let id = p.send(&q(), Message::new("x")).await.unwrap();
    assert_eq!(faults.calls("send"), 3);
    // Each lost reply stored the message: all three copies carry the one id the caller
    // got, so duplicate detection (or the consumer) can drop the extra ones.
    assert_eq!(recorder(&p).ids(), vec![id.clone(), id.clone(), id]);
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_are_not_retried() {
    let faults = Faults::seeded(0).on("send", When::Always, Fault::Permanent);
    let (p, faults) = stack(faults, RetryConfig::default());
    let err = p.send(&q(), Message::new("x")).await.unwrap_err();
    assert_eq!(err.retry_class(), RetryClass::Permanent, "{err}");
    assert_eq!(faults.calls("send"), 1);
}

#[tokio::test(start_paused = true)]
async fn attempts_are_bounded_and_exhaustion_is_typed() {
    let faults = Faults::seeded(0).on_any(When::Always, Fault::Transient);
    let (p, faults) = stack(faults, RetryConfig::default().with_max_attempts(4));
    let started = tokio::time::Instant::now();
    let err = p.complete(&receipt()).await.unwrap_err();
    match &err {
        QueueError::RetriesExhausted { attempts, last, .. } => {
            assert_eq!(*attempts, 4);
            assert_eq!(last.kind_label(), "connection");
        }
        other => panic!("expected RetriesExhausted, got {other}"),
    }
    assert_eq!(err.retry_class(), RetryClass::Exhausted);
    assert_eq!(faults.calls("complete"), 4);
    // Three waits of at most 100, 200 and 400 ms, each jittered down by at most half.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited <= Duration::from_millis(700),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_time_bound_stops_retries_before_the_attempt_bound() {
    let faults = Faults::seeded(0).on_any(When::Always, Fault::Transient);
    let config = RetryConfig::default()
        .with_max_attempts(100)
        .with_max_elapsed(Duration::from_secs(3));
    let (p, faults) = stack(faults, config);
    let started = tokio::time::Instant::now();
    let err = p
        .receive(&q(), ReceiveOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.retry_class(), RetryClass::Exhausted);
    assert!(
        started.elapsed() <= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let calls = faults.calls("receive");
    assert!((3..100).contains(&calls), "{calls} attempts");
}

#[tokio::test(start_paused = true)]
async fn a_message_without_an_id_is_sent_once_unless_ids_are_assigned() {
    let faults = Faults::seeded(0).on("send", When::Calls(vec![1]), Fault::Transient);
    let config = RetryConfig::default().with_send_ids(SendIds::OnlyGiven);
    let (p, faults) = stack(faults, config);
    let err = p.send(&q(), Message::new("x")).await.unwrap_err();
    assert_eq!(err.kind_label(), "connection", "not retried: {err}");
    assert_eq!(faults.calls("send"), 1);
    // With an id of its own it is retried.
    let id = MessageId::new("given-1").unwrap();
    let msg = Message::new("y").with_message_id(id.clone());
    assert_eq!(p.send(&q(), msg).await.unwrap(), id);
    assert_eq!(faults.calls("send"), 2);
}

#[tokio::test(start_paused = true)]
async fn throttling_waits_at_least_retry_after() {
    #[derive(Debug)]
    struct SlowDown(Recorder, Mutex<u32>);
    #[async_trait]
    impl queue_core::layer::Forward for SlowDown {
        type Inner = Recorder;
        fn inner(&self) -> &Recorder {
            &self.0
        }
        async fn send(&self, q: &QueueName, m: Message) -> Result<MessageId> {
            let first = {
                let mut n = self.1.lock().unwrap();
                *n += 1;
                *n == 1
            };
            if first {
                return Err(QueueError::Throttled {
                    provider: "recorder",
                    operation: "send",
                    retry_after: Some(Duration::from_millis(1500)),
                });
            }
            self.0.send(q, m).await
        }
    }
    let p = Retrying::new(
        SlowDown(Recorder::default(), Mutex::new(0)),
        RetryConfig::default().with_seed(3),
    );
    let started = tokio::time::Instant::now();
    p.send(&q(), Message::new("x")).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test(start_paused = true)]
async fn batches_are_retried_whole_under_stable_ids() {
    let faults = Faults::seeded(0).on("send_batch", When::Calls(vec![1]), Fault::LostReply);
    let (p, _) = stack(faults, RetryConfig::default());
    let msgs = vec![Message::new("a"), Message::new("b")];
    let ids = p.send_batch(&q(), msgs).await.unwrap();
    assert_eq!(ids.len(), 2);
    let stored = recorder(&p).ids();
    assert_eq!(
        stored,
        [ids.clone(), ids].concat(),
        "the re-send reuses the ids"
    );
}

#[tokio::test(start_paused = true)]
async fn seeded_chances_replay_and_drops_skip_the_provider() {
    let run = |seed| async move {
        let faults = Arc::new(Faults::seeded(seed).on("complete", When::Chance(0.3), Fault::Drop));
        let p = FaultInjecting::from_arc(Arc::new(Recorder::default()), faults.clone());
        for _ in 0..200 {
            p.complete(&receipt()).await.unwrap();
        }
        faults.injected("complete")
    };
    let a = run(11).await;
    assert_eq!(a, run(11).await, "same seed, same faults");
    assert!((30..90).contains(&a), "{a} of 200 at 30%");
}

#[tokio::test(start_paused = true)]
async fn delays_use_the_tokio_clock() {
    let faults = Faults::seeded(0).on("send", When::Always, Fault::Delay(Duration::from_secs(5)));
    let p = FaultInjecting::new(Recorder::default(), faults);
    let started = tokio::time::Instant::now();
    p.send(&q(), Message::new("x")).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn the_default_stack_retries_and_forwards() {
    let faults = Arc::new(Faults::seeded(0).on("send", When::Calls(vec![1]), Fault::Transient));
    let flaky = Arc::new(FaultInjecting::from_arc(
        Arc::new(Recorder::default()),
        faults.clone(),
    ));
    let p = default_stack(flaky, RetryConfig::default().with_seed(5));
    assert_eq!(p.name(), "recorder");
    p.send(&q(), Message::new("x")).await.unwrap();
    assert_eq!(faults.calls("send"), 2);
    p.check_access(&q()).await.unwrap();
    let i = Instrumented::new(Recorder::default());
    assert_eq!(
        i.send_batch(&q(), vec![Message::new("a")])
            .await
            .unwrap()
            .len(),
        1
    );
}

fn receipt() -> Receipt {
    Receipt::new("recorder", q(), None, "token")
}
