//! The batch send of [`Retrying`](super::Retrying): re-sends only the entries that failed
//! transiently, and reports every entry by its index in the caller's batch.

use tokio::time::Instant;

use super::retrying::{PROVIDER_RETRIES, RetryCore};
use crate::{
    error::{BatchEntryError, QueueError, Result, RetryClass},
    message::Message,
    names::{MessageId, QueueName},
    provider::QueueProvider,
};

const OP: &str = "send_batch";

/// Where one batch send stands: ids of the entries sent, indices of the entries left.
struct Progress {
    sent: Vec<Option<MessageId>>,
    pending: Vec<usize>,
}

/// What one attempt left to do.
enum Round {
    /// Everything is sent.
    Done,
    /// Some entries failed transiently (their error kept for the report).
    Retry(QueueError),
    /// The batch failed for good.
    Fail(QueueError),
}

/// Sends `messages` (all with ids) and retries the entries that failed transiently.
pub(super) async fn send_batch<P: QueueProvider + ?Sized>(
    core: &RetryCore,
    inner: &P,
    queue: &QueueName,
    messages: Vec<Message>,
) -> Result<Vec<MessageId>> {
    let mut progress = Progress {
        sent: vec![None; messages.len()],
        pending: (0..messages.len()).collect(),
    };
    let started = Instant::now();
    let mut attempt = 1;
    loop {
        let batch = progress.pending.iter().map(|&i| messages[i].clone());
        let outcome = inner.send_batch(queue, batch.collect()).await;
        let err = match progress.absorb(outcome) {
            Round::Done => return Ok(progress.sent.into_iter().flatten().collect()),
            Round::Fail(e) => return Err(progress.report(queue, e, core.provider(), 0)),
            Round::Retry(e) => e,
        };
        let Some(delay) = core.next_delay(attempt, started, &err) else {
            return Err(progress.report(queue, err, core.provider(), attempt));
        };
        tracing::debug!(
            provider = core.provider(),
            operation = OP,
            attempt,
            left = progress.pending.len(),
            delay_ms = delay.as_millis() as u64,
            "batch entries failed transiently; retrying them"
        );
        metrics::counter!(PROVIDER_RETRIES, "provider" => core.provider(),
            "operation" => OP, "kind" => err.kind_label())
        .increment(1);
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

impl Progress {
    /// Records the result of one attempt over `pending`.
    fn absorb(&mut self, outcome: Result<Vec<MessageId>>) -> Round {
        match outcome {
            Ok(ids) => {
                for (slot, id) in self.pending.iter().zip(ids) {
                    self.sent[*slot] = Some(id);
                }
                self.pending.clear();
                Round::Done
            }
            Err(QueueError::PartialBatch {
                succeeded, failed, ..
            }) => {
                for (k, id) in succeeded {
                    self.sent[self.pending[k]] = Some(id);
                }
                let transient = failed
                    .iter()
                    .all(|f| f.error.retry_class() == RetryClass::Transient);
                let failed: Vec<BatchEntryError> = failed
                    .into_iter()
                    .map(|f| BatchEntryError::new(self.pending[f.index], f.error))
                    .collect();
                self.pending = failed.iter().map(|f| f.index).collect();
                let err = self.partial(failed);
                if transient {
                    Round::Retry(err)
                } else {
                    Round::Fail(err)
                }
            }
            Err(e) if e.retry_class() == RetryClass::Transient => Round::Retry(e),
            Err(e) => Round::Fail(e),
        }
    }

    /// A `PartialBatch` placeholder holding `failed` (queue and provider set by `report`).
    fn partial(&self, failed: Vec<BatchEntryError>) -> QueueError {
        QueueError::PartialBatch {
            provider: "",
            queue: String::new(),
            operation: OP,
            total: self.sent.len(),
            succeeded: Vec::new(),
            failed,
        }
    }

    /// The error the caller sees: the inner error itself when nothing was sent, otherwise
    /// a `PartialBatch` over the caller's indices. After more than one of `attempts`,
    /// transient failures are marked as out of retries.
    fn report(
        self,
        queue: &QueueName,
        err: QueueError,
        provider: &'static str,
        attempts: u32,
    ) -> QueueError {
        let whole_call = !matches!(err, QueueError::PartialBatch { .. });
        if whole_call && self.sent.iter().all(Option::is_none) {
            return wrap(err, provider, attempts);
        }
        let failed = match err {
            QueueError::PartialBatch { failed, .. } => failed
                .into_iter()
                .map(|f| BatchEntryError::new(f.index, wrap(f.error, provider, attempts)))
                .collect(),
            other => self
                .pending
                .iter()
                .map(|&i| BatchEntryError::new(i, entry_error(&other, provider, attempts > 1)))
                .collect(),
        };
        let succeeded = self
            .sent
            .iter()
            .enumerate()
            .filter_map(|(i, id)| id.clone().map(|id| (i, id)))
            .collect();
        QueueError::PartialBatch {
            provider,
            queue: queue.as_str().to_owned(),
            operation: OP,
            total: self.sent.len(),
            succeeded,
            failed,
        }
    }
}

fn wrap(err: QueueError, provider: &'static str, attempts: u32) -> QueueError {
    if attempts <= 1 || err.retry_class() != RetryClass::Transient {
        return err;
    }
    QueueError::RetriesExhausted {
        provider,
        operation: OP,
        attempts,
        last: Box::new(err),
    }
}

/// One entry's share of an error that failed the whole call (errors are not `Clone`; the
/// rendering never carries credentials or bodies).
fn entry_error(err: &QueueError, provider: &'static str, exhausted: bool) -> QueueError {
    let class = match err.retry_class() {
        RetryClass::Transient if exhausted => RetryClass::Exhausted,
        class => class,
    };
    QueueError::Provider {
        provider,
        operation: OP,
        class,
        source: err.to_string().into(),
    }
}
