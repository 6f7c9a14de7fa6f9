//! [`Signing`]: a [`QueueProvider`] decorator that signs every message it sends.

use std::{sync::Arc, time::Duration, time::SystemTime};

use async_trait::async_trait;
use queue_core::{
    Capabilities, DeadLetterReason, Message, MessageId, QueueName, QueueProvider, QueueSpec,
    Receipt, ReceiveOptions, ReceivedMessage, Result, SessionReceiver, SessionSelector,
};

use crate::{limits::Limits, signature::MessageSigner};

/// Signs every outgoing message (`send` and `send_batch`) with a [`MessageSigner`] and
/// forwards everything else to the inner provider unchanged.
///
/// A message that fails the signer's limits (or a ring without an active key) fails the
/// send with a permanent [`QueueError`](queue_core::QueueError) and nothing is sent; in a batch, nothing of the
/// batch is sent. So does a message whose application attributes plus the signature need
/// more attributes than the inner provider carries ([`Capabilities::max_attributes`]; on
/// SQS at most 8 application attributes): [`SecurityError::TooManyAttributeSlots`], as
/// [`QueueError::InvalidMessage`](queue_core::QueueError::InvalidMessage).
///
/// [`SecurityError::TooManyAttributeSlots`]: crate::SecurityError::TooManyAttributeSlots
///
/// ```
/// # async fn demo(provider: impl queue_core::QueueProvider) -> queue_core::Result<()> {
/// use queue_core::{Message, QueueName, QueueProvider};
/// use queue_security::{KeyRing, MessageSigner, Signing};
///
/// let ring = KeyRing::from_default_env()?; // QUEUE_SIGNING_KEYS
/// let signed = Signing::new(provider, MessageSigner::new(ring));
/// signed.send(&QueueName::new("events")?, Message::new("{}")).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Signing<P: ?Sized> {
    inner: Arc<P>,
    signer: MessageSigner,
}

impl<P: QueueProvider> Signing<P> {
    /// Wraps `inner`.
    pub fn new(inner: P, signer: MessageSigner) -> Self {
        Self {
            inner: Arc::new(inner),
            signer,
        }
    }
}

impl<P: QueueProvider + ?Sized> Signing<P> {
    /// Wraps a shared provider (for example an `Arc<DynQueueProvider>`).
    pub fn from_arc(inner: Arc<P>, signer: MessageSigner) -> Self {
        Self { inner, signer }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &Arc<P> {
        &self.inner
    }

    /// The signer.
    pub fn signer(&self) -> &MessageSigner {
        &self.signer
    }

    fn sign(&self, queue: &QueueName, message: &mut Message) -> Result<()> {
        // Asked per message: capabilities are cheap, and a wrapper may change them.
        let max = self.inner.capabilities().max_attributes;
        Limits::check_attribute_slots(&message.attributes, self.inner.name(), max)?;
        self.signer.sign(queue, message)?;
        Ok(())
    }
}

#[async_trait]
impl<P: QueueProvider + ?Sized> QueueProvider for Signing<P> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn send(&self, queue: &QueueName, mut message: Message) -> Result<MessageId> {
        self.sign(queue, &mut message)?;
        self.inner.send(queue, message).await
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        mut messages: Vec<Message>,
    ) -> Result<Vec<MessageId>> {
        for message in &mut messages {
            self.sign(queue, message)?;
        }
        self.inner.send_batch(queue, messages).await
    }

    async fn receive(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        self.inner.receive(queue, options).await
    }

    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        self.inner.complete(receipt).await
    }

    async fn abandon(&self, receipt: &Receipt, delay: Option<Duration>) -> Result<()> {
        self.inner.abandon(receipt, delay).await
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        self.inner.dead_letter(receipt, reason).await
    }

    async fn renew_lock(&self, receipt: &Receipt) -> Result<SystemTime> {
        self.inner.renew_lock(receipt).await
    }

    async fn accept_session(
        &self,
        queue: &QueueName,
        selector: SessionSelector,
        wait: Duration,
    ) -> Result<Option<Box<dyn SessionReceiver>>> {
        self.inner.accept_session(queue, selector, wait).await
    }

    async fn receive_dead_letters(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        self.inner.receive_dead_letters(queue, options).await
    }

    async fn check_access(&self, queue: &QueueName) -> Result<()> {
        self.inner.check_access(queue).await
    }

    async fn create_queue(&self, queue: &QueueName, spec: &QueueSpec) -> Result<()> {
        self.inner.create_queue(queue, spec).await
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        self.inner.delete_queue(queue).await
    }
}
