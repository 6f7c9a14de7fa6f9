//! The failure paths of the generic `QueueProviderExt::redrive`, on the in-memory provider
//! behind a wrapper that injects one fault each: a send refused mid-run, a dead-letter copy
//! that cannot be removed, and a consumer that dead-letters every redriven message again.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use async_trait::async_trait;
use queue_core::{
    DeadLetterReason, Message, MessageId, ORIGINAL_MESSAGE_ID_ATTRIBUTE, QueueError, QueueName,
    QueueProvider, QueueProviderExt, QueueSpec, Receipt, ReceiveOptions, RedriveOptions, Result,
};
use queue_memory::InMemoryProvider;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// The n-th redriven send (1-based) is refused.
    RefuseRedrivenSend(usize),
    /// Completing a dead letter fails.
    DeadLetterCompleteFails,
    /// Every redriven message is received and dead-lettered again at once.
    Bounce,
}

#[derive(Debug)]
struct Faulty {
    inner: InMemoryProvider,
    fault: Fault,
    redriven: AtomicUsize,
}

fn is_redriven(m: &Message) -> bool {
    m.attributes.contains_key(ORIGINAL_MESSAGE_ID_ATTRIBUTE)
}

#[async_trait]
impl queue_core::layer::Forward for Faulty {
    type Inner = InMemoryProvider;

    fn inner(&self) -> &InMemoryProvider {
        &self.inner
    }

    async fn send(&self, queue: &QueueName, message: Message) -> Result<MessageId> {
        if !is_redriven(&message) {
            return self.inner.send(queue, message).await;
        }
        let n = self.redriven.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fault == Fault::RefuseRedrivenSend(n) {
            return Err(QueueError::Throttled {
                provider: "memory",
                operation: "send",
                retry_after: None,
            });
        }
        let id = self.inner.send(queue, message).await?;
        if self.fault == Fault::Bounce {
            let got = self
                .inner
                .receive(queue, ReceiveOptions::new(1, Duration::ZERO))
                .await?;
            for m in got {
                let reason = DeadLetterReason::new("StillFailing", "bounced");
                self.inner.dead_letter(&m.receipt, reason).await?;
            }
        }
        Ok(id)
    }
    async fn complete(&self, receipt: &Receipt) -> Result<()> {
        if self.fault == Fault::DeadLetterCompleteFails {
            return Err(QueueError::LockLost {
                provider: "memory",
                queue: receipt.queue().as_str().to_owned(),
                operation: "complete",
            });
        }
        self.inner.complete(receipt).await
    }
}

/// A provider with `bodies` dead-lettered in order on queue `q`.
async fn with_dead_letters(
    fault: Fault,
    bodies: &[&'static str],
) -> (Faulty, QueueName, Vec<MessageId>) {
    let p = Faulty {
        inner: InMemoryProvider::new(),
        fault,
        redriven: AtomicUsize::new(0),
    };
    let q = QueueName::new("q").unwrap();
    p.create_queue(&q, &QueueSpec::default()).await.unwrap();
    let mut ids = Vec::new();
    for body in bodies {
        ids.push(p.send(&q, Message::new(*body)).await.unwrap());
        let got = p
            .receive(&q, ReceiveOptions::new(1, Duration::ZERO))
            .await
            .unwrap();
        let reason = DeadLetterReason::new("HandlerFailed", "test");
        p.dead_letter(&got[0].receipt, reason).await.unwrap();
    }
    (p, q, ids)
}

async fn dead_bodies(p: &Faulty, q: &QueueName) -> Vec<String> {
    let got = p
        .inner
        .receive_dead_letters(q, ReceiveOptions::new(10, Duration::ZERO))
        .await
        .unwrap();
    got.iter()
        .map(|m| String::from_utf8_lossy(m.body()).into_owned())
        .collect()
}

/// A refused send stops the run: what moved is counted, the refused message and those after
/// it are handed back to the dead-letter queue in order, and the error names the message.
#[tokio::test(start_paused = true)]
async fn a_refused_send_stops_the_run_and_releases_the_rest() {
    let (p, q, ids) = with_dead_letters(Fault::RefuseRedrivenSend(2), &["A", "B", "C"]).await;
    let err = p
        .redrive(&q, RedriveOptions::new())
        .await
        .expect_err("the second send is refused");
    assert_eq!(err.report.received, 3);
    assert_eq!(err.report.moved, 1);
    assert_eq!(err.report.moved_ids[0].from, ids[0]);
    assert_eq!((err.report.released, err.report.release_failed), (2, 0));
    assert_eq!(err.report.sent_not_removed, 0);
    assert_eq!(err.message_id.as_ref(), Some(&ids[1]));
    assert!(err.error.is_transient(), "{err}");
    assert!(err.to_string().contains("moving 1"), "{err}");
    assert_eq!(dead_bodies(&p, &q).await, ["B", "C"]);
    let main = p
        .inner
        .receive(&q, ReceiveOptions::new(10, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(main.len(), 1);
    assert_eq!(main[0].body().as_ref(), b"A");
}

/// A dead-letter copy that cannot be removed after its re-send is reported as such (it is
/// now in both queues: a duplicate, not a loss), and the run stops.
#[tokio::test(start_paused = true)]
async fn a_copy_that_cannot_be_removed_is_counted() {
    let (p, q, ids) = with_dead_letters(Fault::DeadLetterCompleteFails, &["A", "B"]).await;
    let err = p
        .redrive(&q, RedriveOptions::new())
        .await
        .expect_err("completing the dead letter fails");
    assert_eq!(err.report.moved, 0);
    assert_eq!(err.report.sent_not_removed, 1);
    assert_eq!(err.report.released, 1);
    assert_eq!(err.message_id.as_ref(), Some(&ids[0]));
    assert!(matches!(err.error, QueueError::LockLost { .. }), "{err}");
    let main = p
        .inner
        .receive(&q, ReceiveOptions::new(10, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(main.len(), 1, "the re-sent message is in the queue");
}

/// A consumer that dead-letters every redriven message again cannot make a run loop: the
/// run stops when a message it moved comes back.
#[tokio::test(start_paused = true)]
async fn a_message_coming_back_ends_the_run() {
    let (p, q, _) = with_dead_letters(Fault::Bounce, &["A"]).await;
    let run = p.redrive(&q, RedriveOptions::new());
    let report = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run ends")
        .expect("no error");
    assert_eq!(report.moved, 1);
    assert_eq!(report.received, 2, "{report:?}");
    assert_eq!(report.released, 1);
    assert_eq!(dead_bodies(&p, &q).await, ["A"]);
}
