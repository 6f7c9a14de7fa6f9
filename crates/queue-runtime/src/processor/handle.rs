//! Handling one delivery: gates, the handler run, and its outcome.

use std::sync::Arc;

use futures::FutureExt;
use queue_core::{DeadLetterReason, ReceivedMessage};
use tokio::time::Instant;
use tracing::Instrument;

use crate::handler::{HandlerError, MessageContext, Outcome, RunCancel, reasons};

use super::{
    bump,
    settle::Failure,
    shared::{Disposition, HARD_STOP_GRACE, LockWatch, Settler, Shared},
};

/// Waits for `timer`, forever if there is none.
async fn until(timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(timer) => timer.await,
        None => std::future::pending().await,
    }
}

/// A handler's result, or the panic it raised.
type Joined = std::thread::Result<std::result::Result<Outcome, HandlerError>>;

impl Shared {
    /// Checks, handles and settles one delivery.
    pub(super) async fn process(
        self: &Arc<Self>,
        msg: &ReceivedMessage,
        watch: &LockWatch,
        settler: &Settler,
    ) -> Disposition {
        let span = tracing::info_span!(
            "queue.handle",
            queue = %self.queue,
            provider = self.provider_name(),
            message_id = %msg.message_id,
            session_id = tracing::field::Empty,
            delivery_count = msg.delivery_count,
            attempt = tracing::field::Empty,
        );
        if let Some(session) = msg.session_id() {
            span.record("session_id", tracing::field::display(session));
        }
        let disposition = async {
            loop {
                match self.process_inner(msg, watch, settler).await {
                    Disposition::RetryNow => continue,
                    other => break other,
                }
            }
        }
        .instrument(span)
        .await;
        if disposition.keeps_order() {
            // Settled for good: its handler runs need no record any more.
            self.attempts.forget(&self.queue, &msg.message_id);
        }
        disposition
    }

    pub(super) async fn process_inner(
        self: &Arc<Self>,
        msg: &ReceivedMessage,
        watch: &LockWatch,
        settler: &Settler,
    ) -> Disposition {
        let attempt = match self.precheck(msg, settler).await {
            Ok(attempt) => attempt,
            Err(done) => return done,
        };
        tracing::Span::current().record("attempt", attempt);
        let started = Instant::now();
        let (joined, lock_lost) = self.run_handler(msg, watch, attempt).await;
        let took = started.elapsed();
        let Some(joined) = joined else {
            self.metrics.handler_duration("cancelled", took);
            if !lock_lost {
                Box::pin(self.abandon_unhandled(settler, msg, true)).await;
            }
            return Disposition::Abandoned;
        };
        if lock_lost || watch.is_lost() {
            self.metrics.handler_duration("cancelled", took);
            bump(&self.status.stats.lock_lost);
            self.metrics.lock_lost.increment(1);
            return Disposition::LockLost;
        }
        self.settle_outcome(joined, msg, watch, settler, took, attempt)
            .await
    }

    /// What ends a delivery before its handler runs: the shutdown deadline, spent attempts,
    /// a gate's rejection. Otherwise records the run (before it starts, so that a run the
    /// process does not survive still counts) and returns its attempt number.
    async fn precheck(&self, msg: &ReceivedMessage, settler: &Settler) -> Result<u32, Disposition> {
        if self.hard.is_cancelled() {
            Box::pin(self.abandon_unhandled(settler, msg, true)).await;
            return Err(Disposition::Abandoned);
        }
        let (queue, id) = (&self.queue, &msg.message_id);
        let max = self.policy.settings().max_attempts;
        if self.gates.is_empty() {
            // No gate in between: checked and recorded in one look-up.
            return match self.attempts.try_start_run(queue, id, max) {
                Ok(attempt) => Ok(attempt),
                Err(runs) => Err(self.attempts_exceeded(settler, msg, runs, max).await),
            };
        }
        let runs = self.attempts.runs(queue, id);
        if runs >= max {
            return Err(self.attempts_exceeded(settler, msg, runs, max).await);
        }
        for gate in &self.gates {
            if let Err(rejection) = gate.check(msg).await {
                bump(&self.status.stats.rejected);
                self.metrics.rejected(rejection.reason);
                tracing::warn!(reason = rejection.reason, "message rejected by a gate");
                let reason = DeadLetterReason::new(rejection.reason, rejection.description);
                let label = rejection.reason;
                return Err(Box::pin(self.dead_letter(settler, msg, reason, label)).await);
            }
        }
        Ok(self.attempts.start_run(queue, id))
    }

    /// Dead-letters a message whose last allowed run started and never settled it: the
    /// process died or the lock was lost during that run. Running it again would exceed
    /// the budget.
    async fn attempts_exceeded(
        &self,
        settler: &Settler,
        msg: &ReceivedMessage,
        runs: u32,
        max: u32,
    ) -> Disposition {
        let reason = DeadLetterReason::new(
            reasons::MAX_ATTEMPTS_EXCEEDED,
            format!(
                "its handler already ran {runs} times (limit {max}) without settling it \
                 (the process stopped or the lock was lost during the last run)"
            ),
        );
        let label = reasons::MAX_ATTEMPTS_EXCEEDED;
        Box::pin(self.dead_letter(settler, msg, reason, label)).await
    }

    /// Runs the handler, cancelling it when the lock is lost, renewal ends or the shutdown
    /// deadline passes. Returns its result (`None` if it had to be dropped) and whether the
    /// lock was lost meanwhile.
    async fn run_handler(
        &self,
        msg: &ReceivedMessage,
        watch: &LockWatch,
        attempt: u32,
    ) -> (Option<Joined>, bool) {
        let token = Arc::new(RunCancel::default());
        let ctx = MessageContext::new(self.queue.clone(), msg, attempt, token.clone());
        self.metrics.in_flight.increment(1.0);
        // Polled inline (in a lane or a key's worker); a panic, when the handler is
        // called or while it runs, is caught here and becomes a retry, and dropping the
        // future is how a stuck handler is stopped.
        let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.handler.handle(msg.clone(), ctx)
        }));
        let task = async move {
            match called {
                Ok(running) => std::panic::AssertUnwindSafe(running).catch_unwind().await,
                Err(panic) => Err(panic),
            }
        };
        tokio::pin!(task);
        // A renewer with a maximum ends the run through the watch's `stopped`; otherwise
        // (sessions, providers without renewal) a timer of its own bounds it. No timer per
        // message when none is needed.
        let mut max_timer = (!watch.bounded())
            .then(|| Box::pin(tokio::time::sleep(self.settings.max_lock_renewal)));
        let (mut lock_lost, mut renewal_over) = (false, false);
        let joined = loop {
            tokio::select! {
                // The handler first: one that is done at once never registers as a waiter
                // on the watch or the shutdown token.
                biased;
                res = &mut task => break Some(res),
                signals = watch.lost_or_stopped(!lock_lost, !renewal_over),
                    if !(lock_lost && renewal_over) => {
                    if signals.lost() && !lock_lost {
                        lock_lost = true;
                        token.cancel();
                        tracing::warn!("lock lost while the handler runs; cancelling it");
                    }
                    if signals.stopped() && !renewal_over {
                        renewal_over = true;
                        token.cancel();
                        tracing::warn!("lock renewal reached its maximum; cancelling the handler");
                    }
                }
                _ = until(&mut max_timer), if !renewal_over => {
                    renewal_over = true;
                    watch.release();
                    watch.set_stopped();
                    token.cancel();
                    tracing::warn!("handler ran past max_lock_renewal; cancelling it");
                }
                _ = self.hard.cancelled() => {
                    // Past the shutdown deadline: tell the handler, give it a moment to
                    // return (its result is still settled), then abort it.
                    token.cancel();
                    tokio::select! {
                        res = &mut task => break Some(res),
                        _ = tokio::time::sleep(HARD_STOP_GRACE) => break None,
                    }
                }
            }
        };
        self.metrics.in_flight.decrement(1.0);
        (joined, lock_lost)
    }

    /// Settles what the handler returned.
    async fn settle_outcome(
        &self,
        joined: Joined,
        msg: &ReceivedMessage,
        watch: &LockWatch,
        settler: &Settler,
        took: std::time::Duration,
        attempt: u32,
    ) -> Disposition {
        let fail = Failure { attempt, watch };
        // Paths other than completion are boxed: their futures are large, and inline they
        // would make every message's future (moved at each spawn and await) that large.
        match joined {
            Err(_panic) => {
                bump(&self.status.stats.handler_failures);
                bump(&self.status.stats.handler_panics);
                self.status.handler_failed("the handler panicked");
                self.metrics.failed("panic");
                self.metrics.handler_duration("panic", took);
                // The panic payload may quote message data: it is not logged.
                let why = "the handler panicked";
                tracing::error!("{why}; the message will be retried");
                Box::pin(self.retry(settler, msg, &fail, None, "handler_panic", why)).await
            }
            Ok(Err(err)) if err.is_permanent() => {
                bump(&self.status.stats.handler_failures);
                self.metrics.failed("permanent");
                self.status.handler_failed(err.message());
                self.metrics.handler_duration("error", took);
                let reason = DeadLetterReason::new(reasons::PERMANENT_FAILURE, err.message());
                Box::pin(self.dead_letter(settler, msg, reason, reasons::PERMANENT_FAILURE)).await
            }
            Ok(Err(err)) => {
                bump(&self.status.stats.handler_failures);
                self.metrics.failed("error");
                self.status.handler_failed(err.message());
                self.metrics.handler_duration("error", took);
                tracing::warn!(error = %err, "handler failed; the message will be retried");
                let why = err.message();
                Box::pin(self.retry(settler, msg, &fail, None, "handler_error", why)).await
            }
            Ok(Ok(Outcome::Complete)) => {
                self.metrics.handler_duration("complete", took);
                self.complete(settler, msg).await
            }
            Ok(Ok(Outcome::Retry { delay, reason })) => {
                self.metrics.handler_duration("retry", took);
                Box::pin(self.retry(settler, msg, &fail, delay, "outcome", &reason)).await
            }
            Ok(Ok(Outcome::DeadLetter {
                reason,
                description,
            })) => {
                self.metrics.handler_duration("dead_letter", took);
                let label = reasons::label(&reason);
                let reason = DeadLetterReason::new(reason, description);
                Box::pin(self.dead_letter(settler, msg, reason, label)).await
            }
        }
    }
}
