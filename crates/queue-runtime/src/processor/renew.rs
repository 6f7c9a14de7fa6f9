//! Lock renewal.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use super::shared::*;

impl Shared {
    /// When to renew a lock expiring at `until`: at half the remaining time, at most every
    /// `lock_renewal_interval`.
    pub(super) fn renew_interval(&self, until: Option<SystemTime>) -> Duration {
        let cap = self.settings.lock_renewal_interval;
        match until {
            None => cap,
            Some(t) => match t.duration_since(SystemTime::now()) {
                Ok(remaining) => (remaining / 2).clamp(Duration::from_millis(10).min(cap), cap),
                Err(_) => Duration::from_millis(10).min(cap),
            },
        }
    }

    /// Spawns a task renewing `target`; see [`Shared::renewer`].
    pub(super) fn spawn_renewer(
        self: &Arc<Self>,
        target: RenewTarget,
        until: Option<SystemTime>,
        max: Option<Duration>,
    ) -> LockWatch {
        let (watch, renew) = self.renewer(target, until, max);
        if let Some(renew) = renew {
            tokio::spawn(renew);
        }
        watch
    }

    /// A future renewing `target` until `watch.stop` fires, `max` elapses (then
    /// `watch.stopped` fires) or renewal fails for good (then `watch.lost` fires). `None` if
    /// the provider cannot renew locks.
    pub(super) fn renewer(
        self: &Arc<Self>,
        target: RenewTarget,
        until: Option<SystemTime>,
        max: Option<Duration>,
    ) -> (LockWatch, Option<impl Future<Output = ()> + Send + 'static>) {
        let mut watch = LockWatch::default();
        if !self.caps.lock_renewal {
            return (watch, None);
        }
        watch.bounded = max.is_some();
        let shared = self.clone();
        let w = watch.clone();
        let renew = async move {
            let deadline = max.map(|m| Instant::now() + m);
            let mut until = until;
            let mut failures = 0u32;
            loop {
                let interval = if failures > 0 {
                    Duration::from_millis(200)
                } else {
                    shared.renew_interval(until)
                };
                let wake = Instant::now() + interval;
                if let Some(deadline) = deadline.filter(|d| *d <= wake) {
                    tokio::select! {
                        _ = w.stop.cancelled() => {}
                        _ = tokio::time::sleep_until(deadline) => w.stopped.cancel(),
                    }
                    return;
                }
                tokio::select! {
                    _ = w.stop.cancelled() => return,
                    _ = tokio::time::sleep_until(wake) => {}
                }
                let (operation, res) = match &target {
                    RenewTarget::Message(receipt) => {
                        ("renew_lock", shared.provider.renew_lock(receipt).await)
                    }
                    RenewTarget::Session(s) => ("renew_session_lock", s.renew_session_lock().await),
                };
                match res {
                    Ok(next) => {
                        failures = 0;
                        until = Some(next);
                    }
                    Err(err) => {
                        shared.metrics.provider_error(operation, &err);
                        failures += 1;
                        if !err.is_transient() || failures >= 3 {
                            if !w.stop.is_cancelled() {
                                tracing::warn!(operation, error = %err, "lock renewal failed; the lock is lost");
                                w.lost.cancel();
                            }
                            return;
                        }
                    }
                }
            }
        };
        (watch, Some(renew))
    }
}
