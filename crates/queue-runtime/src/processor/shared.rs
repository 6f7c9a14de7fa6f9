//! State shared by the processor's tasks.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use queue_core::{
    Capabilities, MessageGate, QueueError, QueueName, ReceivedMessage, RetryClass, SessionId,
    SessionReceiver, SharedQueueProvider,
    backoff::{Backoff, Jitter, JitterMode},
};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    breaker::CircuitBreaker,
    config::{ProcessorSettings, SessionMode},
    handler::Handler,
    retry::RetryPolicy,
    telemetry::Metrics,
};

pub(super) use super::watch::LockWatch;
use super::{
    attempts::AttemptStore,
    renew::{Lease, Renewals},
    status::Status,
};

/// How one delivery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Disposition {
    Completed,
    Retried,
    DeadLettered,
    LockLost,
    Abandoned,
    SettleFailed,
    /// Held for its retry delay; the handler runs again on the same delivery.
    RetryNow,
}

impl Disposition {
    /// Whether later messages of the same key may follow.
    pub(super) fn keeps_order(self) -> bool {
        matches!(self, Self::Completed | Self::DeadLettered)
    }
}

/// Where settlement goes: the provider (receipt-based) or an accepted session.
#[derive(Clone)]
pub(super) enum Settler {
    Provider,
    Session(Arc<dyn SessionReceiver>),
}

/// A received message and the watch on its lock, in one allocation shared with the
/// renewal table.
pub(super) struct HeldMessage {
    pub(super) msg: ReceivedMessage,
    pub(super) watch: LockWatch,
}

/// A received message held locally, with its lock's renewal and its slot; dropping it ends
/// the renewal and frees the slot. Small (a few words), so cheap to move.
pub(super) struct Held {
    pub(super) message: Arc<HeldMessage>,
    pub(super) _lease: Option<Lease>,
    pub(super) _permit: Option<OwnedSemaphorePermit>,
}

impl std::ops::Deref for Held {
    type Target = HeldMessage;

    fn deref(&self) -> &HeldMessage {
        &self.message
    }
}

pub(super) type Groups = Arc<Mutex<HashMap<SessionId, VecDeque<Held>>>>;

pub(super) struct Shared {
    pub(super) provider: SharedQueueProvider,
    pub(super) queue: QueueName,
    pub(super) handler: Arc<dyn Handler>,
    pub(super) settings: ProcessorSettings,
    pub(super) gates: Vec<Arc<dyn MessageGate>>,
    pub(super) caps: Capabilities,
    pub(super) policy: RetryPolicy,
    pub(super) breaker: CircuitBreaker,
    pub(super) metrics: Metrics,
    pub(super) status: Arc<Status>,
    /// Soft shutdown: take no new messages.
    pub(super) shutdown: CancellationToken,
    /// Shutdown deadline passed: cancel handlers, abandon.
    pub(super) hard: CancellationToken,
    pub(super) tracker: TaskTracker,
    /// The error that stopped the processor on its own (a `session_mode` that cannot work).
    pub(super) fatal: Mutex<Option<QueueError>>,
    /// Handler runs per message: what attempt budgets are spent on.
    pub(super) attempts: Arc<dyn AttemptStore>,
    /// The locks of held messages, renewed by one driver task.
    pub(super) renewals: Arc<Renewals>,
}

pub(super) const SETTLE_ATTEMPTS: u32 = 4;
/// How long a handler may take to return once cancelled at the shutdown deadline.
pub(super) const HARD_STOP_GRACE: Duration = Duration::from_millis(500);

impl Shared {
    pub(super) fn provider_name(&self) -> &'static str {
        self.provider.name()
    }

    /// Whether, in [`SessionMode::Auto`], `err` says this kind of consumption does not fit
    /// the queue (Service Bus refuses session receivers on queues without sessions and plain
    /// receivers on session-enabled ones, as permanent provider errors).
    pub(super) fn auto_refused(&self, err: &QueueError) -> bool {
        self.settings.session_mode == SessionMode::Auto
            && matches!(
                err,
                QueueError::Provider {
                    class: RetryClass::Permanent,
                    ..
                }
            )
    }

    /// Stops the processor with `err`, which `run` returns once everything is settled.
    pub(super) fn fail(&self, err: QueueError) {
        tracing::error!(error = %err, "the processor cannot consume this queue; stopping");
        self.fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(err);
        self.shutdown.cancel();
    }

    /// A receive or accept call succeeded.
    pub(super) fn provider_ok(&self) {
        self.breaker.record_success();
        self.status.provider_ok();
    }

    pub(super) fn record_error(&self, operation: &'static str, err: &QueueError) {
        self.status.provider_failed(operation, err);
        self.metrics.provider_error(operation, err);
        if self.breaker.record_failure(err) {
            self.metrics.circuit_opened.increment(1);
        }
    }

    /// Waits while the breaker is open. Returns `false` if shutdown fired meanwhile.
    pub(super) async fn wait_for_breaker(&self) -> bool {
        while let Err(wait) = self.breaker.allow() {
            tracing::debug!(?wait, "circuit open; receive paused");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return false,
            }
        }
        true
    }

    /// Backs off after a failed receive or accept: 100 ms doubling to 5 s, jittered down by
    /// up to half so consumers that failed together do not retry together. Returns `false`
    /// on shutdown.
    pub(super) async fn backoff(&self, consecutive: u32) -> bool {
        static JITTER: std::sync::OnceLock<Jitter> = std::sync::OnceLock::new();
        let unit = JITTER.get_or_init(Jitter::random).next_unit();
        let wait = Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
            .with_jitter(JitterMode::Down(0.5))
            .delay(consecutive.saturating_add(1), unit);
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.shutdown.cancelled() => false,
        }
    }
}
