//! Sending and completing in batches of up to [`MAX_BATCH`], with an exact per-entry
//! report when part of a batch fails.

use std::{collections::HashMap, time::SystemTime};

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};
use queue_core::{
    BatchEntryError, Message, MessageId, QueueError, QueueName, Receipt, Result, RetryClass,
};

use super::{
    MAX_BATCH, SqsProvider,
    receipts::{Source, Token},
};
use crate::{
    PROVIDER,
    codec::{self, Encoded, Limits},
    error::{Ctx, Failure, failure_of, failure_of_entry, map_failure, map_sdk},
};

/// What happened to each entry of a batch operation, by input index.
struct Outcome<'a> {
    ctx: Ctx<'a>,
    total: usize,
    succeeded: Vec<(usize, MessageId)>,
    failed: Vec<BatchEntryError>,
    /// The first failure of a whole call; later chunks are not attempted after it.
    call_failure: Option<Failure>,
    /// How many entries failed because a whole call failed (or was not attempted).
    failed_by_call: usize,
}

impl<'a> Outcome<'a> {
    fn new(ctx: Ctx<'a>, total: usize) -> Self {
        Self {
            ctx,
            total,
            succeeded: Vec::with_capacity(total),
            failed: Vec::new(),
            call_failure: None,
            failed_by_call: 0,
        }
    }

    fn ok(&mut self, index: usize, id: MessageId) {
        self.succeeded.push((index, id));
    }

    fn fail(&mut self, index: usize, error: QueueError) {
        self.failed.push(BatchEntryError::new(index, error));
    }

    fn fail_entry(&mut self, index: usize, failure: &Failure) {
        let error = map_failure(failure, self.ctx);
        self.fail(index, error);
    }

    /// Every entry of a chunk failed with the call (or was skipped after an earlier one).
    fn fail_by_call(&mut self, indices: impl IntoIterator<Item = usize>, failure: &Failure) {
        for index in indices {
            self.fail_entry(index, failure);
            self.failed_by_call += 1;
        }
        if self.call_failure.is_none() {
            self.call_failure = Some(failure.clone());
        }
    }

    /// An entry the answer did not mention: its outcome is unknown, so it is reported
    /// failed (transient: completing or sending it again is safe).
    fn unreported(&mut self, index: usize) {
        let op = self.ctx.operation;
        self.fail(
            index,
            QueueError::Provider {
                provider: PROVIDER,
                operation: op,
                class: RetryClass::Transient,
                source: "SQS did not report this entry".into(),
            },
        );
    }

    /// `Ok` with the succeeded entries in input order when nothing failed; the call's own
    /// error when every entry failed with it; the one error of a one-entry batch;
    /// otherwise [`QueueError::PartialBatch`] listing every entry on one side or the other.
    fn finish(mut self, provider: &SqsProvider, queue: &QueueName) -> Result<Vec<MessageId>> {
        self.succeeded.sort_by_key(|(i, _)| *i);
        if self.failed.is_empty() {
            return Ok(self.succeeded.into_iter().map(|(_, id)| id).collect());
        }
        if self.succeeded.is_empty()
            && self.failed_by_call == self.failed.len()
            && let Some(f) = &self.call_failure
        {
            return Err(provider.after_error(queue, map_failure(f, self.ctx)));
        }
        if self.total == 1
            && let Some(only) = self.failed.pop()
        {
            return Err(only.error);
        }
        self.failed.sort_by_key(|f| f.index);
        Err(QueueError::PartialBatch {
            provider: PROVIDER,
            queue: queue.as_str().to_owned(),
            operation: self.ctx.operation,
            total: self.total,
            succeeded: self.succeeded,
            failed: self.failed,
        })
    }
}

impl SqsProvider {
    /// `send`: one `SendMessage` call (retried by the SDK on transient failures, with the
    /// same message id and de-duplication id).
    pub(super) async fn send_encoded(
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

    /// `send_batch`: chunks of at most 10 entries and at most the queue's size limit.
    /// After a whole call fails, later chunks are not sent (reported failed with the
    /// same error).
    pub(super) async fn send_many(
        &self,
        queue: &QueueName,
        messages: Vec<Message>,
    ) -> Result<Vec<MessageId>> {
        const OP: &str = "send_batch";
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let info = self.queue_info(queue, OP).await?;
        let mut out = Outcome::new(self.ctx(OP, queue.as_str()), messages.len());
        let pending = encode_all(messages, queue, self.limits(&info), &mut out);
        for chunk in chunk_by_size(pending, info.max_size) {
            if let Some(f) = out.call_failure.clone() {
                out.fail_by_call(chunk.into_iter().map(|(i, _)| i), &f);
                continue;
            }
            self.send_chunk(&info.url, chunk, &mut out).await;
        }
        out.finish(self, queue)
    }

    async fn send_chunk(&self, url: &str, chunk: Vec<(usize, Encoded)>, out: &mut Outcome<'_>) {
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
                Err(e) => out.fail(index, entry_build_error(&e)),
            }
        }
        if entries.is_empty() {
            return;
        }
        let answer = self
            .inner
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await;
        match answer {
            Ok(answer) => {
                for ok in answer.successful {
                    if let Some((index, id)) = ids.remove(&ok.id) {
                        out.ok(index, id);
                    }
                }
                for bad in answer.failed {
                    if let Some((index, _)) = ids.remove(bad.id()) {
                        let f = failure_of_entry(bad.code(), bad.sender_fault(), bad.message());
                        out.fail_entry(index, &f);
                    }
                }
                for (_, (index, _)) in ids.drain() {
                    out.unreported(index);
                }
            }
            Err(e) => out.fail_by_call(ids.into_values().map(|(i, _)| i), &failure_of(&e)),
        }
    }

    /// Completes several messages with `DeleteMessageBatch`, 10 per call.
    ///
    /// All receipts must come from the same queue (main or dead-letter side, or both).
    /// When part of the batch fails the error is [`QueueError::PartialBatch`], which
    /// accounts for every receipt by its input index: `succeeded` lists the receipts that
    /// were deleted (with the message id of the delivery; the index as text if this
    /// provider value did not receive it), `failed` those that were not, each with its
    /// error. After a whole call fails (connection, throttling, a missing queue), later
    /// chunks are not attempted and their receipts are listed as failed with that error.
    /// When every receipt failed with the call, the error is the call's own.
    pub async fn complete_batch(&self, receipts: &[Receipt]) -> Result<()> {
        const OP: &str = "complete_batch";
        let Some(first) = receipts.first() else {
            return Ok(());
        };
        let queue = first.queue().clone();
        let mut out = Outcome::new(self.ctx(OP, queue.as_str()), receipts.len());
        let parsed = self.parse_batch(receipts, &queue, &mut out);
        let info = self.queue_info(&queue, OP).await?;
        for source in [Source::Main, Source::DeadLetter] {
            let side: Vec<&(usize, Token<'_>)> =
                parsed.iter().filter(|(_, t)| t.source == source).collect();
            if side.is_empty() {
                continue;
            }
            let url = match Self::side(&info, source, OP) {
                Ok((url, _)) => url,
                Err(_) => {
                    for (index, _) in side {
                        out.fail(*index, super::queues::missing_dlq(&queue, OP));
                    }
                    continue;
                }
            };
            for chunk in side.chunks(MAX_BATCH) {
                if let Some(f) = out.call_failure.clone() {
                    out.fail_by_call(chunk.iter().map(|(i, _)| *i), &f);
                    continue;
                }
                self.delete_chunk(url, chunk, &mut out).await;
            }
        }
        out.finish(self, &queue).map(|_| ())
    }

    /// Checks each receipt locally (same queue, lock held, not settled).
    fn parse_batch<'r>(
        &self,
        receipts: &'r [Receipt],
        queue: &QueueName,
        out: &mut Outcome<'_>,
    ) -> Vec<(usize, Token<'r>)> {
        let mut parsed = Vec::with_capacity(receipts.len());
        for (index, receipt) in receipts.iter().enumerate() {
            if receipt.queue() != queue {
                out.fail(
                    index,
                    QueueError::InvalidMessage {
                        provider: PROVIDER,
                        reason: "complete_batch takes receipts of one queue".to_owned(),
                    },
                );
                continue;
            }
            match self.live_receipt(receipt, "complete_batch") {
                Ok(token) => parsed.push((index, token)),
                Err(e) => out.fail(index, e),
            }
        }
        parsed
    }

    async fn delete_chunk(&self, url: &str, chunk: &[&(usize, Token<'_>)], out: &mut Outcome<'_>) {
        let mut entries = Vec::with_capacity(chunk.len());
        let mut pending: HashMap<String, &(usize, Token<'_>)> = HashMap::new();
        for item in chunk {
            let (index, token) = item;
            let entry = DeleteMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .receipt_handle(token.handle)
                .build();
            match entry {
                Ok(entry) => {
                    entries.push(entry);
                    pending.insert(index.to_string(), *item);
                }
                Err(e) => out.fail(*index, entry_build_error(&e)),
            }
        }
        if entries.is_empty() {
            return;
        }
        let answer = self
            .inner
            .client
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await;
        match answer {
            Ok(answer) => {
                for ok in answer.successful {
                    if let Some((index, token)) = pending.remove(&ok.id) {
                        self.settle(token);
                        out.ok(*index, self.id_or_index(token, *index));
                    }
                }
                for bad in answer.failed {
                    if let Some((index, _)) = pending.remove(bad.id()) {
                        let f = failure_of_entry(bad.code(), bad.sender_fault(), bad.message());
                        out.fail_entry(*index, &f);
                    }
                }
                for (_, (index, _)) in pending.drain() {
                    out.unreported(*index);
                }
            }
            Err(e) => out.fail_by_call(pending.into_values().map(|(i, _)| *i), &failure_of(&e)),
        }
    }

    fn id_or_index(&self, token: &Token<'_>, index: usize) -> MessageId {
        self.message_id_of(token)
            .or_else(|| MessageId::new(index.to_string()).ok())
            .unwrap_or_else(MessageId::random)
    }
}

/// Encodes each message; failures are recorded by index.
fn encode_all(
    messages: Vec<Message>,
    queue: &QueueName,
    limits: Limits,
    out: &mut Outcome<'_>,
) -> Vec<(usize, Encoded)> {
    let now = SystemTime::now();
    let mut pending = Vec::with_capacity(messages.len());
    for (index, message) in messages.into_iter().enumerate() {
        match codec::encode(message, queue, limits, now) {
            Ok(enc) => pending.push((index, enc)),
            Err(e) => out.fail(index, e),
        }
    }
    pending
}

/// Chunks of at most 10 entries whose sizes add up to at most `max_size` (SQS's limit on
/// a whole batch request).
fn chunk_by_size(pending: Vec<(usize, Encoded)>, max_size: usize) -> Vec<Vec<(usize, Encoded)>> {
    let mut chunks = Vec::new();
    let mut current: Vec<(usize, Encoded)> = Vec::new();
    let mut current_size = 0usize;
    for (index, enc) in pending {
        if !current.is_empty() && (current.len() == MAX_BATCH || current_size + enc.size > max_size)
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
    chunks
}

fn entry_build_error(e: &dyn std::fmt::Display) -> QueueError {
    QueueError::InvalidMessage {
        provider: PROVIDER,
        reason: format!("cannot build a batch entry: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ctx() -> Ctx<'static> {
        Ctx::new("complete_batch", "jobs", Duration::from_secs(60))
    }

    fn id(s: &str) -> MessageId {
        MessageId::new(s).unwrap()
    }

    fn provider() -> SqsProvider {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(
            SqsProvider::builder()
                .with_region("us-east-1")
                .with_endpoint("http://127.0.0.1:1")
                .with_credentials(crate::StaticCredentials::new("a".into(), "b".into()))
                .build(),
        )
        .unwrap()
    }

    #[test]
    fn a_later_failed_call_lists_what_was_done_and_what_was_not() {
        let p = provider();
        let q = QueueName::new("jobs").unwrap();
        let mut out = Outcome::new(ctx(), 25);
        for i in 0..10 {
            out.ok(i, id(&format!("m{i}")));
        }
        let down = Failure::Transport {
            timeout: false,
            cause: crate::error::TransportCause::Refused,
        };
        out.fail_by_call(10..20, &down);
        out.fail_by_call(20..25, &down);
        match out.finish(&p, &q) {
            Err(QueueError::PartialBatch {
                total,
                succeeded,
                failed,
                ..
            }) => {
                assert_eq!(total, 25);
                let done: Vec<usize> = succeeded.iter().map(|(i, _)| *i).collect();
                assert_eq!(done, (0..10).collect::<Vec<_>>());
                assert_eq!(succeeded[3].1, id("m3"));
                let not: Vec<usize> = failed.iter().map(|f| f.index).collect();
                assert_eq!(not, (10..25).collect::<Vec<_>>());
                assert!(failed.iter().all(|f| f.error.is_transient()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn whole_failures_stay_plain_and_mixed_ones_are_partial() {
        let p = provider();
        let q = QueueName::new("jobs").unwrap();
        let down = Failure::Timeout;
        let mut out = Outcome::new(ctx(), 12);
        out.fail_by_call(0..12, &down);
        assert!(matches!(
            out.finish(&p, &q),
            Err(QueueError::Timeout { .. })
        ));

        // A receipt refused locally plus a failed call: nothing was deleted, but the
        // answer must still say which receipt failed for which reason.
        let mut out = Outcome::new(ctx(), 3);
        out.fail(
            0,
            QueueError::LockLost {
                provider: PROVIDER,
                queue: "jobs".into(),
                operation: "complete_batch",
            },
        );
        out.fail_by_call(1..3, &down);
        match out.finish(&p, &q) {
            Err(QueueError::PartialBatch { failed, .. }) => {
                assert!(matches!(failed[0].error, QueueError::LockLost { .. }));
                assert!(matches!(failed[1].error, QueueError::Timeout { .. }));
            }
            other => panic!("{other:?}"),
        }

        let mut out = Outcome::new(ctx(), 2);
        out.ok(1, id("b"));
        out.ok(0, id("a"));
        assert_eq!(out.finish(&p, &q).unwrap(), vec![id("a"), id("b")]);
    }
}
