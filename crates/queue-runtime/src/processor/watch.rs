//! The state of one held lock, shared by its holder and its renewer.

use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::Notify;

/// The renewer found the lock lost: do not settle.
const LOST: u8 = 1;
/// Renewal stopped (maximum reached): cancel the handler, settle if still possible.
const STOPPED: u8 = 2;
/// The holder is done: stop renewing.
const RELEASED: u8 = 4;

/// Signals between a lock renewer and whoever holds the lock.
///
/// One state word per held lock, and one wake-up list for all three signals (issue 18: it
/// was three `CancellationToken`s, each its own allocation and tree node, for every
/// message). Shared through the `Arc` of what it watches (a held message, or a session).
pub(super) struct LockWatch {
    state: AtomicU8,
    changed: Notify,
    /// Whether the renewer itself ends renewal at its maximum (then sets `stopped`), so the
    /// handler needs no timer of its own for `max_lock_renewal`.
    bounded: bool,
}

/// What a [`LockWatch::wait`] saw.
#[derive(Clone, Copy)]
pub(super) struct Signals(u8);

impl Signals {
    pub(super) fn lost(self) -> bool {
        self.0 & LOST != 0
    }

    pub(super) fn stopped(self) -> bool {
        self.0 & STOPPED != 0
    }
}

impl LockWatch {
    /// A watch on a lock whose renewer is `bounded` (see [`LockWatch::bounded`]).
    pub(super) fn new(bounded: bool) -> Self {
        Self {
            state: AtomicU8::new(0),
            changed: Notify::new(),
            bounded,
        }
    }

    /// Whether the renewer ends renewal at its maximum by itself.
    pub(super) fn bounded(&self) -> bool {
        self.bounded
    }

    fn get(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    fn set(&self, flag: u8) {
        if self.state.fetch_or(flag, Ordering::AcqRel) & flag == 0 {
            self.changed.notify_waiters();
        }
    }

    /// Whether the lock was found lost.
    pub(super) fn is_lost(&self) -> bool {
        self.get() & LOST != 0
    }

    /// Whether renewal reached its maximum.
    pub(super) fn is_stopped(&self) -> bool {
        self.get() & STOPPED != 0
    }

    /// Whether the holder released the lock.
    pub(super) fn is_released(&self) -> bool {
        self.get() & RELEASED != 0
    }

    pub(super) fn set_lost(&self) {
        self.set(LOST);
    }

    pub(super) fn set_stopped(&self) {
        self.set(STOPPED);
    }

    /// Tells the renewer to stop.
    pub(super) fn release(&self) {
        self.set(RELEASED);
    }

    /// Waits until the lock is lost.
    pub(super) async fn lost(&self) {
        self.wait(Signals(LOST)).await;
    }

    /// Waits until the holder releases the lock.
    pub(super) async fn released(&self) {
        self.wait(Signals(RELEASED)).await;
    }

    /// Waits until one of `lost` / `stopped` is set (each only if asked for); returns all
    /// signals set then.
    pub(super) async fn lost_or_stopped(&self, lost: bool, stopped: bool) -> Signals {
        let mask = if lost { LOST } else { 0 } | if stopped { STOPPED } else { 0 };
        self.wait(Signals(mask)).await
    }

    async fn wait(&self, mask: Signals) -> Signals {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a signal set in between still wakes us.
            notified.as_mut().enable();
            let state = self.get();
            if state & mask.0 != 0 {
                return Signals(state);
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    #[tokio::test]
    async fn signals_wake_waiters_and_stay_set() {
        let watch = Arc::new(LockWatch::new(true));
        assert!(watch.bounded());
        let w = watch.clone();
        let waiter = tokio::spawn(async move { w.lost_or_stopped(true, true).await.stopped() });
        tokio::task::yield_now().await;
        watch.set_stopped();
        assert!(waiter.await.unwrap());
        assert!(watch.is_stopped() && !watch.is_lost() && !watch.is_released());
        let unasked = tokio::time::timeout(
            Duration::from_millis(20),
            watch.lost_or_stopped(true, false),
        );
        assert!(
            unasked.await.is_err(),
            "a signal not asked for does not wake"
        );
        watch.set_lost();
        assert!(watch.lost_or_stopped(true, false).await.lost());
        watch.lost().await;
        watch.release();
        watch.released().await;
        assert!(watch.is_released());
    }
}
