//! The [`Processor`]: turns a [`Handler`] into an ordered, lock-renewing, retrying consumer.
//!
//! ```
//! # #[cfg(feature = "memory")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> queue_runtime::Result<()> {
//! use std::{sync::Arc, time::Duration};
//! use queue_runtime::{
//!     CancellationToken, Message, Outcome, Processor, ProcessorSettings, QueueName,
//!     QueueProvider, QueueSpec, SharedQueueProvider, handler_fn, memory::InMemoryProvider,
//! };
//!
//! let provider: SharedQueueProvider = Arc::new(InMemoryProvider::new());
//! let queue = QueueName::new("jobs")?;
//! provider.create_queue(&queue, &QueueSpec::default()).await?;
//! provider.send(&queue, Message::new("hello")).await?;
//!
//! let shutdown = CancellationToken::new();
//! let stop = shutdown.clone();
//! let handler = handler_fn(move |message, _ctx| {
//!     let stop = stop.clone();
//!     async move {
//!         assert_eq!(message.body().as_ref(), b"hello");
//!         stop.cancel(); // one message in this example: stop after it
//!         Ok(Outcome::Complete)
//!     }
//! });
//! let settings = ProcessorSettings::default().with_receive_wait(Duration::from_millis(50));
//! let processor = Processor::new(provider, queue, handler).with_settings(settings);
//! let health = processor.handle(); // state and counters, e.g. for a readiness probe
//! let report = processor.run(shutdown).await?;
//! assert_eq!(report.completed, 1);
//! # drop(health);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "memory"))]
//! # fn main() {}
//! ```

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use queue_core::{MessageGate, QueueName, Result, SessionSupport, SharedQueueProvider};
use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use self::shared::Shared;
use crate::{
    breaker::CircuitBreaker,
    config::{ProcessorSettings, QueueRuntimeConfig, SessionMode, build_provider},
    handler::Handler,
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
    status: Arc<Status>,
    attempts: Arc<dyn AttemptStore>,
}

impl fmt::Debug for Processor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Processor")
            .field("provider", &self.provider.name())
            .field("queue", &self.queue)
            .field("settings", &self.settings)
            .field("gates", &self.gates)
            .field("attempts", &self.attempts)
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
            status: Arc::default(),
            attempts: Arc::new(MemoryAttemptStore::default()),
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

    /// Replaces the ledger of handler runs per message (default: a [`MemoryAttemptStore`]
    /// of this processor). Pass the same store to the processor that replaces this one, or a
    /// [`FileAttemptStore`] to keep attempt counts across process restarts; see
    /// [`AttemptStore`].
    pub fn with_attempt_store(mut self, store: Arc<dyn AttemptStore>) -> Self {
        self.attempts = store;
        self
    }

    /// The settings.
    pub fn settings(&self) -> &ProcessorSettings {
        &self.settings
    }

    /// A handle on this processor's state, errors and counters, valid before, during and
    /// after `run`.
    pub fn handle(&self) -> ProcessorHandle {
        ProcessorHandle {
            status: self.status.clone(),
        }
    }

    /// Checks access to the queue, then consumes until `shutdown` fires and everything in
    /// flight is settled or abandoned.
    ///
    /// Fails fast, before consuming anything, if the settings are invalid or the provider's
    /// access check fails (queue missing, credentials rejected...). Fails with
    /// [`QueueError::Config`](crate::QueueError::Config) naming `processor.session_mode`, at the first receive or
    /// accept the provider refuses, if the session mode cannot consume the queue.
    ///
    /// Returns within `shutdown_timeout` + [`SHUTDOWN_GRACE`] of `shutdown` firing, broker
    /// up or down; [`ShutdownReport::unsettled`] counts deliveries still unsettled then.
    pub async fn run(self, shutdown: CancellationToken) -> Result<ShutdownReport> {
        let status = self.status.clone();
        status.set(ProcessorState::Starting);
        let res = self.start(shutdown).await;
        if let Err(err) = &res {
            status.fatal(err);
        }
        status.set(ProcessorState::Stopped);
        res
    }

    async fn start(self, shutdown: CancellationToken) -> Result<ShutdownReport> {
        self.settings.validate()?;
        let started = Instant::now();
        let metrics = Metrics::new(
            &self.queue,
            self.provider.name(),
            self.provider.instrumented(),
        );
        tokio::select! {
            res = self.check_access(&metrics) => res?,
            _ = shutdown.cancelled() => {
                return Ok(Stats::default().report(true, started.elapsed()));
            }
        }
        let shared = Arc::new(self.into_shared(metrics, shutdown.child_token()));
        tracing::info!(
            queue = %shared.queue,
            provider = shared.provider.name(),
            sessions = ?shared.caps.sessions,
            "processor started"
        );
        shared.spawn_workers();
        shared.status.set(ProcessorState::Running);
        shared.shutdown.cancelled().await;
        shared.status.set(ProcessorState::Stopping);
        let drained = shared.drain().await;
        // Deliveries still unsettled now are left to expire (see `ShutdownReport::unsettled`).
        shared.renewals.close();
        let report = shared.status.stats.report(drained, started.elapsed());
        let fatal = shared
            .fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        tracing::info!(queue = %shared.queue, ?report, "processor stopped");
        match fatal {
            Some(err) => Err(err),
            None => Ok(report),
        }
    }

    async fn check_access(&self, metrics: &Metrics) -> Result<()> {
        let span = tracing::info_span!(
            "queue.check_access",
            queue = %self.queue,
            provider = self.provider.name()
        );
        let res = self
            .provider
            .check_access(&self.queue)
            .instrument(span)
            .await;
        if let Err(err) = &res {
            metrics.provider_error("check_access", err);
            tracing::error!(
                queue = %self.queue,
                provider = self.provider.name(),
                error = %err,
                "access check failed; not consuming"
            );
        }
        res
    }

    fn into_shared(self, metrics: Metrics, shutdown: CancellationToken) -> Shared {
        Shared {
            policy: RetryPolicy::new(self.settings.retry.clone()),
            breaker: CircuitBreaker::new(self.settings.circuit_breaker.clone()),
            caps: self.provider.capabilities(),
            provider: self.provider,
            queue: self.queue,
            handler: self.handler,
            settings: self.settings,
            gates: self.gates,
            metrics,
            status: self.status,
            shutdown,
            hard: CancellationToken::new(),
            tracker: TaskTracker::new(),
            fatal: Mutex::default(),
            attempts: self.attempts,
            renewals: Arc::default(),
        }
    }
}

/// How long `run` may take beyond `shutdown_timeout` once shutdown fires: handlers still
/// running at the deadline are cancelled and get this long to return and have their
/// messages abandoned; then `run` returns whatever is still unsettled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl Shared {
    /// Starts the lock-renewal driver (if the provider renews locks), and the session
    /// workers and the session-less receive loop the mode asks for.
    fn spawn_workers(self: &Arc<Self>) {
        if self.caps.lock_renewal {
            // Not tracked: it renews until `run` returns, drain included.
            tokio::spawn(self.clone().drive_renewals());
        }
        let locked = self.caps.sessions == SessionSupport::Locked;
        let mode = self.settings.session_mode;
        if locked && mode != SessionMode::None {
            for _ in 0..self.settings.max_concurrent_sessions {
                self.tracker.spawn(self.clone().session_worker());
            }
        }
        if !locked || mode != SessionMode::Required {
            self.tracker.spawn(self.clone().receive_loop());
        }
    }

    /// Lets running work finish within `shutdown_timeout`, then cancels it and waits at most
    /// [`SHUTDOWN_GRACE`] more. Returns whether everything finished within the timeout.
    async fn drain(&self) -> bool {
        tracing::info!(queue = %self.queue, "shutdown requested; draining");
        self.tracker.close();
        let in_time =
            tokio::time::timeout(self.settings.shutdown_timeout, self.tracker.wait()).await;
        if in_time.is_ok() {
            return true;
        }
        tracing::warn!(
            queue = %self.queue,
            "shutdown deadline passed; cancelling handlers and abandoning their messages"
        );
        self.hard.cancel();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                queue = %self.queue,
                "provider calls still under way after the grace period; returning without them"
            );
        }
        false
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
    /// Deliveries received but neither settled nor abandoned when `run` returned (handlers
    /// or settlement calls cut off by the shutdown deadline). Their locks expire and the
    /// broker delivers them again.
    pub unsettled: u64,
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
        let ended = [
            &self.completed,
            &self.retried,
            &self.dead_lettered,
            &self.lock_lost,
            &self.abandoned_for_order,
            &self.abandoned_at_shutdown,
            &self.settle_failures,
        ]
        .into_iter()
        .map(get)
        .sum::<u64>();
        ShutdownReport {
            unsettled: get(&self.received).saturating_sub(ended),
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

mod attempts;
mod handle;
mod lanes;
mod receive;
mod renew;
mod sessions;
mod settle;
mod shared;
mod status;
mod watch;

pub use attempts::{AttemptStore, DEFAULT_ATTEMPT_CAPACITY, FileAttemptStore, MemoryAttemptStore};
use status::Status;
pub use status::{ProcessorError, ProcessorHandle, ProcessorState};
