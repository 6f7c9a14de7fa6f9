//! [`Signing`]: a [`QueueProvider`] decorator that signs every message it sends.

use std::sync::Arc;

use async_trait::async_trait;
use queue_core::{Message, MessageId, QueueName, QueueProvider, Result, layer::Forward};

use crate::{limits::Limits, signature::MessageSigner};

/// Signs every outgoing message (`send` and `send_batch`) with a [`MessageSigner`] and
/// forwards everything else to the inner provider unchanged (a [`Forward`] layer).
///
/// A message that fails the signer's limits (or a ring without an active key) fails the
/// send with a permanent [`QueueError`](queue_core::QueueError) and nothing is sent; in a batch, nothing of the
/// batch is sent. So does a message whose application attributes plus the signature need
/// more attributes than the inner provider carries ([`Capabilities::max_attributes`](queue_core::Capabilities::max_attributes); on
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
impl<P: QueueProvider + ?Sized> Forward for Signing<P> {
    type Inner = P;

    fn inner(&self) -> &P {
        &self.inner
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
}
