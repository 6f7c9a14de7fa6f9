//! [`Retrying`]: retries transient failures of provider calls, bounded in attempts and time.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use tokio::time::Instant;

pub(super) use self::Core as RetryCore;

use crate::{
    backoff::{Backoff, Jitter, JitterMode},
    error::{QueueError, Result, RetryClass},
    layer::{Forward, ForwardSession},
    message::{DeadLetterReason, Message, Receipt, ReceivedMessage},
    names::{MessageId, QueueName},
    provider::{QueueProvider, QueueSpec, ReceiveOptions, SessionReceiver, SessionSelector},
};

/// Counter: provider calls retried after a transient failure (`provider`, `operation`,
/// `kind`: [`QueueError::kind_label`]).
pub const PROVIDER_RETRIES: &str = "queue_runtime_provider_retries_total";

/// What [`Retrying`] does with a message that has no message id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendIds {
    /// Give it a fresh random id before the first attempt, so every attempt is the same
    /// message: a broker with duplicate detection (Service Bus, SQS FIFO) drops the copy
    /// of an attempt that landed although its answer was lost, and consumers can tell
    /// duplicates by id. (On an SQS FIFO queue with content-based de-duplication, this
    /// replaces content de-duplication by id de-duplication.)
    Assign,
    /// Send it once: a message without an id is never re-sent.
    OnlyGiven,
}

/// Settings of [`Retrying`]; construct with `RetryConfig::default()` and the `with_*`
/// setters.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Most attempts of one call, the first included (1 disables retries). Default 3.
    pub max_attempts: u32,
    /// No retry starts once this much time passed since the first attempt began (the
    /// wait before it counted). Default 10 s.
    pub max_elapsed: Duration,
    /// Delay between attempts. Default 100 ms doubling to 2 s, jittered down by up to half.
    pub backoff: Backoff,
    /// Sends of messages without an id. Default [`SendIds::Assign`].
    pub send_ids: SendIds,
    /// Seeds the jitter, so a run can be replayed (tests); `None` seeds randomly.
    pub seed: Option<u64>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            max_elapsed: Duration::from_secs(10),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
                .with_jitter(JitterMode::Down(0.5)),
            send_ids: SendIds::Assign,
            seed: None,
        }
    }
}

impl RetryConfig {
    /// Sets the most attempts per call (at least 1).
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
    /// Sets the time bound of one call's retries.
    pub fn with_max_elapsed(mut self, d: Duration) -> Self {
        self.max_elapsed = d;
        self
    }
    /// Sets the backoff.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
    /// Sets what happens to messages without an id.
    pub fn with_send_ids(mut self, ids: SendIds) -> Self {
        self.send_ids = ids;
        self
    }
    /// Seeds the jitter.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

/// Retries provider calls that fail with a [transient](RetryClass::Transient) error, with
/// jittered exponential backoff, at most [`RetryConfig::max_attempts`] attempts and no new
/// attempt after [`RetryConfig::max_elapsed`]; a [`QueueError::Throttled`] with a
/// `retry_after` waits at least that long. Permanent errors return at once. When the budget
/// runs out, the call fails with [`QueueError::RetriesExhausted`] (class
/// [`RetryClass::Exhausted`]) carrying the last error.
///
/// - `send` re-sends only a message with a message id ([`SendIds`]).
/// - `send_batch` gives every message an id first (under [`SendIds::Assign`]; otherwise a
///   batch with an id-less message is sent once), then re-sends only the entries that
///   failed transiently; the result lists every entry's id in input order.
/// - Every other call, session receivers included, is retried as it is: receive,
///   settlement and renewal calls name their target, so a repeat cannot duplicate.
///
/// Each retry is logged at `DEBUG` (operation, attempt, delay, error kind) and counted in
/// [`PROVIDER_RETRIES`].
#[derive(Debug)]
pub struct Retrying<P: ?Sized> {
    core: Arc<Core>,
    inner: Arc<P>,
}

#[derive(Debug)]
pub(super) struct Core {
    config: RetryConfig,
    jitter: Jitter,
    provider: &'static str,
}

impl<P: QueueProvider> Retrying<P> {
    /// Wraps `inner`.
    pub fn new(inner: P, config: RetryConfig) -> Self {
        Self::from_arc(Arc::new(inner), config)
    }
}

impl<P: QueueProvider + ?Sized> Retrying<P> {
    /// Wraps a shared provider.
    pub fn from_arc(inner: Arc<P>, config: RetryConfig) -> Self {
        let jitter = config.seed.map_or_else(Jitter::random, Jitter::seeded);
        let core = Core {
            provider: inner.name(),
            config,
            jitter,
        };
        Self {
            core: Arc::new(core),
            inner,
        }
    }

    /// The settings.
    pub fn config(&self) -> &RetryConfig {
        &self.core.config
    }
}

impl Core {
    pub(super) fn provider(&self) -> &'static str {
        self.provider
    }

    /// Runs `call` until it succeeds, fails permanently, or the budget is spent.
    async fn run<T, F, Fut>(&self, operation: &'static str, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T>> + Send,
    {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let err = match call().await {
                Ok(value) => return Ok(value),
                Err(e) if e.retry_class() != RetryClass::Transient => return Err(e),
                Err(e) => e,
            };
            let Some(delay) = self.next_delay(attempt, started, &err) else {
                return Err(self.exhausted(operation, attempt, err));
            };
            tracing::debug!(
                provider = self.provider,
                operation,
                attempt,
                delay_ms = delay.as_millis() as u64,
                kind = err.kind_label(),
                "transient failure; retrying"
            );
            metrics::counter!(PROVIDER_RETRIES, "provider" => self.provider,
                "operation" => operation, "kind" => err.kind_label())
            .increment(1);
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// The wait before attempt `attempt + 1`, or `None` when the budget is spent.
    pub(super) fn next_delay(
        &self,
        attempt: u32,
        started: Instant,
        err: &QueueError,
    ) -> Option<Duration> {
        let c = &self.config;
        if attempt >= c.max_attempts {
            return None;
        }
        let mut delay = c.backoff.delay(attempt, self.jitter.next_unit());
        if let QueueError::Throttled {
            retry_after: Some(after),
            ..
        } = err
        {
            delay = delay.max(*after);
        }
        (started.elapsed() + delay <= c.max_elapsed).then_some(delay)
    }

    fn exhausted(&self, operation: &'static str, attempts: u32, last: QueueError) -> QueueError {
        if attempts <= 1 {
            return last;
        }
        QueueError::RetriesExhausted {
            provider: self.provider,
            operation,
            attempts,
            last: Box::new(last),
        }
    }

    /// Gives an id-less message a fresh id when the policy allows; `false` if it has none.
    fn ensure_id(&self, message: &mut Message) -> bool {
        if message.message_id.is_none() && self.config.send_ids == SendIds::Assign {
            message.message_id = Some(MessageId::random());
        }
        message.message_id.is_some()
    }
}

#[async_trait]
impl<P: QueueProvider + ?Sized> Forward for Retrying<P> {
    type Inner = P;

    fn inner(&self) -> &P {
        &self.inner
    }

    async fn send(&self, queue: &QueueName, mut message: Message) -> Result<MessageId> {
        if !self.core.ensure_id(&mut message) {
            return self.inner.send(queue, message).await;
        }
        self.core
            .run("send", || self.inner.send(queue, message.clone()))
            .await
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        mut messages: Vec<Message>,
    ) -> Result<Vec<MessageId>> {
        let all_ids = messages.iter_mut().all(|m| self.core.ensure_id(m));
        if !all_ids {
            return self.inner.send_batch(queue, messages).await;
        }
        super::batch::send_batch(&self.core, &*self.inner, queue, messages).await
    }

    async fn receive(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        self.core
            .run("receive", || self.inner.receive(queue, options))
            .await
    }

    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        self.core
            .run("complete", || self.inner.complete(receipt))
            .await
    }

    async fn abandon(&self, receipt: &Receipt, delay: Option<Duration>) -> Result<()> {
        self.core
            .run("abandon", || self.inner.abandon(receipt, delay))
            .await
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        self.core
            .run("dead_letter", || {
                self.inner.dead_letter(receipt, reason.clone())
            })
            .await
    }

    async fn renew_lock(&self, receipt: &Receipt) -> Result<SystemTime> {
        self.core
            .run("renew_lock", || self.inner.renew_lock(receipt))
            .await
    }

    async fn accept_session(
        &self,
        queue: &QueueName,
        selector: SessionSelector,
        wait: Duration,
    ) -> Result<Option<Box<dyn SessionReceiver>>> {
        let session = self
            .core
            .run("accept_session", || {
                self.inner.accept_session(queue, selector.clone(), wait)
            })
            .await?;
        Ok(session.map(|inner| {
            Box::new(RetryingSession {
                core: self.core.clone(),
                inner,
            }) as Box<dyn SessionReceiver>
        }))
    }

    async fn receive_dead_letters(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        self.core
            .run("receive_dead_letters", || {
                self.inner.receive_dead_letters(queue, options)
            })
            .await
    }

    async fn check_access(&self, queue: &QueueName) -> Result<()> {
        self.core
            .run("check_access", || self.inner.check_access(queue))
            .await
    }

    async fn create_queue(&self, queue: &QueueName, spec: &QueueSpec) -> Result<()> {
        self.core
            .run("create_queue", || self.inner.create_queue(queue, spec))
            .await
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        self.core
            .run("delete_queue", || self.inner.delete_queue(queue))
            .await
    }
}

/// A session receiver whose calls [`Retrying`] retries.
#[derive(Debug)]
struct RetryingSession {
    core: Arc<Core>,
    inner: Box<dyn SessionReceiver>,
}

#[async_trait]
impl ForwardSession for RetryingSession {
    fn inner(&self) -> &dyn SessionReceiver {
        &*self.inner
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        self.core
            .run("session_receive", || self.inner.receive(options))
            .await
    }

    async fn receive_available(&self, options: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        self.core
            .run("session_receive", || self.inner.receive_available(options))
            .await
    }

    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        self.core
            .run("complete", || self.inner.complete(receipt))
            .await
    }

    async fn abandon(&self, receipt: &Receipt) -> Result<()> {
        self.core
            .run("abandon", || self.inner.abandon(receipt))
            .await
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        self.core
            .run("dead_letter", || {
                self.inner.dead_letter(receipt, reason.clone())
            })
            .await
    }

    async fn renew_session_lock(&self) -> Result<SystemTime> {
        self.core
            .run("renew_session_lock", || self.inner.renew_session_lock())
            .await
    }
}
