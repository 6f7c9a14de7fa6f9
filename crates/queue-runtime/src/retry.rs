//! Retry policy: exponential backoff with jitter and a cap on attempts ([`RetryPolicy`]).
//!
//! The [`Processor`](crate::Processor) reads it from
//! [`ProcessorSettings::retry`](crate::ProcessorSettings) (`[processor.retry]` in a
//! configuration file) and applies it to handler failures; [`RetryPolicy`] answers the
//! same questions for code of your own:
//!
//! ```
//! use std::time::Duration;
//! use queue_runtime::{ProcessorSettings, RetryPolicy, RetrySettings};
//!
//! let retry = RetrySettings::default()
//!     .with_max_attempts(4)
//!     .with_initial_delay(Duration::from_millis(200))
//!     .with_max_delay(Duration::from_secs(2));
//! let settings = ProcessorSettings::default().with_retry(retry.clone());
//! settings.validate()?;
//!
//! let policy = RetryPolicy::new(retry);
//! let first = policy.delay(1, "message-id");
//! assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(300));
//! assert!(policy.delay(10, "message-id") <= Duration::from_secs(3)); // capped, plus jitter
//! assert!(!policy.exhausted(3) && policy.exhausted(4));
//! # Ok::<(), queue_runtime::QueueError>(())
//! ```

use std::time::Duration;

use queue_core::backoff::{Backoff, JitterMode, keyed_unit};

use crate::config::RetrySettings;

/// Computes redelivery delays for failed messages.
///
/// The delay for delivery `n` (starting at 1) is `initial_delay * multiplier^(n-1)`, capped at
/// `max_delay`, then spread by `± jitter` (a fraction) so that many messages failing together
/// do not come back together. The jitter is derived from the message id and the attempt, so
/// it is deterministic for one message and spread across messages, and needs no random
/// number generator.
///
/// ```
/// use std::time::Duration;
/// use queue_runtime::{RetryPolicy, RetrySettings};
///
/// let policy = RetryPolicy::new(RetrySettings::default().with_jitter(0.0));
/// assert_eq!(policy.delay(1, "id"), Duration::from_secs(1));
/// assert_eq!(policy.delay(3, "id"), Duration::from_secs(4));
/// assert!(policy.exhausted(5));
/// ```
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    settings: RetrySettings,
}

impl RetryPolicy {
    /// A policy with these settings.
    pub fn new(settings: RetrySettings) -> Self {
        Self { settings }
    }

    /// The settings.
    pub fn settings(&self) -> &RetrySettings {
        &self.settings
    }

    /// Whether a message whose handler failed on its `attempt`-th run may not run again.
    pub fn exhausted(&self, attempt: u32) -> bool {
        attempt >= self.settings.max_attempts
    }

    /// The delay before redelivering a message that failed on its `attempt`-th delivery.
    /// `key` (usually the message id) seeds the jitter.
    pub fn delay(&self, attempt: u32, key: &str) -> Duration {
        let s = &self.settings;
        Backoff::new(s.initial_delay, s.max_delay)
            .with_multiplier(s.multiplier)
            .with_jitter(JitterMode::Spread(s.jitter))
            .delay(attempt, keyed_unit(key, attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy::new(
            RetrySettings::default()
                .with_initial_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(2))
                .with_multiplier(2.0)
                .with_jitter(jitter)
                .with_max_attempts(4),
        )
    }

    #[test]
    fn grows_exponentially_and_caps() {
        let p = policy(0.0);
        let got: Vec<u128> = (1..=7).map(|n| p.delay(n, "m").as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(p.delay(u32::MAX, "m"), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_in_band_and_spreads() {
        let p = policy(0.5);
        let mut distinct = std::collections::BTreeSet::new();
        for i in 0..200 {
            let d = p.delay(3, &format!("msg-{i}")).as_secs_f64();
            assert!((0.2..=0.6).contains(&d), "{d}");
            distinct.insert((d * 1e6) as u64);
        }
        assert!(
            distinct.len() > 150,
            "jitter does not spread: {}",
            distinct.len()
        );
        // Deterministic per message and attempt.
        assert_eq!(p.delay(2, "x"), p.delay(2, "x"));
        // Never above the cap even with jitter.
        assert!(p.delay(10, "y") <= Duration::from_secs(2));
    }

    #[test]
    fn exhaustion_counts_deliveries() {
        let p = policy(0.0);
        assert!(!p.exhausted(1));
        assert!(!p.exhausted(3));
        assert!(p.exhausted(4));
        assert!(p.exhausted(9));
    }
}
