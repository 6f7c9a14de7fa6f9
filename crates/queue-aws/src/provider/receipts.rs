//! Receipts: the token format, the in-flight table that makes stale receipts fail, and
//! the visibility calls (abandon, renew).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aws_sdk_sqs::types::MessageAttributeValue;
use queue_core::{MessageId, QueueError, Receipt, Result};

use super::{SqsProvider, ceil_secs, queues::QueueInfo, queues::missing_dlq};
use crate::{PROVIDER, error::map_sdk};

/// Receipt token prefixes: main queue or its dead-letter queue.
pub(super) const MAIN: &str = "m";
pub(super) const DLQ: &str = "d";

/// A message this provider received: kept so that `dead_letter` can copy it to the
/// dead-letter queue (SQS cannot move a message by receipt handle).
pub(super) struct Stored {
    pub(super) body: String,
    pub(super) attributes: HashMap<String, MessageAttributeValue>,
    pub(super) group_id: Option<String>,
    pub(super) sqs_message_id: String,
}

/// What this provider knows about one delivery (one receipt handle).
pub(super) struct Delivery {
    /// The message, until the delivery is settled (main queue only).
    pub(super) stored: Option<Arc<Stored>>,
    /// The queue-runtime message id, for reports such as `complete_batch`'s.
    pub(super) message_id: Option<MessageId>,
    /// When the lock runs out, renewals included (conservative: counted from before the
    /// receive or renew call).
    pub(super) locked_until: SystemTime,
    /// Completed, abandoned or dead-lettered through this provider.
    pub(super) settled: bool,
}

/// Deliveries by receipt handle. An entry is useful only while its lock could hold:
/// after that, the expiry alone rejects the receipt. So entries are dropped a minute
/// after their lock ran out, which bounds the table by what is in flight.
#[derive(Default)]
pub(super) struct InFlight {
    pub(super) map: HashMap<String, Delivery>,
    inserts: u64,
}

impl InFlight {
    pub(super) fn insert(&mut self, handle: String, delivery: Delivery) {
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
pub(super) struct Token<'r> {
    pub(super) source: Source,
    pub(super) locked_until: SystemTime,
    pub(super) handle: &'r str,
}

/// A receive whose result lands in the main queue or its dead-letter queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    Main,
    DeadLetter,
}

impl SqsProvider {
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
    pub(super) fn live_receipt<'r>(
        &self,
        receipt: &'r Receipt,
        op: &'static str,
    ) -> Result<Token<'r>> {
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

    /// The queue-runtime message id of a delivery, if this provider received it.
    pub(super) fn message_id_of(&self, token: &Token<'_>) -> Option<MessageId> {
        self.inner
            .inflight
            .lock()
            .ok()
            .and_then(|m| m.map.get(token.handle).and_then(|d| d.message_id.clone()))
    }

    /// Records that a delivery was settled and drops its stored message.
    pub(super) fn settle(&self, token: &Token<'_>) {
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
                        message_id: None,
                        locked_until: token.locked_until,
                        settled: true,
                    },
                ),
            }
        }
    }

    /// URL and lock duration of the side of `info` that `source` names.
    pub(super) fn side<'i>(
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

    /// `complete`: deletes the message by receipt handle.
    pub(super) async fn complete_one(&self, receipt: &Receipt) -> Result<()> {
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

    pub(super) async fn change_visibility(
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

    /// `renew_lock`: restarts the visibility timeout and records the new expiry.
    pub(super) async fn renew(&self, receipt: &Receipt) -> Result<SystemTime> {
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
                        message_id: None,
                        locked_until: until,
                        settled: false,
                    },
                ),
            }
        }
        Ok(until)
    }
}

pub(super) fn lock_lost(receipt: &Receipt, op: &'static str) -> QueueError {
    QueueError::LockLost {
        provider: PROVIDER,
        queue: receipt.queue().as_str().to_owned(),
        operation: op,
    }
}
