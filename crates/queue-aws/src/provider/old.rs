//! [`SqsProvider`]: the [`QueueProvider`] implementation on AWS SQS.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use aws_sdk_sqs::{
    Client,
    error::ProvideErrorMetadata,
    types::{
        DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
        QueueAttributeName, SendMessageBatchRequestEntry,
    },
};
use queue_core::{
    BatchEntryError, Capabilities, DeadLetterReason, Message, MessageId, NameKind, QueueError,
    QueueName, QueueProvider, QueueSpec, Receipt, ReceiveOptions, ReceivedMessage, Result,
    SessionId, SessionSupport, SqsSettings,
};

use crate::{
    PROVIDER,
    codec::{self, Encoded, Limits, MAX_MESSAGE_SIZE},
    config::{SqsConfig, validate_endpoint},
    error::{Ctx, Failure, failure_of, failure_of_entry, map_failure, map_sdk},
};

/// Most entries in one SQS batch call and most messages one receive returns.
pub const MAX_BATCH: usize = 10;
/// Longest visibility timeout (lock) SQS grants, counted from the receive.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
/// Longest long-poll wait of one `ReceiveMessage` call.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// How much earlier than the receive answer a lock is assumed to have started.
const LOCK_CLOCK_MARGIN: Duration = Duration::from_secs(1);
/// Pause between short polls during the sub-second rest of a receive wait.
const SHORT_POLL_PAUSE: Duration = Duration::from_millis(100);
/// SQS keeps messages at most 14 days; dead-letter queues get this retention.
const MAX_RETENTION_SECS: u64 = 14 * 24 * 60 * 60;
/// Receipt token prefixes: main queue or its dead-letter queue.
const MAIN: &str = "m";
const DLQ: &str = "d";

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

/// What the provider knows about one queue (cached after the first use).
#[derive(Debug)]
struct QueueInfo {
    name: QueueName,
    url: String,
    fifo: bool,
    visibility: Duration,
    max_size: usize,
    content_dedup: bool,
    dlq: Option<DlqInfo>,
}

#[derive(Debug)]
struct DlqInfo {
    name: String,
    url: String,
    fifo: bool,
    visibility: Duration,
    max_size: usize,
}

/// A message this provider received: kept so that `dead_letter` can copy it to the
/// dead-letter queue (SQS cannot move a message by receipt handle).
struct Stored {
    body: String,
    attributes: HashMap<String, MessageAttributeValue>,
    group_id: Option<String>,
    sqs_message_id: String,
}

/// What this provider knows about one delivery (one receipt handle).
struct Delivery {
    /// The message, until the delivery is settled (main queue only).
    stored: Option<Arc<Stored>>,
    /// When the lock runs out, renewals included (conservative: counted from before the
    /// receive or renew call).
    locked_until: SystemTime,
    /// Completed, abandoned or dead-lettered through this provider.
    settled: bool,
}

/// Deliveries by receipt handle. An entry is useful only while its lock could hold:
/// after that, the expiry alone rejects the receipt. So entries are dropped a minute
/// after their lock ran out, which bounds the table by what is in flight.
#[derive(Default)]
struct InFlight {
    map: HashMap<String, Delivery>,
    inserts: u64,
}

impl InFlight {
    fn insert(&mut self, handle: String, delivery: Delivery) {
        self.inserts += 1;
        if self.inserts.is_multiple_of(256) {
            let now = SystemTime::now();
            self.map
                .retain(|_, d| d.locked_until + Duration::from_secs(60) > now);
        }
        self.map.insert(handle, delivery);
    }
}

/// A parsed receipt token: `m:<locked-until-ms>:<handle>` or `d:...` for the
/// dead-letter side.
struct Token<'r> {
    source: Source,
    locked_until: SystemTime,
    handle: &'r str,
}

/// A receive whose result lands in the main queue or its dead-letter queue.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Main,
    DeadLetter,
}

impl SqsProvider {
    /// Starts building a provider; finish with [`SqsConfig::build`].
    pub fn builder() -> SqsConfig {
        SqsConfig::new()
    }

    /// Builds a provider from shared settings (see [`SqsConfig::from_settings`]).
    pub async fn from_settings(settings: &SqsSettings) -> Result<Self> {
        SqsConfig::from_settings(settings)?.build().await
    }

    /// Builds a provider from `config`.
    pub async fn from_config(config: SqsConfig) -> Result<Self> {
        Self::connect(config).await
    }

    pub(crate) async fn connect(config: SqsConfig) -> Result<Self> {
        config.validate()?;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(profile) = &config.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(creds) = &config.credentials {
            loader = loader.credentials_provider(creds.to_sdk());
        }
        loader = loader.timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(config.operation_timeout)
                .build(),
        );
        if let Some(attempts) = config.max_attempts {
            loader = loader.retry_config(
                aws_config::retry::RetryConfig::standard().with_max_attempts(attempts),
            );
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(QueueError::config(
                "sqs.region",
                "no region configured and none found in the environment or AWS profile",
            ));
        }
        // An endpoint can also come from AWS_ENDPOINT_URL(_SQS) or a profile; the
        // plaintext rule applies to it just the same.
        let endpoint = match &config.endpoint {
            Some(e) => Some(e.clone()),
            None => {
                let key = aws_types::service_config::ServiceConfigKey::builder()
                    .service_id("SQS")
                    .env("AWS_ENDPOINT_URL")
                    .profile("endpoint_url")
                    .build()
                    .map_err(|e| QueueError::config("sqs.endpoint", e.to_string()))?;
                let configured = sdk
                    .service_config()
                    .and_then(|c| c.load_config(key))
                    .or_else(|| sdk.endpoint_url().map(str::to_owned));
                if let Some(e) = &configured {
                    validate_endpoint(
                        "AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL / profile endpoint_url",
                        e,
                    )?;
                }
                configured
            }
        };
        let mut builder = aws_sdk_sqs::config::Builder::from(&sdk);
        if let Some(e) = &endpoint {
            builder = builder.endpoint_url(e.clone());
        }
        let client = Client::from_conf(builder.build());
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                region: sdk.region().map(|r| r.to_string()),
                endpoint,
                content_dedup: config.content_based_deduplication,
                timeout: config.operation_timeout,
                queues: RwLock::new(HashMap::new()),
                inflight: Mutex::new(InFlight::default()),
            }),
        })
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

    async fn queue_info(&self, queue: &QueueName, op: &'static str) -> Result<Arc<QueueInfo>> {
        if let Some(info) = self
            .inner
            .queues
            .read()
            .ok()
            .and_then(|m| m.get(queue).cloned())
        {
            return Ok(info);
        }
        let info = Arc::new(self.load_queue_info(queue, op).await?);
        if let Ok(mut map) = self.inner.queues.write() {
            map.insert(queue.clone(), info.clone());
        }
        Ok(info)
    }

    async fn queue_url(&self, name: &str, op: &'static str) -> Result<String> {
        let out = self
            .inner
            .client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| map_sdk(e, self.ctx(op, name)))?;
        out.queue_url.ok_or_else(|| QueueError::QueueNotFound {
            provider: PROVIDER,
            queue: name.to_owned(),
            operation: op,
        })
    }

    async fn queue_attributes(
        &self,
        name: &str,
        url: &str,
        op: &'static str,
    ) -> Result<HashMap<QueueAttributeName, String>> {
        let out = self
            .inner
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| map_sdk(e, self.ctx(op, name)))?;
        Ok(out.attributes.unwrap_or_default())
    }

    async fn load_queue_info(&self, queue: &QueueName, op: &'static str) -> Result<QueueInfo> {
        let url = self.queue_url(queue.as_str(), op).await?;
        let attrs = self.queue_attributes(queue.as_str(), &url, op).await?;
        let dlq_name = attrs
            .get(&QueueAttributeName::RedrivePolicy)
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .and_then(|v| {
                v.get("deadLetterTargetArn")
                    .and_then(|a| a.as_str())
                    .and_then(|arn| arn.rsplit(':').next())
                    .map(str::to_owned)
            })
            .or_else(|| dlq_name(queue).ok().map(|q| q.as_str().to_owned()));
        let mut dlq = None;
        if let Some(name) = dlq_name {
            match self.queue_url(&name, op).await {
                Ok(dl_url) => {
                    let dl_attrs = self.queue_attributes(&name, &dl_url, op).await?;
                    dlq = Some(DlqInfo {
                        fifo: name.ends_with(".fifo"),
                        visibility: visibility_of(&dl_attrs),
                        max_size: max_size_of(&dl_attrs),
                        name,
                        url: dl_url,
                    });
                }
                Err(QueueError::QueueNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(QueueInfo {
            name: queue.clone(),
            fifo: queue.is_fifo()
                || attrs
                    .get(&QueueAttributeName::FifoQueue)
                    .is_some_and(|v| v == "true"),
            visibility: visibility_of(&attrs),
            max_size: max_size_of(&attrs),
            content_dedup: attrs
                .get(&QueueAttributeName::ContentBasedDeduplication)
                .is_some_and(|v| v == "true"),
            url,
            dlq,
        })
    }

    fn limits(&self, info: &QueueInfo) -> Limits {
        Limits {
            fifo: info.fifo,
            max_size: info.max_size,
            content_dedup: self.inner.content_dedup && info.content_dedup,
        }
    }

    async fn send_encoded(
        &self,
        queue: &QueueName,
        url: &str,
        enc: Encoded,
        op: &'static str,
        max_size: usize,
    ) -> Result<MessageId> {
        let size = enc.size;
        self.inner
            .client
            .send_message()
            .queue_url(url)
            .message_body(enc.body)
            .set_message_attributes(Some(enc.attributes))
            .set_message_group_id(enc.group_id)
            .set_message_deduplication_id(enc.dedup_id)
            .set_delay_seconds(enc.delay_seconds)
            .send()
            .await
            .map_err(|e| {
                let mut ctx = self.ctx(op, queue.as_str());
                ctx.size = Some((size, max_size));
                self.after_error(queue, map_sdk(e, ctx))
            })?;
        Ok(enc.message_id)
    }

    /// Splits a receipt into its queue side, lock expiry and SQS receipt handle.
    fn parse_receipt<'r>(&self, receipt: &'r Receipt, op: &'static str) -> Result<Token<'r>> {
        let lost = || lock_lost(receipt, op);
        if receipt.provider() != PROVIDER {
            return Err(lost());
        }
        let mut parts = receipt.token().splitn(3, ':');
        let source = match parts.next() {
            Some(MAIN) => Source::Main,
            Some(DLQ) => Source::DeadLetter,
            _ => return Err(lost()),
        };
        let locked_until = parts
            .next()
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
            .ok_or_else(lost)?;
        let handle = parts.next().filter(|h| !h.is_empty()).ok_or_else(lost)?;
        Ok(Token {
            source,
            locked_until,
            handle,
        })
    }

    /// Parses the receipt and checks, without asking SQS, that its lock still holds and
    /// that it was not settled through this provider. SQS itself accepts a stale
    /// receipt handle for `DeleteMessage` (which may then delete a copy another consumer
    /// is working on), so this check is what makes expired receipts fail.
    fn live_receipt<'r>(&self, receipt: &'r Receipt, op: &'static str) -> Result<Token<'r>> {
        let token = self.parse_receipt(receipt, op)?;
        let (until, settled) = self
            .inner
            .inflight
            .lock()
            .ok()
            .and_then(|m| m.map.get(token.handle).map(|d| (d.locked_until, d.settled)))
            .unwrap_or((token.locked_until, false));
        if settled || SystemTime::now() >= until {
            return Err(lock_lost(receipt, op));
        }
        Ok(token)
    }

    /// Records that a delivery was settled and drops its stored message.
    fn settle(&self, token: &Token<'_>) {
        if let Ok(mut inflight) = self.inner.inflight.lock() {
            match inflight.map.get_mut(token.handle) {
                Some(d) => {
                    d.settled = true;
                    d.stored = None;
                }
                None => inflight.insert(
                    token.handle.to_owned(),
                    Delivery {
                        stored: None,
                        locked_until: token.locked_until,
                        settled: true,
                    },
                ),
            }
        }
    }

    /// URL and lock duration of the side of `info` that `source` names.
    fn side<'i>(
        info: &'i QueueInfo,
        source: Source,
        op: &'static str,
    ) -> Result<(&'i str, Duration)> {
        match source {
            Source::Main => Ok((&info.url, info.visibility)),
            Source::DeadLetter => info
                .dlq
                .as_ref()
                .map(|d| (d.url.as_str(), d.visibility))
                .ok_or_else(|| missing_dlq(&info.name, op)),
        }
    }

    async fn receive_from(
        &self,
        info: &QueueInfo,
        source: Source,
        options: ReceiveOptions,
        op: &'static str,
    ) -> Result<Vec<ReceivedMessage>> {
        let (url, visibility) = Self::side(info, source, op)?;
        let max = options.max_messages.clamp(1, MAX_BATCH);
        let deadline = Instant::now() + options.wait;
        loop {
            // Whole seconds long-poll (at most 20 per call); a sub-second rest is spent
            // in short polls, so a short wait is not stretched to a full second.
            let remaining = deadline.saturating_duration_since(Instant::now());
            let wait_secs = remaining.as_secs().min(MAX_WAIT.as_secs());
            let asked_at = SystemTime::now();
            let out = self
                .inner
                .client
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(i32::try_from(max).unwrap_or(10))
                .wait_time_seconds(i32::try_from(wait_secs).unwrap_or(20))
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
                .message_system_attribute_names(MessageSystemAttributeName::MessageDeduplicationId)
                .message_system_attribute_names(MessageSystemAttributeName::SequenceNumber)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|e| {
                    self.after_error(&info.name, map_sdk(e, self.ctx(op, info.name.as_str())))
                })?;
            // SQS starts the lock when it hands a message out: after the request was
            // made (a long poll may have waited up to 20 s) and just before the answer.
            // Counting from a second before the answer keeps the estimate on the safe
            // side without shortening it by the time spent waiting.
            let lock_start = (SystemTime::now() - LOCK_CLOCK_MARGIN).max(asked_at);
            let mut received = Vec::new();
            let mut expired = Vec::new();
            for m in out.messages.unwrap_or_default() {
                match self.convert(info, source, m, lock_start + visibility) {
                    Converted::Message(rm) => received.push(*rm),
                    Converted::Expired(handle) => expired.push(handle),
                    Converted::Skip => {}
                }
            }
            for handle in expired {
                // Time to live ran out: the message is dropped, as its sender asked.
                tracing::debug!(queue = %info.name, "dropping an expired message");
                if let Err(e) = self
                    .inner
                    .client
                    .delete_message()
                    .queue_url(url)
                    .receipt_handle(handle)
                    .send()
                    .await
                {
                    let err = map_sdk(e, self.ctx("expire", info.name.as_str()));
                    tracing::warn!(queue = %info.name, error = %err, "could not delete an expired message");
                }
            }
            let now = Instant::now();
            if !received.is_empty() || now >= deadline {
                return Ok(received);
            }
            if wait_secs == 0 {
                tokio::time::sleep(SHORT_POLL_PAUSE.min(deadline - now)).await;
            }
        }
    }

    fn convert(
        &self,
        info: &QueueInfo,
        source: Source,
        m: aws_sdk_sqs::types::Message,
        locked_until: SystemTime,
    ) -> Converted {
        let aws_sdk_sqs::types::Message {
            message_id,
            receipt_handle,
            body,
            attributes,
            message_attributes,
            ..
        } = m;
        let Some(handle) = receipt_handle else {
            return Converted::Skip;
        };
        let sys = attributes.unwrap_or_default();
        let get = |k: MessageSystemAttributeName| sys.get(&k).map(String::as_str);
        let count = get(MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|c| c.parse::<u32>().ok())
            .unwrap_or(1)
            .max(1);
        let sent = get(MessageSystemAttributeName::SentTimestamp)
            .and_then(|t| t.parse::<u64>().ok())
            .map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms));
        let group = get(MessageSystemAttributeName::MessageGroupId).map(str::to_owned);
        let dedup = get(MessageSystemAttributeName::MessageDeduplicationId);
        let sequence =
            get(MessageSystemAttributeName::SequenceNumber).and_then(|s| s.parse::<i64>().ok());
        let body = body.unwrap_or_default();
        let sqs_id = message_id.unwrap_or_default();
        let decoded = codec::decode(
            &body,
            message_attributes.as_ref(),
            group.as_deref(),
            dedup,
            &sqs_id,
        );
        if source == Source::Main && decoded.expires_at.is_some_and(|at| at <= SystemTime::now()) {
            return Converted::Expired(handle);
        }
        let session = group.as_deref().and_then(|g| SessionId::new(g).ok());
        let prefix = if source == Source::Main { MAIN } else { DLQ };
        let until_ms = locked_until
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let receipt = Receipt::new(
            PROVIDER,
            info.name.clone(),
            session,
            format!("{prefix}:{until_ms}:{handle}"),
        );
        let mut rm =
            ReceivedMessage::new(decoded.message, decoded.message_id, count, sent, receipt)
                .with_locked_until(locked_until);
        if let Some(seq) = sequence {
            rm = rm.with_sequence_number(seq);
        }
        let stored = if source == Source::DeadLetter {
            rm = rm.with_dead_letter(
                decoded
                    .dead_letter
                    .unwrap_or_else(codec::native_dead_letter_reason),
            );
            None
        } else {
            Some(Arc::new(Stored {
                body,
                attributes: message_attributes.unwrap_or_default(),
                group_id: group,
                sqs_message_id: sqs_id,
            }))
        };
        if let Ok(mut inflight) = self.inner.inflight.lock() {
            inflight.insert(
                handle,
                Delivery {
                    stored,
                    locked_until,
                    settled: false,
                },
            );
        }
        Converted::Message(Box::new(rm))
    }

    async fn change_visibility(
        &self,
        receipt: &Receipt,
        token: &Token<'_>,
        secs: u64,
        op: &'static str,
    ) -> Result<()> {
        let info = self.queue_info(receipt.queue(), op).await?;
        let (url, _) = Self::side(&info, token.source, op)?;
        self.inner
            .client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(token.handle)
            .visibility_timeout(i32::try_from(secs).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| {
                self.after_error(
                    receipt.queue(),
                    map_sdk(e, self.ctx(op, receipt.queue().as_str())),
                )
            })?;
        Ok(())
    }

    /// Moves messages from the queue's dead-letter queue back to the queue, oldest first,
    /// and returns how many moved. Stops after `limit` messages if given, or when the
    /// dead-letter queue yields nothing within a short poll.
    ///
    /// Per-group order is kept on FIFO queues: messages are re-sent one at a time in the
    /// order the dead-letter queue hands them out, and the first failure stops the run
    /// (the failed message and those after it stay in the dead-letter queue). Each
    /// message keeps its message id, session id, attributes and body; the dead-letter
    /// reason is removed. A crash between re-send and delete can duplicate a message
    /// (on FIFO queues, a re-run within five minutes is de-duplicated), never lose one.
    pub async fn redrive(&self, queue: &QueueName, limit: Option<usize>) -> Result<usize> {
        const OP: &str = "redrive";
        let info = self.queue_info(queue, OP).await?;
        let dlq = info.dlq.as_ref().ok_or_else(|| missing_dlq(queue, OP))?;
        let mut moved = 0usize;
        loop {
            let want = limit.map_or(MAX_BATCH, |l| l.saturating_sub(moved).min(MAX_BATCH));
            if want == 0 {
                return Ok(moved);
            }
            let out = self
                .inner
                .client
                .receive_message()
                .queue_url(&dlq.url)
                .max_number_of_messages(i32::try_from(want).unwrap_or(10))
                .wait_time_seconds(1)
                .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
                .message_system_attribute_names(MessageSystemAttributeName::MessageDeduplicationId)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|e| map_sdk(e, self.ctx(OP, &dlq.name)))?;
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                return Ok(moved);
            }
            let items: Vec<(String, aws_sdk_sqs::types::Message)> = messages
                .into_iter()
                .filter_map(|m| m.receipt_handle.clone().map(|h| (h, m)))
                .collect();
            let handles: Vec<String> = items.iter().map(|(h, _)| h.clone()).collect();
            for (i, (handle, m)) in items.into_iter().enumerate() {
                if let Err(e) = self.redrive_one(&info, m).await {
                    // Release what this run still holds, in order, then report.
                    for h in &handles[i..] {
                        let _ = self
                            .inner
                            .client
                            .change_message_visibility()
                            .queue_url(&dlq.url)
                            .receipt_handle(h)
                            .visibility_timeout(0)
                            .send()
                            .await;
                    }
                    return Err(e);
                }
                self.inner
                    .client
                    .delete_message()
                    .queue_url(&dlq.url)
                    .receipt_handle(&handle)
                    .send()
                    .await
                    .map_err(|e| map_sdk(e, self.ctx(OP, &dlq.name)))?;
                moved += 1;
            }
        }
    }

    async fn redrive_one(&self, info: &QueueInfo, m: aws_sdk_sqs::types::Message) -> Result<()> {
        let body = m.body.unwrap_or_default();
        let mut attributes = m.message_attributes.unwrap_or_default();
        codec::clear_dead_letter_reason(&mut attributes)?;
        let sys = m.attributes.unwrap_or_default();
        let group = sys
            .get(&MessageSystemAttributeName::MessageGroupId)
            .cloned();
        let sqs_id = m.message_id.unwrap_or_default();
        let (group, dedup) = if info.fifo {
            (
                Some(group.unwrap_or_else(|| "redrive".to_owned())),
                Some(format!("rd-{sqs_id}")),
            )
        } else {
            (None, None)
        };
        let size = codec::sqs_size(&body, &attributes);
        self.inner
            .client
            .send_message()
            .queue_url(&info.url)
            .message_body(body)
            .set_message_attributes(Some(attributes))
            .set_message_group_id(group)
            .set_message_deduplication_id(dedup)
            .send()
            .await
            .map_err(|e| {
                let mut ctx = self.ctx("redrive", info.name.as_str());
                ctx.size = Some((size, info.max_size));
                map_sdk(e, ctx)
            })?;
        Ok(())
    }
}

enum Converted {
    Message(Box<ReceivedMessage>),
    Expired(String),
    Skip,
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn visibility_of(attrs: &HashMap<QueueAttributeName, String>) -> Duration {
    attrs
        .get(&QueueAttributeName::VisibilityTimeout)
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::from_secs(30), Duration::from_secs)
}

fn max_size_of(attrs: &HashMap<QueueAttributeName, String>) -> usize {
    attrs
        .get(&QueueAttributeName::MaximumMessageSize)
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(MAX_MESSAGE_SIZE, |s| s.min(MAX_MESSAGE_SIZE))
}

/// The dead-letter queue name [`QueueProvider::create_queue`] uses: `<name>-dlq`, or
/// `<stem>-dlq.fifo` for a FIFO queue.
pub fn dlq_name(queue: &QueueName) -> Result<QueueName> {
    let name = queue.as_str();
    let dlq = match name.strip_suffix(".fifo") {
        Some(stem) => format!("{stem}-dlq.fifo"),
        None => format!("{name}-dlq"),
    };
    QueueName::new(&dlq).map_err(|_| QueueError::InvalidName {
        kind: NameKind::Queue,
        reason: format!(
            "`{name}` leaves no room for its dead-letter queue `{dlq}` within SQS's 80 characters"
        ),
    })
}

fn lock_lost(receipt: &Receipt, op: &'static str) -> QueueError {
    QueueError::LockLost {
        provider: PROVIDER,
        queue: receipt.queue().as_str().to_owned(),
        operation: op,
    }
}

fn missing_dlq(queue: &QueueName, op: &'static str) -> QueueError {
    QueueError::QueueNotFound {
        provider: PROVIDER,
        queue: dlq_name(queue).map_or_else(
            |_| format!("{queue} (dead-letter queue)"),
            |q| q.as_str().to_owned(),
        ),
        operation: op,
    }
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
        const OP: &str = "send_batch";
        let total = messages.len();
        if total == 0 {
            return Ok(Vec::new());
        }
        let info = self.queue_info(queue, OP).await?;
        let limits = self.limits(&info);
        let now = SystemTime::now();
        let mut succeeded: Vec<(usize, MessageId)> = Vec::with_capacity(total);
        let mut failed: Vec<BatchEntryError> = Vec::new();
        let mut pending: Vec<(usize, Encoded)> = Vec::with_capacity(total);
        for (index, message) in messages.into_iter().enumerate() {
            match codec::encode(message, queue, limits, now) {
                Ok(enc) => pending.push((index, enc)),
                Err(e) => failed.push(BatchEntryError::new(index, e)),
            }
        }
        let prevalidation_failures = failed.len();
        // Chunks of at most 10 entries whose sizes add up to at most the message limit
        // (SQS's limit on a whole batch request).
        let mut chunks: Vec<Vec<(usize, Encoded)>> = Vec::new();
        let mut current: Vec<(usize, Encoded)> = Vec::new();
        let mut current_size = 0usize;
        for (index, enc) in pending {
            if !current.is_empty()
                && (current.len() == MAX_BATCH || current_size + enc.size > info.max_size)
            {
                chunks.push(std::mem::take(&mut current));
                current_size = 0;
            }
            current_size += enc.size;
            current.push((index, enc));
        }
        if !current.is_empty() {
            chunks.push(current);
        }

        let mut call_failure: Option<Failure> = None;
        for chunk in chunks {
            if let Some(f) = &call_failure {
                // An earlier call failed as a whole; do not hammer on.
                for (index, _) in chunk {
                    failed.push(BatchEntryError::new(
                        index,
                        map_failure(f, self.ctx(OP, queue.as_str())),
                    ));
                }
                continue;
            }
            let mut ids: HashMap<String, (usize, MessageId)> = HashMap::with_capacity(chunk.len());
            let mut entries = Vec::with_capacity(chunk.len());
            for (index, enc) in chunk {
                let id = index.to_string();
                let entry = SendMessageBatchRequestEntry::builder()
                    .id(&id)
                    .message_body(enc.body)
                    .set_message_attributes(Some(enc.attributes))
                    .set_message_group_id(enc.group_id)
                    .set_message_deduplication_id(enc.dedup_id)
                    .set_delay_seconds(enc.delay_seconds)
                    .build();
                match entry {
                    Ok(entry) => {
                        entries.push(entry);
                        ids.insert(id, (index, enc.message_id));
                    }
                    Err(e) => failed.push(BatchEntryError::new(
                        index,
                        QueueError::InvalidMessage {
                            provider: PROVIDER,
                            reason: format!("cannot build a batch entry: {e}"),
                        },
                    )),
                }
            }
            if entries.is_empty() {
                continue;
            }
            match self
                .inner
                .client
                .send_message_batch()
                .queue_url(&info.url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => {
                    for ok in out.successful {
                        if let Some((index, id)) = ids.remove(&ok.id) {
                            succeeded.push((index, id));
                        }
                    }
                    for bad in out.failed {
                        if let Some((index, _)) = ids.remove(bad.id()) {
                            let f = failure_of_entry(bad.code(), bad.sender_fault(), bad.message());
                            failed.push(BatchEntryError::new(
                                index,
                                map_failure(&f, self.ctx(OP, queue.as_str())),
                            ));
                        }
                    }
                    // Entries the answer did not mention: unknown outcome, report failed.
                    for (_, (index, _)) in ids.drain() {
                        failed.push(BatchEntryError::new(
                            index,
                            QueueError::Provider {
                                provider: PROVIDER,
                                operation: OP,
                                class: queue_core::RetryClass::Transient,
                                source: "SQS did not report this entry".into(),
                            },
                        ));
                    }
                }
                Err(e) => {
                    let f = failure_of(&e);
                    for (_, (index, _)) in ids.drain() {
                        failed.push(BatchEntryError::new(
                            index,
                            map_failure(&f, self.ctx(OP, queue.as_str())),
                        ));
                    }
                    call_failure = Some(f);
                }
            }
        }

        if failed.is_empty() {
            succeeded.sort_by_key(|(i, _)| *i);
            return Ok(succeeded.into_iter().map(|(_, id)| id).collect());
        }
        if succeeded.is_empty()
            && prevalidation_failures == 0
            && let Some(f) = &call_failure
        {
            // Nothing was sent and the calls themselves failed: the plain error.
            return Err(self.after_error(queue, map_failure(f, self.ctx(OP, queue.as_str()))));
        }
        if total == 1
            && let Some(only) = failed.pop()
        {
            return Err(only.error);
        }
        succeeded.sort_by_key(|(i, _)| *i);
        failed.sort_by_key(|f| f.index);
        Err(QueueError::PartialBatch {
            provider: PROVIDER,
            queue: queue.as_str().to_owned(),
            operation: OP,
            total,
            succeeded,
            failed,
        })
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
        const OP: &str = "complete";
        let token = self.live_receipt(receipt, OP)?;
        let info = self.queue_info(receipt.queue(), OP).await?;
        let (url, _) = Self::side(&info, token.source, OP)?;
        self.inner
            .client
            .delete_message()
            .queue_url(url)
            .receipt_handle(token.handle)
            .send()
            .await
            .map_err(|e| {
                self.after_error(
                    receipt.queue(),
                    map_sdk(e, self.ctx(OP, receipt.queue().as_str())),
                )
            })?;
        self.settle(&token);
        Ok(())
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
        const OP: &str = "dead_letter";
        let token = self.live_receipt(receipt, OP)?;
        if token.source == Source::DeadLetter {
            return Err(QueueError::unsupported(
                PROVIDER,
                "dead_letter of a message read from the dead-letter queue",
            ));
        }
        let queue = receipt.queue();
        let info = self.queue_info(queue, OP).await?;
        let dlq = info.dlq.as_ref().ok_or_else(|| missing_dlq(queue, OP))?;
        let stored = self
            .inner
            .inflight
            .lock()
            .ok()
            .and_then(|m| m.map.get(token.handle).and_then(|d| d.stored.clone()))
            // Received by another provider value: the message body is not at hand.
            .ok_or_else(|| lock_lost(receipt, OP))?;
        let mut attributes = stored.attributes.clone();
        codec::add_dead_letter_reason(&stored.body, &mut attributes, &reason, dlq.max_size)?;
        let (group, dedup) = if dlq.fifo {
            (
                Some(
                    stored
                        .group_id
                        .clone()
                        .unwrap_or_else(|| "dead-letter".to_owned()),
                ),
                // Deterministic: a retried dead_letter within five minutes is dropped.
                Some(format!("dl-{}", stored.sqs_message_id)),
            )
        } else {
            (None, None)
        };
        let size = codec::sqs_size(&stored.body, &attributes);
        self.inner
            .client
            .send_message()
            .queue_url(&dlq.url)
            .message_body(stored.body.clone())
            .set_message_attributes(Some(attributes))
            .set_message_group_id(group)
            .set_message_deduplication_id(dedup)
            .send()
            .await
            .map_err(|e| {
                let mut ctx = self.ctx(OP, &dlq.name);
                ctx.size = Some((size, dlq.max_size));
                map_sdk(e, ctx)
            })?;
        // Only now remove the original: a failure in between duplicates, never loses.
        self.inner
            .client
            .delete_message()
            .queue_url(&info.url)
            .receipt_handle(token.handle)
            .send()
            .await
            .map_err(|e| self.after_error(queue, map_sdk(e, self.ctx(OP, queue.as_str()))))?;
        self.settle(&token);
        Ok(())
    }

    async fn renew_lock(&self, receipt: &Receipt) -> Result<SystemTime> {
        const OP: &str = "renew_lock";
        let token = self.live_receipt(receipt, OP)?;
        let info = self.queue_info(receipt.queue(), OP).await?;
        let (_, visibility) = Self::side(&info, token.source, OP)?;
        let start = SystemTime::now();
        self.change_visibility(receipt, &token, ceil_secs(visibility), OP)
            .await?;
        let until = start + visibility;
        if let Ok(mut inflight) = self.inner.inflight.lock() {
            match inflight.map.get_mut(token.handle) {
                Some(d) => d.locked_until = until,
                None => inflight.insert(
                    token.handle.to_owned(),
                    Delivery {
                        stored: None,
                        locked_until: until,
                        settled: false,
                    },
                ),
            }
        }
        Ok(until)
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
        const OP: &str = "create_queue";
        let fifo = queue.is_fifo();
        if spec.requires_session && !fifo {
            return Err(QueueError::InvalidName {
                kind: NameKind::Queue,
                reason: format!(
                    "`{queue}`: ordered (session) queues on SQS are FIFO queues, whose names end in `.fifo`"
                ),
            });
        }
        if spec.max_delivery_count == 0 || spec.max_delivery_count > 1000 {
            return Err(QueueError::config(
                "queue_spec.max_delivery_count",
                "SQS's maxReceiveCount must be between 1 and 1000",
            ));
        }
        if spec.lock_duration > MAX_VISIBILITY {
            return Err(QueueError::config(
                "queue_spec.lock_duration",
                "SQS's visibility timeout is at most 12 hours",
            ));
        }
        let dlq = dlq_name(queue)?;
        let mut dl_attrs = HashMap::new();
        dl_attrs.insert(
            QueueAttributeName::MessageRetentionPeriod,
            MAX_RETENTION_SECS.to_string(),
        );
        dl_attrs.insert(
            QueueAttributeName::MaximumMessageSize,
            MAX_MESSAGE_SIZE.to_string(),
        );
        dl_attrs.insert(
            QueueAttributeName::VisibilityTimeout,
            ceil_secs(spec.lock_duration).to_string(),
        );
        if fifo {
            dl_attrs.insert(QueueAttributeName::FifoQueue, "true".to_owned());
        }
        let dl_url = self.create_one(dlq.as_str(), dl_attrs, OP).await?;
        let dl_arn = self
            .queue_attributes(dlq.as_str(), &dl_url, OP)
            .await?
            .remove(&QueueAttributeName::QueueArn)
            .ok_or_else(|| QueueError::Provider {
                provider: PROVIDER,
                operation: OP,
                class: queue_core::RetryClass::Transient,
                source: "SQS returned no QueueArn for the dead-letter queue".into(),
            })?;

        let mut attrs = HashMap::new();
        attrs.insert(
            QueueAttributeName::VisibilityTimeout,
            ceil_secs(spec.lock_duration).to_string(),
        );
        attrs.insert(
            QueueAttributeName::MaximumMessageSize,
            MAX_MESSAGE_SIZE.to_string(),
        );
        attrs.insert(
            QueueAttributeName::RedrivePolicy,
            serde_json::json!({
                "deadLetterTargetArn": dl_arn,
                "maxReceiveCount": spec.max_delivery_count,
            })
            .to_string(),
        );
        if let Some(ttl) = spec.default_ttl {
            let secs = ceil_secs(ttl).clamp(60, MAX_RETENTION_SECS);
            attrs.insert(QueueAttributeName::MessageRetentionPeriod, secs.to_string());
        }
        if fifo {
            attrs.insert(QueueAttributeName::FifoQueue, "true".to_owned());
            if self.inner.content_dedup {
                attrs.insert(
                    QueueAttributeName::ContentBasedDeduplication,
                    "true".to_owned(),
                );
            }
        } else if spec.duplicate_detection_window.is_some() {
            return Err(QueueError::unsupported(
                PROVIDER,
                "duplicate detection on a standard queue (only FIFO queues, `.fifo`, de-duplicate)",
            ));
        }
        self.create_one(queue.as_str(), attrs, OP).await?;
        self.forget(queue);
        Ok(())
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        const OP: &str = "delete_queue";
        self.forget(queue);
        let mut names = vec![queue.as_str().to_owned()];
        if let Ok(dlq) = dlq_name(queue) {
            names.push(dlq.as_str().to_owned());
        }
        for name in names {
            let url = match self.queue_url(&name, OP).await {
                Ok(url) => url,
                Err(QueueError::QueueNotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            match self.inner.client.delete_queue().queue_url(url).send().await {
                Ok(_) => {}
                Err(e) => match map_sdk(e, self.ctx(OP, &name)) {
                    QueueError::QueueNotFound { .. } => {}
                    other => return Err(other),
                },
            }
        }
        Ok(())
    }
}

impl SqsProvider {
    /// Completes several messages with `DeleteMessageBatch`, 10 per call.
    ///
    /// All receipts must come from the same queue (main or dead-letter side). Entries
    /// SQS rejects are reported in [`QueueError::PartialBatch`] by input index (with
    /// `succeeded` carrying the message index and the queue-runtime message id unset:
    /// receipts do not know it, so the id is the index as text).
    pub async fn complete_batch(&self, receipts: &[Receipt]) -> Result<()> {
        const OP: &str = "complete_batch";
        let Some(first) = receipts.first() else {
            return Ok(());
        };
        let queue = first.queue().clone();
        let mut failed: Vec<BatchEntryError> = Vec::new();
        let mut succeeded: Vec<(usize, MessageId)> = Vec::new();
        let mut parsed: Vec<(usize, Token<'_>)> = Vec::with_capacity(receipts.len());
        for (index, receipt) in receipts.iter().enumerate() {
            if receipt.queue() != &queue {
                failed.push(BatchEntryError::new(
                    index,
                    QueueError::InvalidMessage {
                        provider: PROVIDER,
                        reason: "complete_batch takes receipts of one queue".to_owned(),
                    },
                ));
                continue;
            }
            match self.live_receipt(receipt, OP) {
                Ok(token) => parsed.push((index, token)),
                Err(e) => failed.push(BatchEntryError::new(index, e)),
            }
        }
        let info = self.queue_info(&queue, OP).await?;
        let mut call_error: Option<QueueError> = None;
        for source in [Source::Main, Source::DeadLetter] {
            let side: Vec<&(usize, Token<'_>)> =
                parsed.iter().filter(|(_, t)| t.source == source).collect();
            if side.is_empty() {
                continue;
            }
            let (url, _) = Self::side(&info, source, OP)?;
            for chunk in side.chunks(MAX_BATCH) {
                let mut entries = Vec::with_capacity(chunk.len());
                for (index, token) in chunk {
                    let entry = DeleteMessageBatchRequestEntry::builder()
                        .id(index.to_string())
                        .receipt_handle(token.handle)
                        .build()
                        .map_err(|e| QueueError::InvalidMessage {
                            provider: PROVIDER,
                            reason: format!("cannot build a batch entry: {e}"),
                        })?;
                    entries.push(entry);
                }
                match self
                    .inner
                    .client
                    .delete_message_batch()
                    .queue_url(url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                {
                    Ok(out) => {
                        for ok in out.successful {
                            if let Ok(index) = ok.id.parse::<usize>() {
                                if let Some((_, token)) = chunk.iter().find(|(i, _)| *i == index) {
                                    self.settle(token);
                                }
                                if let Ok(id) = MessageId::new(index.to_string()) {
                                    succeeded.push((index, id));
                                }
                            }
                        }
                        for bad in out.failed {
                            if let Ok(index) = bad.id().parse::<usize>() {
                                let f =
                                    failure_of_entry(bad.code(), bad.sender_fault(), bad.message());
                                failed.push(BatchEntryError::new(
                                    index,
                                    map_failure(&f, self.ctx(OP, queue.as_str())),
                                ));
                            }
                        }
                    }
                    Err(e) => {
                        let f = failure_of(&e);
                        for (index, _) in chunk {
                            failed.push(BatchEntryError::new(
                                *index,
                                map_failure(&f, self.ctx(OP, queue.as_str())),
                            ));
                        }
                        if call_error.is_none() {
                            call_error = Some(self.after_error(
                                &queue,
                                map_failure(&f, self.ctx(OP, queue.as_str())),
                            ));
                        }
                    }
                }
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        if succeeded.is_empty()
            && let Some(e) = call_error
        {
            return Err(e);
        }
        failed.sort_by_key(|f| f.index);
        succeeded.sort_by_key(|(i, _)| *i);
        Err(QueueError::PartialBatch {
            provider: PROVIDER,
            queue: queue.as_str().to_owned(),
            operation: OP,
            total: receipts.len(),
            succeeded,
            failed,
        })
    }

    /// Creates one queue; an existing queue of that name is fine (its settings stay).
    async fn create_one(
        &self,
        name: &str,
        attrs: HashMap<QueueAttributeName, String>,
        op: &'static str,
    ) -> Result<String> {
        match self
            .inner
            .client
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(attrs))
            .send()
            .await
        {
            Ok(out) => match out.queue_url {
                Some(url) => Ok(url),
                None => self.queue_url(name, op).await,
            },
            Err(e) => {
                let exists = e
                    .as_service_error()
                    .and_then(|s| s.code())
                    .is_some_and(|c| c == "QueueNameExists" || c == "QueueAlreadyExists");
                if exists {
                    tracing::warn!(
                        queue = name,
                        "queue exists with other settings; keeping them"
                    );
                    self.queue_url(name, op).await
                } else {
                    Err(map_sdk(e, self.ctx(op, name)))
                }
            }
        }
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
    }

    #[test]
    fn dead_letter_queue_names() {
        let q = |s: &str| QueueName::new(s).unwrap();
        assert_eq!(dlq_name(&q("jobs")).unwrap().as_str(), "jobs-dlq");
        assert_eq!(dlq_name(&q("jobs.fifo")).unwrap().as_str(), "jobs-dlq.fifo");
        let long = "a".repeat(77);
        let err = dlq_name(&q(&long)).unwrap_err();
        assert!(matches!(err, QueueError::InvalidName { .. }), "{err}");
    }

    #[test]
    fn whole_second_rounding() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }
}
