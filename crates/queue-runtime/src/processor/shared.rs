//! State shared by the processor's tasks.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use queue_core::{
    Capabilities, MessageGate, QueueError, QueueName, Receipt, ReceivedMessage, RetryClass,
    SessionId, SessionReceiver, SharedQueueProvider,
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

use super::status::Status;

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

/// What a lock renewer is renewing.
pub(super) enum RenewTarget {
    Message(Receipt),
    Session(Arc<dyn SessionReceiver>),
}

/// Signals between a lock renewer and whoever holds the lock.
#[derive(Clone, Default)]
pub(super) struct LockWatch {
    /// The renewer found the lock lost: do not settle.
    pub(super) lost: CancellationToken,
    /// Renewal stopped (maximum reached): cancel the handler, settle if still possible.
    pub(super) stopped: CancellationToken,
    /// Set by the holder to stop the renewer.
    pub(super) stop: CancellationToken,
}

/// A received message held locally, with its lock renewer; dropping it stops the renewer.
pub(super) struct Held {
    pub(super) msg: ReceivedMessage,
    pub(super) watch: LockWatch,
    pub(super) _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.watch.stop.cancel();
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
    /// Per message id: deliveries abandoned unhandled to keep order (they are not attempts).
    pub(super) order_abandons: Mutex<HashMap<queue_core::MessageId, u32>>,
    /// Per message id: handler runs retried in process on one delivery (attempts the
    /// delivery count does not show).
    pub(super) held_retries: Mutex<HashMap<queue_core::MessageId, u32>>,
}

/// Bound of the `order_abandons` map (entries are removed on settlement; this caps leaks
/// from messages that another consumer ends up settling).
pub(super) const ORDER_ABANDONS_CAP: usize = 10_000;

pub(super) const SETTLE_ATTEMPTS: u32 = 4;
/// How long a handler may take to return once cancelled at the shutdown deadline.
pub(super) const HARD_STOP_GRACE: Duration = Duration::from_millis(500);

impl Shared {
    pub(super) fn provider_name(&self) -> &'static str {
        self.provider.name()
    }

    /// The handler attempt this delivery is: the delivery count minus deliveries that were
    /// abandoned unhandled to keep order.
    pub(super) fn attempt(&self, msg: &ReceivedMessage) -> u32 {
        let get = |m: &Mutex<HashMap<queue_core::MessageId, u32>>| {
            let map = m.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&msg.message_id).copied().unwrap_or(0)
        };
        let skipped = get(&self.order_abandons);
        let held = get(&self.held_retries);
        msg.delivery_count.saturating_sub(skipped).max(1) + held
    }

    /// Counts a handler run retried in process on the same delivery.
    pub(super) fn note_held_retry(&self, msg: &ReceivedMessage) {
        let mut map = self.held_retries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= ORDER_ABANDONS_CAP {
            map.clear();
        }
        *map.entry(msg.message_id.clone()).or_default() += 1;
    }

    pub(super) fn note_order_abandon(&self, msg: &ReceivedMessage) {
        let mut map = self
            .order_abandons
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map.len() >= ORDER_ABANDONS_CAP {
            map.clear();
        }
        *map.entry(msg.message_id.clone()).or_default() += 1;
    }

    pub(super) fn forget_order_abandons(&self, msg: &ReceivedMessage) {
        for m in [&self.order_abandons, &self.held_retries] {
            m.lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&msg.message_id);
        }
    }

    /// Records a provider call failure in metrics and the breaker.
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

    /// Backs off after a failed receive or accept. Returns `false` on shutdown.
    pub(super) async fn backoff(&self, consecutive: u32) -> bool {
        let wait = Duration::from_millis(100u64 << consecutive.min(6)).min(Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.shutdown.cancelled() => false,
        }
    }
}
