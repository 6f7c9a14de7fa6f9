//! Session workers (Service Bus style providers).

use std::sync::Arc;

use queue_core::{
    QueueError, ReceiveOptions, ReceivedMessage, Result, SessionReceiver, SessionSelector,
};
use tracing::Instrument;

use crate::config::SessionMode;

use super::{
    bump,
    shared::{Disposition, LockWatch, Settler, Shared},
};

impl Shared {
    /// Accepts sessions one after another (Service Bus style providers).
    pub(super) async fn session_worker(self: Arc<Self>) {
        let mut errors = 0u32;
        loop {
            if self.shutdown.is_cancelled() || !self.wait_for_breaker().await {
                break;
            }
            let Some(res) = self.accept_next().await else {
                break;
            };
            match res {
                Ok(None) => {
                    errors = 0;
                    self.provider_ok();
                }
                Ok(Some(session)) => {
                    errors = 0;
                    self.provider_ok();
                    self.run_session(session).await;
                }
                Err(err) => {
                    if !self.accept_failed(err) {
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

    /// Accepts the next session, or returns `None` once shutdown fires. A call under way at
    /// shutdown is dropped, so an idle processor stops at once (providers keep dropped
    /// calls safe: nothing is lost, at worst a lock runs out).
    async fn accept_next(&self) -> Option<Result<Option<Arc<dyn SessionReceiver>>>> {
        // An `Instrumented` provider spans the call itself (`queue.call`): no second span.
        let span = if self.provider.instrumented() {
            tracing::Span::none()
        } else {
            tracing::debug_span!(
                "queue.accept_session",
                queue = %self.queue,
                provider = self.provider_name()
            )
        };
        let call = self
            .provider
            .accept_session(
                &self.queue,
                SessionSelector::Next,
                self.settings.receive_wait,
            )
            .instrument(span);
        tokio::select! {
            res = call => Some(res.map(|s| s.map(Arc::<dyn SessionReceiver>::from))),
            _ = self.shutdown.cancelled() => None,
        }
    }

    /// Logs and records a failed accept. Returns whether the worker goes on.
    fn accept_failed(&self, err: QueueError) -> bool {
        let refused = matches!(err, QueueError::Unsupported { .. }) || self.auto_refused(&err);
        if refused && self.settings.session_mode == SessionMode::Auto {
            // Expected on a queue without sessions: not an outage.
            self.metrics.provider_error("accept_session", &err);
        } else {
            self.record_error("accept_session", &err);
        }
        if refused {
            if self.settings.session_mode == SessionMode::Auto {
                // Expected on a queue without sessions: only this worker stops.
                tracing::info!(error = %err, "the queue has no sessions; a session worker stops");
            } else {
                self.fail(QueueError::config(
                    "processor.session_mode",
                    format!(
                        "`required` cannot consume this queue: accepting a session was refused \
                         ({err}); the queue has no sessions, use `auto` or `none`"
                    ),
                ));
            }
            return false;
        }
        if !matches!(err, QueueError::SessionLocked { .. }) {
            tracing::warn!(error = %err, "accepting a session failed; backing off");
        }
        true
    }

    /// Processes an accepted session until it is drained (or idle for
    /// `session_idle_timeout`), then releases it.
    pub(super) async fn run_session(self: &Arc<Self>, session: Arc<dyn SessionReceiver>) {
        let span = tracing::info_span!(
            "queue.session",
            queue = %self.queue,
            provider = self.provider_name(),
            session_id = %session.session_id()
        );
        async {
            bump(&self.status.stats.sessions);
            self.metrics.active_sessions.increment(1.0);
            let watch = self.spawn_session_renewer(session.clone());
            let settler = Settler::Session(session.clone());
            let mut first = true;
            while !(self.shutdown.is_cancelled() || watch.is_lost() || watch.is_stopped()) {
                let Some(batch) = self.next_in_session(session.as_ref(), first).await else {
                    break;
                };
                first = false;
                if !self.handle_session_batch(batch, &watch, &settler).await {
                    break;
                }
            }
            watch.release();
            if let Err(err) = session.close().await {
                self.metrics.provider_error("close_session", &err);
                tracing::debug!(error = %err, "closing the session failed");
            }
            self.metrics.active_sessions.decrement(1.0);
        }
        .instrument(span)
        .await
    }

    /// The session's next messages; `None` once it is drained, idle or failing.
    ///
    /// The first receive after accepting waits up to `session_idle_timeout` (the broker
    /// handed over the session because it has messages); later ones only ask whether more
    /// are available, so a drained session is released at once. No session receive waits
    /// less than `session_drain_wait`: a shorter wait can give up while a delivery is on its
    /// way, and releasing the session then hands that delivery back unhandled, costing it a
    /// delivery count (issue 19).
    async fn next_in_session(
        &self,
        session: &dyn SessionReceiver,
        first: bool,
    ) -> Option<Vec<ReceivedMessage>> {
        let drain = self.settings.session_drain_wait;
        let res = if first {
            let wait = self.settings.session_idle_timeout.max(drain);
            session.receive(ReceiveOptions::new(1, wait)).await
        } else {
            session
                .receive_available(ReceiveOptions::new(1, drain))
                .await
        };
        match res {
            Ok(batch) if batch.is_empty() => None,
            Ok(batch) => Some(batch),
            Err(err) => {
                self.record_error("session_receive", &err);
                tracing::warn!(error = %err, "session receive failed; releasing the session");
                None
            }
        }
    }

    /// Handles a batch of one session in order. Returns whether the session goes on.
    async fn handle_session_batch(
        self: &Arc<Self>,
        batch: Vec<ReceivedMessage>,
        watch: &LockWatch,
        settler: &Settler,
    ) -> bool {
        let mut rest = batch.into_iter();
        while let Some(msg) = rest.next() {
            bump(&self.status.stats.received);
            self.metrics.received.increment(1);
            if self.shutdown.is_cancelled() {
                self.abandon_unhandled(settler, &msg, true).await;
                continue;
            }
            let disposition = self.process(&msg, watch, settler).await;
            if disposition.keeps_order() {
                continue;
            }
            let at_shutdown = disposition == Disposition::Abandoned;
            for later in rest.by_ref() {
                bump(&self.status.stats.received);
                self.metrics.received.increment(1);
                self.abandon_unhandled(settler, &later, at_shutdown).await;
            }
            // A retried message comes back first in this session; anything else ends it.
            return disposition == Disposition::Retried;
        }
        true
    }
}
