//! The provider SPI: [`QueueProvider`], [`SessionReceiver`] and their option types.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    error::{QueueError, Result},
    message::{DeadLetterReason, Message, Receipt, ReceivedMessage},
    names::{MessageId, QueueName, SessionId},
};

/// How a provider supports ordered delivery per session key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionSupport {
    /// No ordering guarantee; session ids are not accepted on send.
    None,
    /// Ordered groups without a session lock (SQS FIFO `MessageGroupId`): messages of a
    /// group come in order through the plain receive call, and a group is blocked while one
    /// of its messages is in flight. [`QueueProvider::accept_session`] is unsupported.
    Grouped,
    /// Exclusive session locks (Service Bus sessions): a receiver accepts a session and is
    /// the only one to receive its messages, in order, until it closes or the lock expires.
    Locked,
}

/// What a provider can do. Behaviour the provider lacks is reported here, never discovered
/// at run time; callers (the runtime, the conformance suite) branch on these flags.
///
/// Construct with `Capabilities::default()` and set fields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Ordered delivery per session id.
    pub sessions: SessionSupport,
    /// Session state get/set on a session receiver.
    pub session_state: bool,
    /// Messages can carry a future enqueue time.
    pub scheduled_delivery: bool,
    /// Longest schedule delay accepted, if bounded (SQS: 15 minutes).
    pub max_schedule_delay: Option<Duration>,
    /// Abandon can carry a redelivery delay.
    pub delayed_abandon: bool,
    /// Most messages in one send or receive call.
    pub max_batch_size: usize,
    /// Largest message accepted, in bytes (see [`Message::encoded_size`]).
    pub max_message_size: usize,
    /// Longest lock a single receive or renewal grants.
    pub max_lock_duration: Duration,
    /// Locks can be renewed.
    pub lock_renewal: bool,
    /// The broker moves messages to a dead-letter queue itself (max deliveries, explicit).
    pub native_dead_letter: bool,
    /// The broker drops duplicates by message id within a window.
    pub duplicate_detection: bool,
    /// Queues can be created and deleted through the provider.
    pub queue_management: bool,
    /// A message's [`Message::time_to_live`] is honoured: once it runs out the message is
    /// no longer delivered (SQS has no per-message TTL).
    pub message_ttl: bool,
    /// Most application attributes one message may carry, if the provider bounds them
    /// (SQS: 9, because SQS carries 10 message attributes and the provider's metadata
    /// takes one). Attributes added on the way, such as a signature, count.
    pub max_attributes: Option<usize>,
    /// What a failed batch means. `true`: a [`QueueProvider::send_batch`] that fits one
    /// call (at most `max_batch_size` messages, together at most `max_message_size` bytes)
    /// is all or nothing: when an entry is refused (too large, invalid) or the call fails,
    /// none of the batch was stored, and the error is that entry's or the call's, never
    /// [`QueueError::PartialBatch`]. `false`: entries are accepted one by one, so a refused
    /// entry leaves the others sent, and the error is [`QueueError::PartialBatch`] listing
    /// every entry on one side or the other (SQS). Larger batches are split into several
    /// calls and are not atomic as a whole. Default `false`, the safe assumption.
    pub batch_atomic: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            sessions: SessionSupport::None,
            session_state: false,
            scheduled_delivery: false,
            max_schedule_delay: None,
            delayed_abandon: false,
            max_batch_size: 1,
            max_message_size: 256 * 1024,
            max_lock_duration: Duration::from_secs(30),
            lock_renewal: false,
            native_dead_letter: false,
            duplicate_detection: false,
            queue_management: false,
            message_ttl: false,
            max_attributes: None,
            batch_atomic: false,
        }
    }
}

/// Options of a receive call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceiveOptions {
    /// Most messages to return (clamped to the provider's `max_batch_size`).
    pub max_messages: usize,
    /// How long to wait for the first message. An empty queue returns an empty batch when
    /// this elapses; it is never an error.
    pub wait: Duration,
}

impl ReceiveOptions {
    /// Up to `max_messages`, waiting at most `wait`.
    pub fn new(max_messages: usize, wait: Duration) -> Self {
        Self { max_messages, wait }
    }
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        Self::new(1, Duration::from_secs(5))
    }
}

/// Which session to accept.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionSelector {
    /// This session (fails with [`QueueError::SessionLocked`] if another receiver holds it).
    Named(SessionId),
    /// The next unlocked session with messages available.
    Next,
}

/// Settings of a queue created through [`QueueProvider::create_queue`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueSpec {
    /// How long a receive locks a message (visibility timeout on SQS).
    pub lock_duration: Duration,
    /// Deliveries after which the broker dead-letters a message.
    pub max_delivery_count: u32,
    /// Whether messages must carry a session id (Service Bus sessions, SQS FIFO).
    pub requires_session: bool,
    /// Time to live of messages that set none.
    pub default_ttl: Option<Duration>,
    /// Duplicate detection window on message id, if enabled.
    pub duplicate_detection_window: Option<Duration>,
}

impl QueueSpec {
    /// Sets the lock duration.
    pub fn with_lock_duration(mut self, d: Duration) -> Self {
        self.lock_duration = d;
        self
    }
    /// Sets the max delivery count.
    pub fn with_max_delivery_count(mut self, n: u32) -> Self {
        self.max_delivery_count = n;
        self
    }
    /// Makes the queue a session (FIFO) queue.
    pub fn with_sessions(mut self, on: bool) -> Self {
        self.requires_session = on;
        self
    }
    /// Sets the default TTL.
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }
    /// Enables duplicate detection over `window`.
    pub fn with_duplicate_detection(mut self, window: Duration) -> Self {
        self.duplicate_detection_window = Some(window);
        self
    }
}

impl Default for QueueSpec {
    fn default() -> Self {
        Self {
            lock_duration: Duration::from_secs(30),
            max_delivery_count: 10,
            requires_session: false,
            default_ttl: None,
            duplicate_detection_window: None,
        }
    }
}

/// A message queue provider: the SPI every backend implements.
///
/// The trait is object safe; use [`DynQueueProvider`] behind an `Arc` to pick the provider
/// at run time. Sugar lives in [`QueueProviderExt`] so adding helpers never breaks
/// implementations. Outside crates may implement this trait; behaviour must match the
/// conformance suite (`queue-conformance`), and new methods get default bodies that
/// return [`QueueError::Unsupported`], so adding one is not a breaking change.
#[async_trait]
pub trait QueueProvider: fmt::Debug + Send + Sync + 'static {
    /// Short stable id used in errors, spans and metrics: `"memory"`, `"sqs"`, `"service-bus"`.
    fn name(&self) -> &'static str;

    /// What this provider can do.
    fn capabilities(&self) -> Capabilities;

    /// Whether an [`Instrumented`](crate::layer::Instrumented) layer sits in this
    /// provider's stack, so provider-call metrics (messages received and completed,
    /// provider errors, credential failures) are already recorded. A consumer such as the
    /// runtime's `Processor` then leaves them to the layer instead of counting them twice.
    /// Layers built on [`Forward`](crate::layer::Forward) pass the inner answer on.
    fn instrumented(&self) -> bool {
        false
    }

    /// Sends one message and returns its id (the given one, or a fresh one if unset).
    async fn send(&self, queue: &QueueName, message: Message) -> Result<MessageId>;

    /// Sends several messages. Providers chunk to their batch limit. On partial failure
    /// returns [`QueueError::PartialBatch`] listing what was sent and what failed.
    async fn send_batch(&self, queue: &QueueName, messages: Vec<Message>)
    -> Result<Vec<MessageId>>;

    /// Receives up to `options.max_messages` messages under a lock, waiting up to
    /// `options.wait` for the first one. An empty queue yields an empty vector.
    ///
    /// On a [`SessionSupport::Locked`] provider this reads only messages without a session.
    async fn receive(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>>;

    /// Removes the message for good.
    async fn complete(&self, receipt: &Receipt) -> Result<()>;

    /// Releases the lock so the message is delivered again, after `delay` if given
    /// (requires [`Capabilities::delayed_abandon`]).
    async fn abandon(&self, receipt: &Receipt, delay: Option<Duration>) -> Result<()>;

    /// Moves the message to the dead-letter queue with a reason.
    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()>;

    /// Extends the lock and returns its new expiry.
    async fn renew_lock(&self, receipt: &Receipt) -> Result<SystemTime>;

    /// Accepts a session. With [`SessionSelector::Next`], waits up to `wait` for an unlocked
    /// session with messages and returns `Ok(None)` if there is none.
    async fn accept_session(
        &self,
        queue: &QueueName,
        selector: SessionSelector,
        wait: Duration,
    ) -> Result<Option<Box<dyn SessionReceiver>>> {
        let _ = (queue, selector, wait);
        Err(QueueError::unsupported(self.name(), "accept_session"))
    }

    /// Receives from the queue's dead-letter queue under a lock. Completing such a message
    /// removes it from the dead-letter queue.
    async fn receive_dead_letters(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>>;

    /// Verifies before consuming that the credentials work, the queue exists and the
    /// permissions suffice. The runtime calls this at start-up.
    async fn check_access(&self, queue: &QueueName) -> Result<()>;

    /// Creates the queue (and its dead-letter queue) if it does not exist.
    async fn create_queue(&self, queue: &QueueName, spec: &QueueSpec) -> Result<()> {
        let _ = (queue, spec);
        Err(QueueError::unsupported(self.name(), "create_queue"))
    }

    /// Deletes the queue and its dead-letter queue.
    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        let _ = queue;
        Err(QueueError::unsupported(self.name(), "delete_queue"))
    }
}

/// A locked session: the only receiver of that session's messages while the lock holds.
#[async_trait]
pub trait SessionReceiver: fmt::Debug + Send + Sync {
    /// The accepted session.
    fn session_id(&self) -> &SessionId;

    /// The queue.
    fn queue(&self) -> &QueueName;

    /// When the session lock expires unless renewed.
    fn locked_until(&self) -> SystemTime;

    /// Receives the session's next messages, in order, waiting up to `options.wait`.
    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<ReceivedMessage>>;

    /// Receives the session's next messages that are available now, without waiting for
    /// new ones to be sent: an empty batch means the session is drained for this receiver,
    /// and a consumer may move on to the next session at once.
    ///
    /// `options.wait` bounds how long the provider may take to find out (a round trip to
    /// the broker). The default is [`receive`](Self::receive) with that wait, which cannot
    /// tell "drained" from "nothing arrived in time"; providers that know their session's
    /// backlog override it and answer without waiting.
    async fn receive_available(&self, options: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        self.receive(options).await
    }

    /// Completes a message received through this session.
    async fn complete(&self, receipt: &Receipt) -> Result<()>;

    /// Abandons a message received through this session (delivered again, first in order).
    async fn abandon(&self, receipt: &Receipt) -> Result<()>;

    /// Dead-letters a message received through this session.
    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()>;

    /// Extends the session lock (and so the locks of its messages); returns the new expiry.
    async fn renew_session_lock(&self) -> Result<SystemTime>;

    /// Reads the session state, if the provider has it.
    async fn get_state(&self) -> Result<Option<Bytes>> {
        Err(QueueError::unsupported("session", "get_state"))
    }

    /// Writes the session state (`None` clears it), if the provider has it.
    async fn set_state(&self, state: Option<Bytes>) -> Result<()> {
        let _ = state;
        Err(QueueError::unsupported("session", "set_state"))
    }

    /// Releases the session lock. Unsettled messages become available again.
    async fn close(&self) -> Result<()>;
}

/// A provider behind dynamic dispatch, e.g. `Arc<DynQueueProvider>`.
pub type DynQueueProvider = dyn QueueProvider;

/// A shared provider.
pub type SharedQueueProvider = Arc<DynQueueProvider>;

/// Convenience methods for every provider.
pub trait QueueProviderExt: QueueProvider {
    /// Receives at most one message, waiting up to `wait`.
    fn receive_one<'a>(
        &'a self,
        queue: &'a QueueName,
        wait: Duration,
    ) -> impl std::future::Future<Output = Result<Option<ReceivedMessage>>> + Send + 'a {
        async move {
            Ok(self
                .receive(queue, ReceiveOptions::new(1, wait))
                .await?
                .into_iter()
                .next())
        }
    }

    /// Serializes `value` as JSON and sends it with content type `application/json`.
    fn send_json<'a, T: serde::Serialize + Sync + ?Sized>(
        &'a self,
        queue: &'a QueueName,
        value: &'a T,
        template: Message,
    ) -> impl std::future::Future<Output = Result<MessageId>> + Send + 'a {
        async move {
            let body = serde_json::to_vec(value).map_err(|e| QueueError::InvalidMessage {
                provider: self.name(),
                reason: format!("cannot encode body as JSON: {e}"),
            })?;
            let mut msg = template;
            msg.body = body.into();
            msg.content_type = Some("application/json".to_owned());
            self.send(queue, msg).await
        }
    }

    /// Moves dead letters of `queue` back to `queue` and reports what moved.
    ///
    /// Every provider behaves the same (see [`crate::redrive`]): each message is re-sent
    /// under a fresh message id, with its original id in
    /// [`ORIGINAL_MESSAGE_ID_ATTRIBUTE`](crate::redrive::ORIGINAL_MESSAGE_ID_ATTRIBUTE), so
    /// duplicate detection cannot drop it; its dead-letter copy is removed only after the
    /// re-send was accepted; order is kept and the first failure stops the run with a
    /// [`RedriveError`](crate::redrive::RedriveError) that carries the counts so far.
    fn redrive<'a>(
        &'a self,
        queue: &'a QueueName,
        options: crate::redrive::RedriveOptions,
    ) -> impl std::future::Future<
        Output = std::result::Result<crate::redrive::RedriveReport, crate::redrive::RedriveError>,
    > + Send
    + 'a {
        crate::redrive::run(self, queue, options)
    }
}

impl<P: QueueProvider + ?Sized> QueueProviderExt for P {}

#[async_trait]
impl<P: QueueProvider + ?Sized> QueueProvider for Arc<P> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn instrumented(&self) -> bool {
        (**self).instrumented()
    }
    async fn send(&self, queue: &QueueName, message: Message) -> Result<MessageId> {
        (**self).send(queue, message).await
    }
    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<Message>,
    ) -> Result<Vec<MessageId>> {
        (**self).send_batch(queue, messages).await
    }
    async fn receive(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        (**self).receive(queue, options).await
    }
    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        (**self).complete(receipt).await
    }
    async fn abandon(&self, receipt: &Receipt, delay: Option<Duration>) -> Result<()> {
        (**self).abandon(receipt, delay).await
    }
    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        (**self).dead_letter(receipt, reason).await
    }
    async fn renew_lock(&self, receipt: &Receipt) -> Result<SystemTime> {
        (**self).renew_lock(receipt).await
    }
    async fn accept_session(
        &self,
        queue: &QueueName,
        selector: SessionSelector,
        wait: Duration,
    ) -> Result<Option<Box<dyn SessionReceiver>>> {
        (**self).accept_session(queue, selector, wait).await
    }
    async fn receive_dead_letters(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        (**self).receive_dead_letters(queue, options).await
    }
    async fn check_access(&self, queue: &QueueName) -> Result<()> {
        (**self).check_access(queue).await
    }
    async fn create_queue(&self, queue: &QueueName, spec: &QueueSpec) -> Result<()> {
        (**self).create_queue(queue, spec).await
    }
    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        (**self).delete_queue(queue).await
    }
}
