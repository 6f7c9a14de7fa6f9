//! The suite can fail: providers with one planted defect each are caught by the case that
//! covers that behaviour.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use queue_conformance::Harness;
use queue_core::{
    BatchEntryError, Capabilities, DeadLetterReason, Message, MessageId,
    ORIGINAL_MESSAGE_ID_ATTRIBUTE, QueueError, QueueName, QueueProvider, Receipt, ReceiveOptions,
    ReceivedMessage, Result,
};
use queue_memory::InMemoryProvider;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Defect {
    None,
    /// Every second send is acknowledged but not stored.
    DropsEverySecondSend,
    /// `complete` does nothing.
    CompleteIsNoop,
    /// Stale or unknown receipts are accepted silently.
    AcceptsStaleReceipts,
    /// A receive on an empty queue returns at once.
    IgnoresWait,
    /// `abandon` completes the message.
    AbandonCompletes,
    /// Reports a size limit it does not enforce.
    UnenforcedSizeLimit,
    /// Dead-lettering records a different reason.
    LosesDeadLetterReason,
    /// A redriven message is sent under its original id again (the round-1 redrive), so
    /// duplicate detection drops it.
    RedrivesUnderOriginalId,
    /// Claims atomic batches (`batch_atomic`) but sends entries one by one, so a refused
    /// entry leaves the others sent.
    SplitsAtomicBatches,
}

#[derive(Debug)]
struct Faulty {
    inner: InMemoryProvider,
    defect: Defect,
    sends: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl queue_core::layer::Forward for Faulty {
    type Inner = InMemoryProvider;

    fn inner(&self) -> &InMemoryProvider {
        &self.inner
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = self.inner.capabilities();
        if self.defect == Defect::UnenforcedSizeLimit {
            c.max_message_size = 1000;
        }
        c
    }
    async fn send(&self, queue: &QueueName, message: Message) -> Result<MessageId> {
        let n = self
            .sends
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.defect == Defect::DropsEverySecondSend && n % 2 == 1 {
            return Ok(MessageId::random());
        }
        let mut message = message;
        if self.defect == Defect::RedrivesUnderOriginalId
            && let Some(original) = message.attributes.remove(ORIGINAL_MESSAGE_ID_ATTRIBUTE)
        {
            let fresh = message.message_id.replace(MessageId::new(original)?);
            self.inner.send(queue, message).await?;
            // Report the id the caller asked for, as a broker dropping a duplicate would.
            return Ok(fresh.unwrap_or_else(MessageId::random));
        }
        self.inner.send(queue, message).await
    }
    async fn send_batch(&self, queue: &QueueName, m: Vec<Message>) -> Result<Vec<MessageId>> {
        if self.defect != Defect::SplitsAtomicBatches {
            return self.inner.send_batch(queue, m).await;
        }
        let (mut succeeded, mut failed) = (Vec::new(), Vec::new());
        let total = m.len();
        for (index, message) in m.into_iter().enumerate() {
            match self.inner.send(queue, message).await {
                Ok(id) => succeeded.push((index, id)),
                Err(error) => failed.push(BatchEntryError::new(index, error)),
            }
        }
        if failed.is_empty() {
            return Ok(succeeded.into_iter().map(|(_, id)| id).collect());
        }
        Err(QueueError::PartialBatch {
            provider: "memory",
            queue: queue.as_str().to_owned(),
            operation: "send_batch",
            total,
            succeeded,
            failed,
        })
    }
    async fn receive(&self, q: &QueueName, o: ReceiveOptions) -> Result<Vec<ReceivedMessage>> {
        let o = if self.defect == Defect::IgnoresWait {
            ReceiveOptions::new(o.max_messages, Duration::ZERO)
        } else {
            o
        };
        self.inner.receive(q, o).await
    }
    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        match self.defect {
            Defect::CompleteIsNoop => Ok(()),
            Defect::AcceptsStaleReceipts => match self.inner.complete(receipt).await {
                Err(QueueError::LockLost { .. }) => Ok(()),
                other => other,
            },
            _ => self.inner.complete(receipt).await,
        }
    }
    async fn abandon(&self, receipt: &Receipt, delay: Option<Duration>) -> Result<()> {
        match self.defect {
            Defect::AbandonCompletes => self.inner.complete(receipt).await,
            Defect::AcceptsStaleReceipts => match self.inner.abandon(receipt, delay).await {
                Err(QueueError::LockLost { .. }) => Ok(()),
                other => other,
            },
            _ => self.inner.abandon(receipt, delay).await,
        }
    }
    async fn dead_letter(&self, receipt: &Receipt, reason: DeadLetterReason) -> Result<()> {
        let reason = if self.defect == Defect::LosesDeadLetterReason {
            DeadLetterReason::new("Unknown", "")
        } else {
            reason
        };
        self.inner.dead_letter(receipt, reason).await
    }
}

fn harness(defect: Defect) -> Harness {
    let inner = InMemoryProvider::new();
    let clock = inner.clone();
    Harness::new(Arc::new(Faulty {
        inner,
        defect,
        sends: Default::default(),
    }))
    .with_clock(move || clock.now())
}

/// Runs `case` on its own task and reports whether it panicked (failed).
async fn fails<F, Fut>(defect: Defect, case: F) -> bool
where
    F: FnOnce(Harness) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(case(harness(defect)))
        .await
        .is_err_and(|e| e.is_panic())
}

macro_rules! case {
    ($name:ident) => {
        |h: Harness| async move { queue_conformance::$name(&h).await }
    };
}

#[tokio::test(start_paused = true)]
async fn planted_defects_are_caught() {
    let expectations: Vec<(Defect, bool)> = vec![
        (
            Defect::DropsEverySecondSend,
            fails(Defect::DropsEverySecondSend, case!(unique_ids)).await,
        ),
        (
            Defect::CompleteIsNoop,
            fails(Defect::CompleteIsNoop, case!(complete_prevents_redelivery)).await,
        ),
        (
            Defect::AcceptsStaleReceipts,
            fails(
                Defect::AcceptsStaleReceipts,
                case!(unknown_receipt_is_rejected),
            )
            .await,
        ),
        (
            Defect::AcceptsStaleReceipts,
            fails(
                Defect::AcceptsStaleReceipts,
                case!(expired_receipt_is_rejected),
            )
            .await,
        ),
        (
            Defect::IgnoresWait,
            fails(
                Defect::IgnoresWait,
                case!(empty_receive_returns_at_deadline),
            )
            .await,
        ),
        (
            Defect::AbandonCompletes,
            fails(
                Defect::AbandonCompletes,
                case!(abandon_redelivers_with_count_two),
            )
            .await,
        ),
        (
            Defect::UnenforcedSizeLimit,
            fails(
                Defect::UnenforcedSizeLimit,
                case!(oversize_message_rejected),
            )
            .await,
        ),
        (
            Defect::LosesDeadLetterReason,
            fails(
                Defect::LosesDeadLetterReason,
                case!(dead_letter_moves_to_dlq_with_reason),
            )
            .await,
        ),
        (
            Defect::RedrivesUnderOriginalId,
            fails(
                Defect::RedrivesUnderOriginalId,
                case!(redrive_is_not_dropped_by_duplicate_detection),
            )
            .await,
        ),
        (
            Defect::SplitsAtomicBatches,
            fails(
                Defect::SplitsAtomicBatches,
                case!(refused_batch_entry_follows_batch_atomic),
            )
            .await,
        ),
    ];
    let missed: Vec<_> = expectations
        .iter()
        .filter(|(_, caught)| !caught)
        .map(|(d, _)| *d)
        .collect();
    assert!(
        missed.is_empty(),
        "defects the suite did not catch: {missed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_faithful_wrapper_passes_the_same_cases() {
    assert!(!fails(Defect::None, case!(unique_ids)).await);
    assert!(!fails(Defect::None, case!(complete_prevents_redelivery)).await);
    assert!(!fails(Defect::None, case!(expired_receipt_is_rejected)).await);
    assert!(!fails(Defect::None, case!(empty_receive_returns_at_deadline)).await);
    assert!(!fails(Defect::None, case!(oversize_message_rejected)).await);
    assert!(
        !fails(
            Defect::None,
            case!(redrive_is_not_dropped_by_duplicate_detection)
        )
        .await
    );
    assert!(!fails(Defect::None, case!(redrive_keeps_order_and_limit)).await);
    assert!(
        !fails(
            Defect::None,
            case!(refused_batch_entry_follows_batch_atomic)
        )
        .await
    );
}
