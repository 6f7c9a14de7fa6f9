//! Explicit dead-lettering: SQS cannot move a message by receipt handle, so the provider
//! sends a copy (with the reason) to the dead-letter queue and then deletes the original.
//!
//! Redrive (dead letters back to the queue) is the generic
//! [`QueueProviderExt::redrive`](queue_core::QueueProviderExt::redrive).

use queue_core::{DeadLetterReason, Receipt, Result};

use super::{
    SqsProvider,
    queues::{DlqInfo, missing_dlq},
    receipts::{Source, Stored, lock_lost},
};
use crate::{PROVIDER, codec, error::map_sdk};

impl SqsProvider {
    /// `dead_letter`: copy to the dead-letter queue, then delete the original, so a
    /// failure in between duplicates, never loses.
    pub(super) async fn dead_letter_one(
        &self,
        receipt: &Receipt,
        reason: DeadLetterReason,
    ) -> Result<()> {
        const OP: &str = "dead_letter";
        let token = self.live_receipt(receipt, OP)?;
        if token.source == Source::DeadLetter {
            return Err(queue_core::QueueError::unsupported(
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
        self.send_dead_letter_copy(dlq, &stored, &reason).await?;
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

    async fn send_dead_letter_copy(
        &self,
        dlq: &DlqInfo,
        stored: &Stored,
        reason: &DeadLetterReason,
    ) -> Result<()> {
        const OP: &str = "dead_letter";
        let mut attributes = stored.attributes.clone();
        codec::add_dead_letter_reason(&stored.body, &mut attributes, reason, dlq.max_size)?;
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
        Ok(())
    }
}
