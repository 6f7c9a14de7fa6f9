//! Lock renewal: one timer per processor for the locks of held messages, one renewer per
//! accepted session.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use futures::{StreamExt, stream::FuturesUnordered};
use queue_core::{QueueError, ReceivedMessage, SessionReceiver};
use slab::Slab;
use tokio::{
    sync::{Notify, OwnedSemaphorePermit},
    time::Instant,
};

use super::{
    shared::{Held, HeldMessage, Shared},
    watch::LockWatch,
};

/// Wait before renewing again after a transient renewal failure.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(200);
/// Failed renewals in a row after which a lock counts as lost.
const MAX_RENEW_FAILURES: u32 = 3;

/// When to renew a lock expiring at `until`, seen at `now`: at half the remaining time, at
/// most every `cap`.
pub(super) fn renew_interval(
    cap: Duration,
    until: Option<SystemTime>,
    now: SystemTime,
) -> Duration {
    let floor = Duration::from_millis(10).min(cap);
    match until.map(|t| t.duration_since(now)) {
        None => cap,
        Some(Ok(remaining)) => (remaining / 2).clamp(floor, cap),
        Some(Err(_)) => floor,
    }
}

/// The locks of the messages this processor holds, renewed by one driver task
/// ([`Shared::drive_renewals`]) that sleeps until the earliest one is due.
///
/// Holding a message costs one table insert and one remove, both O(1) (issue 18: it was a
/// future, a timer registration and three clock reads per message). The driver's scan is
/// O(held messages), which the processor bounds, once per wake-up, and it wakes only when
/// some lock is due (a message settled before its first renewal is never looked at).
#[derive(Default)]
pub(super) struct Renewals {
    table: Mutex<Table>,
    wake: Notify,
}

#[derive(Default)]
struct Table {
    entries: Slab<Entry>,
    /// Tells a stale slot (renewal finishing after its message was released and the slot
    /// reused) from its current entry.
    generation: u64,
    /// When the driver wakes next; `None`: it waits for an insert.
    wake_at: Option<Instant>,
    closed: bool,
}

struct Entry {
    generation: u64,
    /// The message (for its receipt) and its lock's watch.
    held: Arc<HeldMessage>,
    /// Next renewal.
    due: Instant,
    /// End of renewal (`max_lock_renewal` after receipt).
    deadline: Instant,
    failures: u32,
    /// A renewal call is under way.
    renewing: bool,
}

impl Entry {
    fn next_event(&self) -> Instant {
        self.due.min(self.deadline)
    }
}

/// A message's place in [`Renewals`]; dropping it ends the renewal.
pub(super) struct Lease {
    renewals: Arc<Renewals>,
    key: usize,
    generation: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut table = self.renewals.lock();
        if table
            .entries
            .get(self.key)
            .is_some_and(|e| e.generation == self.generation)
        {
            table.entries.remove(self.key);
        }
    }
}

/// A renewal the driver starts.
struct Due {
    key: usize,
    generation: u64,
    held: Arc<HeldMessage>,
}

/// The clock readings shared by all messages of one received batch.
#[derive(Clone, Copy)]
pub(super) struct Now {
    pub(super) instant: Instant,
    pub(super) system: SystemTime,
}

impl Now {
    pub(super) fn read() -> Self {
        Self {
            instant: Instant::now(),
            system: SystemTime::now(),
        }
    }
}

impl Renewals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renews `held`'s lock at `due` and every interval after, until `deadline` (then its
    /// watch is set stopped), a failure for good (then set lost), or the lease is dropped.
    pub(super) fn hold(
        self: &Arc<Self>,
        held: Arc<HeldMessage>,
        due: Instant,
        deadline: Instant,
    ) -> Lease {
        let mut table = self.lock();
        table.generation += 1;
        let generation = table.generation;
        let entry = Entry {
            generation,
            held,
            due,
            deadline,
            failures: 0,
            renewing: false,
        };
        let event = entry.next_event();
        let key = table.entries.insert(entry);
        table.schedule(event, &self.wake);
        drop(table);
        Lease {
            renewals: self.clone(),
            key,
            generation,
        }
    }

    /// Stops the driver.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Fires the deadlines passed by `now`, marks the renewals due and returns them, with
    /// the time of the next event; `None` once closed.
    fn collect(&self, now: Instant) -> Option<(Vec<Due>, Option<Instant>)> {
        let mut table = self.lock();
        if table.closed {
            return None;
        }
        let (mut due, mut ended, mut next) = (Vec::new(), Vec::new(), None::<Instant>);
        for (key, entry) in table.entries.iter_mut().filter(|(_, e)| !e.renewing) {
            if entry.deadline <= now && entry.deadline <= entry.due {
                // The next renewal would come after the maximum: renewal ends here.
                entry.held.watch.set_stopped();
                ended.push(key);
            } else if entry.due <= now {
                entry.renewing = true;
                due.push(Due {
                    key,
                    generation: entry.generation,
                    held: entry.held.clone(),
                });
            } else {
                let event = entry.next_event();
                next = Some(next.map_or(event, |n| n.min(event)));
            }
        }
        for key in ended {
            table.entries.remove(key);
        }
        table.wake_at = next;
        Some((due, next))
    }
}

impl Table {
    /// Makes sure the driver wakes by `event`.
    fn schedule(&mut self, event: Instant, wake: &Notify) {
        if self.wake_at.is_none_or(|at| event < at) {
            self.wake_at = Some(event);
            wake.notify_one();
        }
    }
}

impl Shared {
    /// Holds a received message (received at `now`): starts renewing its lock if the
    /// provider renews locks; `permit` is its slot.
    pub(super) fn hold(
        &self,
        msg: ReceivedMessage,
        permit: Option<OwnedSemaphorePermit>,
        now: Now,
    ) -> Held {
        let renew = self.caps.lock_renewal;
        let locked_until = msg.locked_until;
        let message = Arc::new(HeldMessage {
            msg,
            watch: LockWatch::new(renew),
        });
        let lease = renew.then(|| {
            let cap = self.settings.lock_renewal_interval;
            let interval = renew_interval(cap, locked_until, now.system);
            let deadline = now.instant + self.settings.max_lock_renewal;
            self.renewals
                .hold(message.clone(), now.instant + interval, deadline)
        });
        Held {
            message,
            _lease: lease,
            _permit: permit,
        }
    }

    /// The driver of [`Renewals`]: sleeps until the next lock is due, renews it, and so on
    /// until `run` closes the table after its drain, or (its future dropped mid-run) until
    /// no task of the processor is left. Renewal calls run concurrently, polled here (a
    /// call starts as soon as its lock is due, with no task hop).
    pub(super) async fn drive_renewals(self: Arc<Self>) {
        let mut calls = FuturesUnordered::new();
        loop {
            let Some((due, next)) = self.renewals.collect(Instant::now()) else {
                return;
            };
            if Arc::strong_count(&self) == 1 && calls.is_empty() {
                return; // Every other task of the processor is gone: nothing to renew.
            }
            calls.extend(due.into_iter().map(|renewal| self.renew_message(renewal)));
            let wake = self.renewals.wake.notified();
            // With nothing held it still wakes now and then, to notice the end above.
            let idle = Instant::now() + self.settings.lock_renewal_interval;
            let sleep = tokio::time::sleep_until(next.unwrap_or(idle));
            tokio::select! {
                Some(()) = calls.next(), if !calls.is_empty() => {}
                _ = sleep => {}
                _ = wake => {}
            }
        }
    }

    /// One renewal call of a held message; records its result in the table.
    async fn renew_message(&self, renewal: Due) {
        let res = self.provider.renew_lock(&renewal.held.msg.receipt).await;
        if let Err(err) = &res {
            self.metrics.provider_error("renew_lock", err);
        }
        let mut table = self.renewals.lock();
        let Some(entry) = table
            .entries
            .get_mut(renewal.key)
            .filter(|e| e.generation == renewal.generation)
        else {
            return; // Released meanwhile.
        };
        entry.renewing = false;
        let now = Instant::now();
        match res {
            Ok(until) => {
                entry.failures = 0;
                let cap = self.settings.lock_renewal_interval;
                entry.due = now + renew_interval(cap, Some(until), SystemTime::now());
            }
            Err(err) => {
                entry.failures += 1;
                if !err.is_transient() || entry.failures >= MAX_RENEW_FAILURES {
                    tracing::warn!(operation = "renew_lock", error = %err, "lock renewal failed; the lock is lost");
                    entry.held.watch.set_lost();
                    table.entries.remove(renewal.key);
                    return;
                }
                entry.due = now + RETRY_AFTER_FAILURE;
            }
        }
        let event = entry.next_event();
        table.schedule(event, &self.renewals.wake);
    }

    /// Spawns a task renewing an accepted session's lock until `watch` is released or
    /// renewal fails for good (then the watch is set lost).
    pub(super) fn spawn_session_renewer(
        self: &Arc<Self>,
        session: Arc<dyn SessionReceiver>,
    ) -> Arc<LockWatch> {
        let watch = Arc::new(LockWatch::new(false));
        if self.caps.lock_renewal {
            tokio::spawn(self.clone().renew_session(session, watch.clone()));
        }
        watch
    }

    async fn renew_session(
        self: Arc<Self>,
        session: Arc<dyn SessionReceiver>,
        watch: Arc<LockWatch>,
    ) {
        let mut until = Some(session.locked_until());
        let mut failures = 0u32;
        loop {
            let interval = if failures > 0 {
                RETRY_AFTER_FAILURE
            } else {
                renew_interval(
                    self.settings.lock_renewal_interval,
                    until,
                    SystemTime::now(),
                )
            };
            tokio::select! {
                _ = watch.released() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match session.renew_session_lock().await {
                Ok(next) => {
                    failures = 0;
                    until = Some(next);
                }
                Err(err) => {
                    failures += 1;
                    if self.session_renewal_failed(&err, failures, &watch) {
                        return;
                    }
                }
            }
        }
    }

    /// Records a failed session renewal; returns whether the lock counts as lost.
    fn session_renewal_failed(&self, err: &QueueError, failures: u32, watch: &LockWatch) -> bool {
        self.metrics.provider_error("renew_session_lock", err);
        if err.is_transient() && failures < MAX_RENEW_FAILURES {
            return false;
        }
        if !watch.is_released() {
            tracing::warn!(operation = "renew_session_lock", error = %err, "lock renewal failed; the lock is lost");
            watch.set_lost();
        }
        true
    }
}
