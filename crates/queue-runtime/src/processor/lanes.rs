//! Handler lanes: session-less messages run as futures of a few long-lived tasks, not as a
//! task each.
//!
//! A task per message cost more than the rest of the processor's work for it (issue 18:
//! allocating, scheduling and freeing the task was about a quarter of the instructions per
//! message). A lane is one task that runs any number of handlers concurrently (a
//! `FuturesUnordered`); there is one lane per runtime worker thread, so handlers still run
//! in parallel on a multi-threaded runtime, and messages are handed to the lanes in turn.
//! How many handlers run at once is bounded, as before, by the receive loop's slots.

use std::{future::Future, panic::AssertUnwindSafe, sync::Arc};

use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use tokio::sync::{Semaphore, mpsc};

use super::shared::{Held, Settler, Shared};

/// The senders of the lanes, used by the receive loop in turn.
pub(super) struct Lanes {
    senders: Vec<mpsc::UnboundedSender<Held>>,
    next: usize,
}

impl Lanes {
    /// Starts one lane per runtime worker thread (at most `max_concurrent_messages`).
    /// `slots` bounds the handlers running at once where the receive loop's own slots do
    /// not (grouped receive holds more messages than it runs).
    pub(super) fn start(shared: &Arc<Shared>, slots: Option<Arc<Semaphore>>) -> Self {
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let count = workers.clamp(1, shared.settings.max_concurrent_messages.max(1));
        let senders = (0..count)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                shared.tracker.spawn(shared.clone().lane(rx, slots.clone()));
                tx
            })
            .collect();
        Self { senders, next: 0 }
    }

    /// Hands `held` to the next lane.
    pub(super) fn run(&mut self, held: Held) {
        let lane = &self.senders[self.next];
        self.next = (self.next + 1) % self.senders.len();
        if let Err(mpsc::error::SendError(held)) = lane.send(held) {
            // Only if the lane panicked outside a handler (logged there): the delivery's
            // lock expires and the broker delivers it again.
            drop(held);
        }
    }
}

impl Shared {
    /// Runs the handlers of the messages it is given, concurrently, until the receive loop
    /// is gone and every one of them has finished.
    async fn lane(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Held>,
        slots: Option<Arc<Semaphore>>,
    ) {
        let mut running = FuturesUnordered::new();
        loop {
            tokio::select! {
                biased;
                Some(done) = running.next(), if !running.is_empty() => lane_task_ended(done),
                held = rx.recv() => match held {
                    Some(held) => running.push(guard(self.handle_unkeyed(held, slots.clone()))),
                    None => break,
                },
            }
        }
        while let Some(done) = running.next().await {
            lane_task_ended(done);
        }
    }

    /// Waits for a handler slot, then processes `held` (abandons it if shutdown came first).
    async fn handle_unkeyed(self: &Arc<Self>, held: Held, slots: Option<Arc<Semaphore>>) {
        let _slot = match &slots {
            Some(slots) => Some(slots.acquire().await),
            None => None,
        };
        if self.shutdown.is_cancelled() {
            let abandon = self.abandon_unhandled(&Settler::Provider, &held.msg, true);
            Box::pin(abandon).await;
            return;
        }
        // Boxed once here, so that the lane's moves of this future (into its set of running
        // futures) copy a few words, not the whole processing state.
        Box::pin(self.process(&held.msg, &held.watch, &Settler::Provider)).await;
    }
}

/// The panic boundary of one message's work in a lane (the handler itself already has
/// its own, which turns its panics into retries).
fn guard<F: Future<Output = ()>>(work: F) -> impl Future<Output = std::thread::Result<()>> {
    AssertUnwindSafe(work).catch_unwind()
}

fn lane_task_ended(done: std::thread::Result<()>) {
    if done.is_err() {
        // Its `Held` was dropped while unwinding: the lease ended, the lock will expire and
        // the broker delivers the message again.
        tracing::error!("the processor panicked while handling a message; it will be redelivered");
    }
}
