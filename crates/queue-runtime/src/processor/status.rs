//! [`ProcessorHandle`]: the state, errors and counters of a running processor.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use queue_core::QueueError;
use tokio::{sync::broadcast, time::Instant};

use super::{ShutdownReport, Stats};

/// Errors kept for subscribers that fall behind (older ones are dropped for them).
const ERROR_BACKLOG: usize = 64;

/// Where a processor is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProcessorState {
    /// `run` was called: settings and the provider's access check are being verified.
    Starting,
    /// Receiving and handling messages; the last provider call succeeded.
    Running,
    /// Still trying, but provider calls fail (broker down, circuit open, credentials
    /// rejected...): not making progress. Returns to `Running` on the next success.
    Degraded {
        /// The provider failure that made it degraded (the latest one).
        last_error: ProcessorError,
    },
    /// Shutdown was requested; in-flight messages are finishing.
    Stopping,
    /// `run` returned (or is about to).
    Stopped,
}

/// A failure the processor reported, for the error stream and [`ProcessorState::Degraded`].
///
/// It carries the error's rendering, which never holds credentials or message bodies.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessorError {
    /// What failed: a provider operation (`receive`, `accept_session`, `complete`...),
    /// `handler`, or `run` for the error that stopped the processor.
    pub operation: &'static str,
    /// The error's kind ([`QueueError::kind_label`], or `handler`).
    pub kind: &'static str,
    /// The error's message.
    pub message: String,
    /// When it happened.
    pub at: SystemTime,
}

impl ProcessorError {
    pub(super) fn from_queue(operation: &'static str, err: &QueueError) -> Self {
        Self {
            operation,
            kind: err.kind_label(),
            message: err.to_string(),
            at: SystemTime::now(),
        }
    }
}

impl fmt::Display for ProcessorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed ({}): {}",
            self.operation, self.kind, self.message
        )
    }
}

/// What the processor's tasks and its handles share.
pub(super) struct Status {
    pub(super) stats: Stats,
    state: Mutex<ProcessorState>,
    started: Mutex<Option<Instant>>,
    errors: broadcast::Sender<ProcessorError>,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            stats: Stats::default(),
            state: Mutex::new(ProcessorState::Starting),
            started: Mutex::new(None),
            errors: broadcast::channel(ERROR_BACKLOG).0,
        }
    }
}

impl Status {
    fn state_mut(&self) -> std::sync::MutexGuard<'_, ProcessorState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn set(&self, state: ProcessorState) {
        if matches!(state, ProcessorState::Starting) {
            *self.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        *self.state_mut() = state;
    }

    /// A provider call failed: publish it and, unless stopping, become degraded.
    pub(super) fn provider_failed(&self, operation: &'static str, err: &QueueError) {
        let error = ProcessorError::from_queue(operation, err);
        {
            let mut state = self.state_mut();
            if matches!(
                *state,
                ProcessorState::Running | ProcessorState::Degraded { .. }
            ) {
                *state = ProcessorState::Degraded {
                    last_error: error.clone(),
                };
            }
        }
        let _ = self.errors.send(error);
    }

    /// A receive or accept succeeded: a degraded processor is running again.
    pub(super) fn provider_ok(&self) {
        let mut state = self.state_mut();
        if matches!(*state, ProcessorState::Degraded { .. }) {
            *state = ProcessorState::Running;
        }
    }

    /// Publishes a handler failure (it does not change the state).
    pub(super) fn handler_failed(&self, message: &str) {
        let _ = self.errors.send(ProcessorError {
            operation: "handler",
            kind: "handler",
            message: message.to_owned(),
            at: SystemTime::now(),
        });
    }

    /// Publishes the error that stops the processor.
    pub(super) fn fatal(&self, err: &QueueError) {
        let _ = self.errors.send(ProcessorError::from_queue("run", err));
    }

    fn elapsed(&self) -> std::time::Duration {
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|s| s.elapsed())
            .unwrap_or_default()
    }
}

/// A handle on a processor, for readiness probes, dashboards and alerting: take it with
/// [`Processor::handle`](super::Processor::handle) before calling `run`, clone it freely.
///
/// ```
/// # #[cfg(feature = "memory")]
/// # async fn demo() -> queue_runtime::Result<()> {
/// use std::sync::Arc;
/// use queue_runtime::{handler_fn, Outcome, Processor, ProcessorState, QueueName};
///
/// let provider = Arc::new(queue_runtime::memory::InMemoryProvider::new());
/// let processor = Processor::new(provider, QueueName::new("events")?, handler_fn(|_m, _c| async {
///     Ok(Outcome::Complete)
/// }));
/// let handle = processor.handle();
/// let mut errors = handle.errors();
/// tokio::spawn(async move {
///     while let Ok(err) = errors.recv().await {
///         eprintln!("queue consumer: {err}");
///     }
/// });
/// assert_eq!(handle.state(), ProcessorState::Starting);
/// // A readiness probe: `handle.is_ready()`; counters: `handle.counters().completed`.
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ProcessorHandle {
    pub(super) status: Arc<Status>,
}

impl fmt::Debug for ProcessorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessorHandle")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl ProcessorHandle {
    /// The current state.
    pub fn state(&self) -> ProcessorState {
        self.status.state_mut().clone()
    }

    /// Whether the processor is consuming and its last provider call succeeded: the
    /// readiness answer (`Running` only; `Degraded`, `Starting`, `Stopping` and `Stopped`
    /// are not ready).
    pub fn is_ready(&self) -> bool {
        matches!(self.state(), ProcessorState::Running)
    }

    /// A stream of failures from now on: provider call failures, handler failures and the
    /// error that stops the processor. A subscriber that falls more than 64 behind gets
    /// `RecvError::Lagged` and continues with newer ones.
    pub fn errors(&self) -> broadcast::Receiver<ProcessorError> {
        self.status.errors.subscribe()
    }

    /// The counters so far, in the shape of the final [`ShutdownReport`]
    /// (`drained_in_time` is `false` until the processor stopped in time).
    pub fn counters(&self) -> ShutdownReport {
        self.status.stats.report(false, self.status.elapsed())
    }
}
