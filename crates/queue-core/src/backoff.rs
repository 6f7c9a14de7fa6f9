//! One exponential backoff with jitter, shared by every in-process retry loop.
//!
//! [`Backoff`] computes the delay before retry `n`: `initial * multiplier^(n-1)`, capped at
//! `max`, then jittered so that many clients failing together do not come back together.
//! The jitter comes from a value in `[0, 1)` that the caller supplies: from [`Jitter`] (a
//! small seeded generator, so tests replay exactly), or derived from a key (a message id),
//! so one message always gets the same delays. No RNG crate is needed.
//!
//! ```
//! use std::time::Duration;
//! use queue_core::backoff::{Backoff, Jitter};
//!
//! let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
//! let mut jitter = Jitter::seeded(7);
//! let first = backoff.delay(1, jitter.next_unit());
//! assert!(first <= Duration::from_millis(100) && first >= Duration::from_millis(50));
//! assert_eq!(backoff.without_jitter().delay(4, 0.9), Duration::from_millis(800));
//! ```

use std::{
    hash::BuildHasher,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// How the jitter moves a delay.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum JitterMode {
    /// Take off up to this fraction (`0.5`: between half and all of the capped delay). The
    /// delay never exceeds the capped exponential, so `max` is a true bound.
    Down(f64),
    /// Spread by `±` this fraction around the exponential, then cap at `max`.
    Spread(f64),
}

/// Exponential backoff with jitter; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: JitterMode,
}

impl Backoff {
    /// Starts at `initial`, doubles per retry, caps at `max`, and takes off up to half
    /// ([`JitterMode::Down`]`(0.5)`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            multiplier: 2.0,
            jitter: JitterMode::Down(0.5),
        }
    }

    /// Sets the growth factor per retry (at least 1).
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Sets the jitter; fractions are clamped to `[0, 1]`.
    pub fn with_jitter(mut self, jitter: JitterMode) -> Self {
        self.jitter = match jitter {
            JitterMode::Down(f) => JitterMode::Down(clamp_unit(f)),
            JitterMode::Spread(f) => JitterMode::Spread(clamp_unit(f)),
        };
        self
    }

    /// The same backoff without jitter.
    pub fn without_jitter(self) -> Self {
        self.with_jitter(JitterMode::Down(0.0))
    }

    /// The first delay.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The largest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The delay before retry `retry` (1 for the first retry), with `unit` in `[0, 1)`
    /// choosing where in the jitter band it falls.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let exp = retry.saturating_sub(1).min(63) as i32;
        let max = self.max.as_secs_f64();
        let base = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        let base = if base.is_finite() { base.min(max) } else { max };
        let unit = clamp_unit(unit);
        let factor = match self.jitter {
            JitterMode::Down(f) => 1.0 - f * unit,
            JitterMode::Spread(f) => 1.0 - f + 2.0 * f * unit,
        };
        Duration::from_secs_f64((base * factor).clamp(0.0, max))
    }
}

fn clamp_unit(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// A source of jitter values in `[0, 1)`: splitmix64 over a counter, safe to share between
/// tasks. [`Jitter::seeded`] replays the same sequence; [`Jitter::random`] seeds from the
/// process's hash randomness.
#[derive(Debug)]
pub struct Jitter {
    seed: u64,
    counter: AtomicU64,
}

impl Jitter {
    /// A generator that yields the same sequence for the same seed.
    pub fn seeded(seed: u64) -> Self {
        Self {
            seed,
            counter: AtomicU64::new(0),
        }
    }

    /// A generator seeded differently in every process (and every call).
    pub fn random() -> Self {
        let state = std::collections::hash_map::RandomState::new();
        Self::seeded(state.hash_one(std::time::SystemTime::now()))
    }

    /// The next value in `[0, 1)`.
    pub fn next_unit(&self) -> f64 {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        to_unit(mix(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }

    /// The next raw 64-bit value.
    pub fn next_u64(&self) -> u64 {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        mix(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

/// A value in `[0, 1)` derived from `key` and `retry`: the same inputs give the same value
/// in every process, different keys spread evenly.
pub fn keyed_unit(key: &str, retry: u32) -> f64 {
    // FNV-1a: stable across processes and Rust versions (unlike `DefaultHasher`).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes().iter().chain(&retry.to_le_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    to_unit(mix(h))
}

/// The splitmix64 finaliser: spreads every input bit over the output.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn to_unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn grows_caps_and_never_exceeds_max() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2)).without_jitter();
        let got: Vec<u128> = (1..=7).map(|n| ms(b.delay(n, 0.5))).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_secs(2));
        let spread = b.with_jitter(JitterMode::Spread(0.5));
        for n in 1..40 {
            assert!(spread.delay(n, 0.999) <= Duration::from_secs(2));
        }
    }

    #[test]
    fn jitter_bands() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        assert_eq!(ms(b.delay(1, 0.0)), 1000);
        assert_eq!(ms(b.delay(1, 0.5)), 750);
        let s = b.with_jitter(JitterMode::Spread(0.2));
        assert_eq!(ms(s.delay(1, 0.0)), 800);
        assert_eq!(ms(s.delay(1, 0.5)), 1000);
        // Out-of-range inputs are clamped, never panic.
        let odd = b
            .with_jitter(JitterMode::Down(f64::NAN))
            .with_multiplier(f64::INFINITY);
        assert_eq!(ms(odd.delay(3, 7.0)), 1000);
    }

    #[test]
    fn seeded_jitter_replays_and_spreads() {
        let a: Vec<f64> = {
            let j = Jitter::seeded(42);
            (0..100).map(|_| j.next_unit()).collect()
        };
        let j = Jitter::seeded(42);
        let b: Vec<f64> = (0..100).map(|_| j.next_unit()).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        assert!((0.35..0.65).contains(&mean), "{mean}");
        assert_ne!(Jitter::seeded(1).next_u64(), Jitter::seeded(2).next_u64());
    }

    #[test]
    fn keyed_units_are_stable_and_spread() {
        assert_eq!(keyed_unit("m-1", 2), keyed_unit("m-1", 2));
        assert_ne!(keyed_unit("m-1", 2), keyed_unit("m-1", 3));
        let distinct: std::collections::BTreeSet<u64> = (0..200)
            .map(|i| (keyed_unit(&format!("msg-{i}"), 1) * 1e9) as u64)
            .collect();
        assert!(distinct.len() > 190);
    }
}
