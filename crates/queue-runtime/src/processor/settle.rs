//! Settlement: complete, dead-letter, abandon and retry.

use std::{
    future::Future,
    time::{Duration, SystemTime},
};

use queue_core::{DeadLetterReason, QueueError, ReceivedMessage, Result};
use tracing::Instrument;

use crate::handler::reasons;

/// Longest retry delay spent holding the delivery and running the handler again in
/// process; longer delays abandon the delivery (with the delay where the provider can).
pub(super) const IN_PROCESS_RETRY_LIMIT: Duration = Duration::from_secs(30);

use super::{
    bump,
    shared::{Disposition, LockWatch, SETTLE_ATTEMPTS, Settler, Shared},
};

/// The run that failed: its attempt number and its lock watch.
pub(super) struct Failure<'a> {
    pub(super) attempt: u32,
    pub(super) watch: &'a LockWatch,
}

impl Shared {
    /// Runs a settlement call, retrying transient failures a few times with a short backoff.
    pub(super) async fn settle_call<F, Fut>(
        &self,
        operation: &'static str,
        mut call: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let span = tracing::debug_span!("queue.settle", operation);
        async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match call().await {
                    Ok(()) => {
                        self.breaker.record_success();
                        return Ok(());
                    }
                    Err(err) => {
                        self.record_error(operation, &err);
                        let retry = err.is_transient()
                            && !matches!(err, QueueError::SessionLocked { .. })
                            && attempt < SETTLE_ATTEMPTS;
                        if !retry {
                            return Err(err);
                        }
                        tracing::debug!(operation, attempt, error = %err, "settlement failed; retrying");
                        // Boxed: kept out of every settlement's future (issue 18).
                        Box::pin(tokio::time::sleep(Duration::from_millis(50 << attempt))).await;
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    pub(super) fn settle_failed(&self, operation: &'static str, err: &QueueError) -> Disposition {
        match err {
            QueueError::LockLost { .. } | QueueError::SessionLockLost { .. } => {
                bump(&self.status.stats.lock_lost);
                self.metrics.lock_lost.increment(1);
                tracing::warn!(operation, error = %err, "lock lost before settlement; the broker will redeliver");
                Disposition::LockLost
            }
            _ => {
                bump(&self.status.stats.settle_failures);
                tracing::warn!(operation, error = %err, "settlement failed; the broker will redeliver after the lock expires");
                Disposition::SettleFailed
            }
        }
    }

    pub(super) async fn complete(&self, settler: &Settler, msg: &ReceivedMessage) -> Disposition {
        let res = match settler {
            Settler::Provider => {
                self.settle_call("complete", || self.provider.complete(&msg.receipt))
                    .await
            }
            Settler::Session(s) => {
                self.settle_call("complete", || s.complete(&msg.receipt))
                    .await
            }
        };
        match res {
            Ok(()) => {
                bump(&self.status.stats.completed);
                self.metrics.completed.increment(1);
                if let Ok(latency) = SystemTime::now().duration_since(msg.enqueued_at) {
                    self.metrics.end_to_end.record(latency);
                }
                tracing::debug!("completed");
                Disposition::Completed
            }
            Err(err) => self.settle_failed("complete", &err),
        }
    }

    pub(super) async fn dead_letter(
        &self,
        settler: &Settler,
        msg: &ReceivedMessage,
        reason: DeadLetterReason,
        label: &'static str,
    ) -> Disposition {
        tracing::warn!(reason = %reason.reason, description = %reason.description, "dead-lettering");
        let res = match settler {
            Settler::Provider => {
                self.settle_call("dead_letter", || {
                    self.provider.dead_letter(&msg.receipt, reason.clone())
                })
                .await
            }
            Settler::Session(s) => {
                self.settle_call("dead_letter", || {
                    s.dead_letter(&msg.receipt, reason.clone())
                })
                .await
            }
        };
        match res {
            Ok(()) => {
                bump(&self.status.stats.dead_lettered);
                self.metrics.dead_lettered(label);
                Disposition::DeadLettered
            }
            Err(err) => self.settle_failed("dead_letter", &err),
        }
    }

    /// Abandons without delay. Used for shutdown, order keeping and retries after a hold.
    pub(super) async fn abandon(&self, settler: &Settler, msg: &ReceivedMessage) -> Result<()> {
        match settler {
            Settler::Provider => {
                self.settle_call("abandon", || self.provider.abandon(&msg.receipt, None))
                    .await
            }
            Settler::Session(s) => {
                self.settle_call("abandon", || s.abandon(&msg.receipt))
                    .await
            }
        }
    }

    pub(super) async fn abandon_unhandled(
        &self,
        settler: &Settler,
        msg: &ReceivedMessage,
        at_shutdown: bool,
    ) {
        let reason = if at_shutdown { "shutdown" } else { "order" };
        match self.abandon(settler, msg).await {
            Ok(()) => {
                if at_shutdown {
                    bump(&self.status.stats.abandoned_at_shutdown);
                } else {
                    bump(&self.status.stats.abandoned_for_order);
                }
                self.metrics.abandoned(reason);
            }
            Err(err) => {
                self.settle_failed("abandon", &err);
            }
        }
    }

    /// Retries `msg`: dead-letters it if attempts are spent, else abandons it after the
    /// delay (natively delayed where the provider can, otherwise holding the lock).
    /// Holds the delivery for `delay` (its lock keeps being renewed), then asks for the
    /// handler to run again on the same delivery: the broker sees no release, so neither this
    /// message nor the ones behind it in its group spend a delivery. Abandons instead if
    /// shutdown comes first.
    async fn retry_in_process(
        &self,
        settler: &Settler,
        msg: &ReceivedMessage,
        watch: &LockWatch,
        delay: Duration,
        label: &'static str,
    ) -> Disposition {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.shutdown.cancelled() => {}
            _ = watch.lost() => {}
        }
        if watch.is_lost() {
            let err = QueueError::LockLost {
                provider: self.provider_name(),
                queue: self.queue.to_string(),
                operation: "retry",
            };
            return self.settle_failed("retry", &err);
        }
        bump(&self.status.stats.retried);
        self.metrics.retried(label);
        if self.shutdown.is_cancelled() {
            // The retry still happens, on the next delivery.
            return match self.abandon(settler, msg).await {
                Ok(()) => Disposition::Retried,
                Err(err) => self.settle_failed("abandon", &err),
            };
        }
        Disposition::RetryNow
    }

    pub(super) async fn retry(
        &self,
        settler: &Settler,
        msg: &ReceivedMessage,
        failure: &Failure<'_>,
        delay: Option<Duration>,
        label: &'static str,
        why: &str,
    ) -> Disposition {
        let (attempt, watch) = (failure.attempt, failure.watch);
        if self.policy.exhausted(attempt) {
            let reason = DeadLetterReason::new(
                reasons::RETRIES_EXHAUSTED,
                format!(
                    "failed on {attempt} attempts (limit {}); last failure: {why}",
                    self.policy.settings().max_attempts
                ),
            );
            return self
                .dead_letter(settler, msg, reason, reasons::RETRIES_EXHAUSTED)
                .await;
        }
        let delay = delay.unwrap_or_else(|| self.policy.delay(attempt, msg.message_id.as_str()));
        tracing::info!(reason = label, delay = ?delay, "retrying");
        if delay <= IN_PROCESS_RETRY_LIMIT.min(self.settings.max_lock_renewal) {
            return self
                .retry_in_process(settler, msg, watch, delay, label)
                .await;
        }
        let native = matches!(settler, Settler::Provider) && self.caps.delayed_abandon;
        let res = if native && !delay.is_zero() {
            self.settle_call("abandon", || {
                self.provider.abandon(&msg.receipt, Some(delay))
            })
            .await
        } else {
            // Hold the message (its lock, or the session lock, keeps being renewed) for the
            // delay, then abandon: it comes back first in its session or group. The hold is
            // bounded by `max_lock_renewal`, like any other time a lock is kept.
            tokio::select! {
                _ = tokio::time::sleep(delay.min(self.settings.max_lock_renewal)) => {}
                _ = self.shutdown.cancelled() => {}
                _ = watch.lost() => {}
            }
            if watch.is_lost() {
                return self.settle_failed(
                    "abandon",
                    &QueueError::LockLost {
                        provider: self.provider_name(),
                        queue: self.queue.to_string(),
                        operation: "abandon",
                    },
                );
            }
            self.abandon(settler, msg).await
        };
        match res {
            Ok(()) => {
                bump(&self.status.stats.retried);
                self.metrics.retried(label);
                Disposition::Retried
            }
            Err(err) => self.settle_failed("abandon", &err),
        }
    }
}
