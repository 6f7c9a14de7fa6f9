//! Receiving: long polls bounded by the caller's wait, and SQS messages turned into
//! [`ReceivedMessage`]s with receipts.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aws_sdk_sqs::types::MessageSystemAttributeName;
use queue_core::{QueueName, Receipt, ReceiveOptions, ReceivedMessage, Result, SessionId};

use super::{
    MAX_BATCH, MAX_WAIT, SqsProvider,
    queues::QueueInfo,
    receipts::{DLQ, Delivery, MAIN, Source, Stored},
};
use crate::{PROVIDER, codec, error::map_sdk};

/// How much earlier than the receive answer a lock is assumed to have started.
const LOCK_CLOCK_MARGIN: Duration = Duration::from_secs(1);
/// Pause between short polls during the sub-second rest of a receive wait.
const SHORT_POLL_PAUSE: Duration = Duration::from_millis(100);

enum Converted {
    Message(Box<ReceivedMessage>),
    Expired(String),
    Skip,
}

impl SqsProvider {
    pub(super) async fn receive_from(
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
            let messages = self.receive_call(info, url, max, wait_secs, op).await?;
            // SQS starts the lock when it hands a message out: after the request was
            // made (a long poll may have waited up to 20 s) and just before the answer.
            // Counting from a second before the answer keeps the estimate on the safe
            // side without shortening it by the time spent waiting.
            let lock_start = (SystemTime::now() - LOCK_CLOCK_MARGIN).max(asked_at);
            let mut received = Vec::new();
            let mut expired = Vec::new();
            for m in messages {
                match self.convert(info, source, m, lock_start + visibility) {
                    Converted::Message(rm) => received.push(*rm),
                    Converted::Expired(handle) => expired.push(handle),
                    Converted::Skip => {}
                }
            }
            self.drop_expired(&info.name, url, expired).await;
            let now = Instant::now();
            if !received.is_empty() || now >= deadline {
                return Ok(received);
            }
            if wait_secs == 0 {
                tokio::time::sleep(SHORT_POLL_PAUSE.min(deadline - now)).await;
            }
        }
    }

    /// One `ReceiveMessage` call with the system attributes the decoder needs.
    async fn receive_call(
        &self,
        info: &QueueInfo,
        url: &str,
        max: usize,
        wait_secs: u64,
        op: &'static str,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>> {
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
        Ok(out.messages.unwrap_or_default())
    }

    /// Deletes messages whose time to live ran out: dropped, as their sender asked.
    async fn drop_expired(&self, queue: &QueueName, url: &str, handles: Vec<String>) {
        for handle in handles {
            tracing::debug!(queue = %queue, "dropping an expired message");
            let deleted = self
                .inner
                .client
                .delete_message()
                .queue_url(url)
                .receipt_handle(handle)
                .send()
                .await;
            if let Err(e) = deleted {
                let err = map_sdk(e, self.ctx("expire", queue.as_str()));
                tracing::warn!(queue = %queue, error = %err, "could not delete an expired message");
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
        let sys = SystemAttributes::read(attributes);
        let body = body.unwrap_or_default();
        let sqs_id = message_id.unwrap_or_default();
        let decoded = codec::decode(
            &body,
            message_attributes.as_ref(),
            sys.group.as_deref(),
            sys.dedup.as_deref(),
            &sqs_id,
        );
        if source == Source::Main && decoded.expires_at.is_some_and(|at| at <= SystemTime::now()) {
            return Converted::Expired(handle);
        }
        let receipt = receipt_for(info, source, sys.group.as_deref(), &handle, locked_until);
        let mut rm = ReceivedMessage::new(
            decoded.message,
            decoded.message_id.clone(),
            sys.count,
            sys.sent,
            receipt,
        )
        .with_locked_until(locked_until);
        if !sqs_id.is_empty() {
            // SQS's own MessageId: the same on every receive of one stored message, new for
            // every send, so the replay gate can tell a redelivery from a copy.
            rm = rm.with_broker_message_id(sqs_id.clone());
        }
        if let Some(seq) = sys.sequence {
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
                group_id: sys.group,
                sqs_message_id: sqs_id,
            }))
        };
        if let Ok(mut inflight) = self.inner.inflight.lock() {
            let delivery = Delivery {
                stored,
                message_id: Some(decoded.message_id),
                locked_until,
                settled: false,
            };
            inflight.insert(handle, delivery);
        }
        Converted::Message(Box::new(rm))
    }
}

/// The system attributes a receive asks for.
struct SystemAttributes {
    count: u32,
    sent: SystemTime,
    group: Option<String>,
    dedup: Option<String>,
    sequence: Option<i64>,
}

impl SystemAttributes {
    fn read(
        attributes: Option<std::collections::HashMap<MessageSystemAttributeName, String>>,
    ) -> Self {
        let mut sys = attributes.unwrap_or_default();
        let mut take = |k: MessageSystemAttributeName| sys.remove(&k);
        Self {
            count: take(MessageSystemAttributeName::ApproximateReceiveCount)
                .and_then(|c| c.parse::<u32>().ok())
                .unwrap_or(1)
                .max(1),
            sent: take(MessageSystemAttributeName::SentTimestamp)
                .and_then(|t| t.parse::<u64>().ok())
                .map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms)),
            group: take(MessageSystemAttributeName::MessageGroupId),
            dedup: take(MessageSystemAttributeName::MessageDeduplicationId),
            sequence: take(MessageSystemAttributeName::SequenceNumber)
                .and_then(|s| s.parse::<i64>().ok()),
        }
    }
}

/// The receipt of one delivery: side, lock expiry and SQS receipt handle.
fn receipt_for(
    info: &QueueInfo,
    source: Source,
    group: Option<&str>,
    handle: &str,
    locked_until: SystemTime,
) -> Receipt {
    let session = group.and_then(|g| SessionId::new(g).ok());
    let prefix = if source == Source::Main { MAIN } else { DLQ };
    let until_ms = locked_until
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Receipt::new(
        PROVIDER,
        info.name.clone(),
        session,
        format!("{prefix}:{until_ms}:{handle}"),
    )
}
