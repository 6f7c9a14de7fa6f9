//! [`SqsProvider`]: the [`QueueProvider`] implementation on AWS SQS.
//!
//! One file per responsibility: [`client`] builds the SDK client, [`queues`] finds,
//! creates and deletes queues, [`receipts`] keeps the in-flight table behind receipts,
//! [`receive`] turns SQS answers into messages, [`batch`] sends and completes in batches,
//! [`dead_letter`] moves a message to the dead-letter queue.

mod batch;
mod client;
mod dead_letter;
mod queues;
mod receipts;
mod receive;

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use queue_core::{
    Capabilities, DeadLetterReason, Message, MessageId, QueueError, QueueName, QueueProvider,
    QueueSpec, Receipt, ReceiveOptions, ReceivedMessage, Result, SessionSupport,
};

use queues::QueueInfo;
pub use queues::dlq_name;
use receipts::{InFlight, Source};

use crate::{
    PROVIDER,
    builder::SqsBuilder,
    codec::{self, MAX_MESSAGE_SIZE},
    error::Ctx,
};

/// Most entries in one SQS batch call and most messages one receive returns.
pub const MAX_BATCH: usize = 10;
/// Longest visibility timeout (lock) SQS grants, counted from the receive.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
/// Longest long-poll wait of one `ReceiveMessage` call.
pub const MAX_WAIT: Duration = Duration::from_secs(20);

/// The AWS SQS provider.
///
/// Cheap to clone (shared state behind an `Arc`). See the crate documentation for how
/// messages, sessions, locks and dead-lettering map onto SQS.
#[derive(Clone)]
pub struct SqsProvider {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    region: Option<String>,
    endpoint: Option<String>,
    content_dedup: bool,
    timeout: Duration,
    queues: RwLock<HashMap<QueueName, Arc<QueueInfo>>>,
    inflight: Mutex<InFlight>,
}

impl SqsProvider {
    /// Starts building a provider; finish with [`SqsBuilder::build`] (async). From a
    /// configuration file, use [`SqsProvider::from_settings`].
    pub fn builder() -> SqsBuilder {
        SqsBuilder::new()
    }

    /// What this provider supports. SQS decides some of it per queue: sessions
    /// (`MessageGroupId`) and duplicate detection work only on FIFO queues (names
    /// ending in `.fifo`), scheduled delivery only on standard queues. The flags say
    /// what the provider can do on the queue type that has the feature; using a feature
    /// on the other type fails with a typed error before anything is sent.
    pub fn sqs_capabilities() -> Capabilities {
        let mut caps = Capabilities::default();
        caps.sessions = SessionSupport::Grouped;
        caps.session_state = false;
        caps.scheduled_delivery = true;
        caps.max_schedule_delay = Some(codec::MAX_DELAY);
        caps.delayed_abandon = true;
        caps.max_batch_size = MAX_BATCH;
        caps.max_message_size = MAX_MESSAGE_SIZE;
        caps.max_lock_duration = MAX_VISIBILITY;
        caps.lock_renewal = true;
        caps.native_dead_letter = true;
        caps.duplicate_detection = true;
        caps.queue_management = true;
        caps.max_attributes = Some(codec::MAX_APP_ATTRIBUTES);
        // SendMessageBatch accepts entries one by one (and the codec refuses an entry
        // before the call): a failed batch is a `PartialBatch`.
        caps.batch_atomic = false;
        caps
    }

    fn ctx<'a>(&self, operation: &'static str, queue: &'a str) -> Ctx<'a> {
        Ctx::new(operation, queue, self.inner.timeout)
    }

    /// Forgets a cached queue (after it was deleted or reported missing).
    fn forget(&self, queue: &QueueName) {
        if let Ok(mut map) = self.inner.queues.write() {
            map.remove(queue);
        }
    }

    /// Drops the cache entry when the error says the queue is gone, then returns it.
    fn after_error(&self, queue: &QueueName, err: QueueError) -> QueueError {
        if matches!(err, QueueError::QueueNotFound { .. }) {
            self.forget(queue);
        }
        err
    }
}

/// Whole seconds, rounded up (SQS takes visibility timeouts and delays in seconds).
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl fmt::Debug for SqsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsProvider")
            .field("region", &self.inner.region)
            .field("endpoint", &self.inner.endpoint)
            .field("content_based_deduplication", &self.inner.content_dedup)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl QueueProvider for SqsProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn capabilities(&self) -> Capabilities {
        Self::sqs_capabilities()
    }

    async fn send(&self, queue: &QueueName, message: Message) -> Result<MessageId> {
        let info = self.queue_info(queue, "send").await?;
        let enc = codec::encode(message, queue, self.limits(&info), SystemTime::now())?;
        self.send_encoded(queue, &info.url, enc, "send", info.max_size)
            .await
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<Message>,
    ) -> Result<Vec<MessageId>> {
        self.send_many(queue, messages).await
    }

    async fn receive(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        let info = self.queue_info(queue, "receive").await?;
        self.receive_from(&info, Source::Main, options, "receive")
            .await
    }

    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        self.complete_one(receipt).await
    }

    async fn abandon(&self, receipt: &Receipt, delay: Option<Duration>) -> Result<()> {
        const OP: &str = "abandon";
        let secs = delay.map_or(0, ceil_secs);
        if secs > MAX_VISIBILITY.as_secs() {
            return Err(QueueError::unsupported(
                PROVIDER,
                "abandon with a delay over 12 hours (the SQS visibility timeout limit)",
            ));
        }
        let token = self.live_receipt(receipt, OP)?;
        self.change_visibility(receipt, &token, secs, OP).await?;
        self.settle(&token);
        Ok(())
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        self.dead_letter_one(receipt, reason).await
    }

    async fn renew_lock(&self, receipt: &Receipt) -> Result<SystemTime> {
        self.renew(receipt).await
    }

    async fn receive_dead_letters(
        &self,
        queue: &QueueName,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        const OP: &str = "receive_dead_letters";
        let info = self.queue_info(queue, OP).await?;
        self.receive_from(&info, Source::DeadLetter, options, OP)
            .await
    }

    async fn check_access(&self, queue: &QueueName) -> Result<()> {
        const OP: &str = "check_access";
        // Always ask SQS: this is the start-up check of credentials and the queue.
        let info = Arc::new(self.load_queue_info(queue, OP).await?);
        if let Ok(mut map) = self.inner.queues.write() {
            map.insert(queue.clone(), info);
        }
        Ok(())
    }

    async fn create_queue(&self, queue: &QueueName, spec: &QueueSpec) -> Result<()> {
        self.create(queue, spec).await
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        self.delete(queue).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StaticCredentials;

    const CANARY: &str = "CANARY-sqs-provider-71e2";

    #[tokio::test]
    async fn provider_debug_and_build_errors_never_show_secrets() {
        let creds = StaticCredentials::new(CANARY.into(), CANARY.into());
        let provider = SqsProvider::builder()
            .with_region("eu-west-1")
            .with_endpoint("http://127.0.0.1:1")
            .with_credentials(creds.clone())
            .build()
            .await
            .expect("building makes no network call");
        let text = format!("{provider:?}");
        assert!(!text.contains(CANARY), "{text}");
        assert!(
            text.contains("eu-west-1") && text.contains("127.0.0.1:1"),
            "{text}"
        );
        assert_eq!(provider.name(), "sqs");

        let err = SqsProvider::builder()
            .with_region("eu-west-1")
            .with_endpoint("http://sqs.example.com")
            .with_credentials(creds)
            .build()
            .await
            .expect_err("plain http to a public host");
        assert!(
            matches!(err, QueueError::Config { ref field, .. } if field == "sqs.endpoint"),
            "{err}"
        );
        assert!(!format!("{err} {err:?}").contains(CANARY));
    }

    #[test]
    fn capabilities_describe_sqs() {
        let caps = SqsProvider::sqs_capabilities();
        assert_eq!(caps.sessions, SessionSupport::Grouped);
        assert_eq!(caps.max_batch_size, 10);
        assert_eq!(caps.max_message_size, 1024 * 1024);
        assert_eq!(caps.max_schedule_delay, Some(Duration::from_secs(900)));
        assert_eq!(caps.max_lock_duration, Duration::from_secs(12 * 3600));
        assert!(caps.delayed_abandon && caps.lock_renewal && caps.native_dead_letter);
        assert!(caps.duplicate_detection && caps.queue_management && !caps.session_state);
        assert!(!caps.batch_atomic);
    }

    #[test]
    fn whole_second_rounding() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }
}
