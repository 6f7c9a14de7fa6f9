//! A circuit breaker around provider calls: [`CircuitBreaker`].
//!
//! The [`Processor`](crate::Processor) puts one in front of its receive loop (settings:
//! [`ProcessorSettings::circuit_breaker`](crate::ProcessorSettings)), so an outage makes it
//! wait instead of hammering the broker. Anything else that calls a provider in a loop can
//! use one the same way:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use queue_runtime::{CircuitBreaker, CircuitBreakerSettings, CircuitState, QueueError};
//!
//! let settings = CircuitBreakerSettings::default()
//!     .with_failure_threshold(2)
//!     .with_open_duration(Duration::from_secs(10));
//! let breaker = CircuitBreaker::new(settings);
//! let outage = QueueError::Closed { provider: "memory" };
//! for _ in 0..2 {
//!     assert!(breaker.allow().is_ok());
//!     breaker.record_failure(&outage); // a call failed like an outage
//! }
//! assert_eq!(breaker.state(), CircuitState::Open);
//! let wait = breaker.allow().unwrap_err(); // how long to wait before trying again
//! tokio::time::sleep(wait).await;
//! assert!(breaker.allow().is_ok()); // half-open: a trial call may go
//! breaker.record_success();
//! # }
//! ```

use std::{sync::Mutex, time::Duration};

use queue_core::{QueueError, RetryClass};
use tokio::time::Instant;

use crate::config::CircuitBreakerSettings;

/// The state of a [`CircuitBreaker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CircuitState {
    /// Calls flow; consecutive outage-like failures are counted.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// Trial calls flow; enough successes close the circuit, one failure opens it again.
    HalfOpen,
}

impl CircuitState {
    /// A stable label (`closed`, `open`, `half_open`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { successes: u32 },
}

/// Stops an outage from turning into a retry storm.
///
/// After `failure_threshold` consecutive failures that look like an outage (transient
/// errors, authentication failures, a closed provider) the circuit opens for
/// `open_duration`: [`CircuitBreaker::allow`] then answers how long to wait. After that the
/// circuit is half-open: calls flow again, `half_open_successes` successes close it and a
/// failure re-opens it. Failures that concern one message (a lost lock, an unknown receipt)
/// or a contested session do not count. Time is tokio time, so paused-clock tests are exact.
///
/// ```
/// use queue_runtime::{CircuitBreaker, CircuitBreakerSettings, CircuitState, QueueError};
///
/// let breaker = CircuitBreaker::new(CircuitBreakerSettings::default().with_failure_threshold(1));
/// let outage = QueueError::Closed { provider: "memory" };
/// breaker.record_failure(&outage);
/// assert_eq!(breaker.state(), CircuitState::Open);
/// ```
#[derive(Debug)]
pub struct CircuitBreaker {
    settings: CircuitBreakerSettings,
    state: Mutex<State>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(settings: CircuitBreakerSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state (an open circuit whose period ended reads as half-open).
    pub fn state(&self) -> CircuitState {
        match &*self.lock() {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { until } if Instant::now() >= *until => CircuitState::HalfOpen,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// `Ok` if a call may be made now, or how long to wait before asking again.
    pub fn allow(&self) -> Result<(), Duration> {
        let mut state = self.lock();
        match &*state {
            State::Closed { .. } | State::HalfOpen { .. } => Ok(()),
            State::Open { until } => {
                let now = Instant::now();
                if now >= *until {
                    *state = State::HalfOpen { successes: 0 };
                    tracing::info!("circuit breaker half-open: trying the provider again");
                    Ok(())
                } else {
                    Err(*until - now)
                }
            }
        }
    }

    /// Records a successful call.
    pub fn record_success(&self) {
        let mut state = self.lock();
        match &mut *state {
            State::Closed { failures } => *failures = 0,
            State::HalfOpen { successes } => {
                *successes += 1;
                if *successes >= self.settings.half_open_successes {
                    *state = State::Closed { failures: 0 };
                    tracing::info!("circuit breaker closed: provider calls succeed again");
                }
            }
            State::Open { .. } => {}
        }
    }

    /// Records a failed call. Returns `true` if this failure opened the circuit.
    pub fn record_failure(&self, error: &QueueError) -> bool {
        if !Self::is_outage(error) {
            return false;
        }
        let mut state = self.lock();
        let open = match &mut *state {
            State::Closed { failures } => {
                *failures += 1;
                *failures >= self.settings.failure_threshold
            }
            State::HalfOpen { .. } => true,
            State::Open { .. } => false,
        };
        if open {
            *state = State::Open {
                until: Instant::now() + self.settings.open_duration,
            };
            tracing::warn!(
                error_kind = error.kind_label(),
                open_for = ?self.settings.open_duration,
                "circuit breaker opened: provider calls are paused"
            );
        }
        open
    }

    /// Whether `error` counts towards opening the circuit.
    pub fn is_outage(error: &QueueError) -> bool {
        match error {
            QueueError::SessionLocked { .. }
            | QueueError::LockLost { .. }
            | QueueError::SessionLockLost { .. } => false,
            QueueError::Auth { .. } | QueueError::Closed { .. } => true,
            // Exhausted: transient failures the `Retrying` layer already retried.
            other => matches!(
                other.retry_class(),
                RetryClass::Transient | RetryClass::Exhausted
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use queue_core::QueueName;

    fn outage() -> QueueError {
        QueueError::Timeout {
            provider: "memory",
            operation: "receive",
            after: Duration::from_secs(1),
        }
    }

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(
            CircuitBreakerSettings::default()
                .with_failure_threshold(3)
                .with_open_duration(Duration::from_secs(10))
                .with_half_open_successes(2),
        )
    }

    #[test]
    fn retries_exhausted_by_the_layer_count_as_an_outage() {
        let exhausted = QueueError::RetriesExhausted {
            provider: "memory",
            operation: "receive",
            attempts: 3,
            last: Box::new(outage()),
        };
        assert!(CircuitBreaker::is_outage(&exhausted));
        assert!(!CircuitBreaker::is_outage(&QueueError::unsupported(
            "memory", "x"
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_recovers_through_half_open() {
        let b = breaker();
        assert!(!b.record_failure(&outage()));
        assert!(!b.record_failure(&outage()));
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(b.record_failure(&outage()));
        assert_eq!(b.state(), CircuitState::Open);
        let wait = b.allow().unwrap_err();
        assert_eq!(wait, Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(b.allow().unwrap_err(), Duration::from_secs(6));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(b.allow().is_ok());
        assert_eq!(b.state(), CircuitState::HalfOpen);
        b.record_success();
        assert_eq!(b.state(), CircuitState::HalfOpen);
        b.record_success();
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_failure_reopens_and_success_resets_count() {
        let b = breaker();
        b.record_failure(&outage());
        b.record_failure(&outage());
        b.record_success();
        b.record_failure(&outage());
        b.record_failure(&outage());
        assert_eq!(
            b.state(),
            CircuitState::Closed,
            "success must reset the count"
        );
        b.record_failure(&outage());
        assert_eq!(b.state(), CircuitState::Open);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.allow().is_ok());
        assert!(b.record_failure(&outage()));
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn per_message_failures_do_not_count() {
        let b = CircuitBreaker::new(CircuitBreakerSettings::default().with_failure_threshold(1));
        let lost = QueueError::LockLost {
            provider: "memory",
            queue: QueueName::new("q").unwrap().to_string(),
            operation: "complete",
        };
        assert!(!b.record_failure(&lost));
        assert!(!b.record_failure(&QueueError::config("x", "y")));
        assert_eq!(b.state(), CircuitState::Closed);
        let auth = QueueError::Auth {
            provider: "memory",
            operation: "receive",
            kind: queue_core::AuthFailure::Authentication,
            detail: "expired".into(),
        };
        assert!(b.record_failure(&auth));
    }
}
