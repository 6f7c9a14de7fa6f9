//! The [`Processor`]: turns a [`Handler`] into an ordered, lock-renewing, retrying consumer.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use futures::FutureExt;
use queue_core::{
    Capabilities, DeadLetterReason, MessageGate, QueueError, QueueName, Receipt, ReceiveOptions,
    ReceivedMessage, Result, RetryClass, SessionId, SessionReceiver, SessionSelector,
    SessionSupport, SharedQueueProvider,
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    breaker::CircuitBreaker,
    config::{ProcessorSettings, QueueRuntimeConfig, SessionMode, build_provider},
    handler::{Handler, MessageContext, Outcome, reasons},
    retry::RetryPolicy,
    telemetry::Metrics,
};

/// Consumes one queue with one handler until a shutdown token fires.
///
/// * Messages of one session (ordering key) reach the handler one at a time, in send order;
///   up to `max_concurrent_sessions` sessions run at once. Messages without a session run
///   up to `max_concurrent_messages` at once.
/// * Locks are renewed while a message is held, up to `max_lock_renewal`.
/// * Failures are retried with exponential backoff and jitter, then dead-lettered; a
///   handler panic is a failure, never a crash.
/// * Shutdown stops receiving, lets running handlers finish within `shutdown_timeout`,
///   abandons the rest and returns a [`ShutdownReport`].
///
/// See `docs/runtime.md` for the exact guarantees per provider kind.
///
/// ```
/// # #[cfg(feature = "memory")]
/// # async fn demo() -> queue_runtime::Result<()> {
/// use std::sync::Arc;
/// use queue_runtime::{handler_fn, Outcome, Processor, QueueName, SharedQueueProvider};
/// use tokio_util::sync::CancellationToken;
///
/// let provider: SharedQueueProvider = Arc::new(queue_runtime::memory::InMemoryProvider::new());
/// let queue = QueueName::new("events")?;
/// let shutdown = CancellationToken::new();
/// let processor = Processor::new(provider, queue, handler_fn(|_msg, _ctx| async {
///     Ok(Outcome::Complete)
/// }));
/// shutdown.cancel(); // normally: on SIGTERM
/// let report = processor.run(shutdown).await?;
/// assert_eq!(report.completed, 0);
/// # Ok(())
/// # }
/// ```
pub struct Processor {
    provider: SharedQueueProvider,
    queue: QueueName,
    handler: Arc<dyn Handler>,
    settings: ProcessorSettings,
    gates: Vec<Arc<dyn MessageGate>>,
}

impl fmt::Debug for Processor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Processor")
            .field("provider", &self.provider.name())
            .field("queue", &self.queue)
            .field("settings", &self.settings)
            .field("gates", &self.gates)
            .finish_non_exhaustive()
    }
}

impl Processor {
    /// A processor of `queue` on `provider` with default settings.
    pub fn new(provider: SharedQueueProvider, queue: QueueName, handler: impl Handler) -> Self {
        Self {
            provider,
            queue,
            handler: Arc::new(handler),
            settings: ProcessorSettings::default(),
            gates: Vec::new(),
        }
    }

    /// Builds the provider and the processor from a validated configuration.
    pub async fn from_config(config: &QueueRuntimeConfig, handler: impl Handler) -> Result<Self> {
        config.validate()?;
        let provider = build_provider(&config.provider).await?;
        Ok(Self::new(provider, config.queue_name()?, handler)
            .with_settings(config.processor.clone()))
    }

    /// Replaces the settings.
    pub fn with_settings(mut self, settings: ProcessorSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Adds a gate run on every message before the handler. A rejection dead-letters the
    /// message with the rejection's reason and is never retried.
    pub fn with_gate(mut self, gate: Arc<dyn MessageGate>) -> Self {
        self.gates.push(gate);
        self
    }

    /// The settings.
    pub fn settings(&self) -> &ProcessorSettings {
        &self.settings
    }

    /// Checks access to the queue, then consumes until `shutdown` fires and everything in
    /// flight is settled or abandoned.
    ///
    /// Fails fast, before consuming anything, if the settings are invalid or the provider's
    /// access check fails (queue missing, credentials rejected...).
    pub async fn run(self, shutdown: CancellationToken) -> Result<ShutdownReport> {
        self.settings.validate()?;
        let started = Instant::now();
        let metrics = Metrics::new(&self.queue, self.provider.name());
        let span = tracing::info_span!(
            "queue.check_access",
            queue = %self.queue,
            provider = self.provider.name()
        );
        if let Err(err) = self
            .provider
            .check_access(&self.queue)
            .instrument(span)
            .await
        {
            metrics.provider_error("check_access", &err);
            tracing::error!(
                queue = %self.queue,
                provider = self.provider.name(),
                error = %err,
                "access check failed; not consuming"
            );
            return Err(err);
        }
        let caps = self.provider.capabilities();
        let shared = Arc::new(Shared {
            policy: RetryPolicy::new(self.settings.retry.clone()),
            breaker: CircuitBreaker::new(self.settings.circuit_breaker.clone()),
            provider: self.provider,
            queue: self.queue,
            handler: self.handler,
            settings: self.settings,
            gates: self.gates,
            caps,
            metrics,
            stats: Stats::default(),
            shutdown: shutdown.clone(),
            hard: CancellationToken::new(),
            tracker: TaskTracker::new(),
            order_abandons: Mutex::default(),
        });
        tracing::info!(
            queue = %shared.queue,
            provider = shared.provider.name(),
            sessions = ?shared.caps.sessions,
            "processor started"
        );
        let locked = shared.caps.sessions == SessionSupport::Locked;
        let mode = shared.settings.session_mode;
        if locked && mode != SessionMode::None {
            for _ in 0..shared.settings.max_concurrent_sessions {
                shared.tracker.spawn(shared.clone().session_worker());
            }
        }
        if !locked || mode != SessionMode::Required {
            shared.tracker.spawn(shared.clone().receive_loop());
        }

        shutdown.cancelled().await;
        tracing::info!(queue = %shared.queue, "shutdown requested; draining");
        shared.tracker.close();
        let drained = tokio::select! {
            _ = shared.tracker.wait() => true,
            _ = tokio::time::sleep(shared.settings.shutdown_timeout) => false,
        };
        if !drained {
            tracing::warn!(
                queue = %shared.queue,
                "shutdown deadline passed; cancelling handlers and abandoning their messages"
            );
            shared.hard.cancel();
            shared.tracker.wait().await;
        }
        let report = shared.stats.report(drained, started.elapsed());
        tracing::info!(queue = %shared.queue, ?report, "processor stopped");
        Ok(report)
    }
}

/// What a processor did, returned when it stops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Deliveries received.
    pub received: u64,
    /// Messages completed.
    pub completed: u64,
    /// Deliveries abandoned for a retry.
    pub retried: u64,
    /// Messages dead-lettered (gate rejections included).
    pub dead_lettered: u64,
    /// Messages rejected by a gate (also counted in `dead_lettered`).
    pub rejected: u64,
    /// Handler failures: errors and panics.
    pub handler_failures: u64,
    /// Handler panics (also counted in `handler_failures`).
    pub handler_panics: u64,
    /// Deliveries whose lock was lost before settlement (redelivered by the broker).
    pub lock_lost: u64,
    /// Buffered deliveries abandoned unhandled so that a retried earlier message of the same
    /// key keeps its place.
    pub abandoned_for_order: u64,
    /// Deliveries abandoned because of the shutdown (buffered ones, and handlers still
    /// running at the deadline).
    pub abandoned_at_shutdown: u64,
    /// Settlement calls that failed for good (the delivery's lock will expire and the broker
    /// redelivers it).
    pub settle_failures: u64,
    /// Sessions (or message groups) processed.
    pub sessions: u64,
    /// Whether every handler finished within the shutdown deadline.
    pub drained_in_time: bool,
    /// How long the processor ran.
    pub elapsed: Duration,
}

#[derive(Default)]
struct Stats {
    received: AtomicU64,
    completed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    rejected: AtomicU64,
    handler_failures: AtomicU64,
    handler_panics: AtomicU64,
    lock_lost: AtomicU64,
    abandoned_for_order: AtomicU64,
    abandoned_at_shutdown: AtomicU64,
    settle_failures: AtomicU64,
    sessions: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    fn report(&self, drained_in_time: bool, elapsed: Duration) -> ShutdownReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ShutdownReport {
            received: get(&self.received),
            completed: get(&self.completed),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            rejected: get(&self.rejected),
            handler_failures: get(&self.handler_failures),
            handler_panics: get(&self.handler_panics),
            lock_lost: get(&self.lock_lost),
            abandoned_for_order: get(&self.abandoned_for_order),
            abandoned_at_shutdown: get(&self.abandoned_at_shutdown),
            settle_failures: get(&self.settle_failures),
            sessions: get(&self.sessions),
            drained_in_time,
            elapsed,
        }
    }
}

/// How one delivery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Disposition {
    Completed,
    Retried,
    DeadLettered,
    LockLost,
    Abandoned,
    SettleFailed,
}

impl Disposition {
    /// Whether later messages of the same key may follow.
    fn keeps_order(self) -> bool {
        matches!(self, Self::Completed | Self::DeadLettered)
    }
}

/// Where settlement goes: the provider (receipt-based) or an accepted session.
#[derive(Clone)]
enum Settler {
    Provider,
    Session(Arc<dyn SessionReceiver>),
}

/// What a lock renewer is renewing.
enum RenewTarget {
    Message(Receipt),
    Session(Arc<dyn SessionReceiver>),
}

/// Signals between a lock renewer and whoever holds the lock.
#[derive(Clone, Default)]
struct LockWatch {
    /// The renewer found the lock lost: do not settle.
    lost: CancellationToken,
    /// Renewal stopped (maximum reached): cancel the handler, settle if still possible.
    stopped: CancellationToken,
    /// Set by the holder to stop the renewer.
    stop: CancellationToken,
}

/// A received message held locally, with its lock renewer; dropping it stops the renewer.
struct Held {
    msg: ReceivedMessage,
    watch: LockWatch,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.watch.stop.cancel();
    }
}

type Groups = Arc<Mutex<HashMap<SessionId, VecDeque<Held>>>>;

struct Shared {
    provider: SharedQueueProvider,
    queue: QueueName,
    handler: Arc<dyn Handler>,
    settings: ProcessorSettings,
    gates: Vec<Arc<dyn MessageGate>>,
    caps: Capabilities,
    policy: RetryPolicy,
    breaker: CircuitBreaker,
    metrics: Metrics,
    stats: Stats,
    /// Soft shutdown: take no new messages.
    shutdown: CancellationToken,
    /// Shutdown deadline passed: cancel handlers, abandon.
    hard: CancellationToken,
    tracker: TaskTracker,
    /// Per message id: deliveries abandoned unhandled to keep order (they are not attempts).
    order_abandons: Mutex<HashMap<queue_core::MessageId, u32>>,
}

/// Bound of the `order_abandons` map (entries are removed on settlement; this caps leaks
/// from messages that another consumer ends up settling).
const ORDER_ABANDONS_CAP: usize = 10_000;

const SETTLE_ATTEMPTS: u32 = 4;
/// How long a handler may take to return once cancelled at the shutdown deadline.
const HARD_STOP_GRACE: Duration = Duration::from_millis(500);

impl Shared {
    fn provider_name(&self) -> &'static str {
        self.provider.name()
    }

    /// The handler attempt this delivery is: the delivery count minus deliveries that were
    /// abandoned unhandled to keep order.
    fn attempt(&self, msg: &ReceivedMessage) -> u32 {
        let map = self
            .order_abandons
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let skipped = map.get(&msg.message_id).copied().unwrap_or(0);
        msg.delivery_count.saturating_sub(skipped).max(1)
    }

    fn note_order_abandon(&self, msg: &ReceivedMessage) {
        let mut map = self
            .order_abandons
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map.len() >= ORDER_ABANDONS_CAP {
            map.clear();
        }
        *map.entry(msg.message_id.clone()).or_default() += 1;
    }

    fn forget_order_abandons(&self, msg: &ReceivedMessage) {
        let mut map = self
            .order_abandons
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.remove(&msg.message_id);
    }

    /// Records a provider call failure in metrics and the breaker.
    /// Whether, in [`SessionMode::Auto`], `err` says this kind of consumption does not fit
    /// the queue (Service Bus refuses session receivers on queues without sessions and plain
    /// receivers on session-enabled ones, as permanent provider errors).
    fn auto_refused(&self, err: &QueueError) -> bool {
        self.settings.session_mode == SessionMode::Auto
            && matches!(
                err,
                QueueError::Provider {
                    class: RetryClass::Permanent,
                    ..
                }
            )
    }

    fn record_error(&self, operation: &'static str, err: &QueueError) {
        self.metrics.provider_error(operation, err);
        if self.breaker.record_failure(err) {
            self.metrics.circuit_opened.increment(1);
        }
    }

    /// Runs a settlement call, retrying transient failures a few times with a short backoff.
    async fn settle_call<F, Fut>(&self, operation: &'static str, mut call: F) -> Result<()>
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
                        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    fn settle_failed(&self, operation: &'static str, err: &QueueError) -> Disposition {
        match err {
            QueueError::LockLost { .. } | QueueError::SessionLockLost { .. } => {
                bump(&self.stats.lock_lost);
                self.metrics.lock_lost.increment(1);
                tracing::warn!(operation, error = %err, "lock lost before settlement; the broker will redeliver");
                Disposition::LockLost
            }
            _ => {
                bump(&self.stats.settle_failures);
                tracing::warn!(operation, error = %err, "settlement failed; the broker will redeliver after the lock expires");
                Disposition::SettleFailed
            }
        }
    }

    async fn complete(&self, settler: &Settler, msg: &ReceivedMessage) -> Disposition {
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
                bump(&self.stats.completed);
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

    async fn dead_letter(
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
                bump(&self.stats.dead_lettered);
                self.metrics.dead_lettered(label);
                Disposition::DeadLettered
            }
            Err(err) => self.settle_failed("dead_letter", &err),
        }
    }

    /// Abandons without delay. Used for shutdown, order keeping and retries after a hold.
    async fn abandon(&self, settler: &Settler, msg: &ReceivedMessage) -> Result<()> {
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

    async fn abandon_unhandled(&self, settler: &Settler, msg: &ReceivedMessage, at_shutdown: bool) {
        let reason = if at_shutdown { "shutdown" } else { "order" };
        match self.abandon(settler, msg).await {
            Ok(()) => {
                if at_shutdown {
                    bump(&self.stats.abandoned_at_shutdown);
                } else {
                    bump(&self.stats.abandoned_for_order);
                    self.note_order_abandon(msg);
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
    async fn retry(
        &self,
        settler: &Settler,
        msg: &ReceivedMessage,
        watch: &LockWatch,
        delay: Option<Duration>,
        label: &'static str,
        why: &str,
    ) -> Disposition {
        let attempt = self.attempt(msg);
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
                _ = watch.lost.cancelled() => {}
            }
            if watch.lost.is_cancelled() {
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
                bump(&self.stats.retried);
                self.metrics.retried(label);
                Disposition::Retried
            }
            Err(err) => self.settle_failed("abandon", &err),
        }
    }

    /// Checks, handles and settles one delivery.
    async fn process(
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
        );
        if let Some(session) = msg.session_id() {
            span.record("session_id", tracing::field::display(session));
        }
        let disposition = self
            .process_inner(msg, watch, settler)
            .instrument(span)
            .await;
        if matches!(
            disposition,
            Disposition::Completed | Disposition::DeadLettered
        ) {
            self.forget_order_abandons(msg);
        }
        disposition
    }

    async fn process_inner(
        self: &Arc<Self>,
        msg: &ReceivedMessage,
        watch: &LockWatch,
        settler: &Settler,
    ) -> Disposition {
        if self.hard.is_cancelled() {
            self.abandon_unhandled(settler, msg, true).await;
            return Disposition::Abandoned;
        }
        let max = self.policy.settings().max_attempts;
        let attempt = self.attempt(msg);
        if attempt > max {
            let reason = DeadLetterReason::new(
                reasons::MAX_ATTEMPTS_EXCEEDED,
                format!("attempt {attempt} of a message allowed {max} attempts"),
            );
            return self
                .dead_letter(settler, msg, reason, reasons::MAX_ATTEMPTS_EXCEEDED)
                .await;
        }
        for gate in &self.gates {
            if let Err(rejection) = gate.check(msg).await {
                bump(&self.stats.rejected);
                self.metrics.rejected(rejection.reason);
                tracing::warn!(reason = rejection.reason, "message rejected by a gate");
                let reason = DeadLetterReason::new(rejection.reason, rejection.description);
                return self
                    .dead_letter(settler, msg, reason, rejection.reason)
                    .await;
            }
        }

        let token = CancellationToken::new();
        let ctx = MessageContext::new(self.queue.clone(), msg, attempt, token.clone());
        let handler = self.handler.clone();
        let owned = msg.clone();
        self.metrics.in_flight.increment(1.0);
        let started = Instant::now();
        // Polled inline (the caller is already its own task); a panic is caught here and
        // becomes a retry, and dropping the future is how a stuck handler is stopped.
        let task = std::panic::AssertUnwindSafe(async move { handler.handle(owned, ctx).await })
            .catch_unwind();
        tokio::pin!(task);
        let max_timer = tokio::time::sleep(self.settings.max_lock_renewal);
        tokio::pin!(max_timer);
        let mut lock_lost = false;
        let mut renewal_over = false;
        let joined = loop {
            tokio::select! {
                res = &mut task => break Some(res),
                _ = watch.lost.cancelled(), if !lock_lost => {
                    lock_lost = true;
                    token.cancel();
                    tracing::warn!("lock lost while the handler runs; cancelling it");
                }
                _ = watch.stopped.cancelled(), if !renewal_over => {
                    renewal_over = true;
                    token.cancel();
                    tracing::warn!("lock renewal reached its maximum; cancelling the handler");
                }
                _ = &mut max_timer, if !renewal_over => {
                    renewal_over = true;
                    watch.stop.cancel();
                    watch.stopped.cancel();
                    token.cancel();
                    tracing::warn!("handler ran past max_lock_renewal; cancelling it");
                }
                _ = self.hard.cancelled() => {
                    // Past the shutdown deadline: tell the handler, give it a moment to
                    // return (its result is still settled), then abort it.
                    token.cancel();
                    tokio::select! {
                        res = &mut task => break Some(res),
                        _ = tokio::time::sleep(HARD_STOP_GRACE) => {
                            break None;
                        }
                    }
                }
            }
        };
        self.metrics.in_flight.decrement(1.0);
        let took = started.elapsed();

        let Some(joined) = joined else {
            self.metrics.handler_duration("cancelled", took);
            if !lock_lost {
                self.abandon_unhandled(settler, msg, true).await;
            }
            return Disposition::Abandoned;
        };
        if lock_lost || watch.lost.is_cancelled() {
            self.metrics.handler_duration("cancelled", took);
            bump(&self.stats.lock_lost);
            self.metrics.lock_lost.increment(1);
            return Disposition::LockLost;
        }
        match joined {
            Err(_panic) => {
                bump(&self.stats.handler_failures);
                bump(&self.stats.handler_panics);
                self.metrics.failed("panic");
                self.metrics.handler_duration("panic", took);
                // The panic payload may quote message data: it is not logged.
                let why = "the handler panicked";
                tracing::error!("{why}; the message will be retried");
                self.retry(settler, msg, watch, None, "handler_panic", why)
                    .await
            }
            Ok(Err(err)) if err.is_permanent() => {
                bump(&self.stats.handler_failures);
                self.metrics.failed("permanent");
                self.metrics.handler_duration("error", took);
                let reason = DeadLetterReason::new(reasons::PERMANENT_FAILURE, err.message());
                self.dead_letter(settler, msg, reason, reasons::PERMANENT_FAILURE)
                    .await
            }
            Ok(Err(err)) => {
                bump(&self.stats.handler_failures);
                self.metrics.failed("error");
                self.metrics.handler_duration("error", took);
                tracing::warn!(error = %err, "handler failed; the message will be retried");
                self.retry(settler, msg, watch, None, "handler_error", err.message())
                    .await
            }
            Ok(Ok(Outcome::Complete)) => {
                self.metrics.handler_duration("complete", took);
                self.complete(settler, msg).await
            }
            Ok(Ok(Outcome::Retry { delay, reason })) => {
                self.metrics.handler_duration("retry", took);
                self.retry(settler, msg, watch, delay, "outcome", &reason)
                    .await
            }
            Ok(Ok(Outcome::DeadLetter {
                reason,
                description,
            })) => {
                self.metrics.handler_duration("dead_letter", took);
                let label = reasons::label(&reason);
                let reason = DeadLetterReason::new(reason, description);
                self.dead_letter(settler, msg, reason, label).await
            }
        }
    }

    /// When to renew a lock expiring at `until`: at half the remaining time, at most every
    /// `lock_renewal_interval`.
    fn renew_interval(&self, until: Option<SystemTime>) -> Duration {
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
    fn spawn_renewer(
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
    fn renewer(
        self: &Arc<Self>,
        target: RenewTarget,
        until: Option<SystemTime>,
        max: Option<Duration>,
    ) -> (LockWatch, Option<impl Future<Output = ()> + Send + 'static>) {
        let watch = LockWatch::default();
        if !self.caps.lock_renewal {
            return (watch, None);
        }
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

    /// Waits while the breaker is open. Returns `false` if shutdown fired meanwhile.
    async fn wait_for_breaker(&self) -> bool {
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
    async fn backoff(&self, consecutive: u32) -> bool {
        let wait = Duration::from_millis(100u64 << consecutive.min(6)).min(Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.shutdown.cancelled() => false,
        }
    }

    /// Receives session-less messages (all providers) and grouped messages (SQS FIFO).
    async fn receive_loop(self: Arc<Self>) {
        let grouped = self.caps.sessions == SessionSupport::Grouped;
        let slots = Arc::new(Semaphore::new(if grouped {
            self.settings.max_buffered_messages
        } else {
            self.settings.max_concurrent_messages
        }));
        let message_slots = Arc::new(Semaphore::new(self.settings.max_concurrent_messages));
        let session_slots = Arc::new(Semaphore::new(self.settings.max_concurrent_sessions));
        let groups: Groups = Arc::default();
        let max_batch = self.caps.max_batch_size.max(1);
        let mut errors = 0u32;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = self.shutdown.cancelled() => break,
            };
            let mut permits = vec![first];
            while permits.len() < max_batch {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            if !self.wait_for_breaker().await {
                break;
            }
            let span = tracing::debug_span!(
                "queue.receive",
                queue = %self.queue,
                provider = self.provider_name(),
                max = permits.len()
            );
            let res = self
                .provider
                .receive(
                    &self.queue,
                    ReceiveOptions::new(permits.len(), self.settings.receive_wait),
                )
                .instrument(span)
                .await;
            match res {
                Ok(batch) => {
                    errors = 0;
                    self.breaker.record_success();
                    if self.caps.sessions == SessionSupport::Locked
                        && batch.iter().any(|m| m.session_id().is_some())
                    {
                        // A session-locked provider handed session messages to a plain
                        // receive: the queue only has sessions, and these belong to the
                        // session workers. Give them back in order and stop this loop.
                        tracing::warn!(
                            queue = %self.queue,
                            "session-less receive returned session messages; only sessions \
                             are consumed (set processor.session_mode = \"required\")"
                        );
                        for msg in &batch {
                            bump(&self.stats.received);
                            self.metrics.received.increment(1);
                            self.abandon_unhandled(&Settler::Provider, msg, false).await;
                        }
                        break;
                    }
                    for msg in batch {
                        let permit = permits.pop();
                        self.dispatch(
                            msg,
                            permit,
                            grouped,
                            &groups,
                            &message_slots,
                            &session_slots,
                        );
                    }
                }
                Err(err) => {
                    self.record_error("receive", &err);
                    if matches!(err, QueueError::Unsupported { .. }) {
                        tracing::debug!(error = %err, "session-less receive unsupported; only sessions are consumed");
                        break;
                    }
                    if self.caps.sessions == SessionSupport::Locked && self.auto_refused(&err) {
                        tracing::warn!(
                            error = %err,
                            "session-less receive refused; only sessions are consumed \
                             (set processor.session_mode = \"required\")"
                        );
                        break;
                    }
                    tracing::warn!(error = %err, "receive failed; backing off");
                    errors += 1;
                    if !self.backoff(errors).await {
                        break;
                    }
                }
            }
        }
    }

    fn dispatch(
        self: &Arc<Self>,
        msg: ReceivedMessage,
        permit: Option<OwnedSemaphorePermit>,
        grouped: bool,
        groups: &Groups,
        message_slots: &Arc<Semaphore>,
        session_slots: &Arc<Semaphore>,
    ) {
        bump(&self.stats.received);
        self.metrics.received.increment(1);
        let (watch, renew) = self.renewer(
            RenewTarget::Message(msg.receipt.clone()),
            msg.locked_until,
            Some(self.settings.max_lock_renewal),
        );
        let key = msg.session_id().cloned().filter(|_| grouped);
        let renew = match (renew, &key) {
            (Some(renew), Some(_)) => {
                // Buffered behind its group: renewed by its own task while it waits.
                tokio::spawn(renew);
                None
            }
            (renew, _) => renew,
        };
        let held = Held {
            msg,
            watch,
            _permit: permit,
        };
        match key {
            Some(key) => {
                let start = {
                    let mut map = groups.lock().unwrap_or_else(|e| e.into_inner());
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
                    let groups = groups.clone();
                    let slots = session_slots.clone();
                    self.tracker
                        .spawn(async move { shared.group_worker(key, groups, slots).await });
                }
            }
            _ => {
                let shared = self.clone();
                let slots = message_slots.clone();
                self.tracker.spawn(async move {
                    let work = async {
                        let _slot = slots.acquire_owned().await;
                        if shared.shutdown.is_cancelled() {
                            shared
                                .abandon_unhandled(&Settler::Provider, &held.msg, true)
                                .await;
                            return;
                        }
                        shared
                            .process(&held.msg, &held.watch, &Settler::Provider)
                            .await;
                    };
                    // Renew in this task, next to the work, until the work is done.
                    let renew = async move {
                        if let Some(renew) = renew {
                            renew.await;
                        }
                        std::future::pending::<()>().await;
                    };
                    tokio::select! {
                        biased;
                        _ = work => {}
                        _ = renew => {}
                    }
                });
            }
        }
    }

    /// Processes one message group (SQS FIFO) sequentially until its buffer is empty.
    async fn group_worker(self: Arc<Self>, key: SessionId, groups: Groups, slots: Arc<Semaphore>) {
        let _slot = slots.acquire_owned().await;
        bump(&self.stats.sessions);
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
            if next.watch.lost.is_cancelled() {
                // Its lock is gone: the broker redelivers it; later ones must wait for it.
                bump(&self.stats.lock_lost);
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
    async fn drain_group(&self, key: &SessionId, groups: &Groups, at_shutdown: bool) {
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

    /// Accepts sessions one after another (Service Bus style providers).
    async fn session_worker(self: Arc<Self>) {
        let mut errors = 0u32;
        loop {
            if self.shutdown.is_cancelled() || !self.wait_for_breaker().await {
                break;
            }
            let span = tracing::debug_span!(
                "queue.accept_session",
                queue = %self.queue,
                provider = self.provider_name()
            );
            let res = self
                .provider
                .accept_session(
                    &self.queue,
                    SessionSelector::Next,
                    self.settings.receive_wait,
                )
                .instrument(span)
                .await;
            match res {
                Ok(None) => {
                    errors = 0;
                    self.breaker.record_success();
                }
                Ok(Some(session)) => {
                    errors = 0;
                    self.breaker.record_success();
                    self.run_session(Arc::from(session)).await;
                }
                Err(err) => {
                    self.record_error("accept_session", &err);
                    if matches!(err, QueueError::Unsupported { .. }) {
                        if self.settings.session_mode == SessionMode::Auto {
                            // Expected on a queue without sessions: only this worker stops.
                            tracing::info!(error = %err, "queue has no sessions; session worker stops");
                        } else {
                            tracing::error!(error = %err, "provider cannot accept sessions");
                        }
                        break;
                    }
                    if self.auto_refused(&err) {
                        tracing::warn!(
                            error = %err,
                            "accepting a session refused; only session-less messages are \
                             consumed (set processor.session_mode = \"none\")"
                        );
                        break;
                    }
                    if !matches!(err, QueueError::SessionLocked { .. }) {
                        tracing::warn!(error = %err, "accepting a session failed; backing off");
                    }
                    errors += 1;
                    if !self.backoff(errors).await {
                        break;
                    }
                }
            }
        }
    }

    /// Processes an accepted session until it is idle, then releases it.
    async fn run_session(self: &Arc<Self>, session: Arc<dyn SessionReceiver>) {
        let span = tracing::info_span!(
            "queue.session",
            queue = %self.queue,
            provider = self.provider_name(),
            session_id = %session.session_id()
        );
        async {
            bump(&self.stats.sessions);
            self.metrics.active_sessions.increment(1.0);
            let watch = self.spawn_renewer(
                RenewTarget::Session(session.clone()),
                Some(session.locked_until()),
                None,
            );
            let settler = Settler::Session(session.clone());
            'session: loop {
                if self.shutdown.is_cancelled()
                    || watch.lost.is_cancelled()
                    || watch.stopped.is_cancelled()
                {
                    break;
                }
                let res = session
                    .receive(ReceiveOptions::new(1, self.settings.session_idle_timeout))
                    .await;
                let batch = match res {
                    Ok(batch) if batch.is_empty() => break,
                    Ok(batch) => batch,
                    Err(err) => {
                        self.record_error("session_receive", &err);
                        tracing::warn!(error = %err, "session receive failed; releasing the session");
                        break;
                    }
                };
                let mut rest = batch.into_iter();
                while let Some(msg) = rest.next() {
                    bump(&self.stats.received);
                    self.metrics.received.increment(1);
                    if self.shutdown.is_cancelled() {
                        self.abandon_unhandled(&settler, &msg, true).await;
                        continue;
                    }
                    let disposition = self.process(&msg, &watch, &settler).await;
                    if !disposition.keeps_order() {
                        let at_shutdown = disposition == Disposition::Abandoned;
                        for later in rest.by_ref() {
                            bump(&self.stats.received);
                            self.metrics.received.increment(1);
                            self.abandon_unhandled(&settler, &later, at_shutdown).await;
                        }
                        if disposition != Disposition::Retried {
                            break 'session;
                        }
                    }
                }
            }
            watch.stop.cancel();
            if let Err(err) = session.close().await {
                self.metrics.provider_error("close_session", &err);
                tracing::debug!(error = %err, "closing the session failed");
            }
            self.metrics.active_sessions.decrement(1.0);
        }
        .instrument(span)
        .await
    }
}
