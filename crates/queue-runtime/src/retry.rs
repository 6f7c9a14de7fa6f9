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

use std::{
    hash::{Hash, Hasher},
    time::Duration,
};

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
        let exp = attempt.saturating_sub(1).min(63) as i32;
        let base = s.initial_delay.as_secs_f64() * s.multiplier.powi(exp);
        let max = s.max_delay.as_secs_f64();
        let base = if base.is_finite() { base.min(max) } else { max };
        let jitter = s.jitter.clamp(0.0, 1.0);
        let spread = if jitter > 0.0 {
            // Uniform in [1 - jitter, 1 + jitter].
            1.0 - jitter + 2.0 * jitter * unit_hash(key, attempt)
        } else {
            1.0
        };
        Duration::from_secs_f64((base * spread).clamp(0.0, max))
    }
}

/// A value in `[0, 1)` derived from `key` and `attempt`.
fn unit_hash(key: &str, attempt: u32) -> f64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    attempt.hash(&mut h);
    // splitmix64 finaliser for a well-spread value.
    let mut z = h.finish().wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
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
