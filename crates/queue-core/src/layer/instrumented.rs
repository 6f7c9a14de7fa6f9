//! [`Instrumented`]: a tracing span and metrics for every provider call.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use async_trait::async_trait;
use tracing::Instrument as _;

use crate::{
    error::{QueueError, Result},
    layer::{Forward, ForwardSession},
    message::{DeadLetterReason, Message, Receipt, ReceivedMessage},
    names::{MessageId, QueueName},
    provider::{QueueProvider, QueueSpec, ReceiveOptions, SessionReceiver, SessionSelector},
};

/// Counter: messages the broker accepted (`queue`, `provider`).
pub const MESSAGES_SENT: &str = "queue_runtime_messages_sent_total";
/// Counter: messages received (`queue`, `provider`).
pub const MESSAGES_RECEIVED: &str = "queue_runtime_messages_received_total";
/// Counter: messages completed (`queue`, `provider`).
pub const MESSAGES_COMPLETED: &str = "queue_runtime_messages_completed_total";
/// Counter: failed provider calls (`queue`, `provider`, `operation`, `kind`:
/// [`QueueError::kind_label`]).
pub const PROVIDER_ERRORS: &str = "queue_runtime_provider_errors_total";
/// Counter: credential failures of provider calls (`queue`, `provider`, `operation`,
/// `kind`: `authentication` / `authorization`).
pub const AUTH_FAILURES: &str = "queue_runtime_auth_failures_total";
/// Histogram: seconds per provider call, retries inside included (`provider`,
/// `operation`, `outcome`: `ok` / `error`).
pub const CALL_DURATION: &str = "queue_runtime_provider_call_duration_seconds";

/// Records a `queue.call` span (level `DEBUG`; fields `provider`, `operation`, `queue`)
/// around every provider call, and the metrics [`MESSAGES_SENT`], [`MESSAGES_RECEIVED`],
/// [`MESSAGES_COMPLETED`], [`PROVIDER_ERRORS`], [`AUTH_FAILURES`] and [`CALL_DURATION`].
/// Session receivers from `accept_session` are instrumented too.
///
/// Labels come from fixed sets (operation names, [`QueueError::kind_label`]) plus the
/// provider id and the queue name; message ids, session ids, bodies and credentials are
/// never labels or span fields. A failed call logs one `DEBUG` event with the error kind
/// and its rendering (which never carries secrets or bodies); the caller decides what to
/// log above that.
#[derive(Debug)]
pub struct Instrumented<P: ?Sized> {
    inner: Arc<P>,
    provider: &'static str,
}

impl<P: QueueProvider> Instrumented<P> {
    /// Wraps `inner`.
    pub fn new(inner: P) -> Self {
        Self::from_arc(Arc::new(inner))
    }
}

impl<P: QueueProvider + ?Sized> Instrumented<P> {
    /// Wraps a shared provider.
    pub fn from_arc(inner: Arc<P>) -> Self {
        let provider = inner.name();
        Self { inner, provider }
    }
}

/// Runs `call` inside a `queue.call` span and records its duration and failure.
async fn observe<T, F>(
    provider: &'static str,
    operation: &'static str,
    queue: &QueueName,
    call: F,
) -> Result<T>
where
    F: Future<Output = Result<T>> + Send,
{
    let span = tracing::debug_span!("queue.call", provider, operation, queue = queue.as_str());
    let started = Instant::now();
    let out = call.instrument(span.clone()).await;
    let outcome = if out.is_ok() { "ok" } else { "error" };
    metrics::histogram!(CALL_DURATION, "provider" => provider, "operation" => operation,
        "outcome" => outcome)
    .record(started.elapsed().as_secs_f64());
    if let Err(e) = &out {
        span.in_scope(|| record_error(provider, operation, queue, e));
    }
    out
}

fn record_error(
    provider: &'static str,
    operation: &'static str,
    queue: &QueueName,
    e: &QueueError,
) {
    let kind = e.kind_label();
    tracing::debug!(kind, error = %e, "provider call failed");
    let q = queue.as_str().to_owned();
    metrics::counter!(PROVIDER_ERRORS, "queue" => q.clone(), "provider" => provider,
        "operation" => operation, "kind" => kind)
    .increment(1);
    if let QueueError::Auth { kind, .. } = e {
        let kind = match kind {
            crate::AuthFailure::Authorization => "authorization",
            _ => "authentication",
        };
        metrics::counter!(AUTH_FAILURES, "queue" => q, "provider" => provider,
            "operation" => operation, "kind" => kind)
        .increment(1);
    }
}

fn count(name: &'static str, provider: &'static str, queue: &QueueName, n: usize) {
    if n > 0 {
        metrics::counter!(name, "queue" => queue.as_str().to_owned(), "provider" => provider)
            .increment(n as u64);
    }
}

/// Counts the messages sent by a batch, also when only some were.
fn count_batch(provider: &'static str, queue: &QueueName, out: &Result<Vec<MessageId>>) {
    let n = match out {
        Ok(ids) => ids.len(),
        Err(QueueError::PartialBatch { succeeded, .. }) => succeeded.len(),
        Err(_) => 0,
    };
    count(MESSAGES_SENT, provider, queue, n);
}

#[async_trait]
impl<P: QueueProvider + ?Sized> Forward for Instrumented<P> {
    type Inner = P;

    fn inner(&self) -> &P {
        &self.inner
    }

    fn instrumented(&self) -> bool {
        true
    }

    async fn send(&self, queue: &QueueName, message: Message) -> Result<MessageId> {
        let out = observe(
            self.provider,
            "send",
            queue,
            self.inner.send(queue, message),
        )
        .await;
        count(
            MESSAGES_SENT,
            self.provider,
            queue,
            usize::from(out.is_ok()),
        );
        out
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<Message>,
    ) -> Result<Vec<MessageId>> {
        let call = self.inner.send_batch(queue, messages);
        let out = observe(self.provider, "send_batch", queue, call).await;
        count_batch(self.provider, queue, &out);
        out
    }

    async fn receive(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        let call = self.inner.receive(queue, options);
        let out = observe(self.provider, "receive", queue, call).await;
        count_received(self.provider, queue, &out);
        out
    }

    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        let queue = receipt.queue();
        let out = observe(
            self.provider,
            "complete",
            queue,
            self.inner.complete(receipt),
        )
        .await;
        count(
            MESSAGES_COMPLETED,
            self.provider,
            queue,
            usize::from(out.is_ok()),
        );
        out
    }

    async fn abandon(&self, receipt: &Receipt, delay: Option<Duration>) -> Result<()> {
        let call = self.inner.abandon(receipt, delay);
        observe(self.provider, "abandon", receipt.queue(), call).await
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        let call = self.inner.dead_letter(receipt, reason);
        observe(self.provider, "dead_letter", receipt.queue(), call).await
    }

    async fn renew_lock(&self, receipt: &Receipt) -> Result<SystemTime> {
        let call = self.inner.renew_lock(receipt);
        observe(self.provider, "renew_lock", receipt.queue(), call).await
    }

    async fn accept_session(
        &self,
        queue: &QueueName,
        selector: SessionSelector,
        wait: Duration,
    ) -> Result<Option<Box<dyn SessionReceiver>>> {
        let call = self.inner.accept_session(queue, selector, wait);
        let session = observe(self.provider, "accept_session", queue, call).await?;
        let provider = self.provider;
        Ok(session.map(|inner| {
            Box::new(InstrumentedSession { provider, inner }) as Box<dyn SessionReceiver>
        }))
    }

    async fn receive_dead_letters(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        let call = self.inner.receive_dead_letters(queue, options);
        observe(self.provider, "receive_dead_letters", queue, call).await
    }

    async fn check_access(&self, queue: &QueueName) -> Result<()> {
        let call = self.inner.check_access(queue);
        observe(self.provider, "check_access", queue, call).await
    }

    async fn create_queue(&self, queue: &QueueName, spec: &QueueSpec) -> Result<()> {
        let call = self.inner.create_queue(queue, spec);
        observe(self.provider, "create_queue", queue, call).await
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        let call = self.inner.delete_queue(queue);
        observe(self.provider, "delete_queue", queue, call).await
    }
}

fn count_received(provider: &'static str, queue: &QueueName, out: &Result<Vec<ReceivedMessage>>) {
    if let Ok(got) = out {
        count(MESSAGES_RECEIVED, provider, queue, got.len());
    }
}

/// A session receiver whose calls [`Instrumented`] records.
#[derive(Debug)]
struct InstrumentedSession {
    provider: &'static str,
    inner: Box<dyn SessionReceiver>,
}

#[async_trait]
impl ForwardSession for InstrumentedSession {
    fn inner(&self) -> &dyn SessionReceiver {
        &*self.inner
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        let queue = self.inner.queue();
        let call = self.inner.receive(options);
        let out = observe(self.provider, "session_receive", queue, call).await;
        count_received(self.provider, queue, &out);
        out
    }

    async fn receive_available(&self, options: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        let queue = self.inner.queue();
        let call = self.inner.receive_available(options);
        let out = observe(self.provider, "session_receive", queue, call).await;
        count_received(self.provider, queue, &out);
        out
    }

    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        let queue = self.inner.queue();
        let out = observe(
            self.provider,
            "complete",
            queue,
            self.inner.complete(receipt),
        )
        .await;
        count(
            MESSAGES_COMPLETED,
            self.provider,
            queue,
            usize::from(out.is_ok()),
        );
        out
    }

    async fn abandon(&self, receipt: &Receipt) -> Result<()> {
        let call = self.inner.abandon(receipt);
        observe(self.provider, "abandon", self.inner.queue(), call).await
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        let call = self.inner.dead_letter(receipt, reason);
        observe(self.provider, "dead_letter", self.inner.queue(), call).await
    }

    async fn renew_session_lock(&self) -> Result<SystemTime> {
        let call = self.inner.renew_session_lock();
        observe(
            self.provider,
            "renew_session_lock",
            self.inner.queue(),
            call,
        )
        .await
    }

    async fn close(&self) -> Result<()> {
        let call = self.inner.close();
        observe(self.provider, "close_session", self.inner.queue(), call).await
    }
}
