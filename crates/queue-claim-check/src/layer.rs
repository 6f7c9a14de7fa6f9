//! [`ClaimCheck`]: the provider layer that moves large bodies to a [`BlobStore`].

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use queue_core::{
    Capabilities, DeadLetterReason, Message, MessageId, QueueError, QueueName, QueueProvider,
    Receipt, ReceiveOptions, ReceivedMessage, Result, SessionReceiver, SessionSelector,
    layer::{Forward, ForwardSession},
};

use crate::{
    error::ClaimCheckError,
    reference::{BlobReference, REFERENCE_ATTRIBUTE},
    store::{BlobStore, SweepReport, sha256},
};

/// Default room left under the provider's message size for attributes the layers below
/// add (the signature envelope is at most 4 KiB, the reference about 250 bytes) and for
/// the provider's own encoding.
pub const DEFAULT_HEADROOM: usize = 16 * 1024;

/// Default largest body the layer sends or fetches: 32 MiB (GitHub caps webhook payloads
/// at 25 MB).
pub const DEFAULT_MAX_BODY_SIZE: usize = 32 * 1024 * 1024;

/// Most receipts of claim-checked deliveries remembered for cleanup at once. Past this, a
/// completed message's blob is left to the orphan sweep.
pub const DEFAULT_PENDING_CAPACITY: usize = 65_536;

/// When a claim-checked message's blob is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Cleanup {
    /// After the message is completed, whether it was received from the queue or from its
    /// dead-letter queue (a purge). A dead-lettered message keeps its blob, so it can be
    /// inspected and redriven; [`BlobStore::sweep`] removes what is never purged. The
    /// default.
    #[default]
    DeleteOnComplete,
    /// Never by the layer; only the sweep deletes blobs. For providers that may deliver a
    /// completed message again (SQS standard queues), where the late copy would find its
    /// blob gone and be dead-lettered as `ClaimCheckBlobMissing`.
    SweepOnly,
}

/// A [`QueueProvider`] layer that sends bodies above a threshold through an object store.
///
/// On send, a message whose [`Message::encoded_size`] exceeds the threshold (by default
/// the inner provider's `max_message_size` minus [`DEFAULT_HEADROOM`]) has its body put
/// under `<prefix>/<message id>/<sha256>` and is sent with an empty body and a
/// [`REFERENCE_ATTRIBUTE`] naming the key, size and SHA-256. Smaller messages pass
/// through unchanged.
///
/// On receive (plain, session and dead-letter receives), a referenced body is fetched,
/// checked against the declared size (never allocating more) and digest, and put back, and
/// the attribute removed: handlers see the message as it was sent. A message whose blob is
/// missing or altered, or whose reference is invalid, is dead-lettered with a reason from
/// [`crate::reason`] and left out of the batch. A store failure abandons the message (it
/// is delivered again) and, when no message of the batch could be delivered, fails the
/// receive with the store's error, classified like a provider error.
///
/// Put [`Signing`](https://docs.rs/queue-security) *outside* this layer
/// (`Signing<ClaimCheck<P>>`): the signature then covers the original body and message id,
/// which fix the reference's key, size and digest (see `docs/adr/0012-claim-check.md`).
///
/// ```
/// # async fn demo() -> queue_core::Result<()> {
/// use std::sync::Arc;
/// use queue_claim_check::{BlobStore, ClaimCheck};
/// use queue_core::{Message, QueueName, QueueProvider, QueueSpec};
/// use queue_memory::InMemoryProvider;
///
/// let store = BlobStore::new(Arc::new(object_store::memory::InMemory::new()));
/// let provider = ClaimCheck::new(InMemoryProvider::new(), store);
/// let queue = QueueName::new("events")?;
/// provider.create_queue(&queue, &QueueSpec::default()).await?;
/// provider.send(&queue, Message::new(vec![b'x'; 1 << 20])).await?; // 1 MiB, via the store
/// let got = provider.receive(&queue, Default::default()).await?;
/// assert_eq!(got[0].body().len(), 1 << 20);
/// provider.complete(&got[0].receipt).await?; // deletes the blob
/// # Ok(()) }
/// ```
pub struct ClaimCheck<P: ?Sized> {
    core: Arc<Core>,
    inner: Arc<P>,
}

impl<P: ?Sized> fmt::Debug for ClaimCheck<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaimCheck")
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

struct Core {
    store: BlobStore,
    threshold: Option<usize>,
    headroom: usize,
    max_body_size: usize,
    cleanup: Cleanup,
    pending: Mutex<HashMap<Receipt, String>>,
    pending_capacity: usize,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaimCheck")
            .field("store", &self.store)
            .field("threshold", &self.threshold)
            .field("headroom", &self.headroom)
            .field("max_body_size", &self.max_body_size)
            .field("cleanup", &self.cleanup)
            .finish_non_exhaustive()
    }
}

impl<P: QueueProvider> ClaimCheck<P> {
    /// Wraps `inner`, with bodies going to `store`.
    pub fn new(inner: P, store: BlobStore) -> Self {
        Self::from_arc(Arc::new(inner), store)
    }
}

impl<P: QueueProvider + ?Sized> ClaimCheck<P> {
    /// Wraps a shared provider (for example an `Arc<DynQueueProvider>`).
    pub fn from_arc(inner: Arc<P>, store: BlobStore) -> Self {
        let core = Core {
            store,
            threshold: None,
            headroom: DEFAULT_HEADROOM,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            cleanup: Cleanup::default(),
            pending: Mutex::new(HashMap::new()),
            pending_capacity: DEFAULT_PENDING_CAPACITY,
        };
        Self {
            core: Arc::new(core),
            inner,
        }
    }

    fn core_mut(&mut self) -> &mut Core {
        Arc::get_mut(&mut self.core).expect("configured before use")
    }

    /// Offloads messages whose encoded size exceeds `bytes` (instead of the provider's
    /// limit minus the headroom). `0` offloads every message with a body.
    pub fn with_threshold(mut self, bytes: usize) -> Self {
        self.core_mut().threshold = Some(bytes);
        self
    }

    /// Sets the room left under the provider's limit when no threshold is set.
    pub fn with_headroom(mut self, bytes: usize) -> Self {
        self.core_mut().headroom = bytes;
        self
    }

    /// Sets the largest body sent or fetched ([`DEFAULT_MAX_BODY_SIZE`]).
    pub fn with_max_body_size(mut self, bytes: usize) -> Self {
        self.core_mut().max_body_size = bytes;
        self
    }

    /// Sets when blobs are deleted.
    pub fn with_cleanup(mut self, cleanup: Cleanup) -> Self {
        self.core_mut().cleanup = cleanup;
        self
    }

    /// The wrapped provider.
    pub fn inner_provider(&self) -> &Arc<P> {
        &self.inner
    }

    /// The blob store.
    pub fn store(&self) -> &BlobStore {
        &self.core.store
    }

    /// The size above which a message is offloaded.
    pub fn threshold(&self) -> usize {
        self.core.threshold(&self.inner.capabilities())
    }

    /// Deletes blobs older than `older_than` (see [`BlobStore::sweep`]).
    pub async fn sweep(&self, older_than: Duration) -> Result<SweepReport> {
        Ok(self.core.store.sweep(older_than).await?)
    }
}

impl Core {
    fn threshold(&self, caps: &Capabilities) -> usize {
        self.threshold
            .unwrap_or_else(|| caps.max_message_size.saturating_sub(self.headroom))
    }

    /// Puts the body of a large message in the store and returns the message to send
    /// instead, with the key written (`None`: the message goes as it is).
    async fn offload(
        &self,
        provider: &'static str,
        caps: &Capabilities,
        queue: &QueueName,
        mut message: Message,
    ) -> Result<(Message, Option<String>)> {
        if message.attributes.contains_key(REFERENCE_ATTRIBUTE) {
            return Err(QueueError::InvalidMessage {
                provider,
                reason: format!("the attribute `{REFERENCE_ATTRIBUTE}` is reserved"),
            });
        }
        if message.encoded_size() <= self.threshold(caps) || message.body.is_empty() {
            return Ok((message, None));
        }
        if message.body.len() > self.max_body_size {
            return Err(QueueError::MessageTooLarge {
                provider,
                queue: queue.to_string(),
                size: message.body.len(),
                max: self.max_body_size,
            });
        }
        if let Some(max) = caps
            .max_attributes
            .filter(|max| message.attributes.len() + 1 > *max)
        {
            return Err(QueueError::InvalidMessage {
                provider,
                reason: format!(
                    "{} attributes plus the claim-check reference exceed the {max} {provider} carries",
                    message.attributes.len()
                ),
            });
        }
        let id = message
            .message_id
            .get_or_insert_with(MessageId::random)
            .clone();
        let digest = sha256(&message.body);
        let key = self.store.key_for(&id, &digest);
        let reference = BlobReference::new(key.clone(), message.body.len() as u64, digest);
        self.store
            .put(&key, std::mem::take(&mut message.body))
            .await?;
        message
            .attributes
            .insert(REFERENCE_ATTRIBUTE.to_owned(), reference.to_string());
        tracing::debug!(key, size = reference.size, "claim-check: body offloaded");
        Ok((message, Some(key)))
    }

    /// After a failed send: deletes the blob when the error says nothing was sent. An
    /// ambiguous failure (timeout, lost connection) keeps it: the message may be in the
    /// queue. The sweep removes what stays behind.
    async fn discard(&self, error: &QueueError, key: &str) {
        if error.retry_class() != queue_core::RetryClass::Permanent {
            return;
        }
        if let Err(e) = self.store.delete(key).await {
            tracing::warn!(key, error = %e, "claim-check: could not delete the blob of an unsent message; the sweep will");
        }
    }

    fn check_reference(
        &self,
        received: &ReceivedMessage,
        text: &str,
    ) -> Result<BlobReference, ClaimCheckError> {
        let reference = BlobReference::parse(text)?;
        if reference.size > self.max_body_size as u64 {
            return Err(ClaimCheckError::TooLarge {
                declared: reference.size,
                max: self.max_body_size as u64,
            });
        }
        if !received.message.body.is_empty() {
            return Err(ClaimCheckError::MalformedReference {
                reason: "a claim-checked message carries an empty body",
            });
        }
        if reference.key != self.store.key_for(&received.message_id, &reference.sha256) {
            return Err(ClaimCheckError::MalformedReference {
                reason: "the key is not the one this message id and digest give",
            });
        }
        Ok(reference)
    }

    /// Fetches and restores the body of a claim-checked message; other messages pass.
    async fn resolve(
        &self,
        mut received: ReceivedMessage,
    ) -> Result<ReceivedMessage, (ReceivedMessage, ClaimCheckError)> {
        let Some(text) = received.message.attributes.get(REFERENCE_ATTRIBUTE) else {
            return Ok(received);
        };
        let reference = match self.check_reference(&received, text) {
            Ok(r) => r,
            Err(e) => return Err((received, e)),
        };
        match self.store.fetch(&reference).await {
            Ok(body) => {
                received.message.body = body;
                received.message.attributes.remove(REFERENCE_ATTRIBUTE);
                self.remember(&received.receipt, reference.key);
                Ok(received)
            }
            Err(e) => Err((received, e)),
        }
    }

    fn remember(&self, receipt: &Receipt, key: String) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() < self.pending_capacity {
            pending.insert(receipt.clone(), key);
        } else {
            tracing::debug!(
                key,
                "claim-check: cleanup list full; the sweep will delete this blob"
            );
        }
    }

    fn forget(&self, receipt: &Receipt) -> Option<String> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.remove(receipt)
    }

    /// After a successful complete: deletes the message's blob, per the cleanup policy.
    async fn completed(&self, key: Option<String>) {
        let Some(key) = key else { return };
        if self.cleanup != Cleanup::DeleteOnComplete {
            return;
        }
        if let Err(e) = self.store.delete(&key).await {
            tracing::warn!(key, error = %e, "claim-check: could not delete the blob of a completed message; the sweep will");
        }
    }

    /// Resolves a received batch: undeliverable messages are dead-lettered, messages whose
    /// blob cannot be read now are abandoned.
    async fn resolve_batch<S: Settle + ?Sized>(
        &self,
        settle: &S,
        batch: Vec<ReceivedMessage>,
    ) -> Result<Vec<ReceivedMessage>> {
        let outcomes = futures::future::join_all(batch.into_iter().map(|m| self.resolve(m))).await;
        let mut ready = Vec::with_capacity(outcomes.len());
        let mut store_error = None;
        for outcome in outcomes {
            let (received, error) = match outcome {
                Ok(received) => {
                    ready.push(received);
                    continue;
                }
                Err(failed) => failed,
            };
            match error.dead_letter_reason() {
                Some(reason) => reject(settle, &received, reason, &error).await,
                None => {
                    tracing::warn!(message_id = %received.message_id, error = %error, "claim-check: blob unreadable now; message abandoned");
                    if let Err(e) = settle.abandon(&received.receipt).await {
                        tracing::warn!(message_id = %received.message_id, error = %e, "claim-check: abandon failed; the lock will expire");
                    }
                    store_error = Some(error);
                }
            }
        }
        match store_error {
            Some(error) if ready.is_empty() => Err(error.into()),
            _ => Ok(ready),
        }
    }

    /// Dead-letter receive: restores what it can and returns the rest as received (with
    /// the reference attribute), since a dead letter is never dead-lettered again.
    async fn resolve_dead_letters(&self, batch: Vec<ReceivedMessage>) -> Vec<ReceivedMessage> {
        let outcomes = futures::future::join_all(batch.into_iter().map(|m| self.resolve(m))).await;
        outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Ok(received) => received,
                Err((received, error)) => {
                    tracing::debug!(message_id = %received.message_id, error = %error, "claim-check: dead letter returned with its reference");
                    received
                }
            })
            .collect()
    }
}

async fn reject<S: Settle + ?Sized>(
    settle: &S,
    received: &ReceivedMessage,
    reason: &'static str,
    error: &ClaimCheckError,
) {
    tracing::warn!(message_id = %received.message_id, reason, error = %error, "claim-check: message dead-lettered");
    let why = DeadLetterReason::new(reason, error.to_string());
    if let Err(e) = settle.dead_letter(&received.receipt, why).await {
        tracing::warn!(message_id = %received.message_id, error = %e, "claim-check: dead-letter failed; the message comes back when its lock expires");
    }
}

/// Where a layer settles a message it will not hand out: the provider or a session.
#[async_trait]
trait Settle: Send + Sync {
    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()>;
    async fn abandon(&self, receipt: &Receipt) -> Result<()>;
}

struct Direct<'a, P: ?Sized>(&'a P);

#[async_trait]
impl<P: QueueProvider + ?Sized> Settle for Direct<'_, P> {
    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        self.0.dead_letter(receipt, reason).await
    }
    async fn abandon(&self, receipt: &Receipt) -> Result<()> {
        self.0.abandon(receipt, None).await
    }
}

#[async_trait]
impl Settle for dyn SessionReceiver {
    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        SessionReceiver::dead_letter(self, receipt, reason).await
    }
    async fn abandon(&self, receipt: &Receipt) -> Result<()> {
        SessionReceiver::abandon(self, receipt).await
    }
}

#[async_trait]
impl<P: QueueProvider + ?Sized> Forward for ClaimCheck<P> {
    type Inner = P;

    fn inner(&self) -> &P {
        &self.inner
    }

    /// The inner provider's, with the message size raised to the body limit and one
    /// attribute slot taken by the reference.
    fn capabilities(&self) -> Capabilities {
        let mut caps = self.inner.capabilities();
        caps.max_message_size = caps.max_message_size.max(self.core.max_body_size);
        caps.max_attributes = caps.max_attributes.map(|n| n.saturating_sub(1));
        caps
    }

    async fn send(&self, queue: &QueueName, message: Message) -> Result<MessageId> {
        let caps = self.inner.capabilities();
        let name = self.inner.name();
        let (message, key) = self.core.offload(name, &caps, queue, message).await?;
        let result = self.inner.send(queue, message).await;
        if let (Err(e), Some(key)) = (&result, &key) {
            self.core.discard(e, key).await;
        }
        result
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<Message>,
    ) -> Result<Vec<MessageId>> {
        let caps = self.inner.capabilities();
        let name = self.inner.name();
        let mut out = Vec::with_capacity(messages.len());
        let mut keys = Vec::with_capacity(messages.len());
        for message in messages {
            let (message, key) = self.core.offload(name, &caps, queue, message).await?;
            out.push(message);
            keys.push(key);
        }
        let result = self.inner.send_batch(queue, out).await;
        match &result {
            Err(QueueError::PartialBatch { failed, .. }) => {
                for entry in failed {
                    if let Some(Some(key)) = keys.get(entry.index) {
                        self.core.discard(&entry.error, key).await;
                    }
                }
            }
            Err(e) => {
                for key in keys.iter().flatten() {
                    self.core.discard(e, key).await;
                }
            }
            Ok(_) => {}
        }
        result
    }

    async fn receive(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        let batch = self.inner.receive(queue, options).await?;
        self.core.resolve_batch(&Direct(&*self.inner), batch).await
    }

    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        let key = self.core.forget(receipt);
        self.inner.complete(receipt).await?;
        self.core.completed(key).await;
        Ok(())
    }

    async fn abandon(&self, receipt: &Receipt, delay: Option<Duration>) -> Result<()> {
        self.core.forget(receipt);
        self.inner.abandon(receipt, delay).await
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        // The blob stays for inspection and redrive (see `Cleanup`).
        self.core.forget(receipt);
        self.inner.dead_letter(receipt, reason).await
    }

    async fn accept_session(
        &self,
        queue: &QueueName,
        selector: SessionSelector,
        wait: Duration,
    ) -> Result<Option<Box<dyn SessionReceiver>>> {
        let session = self.inner.accept_session(queue, selector, wait).await?;
        Ok(session.map(|inner| {
            Box::new(ClaimCheckSession {
                inner,
                core: self.core.clone(),
            }) as Box<dyn SessionReceiver>
        }))
    }

    async fn receive_dead_letters(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        let batch = self.inner.receive_dead_letters(queue, options).await?;
        Ok(self.core.resolve_dead_letters(batch).await)
    }
}

/// A session receiver whose messages come back with their bodies.
struct ClaimCheckSession {
    inner: Box<dyn SessionReceiver>,
    core: Arc<Core>,
}

impl fmt::Debug for ClaimCheckSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaimCheckSession")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ForwardSession for ClaimCheckSession {
    fn inner(&self) -> &dyn SessionReceiver {
        &*self.inner
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        let batch = self.inner.receive(options).await?;
        self.core.resolve_batch(&*self.inner, batch).await
    }

    async fn receive_available(&self, options: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        let batch = self.inner.receive_available(options).await?;
        self.core.resolve_batch(&*self.inner, batch).await
    }

    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        let key = self.core.forget(receipt);
        self.inner.complete(receipt).await?;
        self.core.completed(key).await;
        Ok(())
    }

    async fn abandon(&self, receipt: &Receipt) -> Result<()> {
        self.core.forget(receipt);
        self.inner.abandon(receipt).await
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        self.core.forget(receipt);
        self.inner.dead_letter(receipt, reason).await
    }
}
