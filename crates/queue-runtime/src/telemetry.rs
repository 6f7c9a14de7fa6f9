//! Metric names emitted through the [`metrics`] facade.
//!
//! Install any `metrics` recorder (Prometheus exporter, OpenTelemetry bridge...) to collect
//! them. Every metric carries the labels `queue` and `provider`; some add `outcome`,
//! `operation`, `reason` or `kind`, all from small fixed sets. Message ids, session ids and
//! bodies are never labels.
//!
//! ```
//! use queue_runtime::telemetry;
//!
//! // A Prometheus alert on poison messages; `reason` is one of `handler::reasons`.
//! let alert = format!("sum by (queue, reason) (rate({}[5m])) > 0", telemetry::DEAD_LETTERED);
//! assert!(alert.contains("queue_runtime_messages_dead_lettered_total"));
//! ```
//!
//! Logs (feature `telemetry`): install the subscriber with `init_logging`, or compose
//! `SecretGuard` and `redacting` into your own; either keeps the credentials that SDKs
//! log at `DEBUG`/`TRACE` (AWS access keys and session tokens, SAS tokens, AMQP frames)
//! out of the output, whatever level the rest of the subscriber allows.

use std::time::Duration;

#[cfg(feature = "telemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "telemetry")))]
mod logs;
#[cfg(feature = "telemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "telemetry")))]
pub use logs::{
    Redacting, RedactingWriter, SDK_TARGET_CAPS, SecretGuard, init as init_logging, redacting,
};
/// The level type [`init_logging`] takes (re-exported from `tracing-subscriber`).
#[cfg(feature = "telemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "telemetry")))]
pub use tracing_subscriber::filter::LevelFilter;

use metrics::{Counter, Gauge, Histogram, Label};
use queue_core::{QueueError, QueueName};

/// Counter: messages received (`queue`, `provider`).
pub const RECEIVED: &str = "queue_runtime_messages_received_total";
/// Counter: messages completed.
pub const COMPLETED: &str = "queue_runtime_messages_completed_total";
/// Counter: messages abandoned for a retry (`reason`: `handler_error`, `handler_panic`,
/// `outcome`).
pub const RETRIED: &str = "queue_runtime_messages_retried_total";
/// Counter: messages dead-lettered (`reason`: a runtime reason, a gate's rejection reason,
/// or `HandlerDeadLettered`).
pub const DEAD_LETTERED: &str = "queue_runtime_messages_dead_lettered_total";
/// Counter: handler failures (`kind`: `error`, `panic`, `permanent`).
pub const FAILED: &str = "queue_runtime_handler_failures_total";
/// Counter: messages rejected by a gate (`reason`: the rejection reason).
pub const REJECTED: &str = "queue_runtime_messages_rejected_total";
/// Counter: messages abandoned without being handled (`reason`: `shutdown`, `order`,
/// `lock_lost`).
pub const ABANDONED: &str = "queue_runtime_messages_abandoned_total";
/// Counter: deliveries whose lock was lost before settlement.
pub const LOCK_LOST: &str = "queue_runtime_lock_lost_total";
/// Counter: authentication or authorization failures of provider calls (`operation`,
/// `kind`: `authentication` / `authorization`).
pub const AUTH_FAILURES: &str = "queue_runtime_auth_failures_total";
/// Counter: failed provider calls (`operation`, `kind`: [`QueueError::kind_label`]).
pub const PROVIDER_ERRORS: &str = "queue_runtime_provider_errors_total";
/// Counter: times the circuit breaker opened.
pub const CIRCUIT_OPENED: &str = "queue_runtime_circuit_opened_total";
/// Histogram: handler run time in seconds (`outcome`: `complete`, `retry`, `dead_letter`,
/// `error`, `panic`, `cancelled`).
pub const HANDLER_DURATION: &str = "queue_runtime_handler_duration_seconds";
/// Histogram: seconds from enqueue to settlement of completed messages.
pub const END_TO_END_LATENCY: &str = "queue_runtime_end_to_end_latency_seconds";
/// Gauge: handlers running now.
pub const IN_FLIGHT: &str = "queue_runtime_in_flight_messages";
/// Gauge: sessions (or message groups) being processed now.
pub const ACTIVE_SESSIONS: &str = "queue_runtime_active_sessions";

/// Handles registered once per processor run.
#[derive(Clone)]
pub(crate) struct Metrics {
    labels: Vec<Label>,
    /// Whether this processor records the provider-call metrics itself (no
    /// `Instrumented` layer below it).
    provider_calls: bool,
    pub(crate) received: Counter,
    pub(crate) completed: Counter,
    pub(crate) lock_lost: Counter,
    pub(crate) circuit_opened: Counter,
    pub(crate) end_to_end: Histogram,
    pub(crate) in_flight: Gauge,
    pub(crate) active_sessions: Gauge,
    /// Handler duration per fixed outcome, registered once (recorded on every message).
    durations: Vec<(&'static str, Histogram)>,
}

/// The `outcome` label values of [`HANDLER_DURATION`].
const OUTCOMES: [&str; 6] = [
    "complete",
    "retry",
    "dead_letter",
    "error",
    "panic",
    "cancelled",
];

impl Metrics {
    /// Handles for `queue` on `provider`. With `provider_instrumented` (an
    /// `Instrumented` layer in the provider's stack, see `QueueProvider::instrumented`)
    /// the provider-call metrics it records ([`RECEIVED`], [`COMPLETED`],
    /// [`PROVIDER_ERRORS`], [`AUTH_FAILURES`]) are left to it, so none is counted twice.
    pub(crate) fn new(
        queue: &QueueName,
        provider: &'static str,
        provider_instrumented: bool,
    ) -> Self {
        let labels = vec![
            Label::new("queue", queue.as_str().to_owned()),
            Label::from_static_parts("provider", provider),
        ];
        let (received, completed) = if provider_instrumented {
            (Counter::noop(), Counter::noop())
        } else {
            (
                metrics::counter!(RECEIVED, labels.clone()),
                metrics::counter!(COMPLETED, labels.clone()),
            )
        };
        Self {
            provider_calls: !provider_instrumented,
            received,
            completed,
            lock_lost: metrics::counter!(LOCK_LOST, labels.clone()),
            circuit_opened: metrics::counter!(CIRCUIT_OPENED, labels.clone()),
            end_to_end: metrics::histogram!(END_TO_END_LATENCY, labels.clone()),
            in_flight: metrics::gauge!(IN_FLIGHT, labels.clone()),
            active_sessions: metrics::gauge!(ACTIVE_SESSIONS, labels.clone()),
            durations: OUTCOMES
                .iter()
                .map(|outcome| {
                    let mut l = labels.clone();
                    l.push(Label::from_static_parts("outcome", outcome));
                    (*outcome, metrics::histogram!(HANDLER_DURATION, l))
                })
                .collect(),
            labels,
        }
    }

    fn with(&self, key: &'static str, value: &'static str) -> Vec<Label> {
        let mut labels = self.labels.clone();
        labels.push(Label::from_static_parts(key, value));
        labels
    }

    pub(crate) fn retried(&self, reason: &'static str) {
        metrics::counter!(RETRIED, self.with("reason", reason)).increment(1);
    }

    pub(crate) fn dead_lettered(&self, reason: &'static str) {
        metrics::counter!(DEAD_LETTERED, self.with("reason", reason)).increment(1);
    }

    pub(crate) fn failed(&self, kind: &'static str) {
        metrics::counter!(FAILED, self.with("kind", kind)).increment(1);
    }

    pub(crate) fn rejected(&self, reason: &'static str) {
        metrics::counter!(REJECTED, self.with("reason", reason)).increment(1);
    }

    pub(crate) fn abandoned(&self, reason: &'static str) {
        metrics::counter!(ABANDONED, self.with("reason", reason)).increment(1);
    }

    pub(crate) fn handler_duration(&self, outcome: &'static str, took: Duration) {
        match self.durations.iter().find(|(o, _)| *o == outcome) {
            Some((_, histogram)) => histogram.record(took),
            None => {
                metrics::histogram!(HANDLER_DURATION, self.with("outcome", outcome)).record(took)
            }
        }
    }

    pub(crate) fn provider_error(&self, operation: &'static str, err: &QueueError) {
        if !self.provider_calls {
            return;
        }
        let mut labels = self.with("operation", operation);
        labels.push(Label::from_static_parts("kind", err.kind_label()));
        metrics::counter!(PROVIDER_ERRORS, labels).increment(1);
        if let QueueError::Auth { kind, .. } = err {
            let mut labels = self.with("operation", operation);
            let kind = match kind {
                queue_core::AuthFailure::Authorization => "authorization",
                _ => "authentication",
            };
            labels.push(Label::from_static_parts("kind", kind));
            metrics::counter!(AUTH_FAILURES, labels).increment(1);
        }
    }
}
