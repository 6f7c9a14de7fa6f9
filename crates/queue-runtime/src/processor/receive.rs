//! The session-less receive loop, dispatch and SQS FIFO group workers.

use std::{collections::VecDeque, sync::Arc};

use queue_core::{QueueError, ReceiveOptions, ReceivedMessage, Result, SessionId, SessionSupport};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::config::SessionMode;

/// The semaphores, key buffers and handler lanes of the receive loop.
struct Dispatch {
    /// Messages received and not yet settled.
    slots: Arc<Semaphore>,
    /// Where session-less messages are handled.
    unkeyed: Lanes,
    /// Keys (groups) handled at once.
    sessions: Arc<Semaphore>,
    /// Buffered messages per key.
    groups: Groups,
    /// Whether messages with a session id are serialized per key.
    keyed: bool,
}

use super::{
    bump,
    lanes::Lanes,
    renew::Now,
    shared::{Disposition, Groups, Held, Settler, Shared},
};

impl Shared {
    /// Receives session-less messages (all providers) and grouped messages (SQS FIFO).
    ///
    /// Messages that carry a session id but arrive through this receive (SQS FIFO groups,
    /// and Service Bus queues without sessions, which accept such messages) are handled one
    /// at a time per key, in the order received.
    pub(super) async fn receive_loop(self: Arc<Self>) {
        let grouped = self.caps.sessions == SessionSupport::Grouped;
        // Grouped receive holds more messages than it runs: the lanes bound the handlers.
        let messages =
            grouped.then(|| Arc::new(Semaphore::new(self.settings.max_concurrent_messages)));
        let mut lanes = Dispatch {
            slots: Arc::new(Semaphore::new(if grouped {
                self.settings.max_buffered_messages
            } else {
                self.settings.max_concurrent_messages
            })),
            unkeyed: Lanes::start(&self, messages),
            sessions: Arc::new(Semaphore::new(self.settings.max_concurrent_sessions)),
            groups: Groups::default(),
            keyed: self.caps.sessions != SessionSupport::None,
        };
        let mut errors = 0u32;
        while !self.shutdown.is_cancelled() {
            let Some(mut permits) = self.reserve(&lanes.slots).await else {
                break;
            };
            if !self.wait_for_breaker().await {
                break;
            }
            let Some(res) = self.receive_some(permits.len()).await else {
                break;
            };
            match res {
                Ok(batch) => {
                    errors = 0;
                    self.provider_ok();
                    let now = Now::read();
                    for msg in batch {
                        let permit = permits.pop();
                        self.dispatch(msg, permit, &mut lanes, now);
                    }
                }
                Err(err) => {
                    if !self.receive_failed(err) {
                        break;
                    }
                    errors += 1;
                    if !self.backoff(errors).await {
                        break;
                    }
                }
            }
        }
    }

    /// Waits for one free slot, then takes as many more as one receive call can fill.
    async fn reserve(&self, slots: &Arc<Semaphore>) -> Option<Vec<OwnedSemaphorePermit>> {
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => p.ok()?,
            _ = self.shutdown.cancelled() => return None,
        };
        let max_batch = self.caps.max_batch_size.max(1);
        let mut permits = Vec::with_capacity(max_batch);
        permits.push(first);
        while permits.len() < max_batch {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        Some(permits)
    }

    /// One receive call for up to `max` messages, or `None` once shutdown fires (the call
    /// is dropped, as in [`Shared::accept_next`]).
    async fn receive_some(&self, max: usize) -> Option<Result<Vec<ReceivedMessage>>> {
        // An `Instrumented` provider spans the call itself (`queue.call`): no second span.
        let span = if self.provider.instrumented() {
            tracing::Span::none()
        } else {
            tracing::debug_span!(
                "queue.receive",
                queue = %self.queue,
                provider = self.provider_name(),
                max
            )
        };
        let options = ReceiveOptions::new(max, self.settings.receive_wait);
        let call = self.provider.receive(&self.queue, options).instrument(span);
        tokio::select! {
            res = call => Some(res),
            _ = self.shutdown.cancelled() => None,
        }
    }

    /// Logs and records a failed receive. Returns whether the loop goes on; a refusal that
    /// shows the queue needs sessions stops it (and the processor, unless `auto` mode).
    fn receive_failed(&self, err: QueueError) -> bool {
        let refused = matches!(err, QueueError::Unsupported { .. })
            || (self.caps.sessions == SessionSupport::Locked && self.auto_refused(&err));
        if refused && self.settings.session_mode == SessionMode::Auto {
            // Expected on a session queue: not an outage.
            self.metrics.provider_error("receive", &err);
        } else {
            self.record_error("receive", &err);
        }
        if !refused {
            tracing::warn!(error = %err, "receive failed; backing off");
            return true;
        }
        match self.settings.session_mode {
            SessionMode::None => self.fail(QueueError::config(
                "processor.session_mode",
                format!(
                    "`none` cannot consume this queue: the provider refused a receive without \
                     a session ({err}); the queue requires sessions, use `auto` or `required`"
                ),
            )),
            _ => tracing::info!(
                error = %err,
                "the queue only has sessions; the session-less receive loop stops"
            ),
        }
        false
    }

    /// Hands a received message (received at `now`) to its key's worker (keyed messages)
    /// or to a handler lane.
    fn dispatch(
        self: &Arc<Self>,
        msg: ReceivedMessage,
        permit: Option<OwnedSemaphorePermit>,
        lanes: &mut Dispatch,
        now: Now,
    ) {
        bump(&self.status.stats.received);
        self.metrics.received.increment(1);
        let key = msg.session_id().cloned().filter(|_| lanes.keyed);
        // Renewed from now on, buffered behind its group or handled.
        let held = self.hold(msg, permit, now);
        match key {
            Some(key) => self.enqueue_keyed(key, held, lanes),
            None => lanes.unkeyed.run(held),
        }
    }

    /// Queues `held` behind its key; starts the key's worker if it has none.
    fn enqueue_keyed(self: &Arc<Self>, key: SessionId, held: Held, lanes: &Dispatch) {
        let start = {
            let mut map = lanes.groups.lock().unwrap_or_else(|e| e.into_inner());
            match map.get_mut(&key) {
                Some(queue) => {
                    queue.push_back(held);
                    false
                }
                None => {
                    map.insert(key.clone(), VecDeque::from([held]));
                    true
                }
            }
        };
        if start {
            let shared = self.clone();
            let groups = lanes.groups.clone();
            let slots = lanes.sessions.clone();
            self.tracker
                .spawn(async move { shared.group_worker(key, groups, slots).await });
        }
    }

    /// Processes one message group (SQS FIFO) sequentially until its buffer is empty.
    pub(super) async fn group_worker(
        self: Arc<Self>,
        key: SessionId,
        groups: Groups,
        slots: Arc<Semaphore>,
    ) {
        let _slot = slots.acquire_owned().await;
        bump(&self.status.stats.sessions);
        self.metrics.active_sessions.increment(1.0);
        loop {
            let next = {
                let mut map = groups.lock().unwrap_or_else(|e| e.into_inner());
                let Some(queue) = map.get_mut(&key) else {
                    break;
                };
                match queue.pop_front() {
                    Some(held) => held,
                    None => {
                        map.remove(&key);
                        break;
                    }
                }
            };
            if self.shutdown.is_cancelled() {
                self.abandon_unhandled(&Settler::Provider, &next.msg, true)
                    .await;
                drop(next);
                self.drain_group(&key, &groups, true).await;
                continue;
            }
            if next.watch.is_lost() {
                // Its lock is gone: the broker redelivers it; later ones must wait for it.
                bump(&self.status.stats.lock_lost);
                self.metrics.lock_lost.increment(1);
                drop(next);
                self.drain_group(&key, &groups, false).await;
                continue;
            }
            let disposition = self
                .process(&next.msg, &next.watch, &Settler::Provider)
                .await;
            drop(next);
            if !disposition.keeps_order() {
                // Message N comes back later; N+1.. must not overtake it.
                let at_shutdown = disposition == Disposition::Abandoned;
                self.drain_group(&key, &groups, at_shutdown).await;
            }
        }
        self.metrics.active_sessions.decrement(1.0);
    }

    /// Abandons, in order, every buffered message of a group.
    pub(super) async fn drain_group(&self, key: &SessionId, groups: &Groups, at_shutdown: bool) {
        let drained: Vec<Held> = {
            let mut map = groups.lock().unwrap_or_else(|e| e.into_inner());
            map.get_mut(key)
                .map(|q| q.drain(..).collect())
                .unwrap_or_default()
        };
        for held in drained {
            self.abandon_unhandled(&Settler::Provider, &held.msg, at_shutdown)
                .await;
        }
    }
}
