//! Redrive: moving dead letters back to their queue, for every provider.
//!
//! [`QueueProviderExt::redrive`](crate::QueueProviderExt::redrive) is built on trait
//! methods only (`receive_dead_letters`, `send`, `complete`, `abandon`), so every provider
//! gets the same behaviour:
//!
//! * **Nothing is dropped by duplicate detection.** A redriven message is sent under a
//!   fresh, random message id; the id it had is kept in the attribute
//!   [`ORIGINAL_MESSAGE_ID_ATTRIBUTE`] (set once: a message redriven twice keeps its first
//!   id). Re-sending under the original id would be silently dropped by a broker whose
//!   duplicate-detection window still holds it (Service Bus, SQS FIFO), while the
//!   dead-letter copy is completed: the message would be gone.
//! * **Send first, remove after.** The dead-letter copy is completed only after the broker
//!   accepted the re-send, so a failure in between duplicates a message (counted in
//!   [`RedriveReport::sent_not_removed`]), never loses one.
//! * **Order.** Messages are re-sent one at a time in the order the dead-letter queue hands
//!   them out; the first failure stops the run and releases what the run still holds, so
//!   per-session order is kept.
//! * **Bounded.** A run stops at [`RedriveOptions::max_messages`], when the dead-letter queue
//!   yields nothing within [`RedriveOptions::wait`], or when a message this run redrove
//!   comes back to the dead-letter queue (a consumer rejecting it again), whichever is first.

use std::{collections::HashSet, fmt, time::Duration};

use crate::{
    error::QueueError,
    message::{Message, ReceivedMessage},
    names::{MessageId, QueueName},
    provider::{QueueProvider, ReceiveOptions},
};

/// Attribute a redriven message carries: the message id it had before its first redrive.
pub const ORIGINAL_MESSAGE_ID_ATTRIBUTE: &str = "queue-runtime-original-id";

/// Attributes that describe a dead-lettering (Service Bus names them so); a redrive drops
/// them. Providers that keep the reason elsewhere report it in
/// [`ReceivedMessage::dead_letter`] only.
pub const DEAD_LETTER_ATTRIBUTES: &[&str] = &["DeadLetterReason", "DeadLetterErrorDescription"];

/// How far a redrive run goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedriveOptions {
    /// Most messages to move; `None` moves what the dead-letter queue holds.
    pub max_messages: Option<usize>,
    /// How long one receive from the dead-letter queue waits; an empty answer ends the run.
    pub wait: Duration,
}

impl RedriveOptions {
    /// Everything the dead-letter queue holds, waiting one second per receive.
    pub fn new() -> Self {
        Self {
            max_messages: None,
            wait: Duration::from_secs(1),
        }
    }

    /// Moves at most `max` messages.
    pub fn with_max_messages(mut self, max: usize) -> Self {
        self.max_messages = Some(max);
        self
    }

    /// Sets how long one receive from the dead-letter queue waits.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }
}

impl Default for RedriveOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// One message a redrive moved.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Redriven {
    /// The id the message had in the dead-letter queue.
    pub from: MessageId,
    /// The fresh id it was re-sent under.
    pub to: MessageId,
}

/// What a redrive run did, in counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedriveReport {
    /// Messages received from the dead-letter queue in this run.
    pub received: usize,
    /// Re-sent to the queue and removed from the dead-letter queue.
    pub moved: usize,
    /// Re-sent, but their dead-letter copy could not be removed: they are in both queues
    /// (a later run re-sends them again: a duplicate, never a loss).
    pub sent_not_removed: usize,
    /// Received but handed back to the dead-letter queue unsent, because the run stopped.
    pub released: usize,
    /// Of those, how many could not be handed back at once (they reappear in the
    /// dead-letter queue when their lock expires).
    pub release_failed: usize,
    /// The moved messages, old and new id, in the order they were re-sent.
    pub moved_ids: Vec<Redriven>,
}

/// A redrive run that stopped on an error, with what it did before.
#[derive(Debug)]
#[non_exhaustive]
pub struct RedriveError {
    /// Counts up to the failure.
    pub report: RedriveReport,
    /// Id (in the dead-letter queue) of the message the run stopped at, if one.
    pub message_id: Option<MessageId>,
    /// The failure.
    pub error: QueueError,
}

impl fmt::Display for RedriveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "redrive stopped after moving {} message(s)",
            self.report.moved
        )?;
        if let Some(id) = &self.message_id {
            write!(f, " at message `{id}`")?;
        }
        write!(
            f,
            " ({} re-sent but still in the dead-letter queue, {} released): {}",
            self.report.sent_not_removed, self.report.released, self.error
        )
    }
}

impl std::error::Error for RedriveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<RedriveError> for QueueError {
    fn from(e: RedriveError) -> Self {
        e.error
    }
}

/// The message to re-send for dead letter `m`: fresh id, original id kept, dead-letter
/// attributes and schedule dropped.
pub(crate) fn redrive_message(m: &ReceivedMessage) -> Message {
    let mut msg = m.message.clone();
    for name in DEAD_LETTER_ATTRIBUTES {
        msg.attributes.remove(*name);
    }
    msg.scheduled_enqueue_time = None;
    msg.attributes
        .entry(ORIGINAL_MESSAGE_ID_ATTRIBUTE.to_owned())
        .or_insert_with(|| m.message_id.as_str().to_owned());
    msg.message_id = Some(MessageId::random());
    msg
}

/// One run; see the module documentation.
pub(crate) async fn run<P: QueueProvider + ?Sized>(
    provider: &P,
    queue: &QueueName,
    options: RedriveOptions,
) -> Result<RedriveReport, RedriveError> {
    let batch_max = provider.capabilities().max_batch_size.max(1);
    let mut run = Run {
        report: RedriveReport::default(),
        sent: HashSet::new(),
    };
    loop {
        let want = options
            .max_messages
            .map_or(batch_max, |max| max.saturating_sub(run.report.moved))
            .min(batch_max);
        if want == 0 {
            return Ok(run.report);
        }
        let batch = match provider
            .receive_dead_letters(queue, ReceiveOptions::new(want, options.wait))
            .await
        {
            Ok(batch) => batch,
            Err(error) => return Err(run.fail(None, error)),
        };
        if batch.is_empty() {
            return Ok(run.report);
        }
        run.report.received += batch.len();
        if let Some(stop) = run.move_batch(provider, queue, batch).await {
            return stop;
        }
    }
}

struct Run {
    report: RedriveReport,
    /// Fresh ids sent in this run: one coming back ends the run.
    sent: HashSet<MessageId>,
}

impl Run {
    fn fail(self, message_id: Option<MessageId>, error: QueueError) -> RedriveError {
        RedriveError {
            report: self.report,
            message_id,
            error,
        }
    }

    /// Moves one received batch; `Some` ends the run with that result.
    async fn move_batch<P: QueueProvider + ?Sized>(
        &mut self,
        provider: &P,
        queue: &QueueName,
        batch: Vec<ReceivedMessage>,
    ) -> Option<Result<RedriveReport, RedriveError>> {
        let mut rest = batch.into_iter();
        while let Some(m) = rest.next() {
            if self.sent.contains(&m.message_id) {
                // Redriven by this run and dead-lettered again: stop, leave it there.
                let held: Vec<_> = std::iter::once(m).chain(rest).collect();
                self.release(provider, held).await;
                return Some(Ok(std::mem::take(&mut self.report)));
            }
            let sent = match provider.send(queue, redrive_message(&m)).await {
                Ok(id) => id,
                Err(error) => {
                    let id = m.message_id.clone();
                    let held: Vec<_> = std::iter::once(m).chain(rest).collect();
                    self.release(provider, held).await;
                    return Some(Err(self.take_error(Some(id), error)));
                }
            };
            self.sent.insert(sent.clone());
            if let Err(error) = provider.complete(&m.receipt).await {
                self.report.sent_not_removed += 1;
                self.release(provider, rest.collect()).await;
                return Some(Err(self.take_error(Some(m.message_id), error)));
            }
            self.report.moved += 1;
            self.report.moved_ids.push(Redriven {
                from: m.message_id,
                to: sent,
            });
        }
        None
    }

    fn take_error(&mut self, message_id: Option<MessageId>, error: QueueError) -> RedriveError {
        RedriveError {
            report: std::mem::take(&mut self.report),
            message_id,
            error,
        }
    }

    /// Hands messages back to the dead-letter queue, in order.
    async fn release<P: QueueProvider + ?Sized>(
        &mut self,
        provider: &P,
        held: Vec<ReceivedMessage>,
    ) {
        for m in held {
            self.report.released += 1;
            if provider.abandon(&m.receipt, None).await.is_err() {
                self.report.release_failed += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::message::{DeadLetterReason, Receipt};

    #[test]
    fn redriven_message_gets_a_fresh_id_and_keeps_the_first() {
        let q = QueueName::new("q").unwrap();
        let original = MessageId::new("github-delivery-1").unwrap();
        let msg = Message::new("b")
            .with_message_id(original.clone())
            .with_attribute("DeadLetterReason", "x")
            .with_attribute("DeadLetterErrorDescription", "y")
            .with_attribute("event", "push")
            .with_delay(Duration::from_secs(60));
        let receipt = Receipt::new("memory", q, None, "t");
        let rm = ReceivedMessage::new(msg, original.clone(), 1, SystemTime::now(), receipt)
            .with_dead_letter(DeadLetterReason::new("r", "d"));
        let once = redrive_message(&rm);
        let fresh = once.message_id.clone().unwrap();
        assert_ne!(fresh, original);
        assert_eq!(
            once.attributes.get(ORIGINAL_MESSAGE_ID_ATTRIBUTE),
            Some(&original.as_str().to_owned())
        );
        assert_eq!(
            once.attributes.get("event").map(String::as_str),
            Some("push")
        );
        assert!(!once.attributes.contains_key("DeadLetterReason"));
        assert!(!once.attributes.contains_key("DeadLetterErrorDescription"));
        assert!(once.scheduled_enqueue_time.is_none());

        // Redriven a second time: a new id again, the first original id kept.
        let receipt = Receipt::new("memory", QueueName::new("q").unwrap(), None, "t2");
        let again = ReceivedMessage::new(once, fresh.clone(), 1, SystemTime::now(), receipt);
        let twice = redrive_message(&again);
        assert_ne!(twice.message_id.as_ref(), Some(&fresh));
        assert_eq!(
            twice.attributes.get(ORIGINAL_MESSAGE_ID_ATTRIBUTE),
            Some(&original.as_str().to_owned())
        );
    }

    #[test]
    fn error_text_says_counts() {
        let e = RedriveError {
            report: RedriveReport {
                moved: 3,
                sent_not_removed: 1,
                ..RedriveReport::default()
            },
            message_id: Some(MessageId::new("m-4").unwrap()),
            error: QueueError::Closed { provider: "memory" },
        };
        let text = e.to_string();
        assert!(text.contains("moving 3") && text.contains("m-4") && text.contains("1 re-sent"));
        assert!(matches!(QueueError::from(e), QueueError::Closed { .. }));
    }
}
