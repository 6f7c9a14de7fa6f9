//! Mapping between tokio's clock and wall-clock time.
//!
//! All lock, TTL, schedule and duplicate-window arithmetic runs on
//! [`tokio::time::Instant`], so tests can pause and advance time. Wall-clock values that
//! the API exposes (`enqueued_at`, `locked_until`) and accepts (`scheduled_enqueue_time`)
//! are mapped through an anchor: the [`SystemTime`] and the tokio [`Instant`] read
//! together when the provider was built.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    anchor_system: SystemTime,
    anchor_instant: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            anchor_system: SystemTime::now(),
            anchor_instant: Instant::now(),
        }
    }

    /// Now on tokio's clock.
    pub(crate) fn now(&self) -> Instant {
        Instant::now()
    }

    /// The wall-clock time corresponding to `at`.
    pub(crate) fn to_system(self, at: Instant) -> SystemTime {
        if at >= self.anchor_instant {
            self.anchor_system + (at - self.anchor_instant)
        } else {
            self.anchor_system
                .checked_sub(self.anchor_instant - at)
                .unwrap_or(self.anchor_system)
        }
    }

    /// The tokio instant corresponding to the wall-clock time `at` (clamped to the anchor
    /// for times long before it, which only ever mean "already due").
    pub(crate) fn to_instant(self, at: SystemTime) -> Instant {
        match at.duration_since(self.anchor_system) {
            Ok(ahead) => later(self.anchor_instant, ahead),
            Err(behind) => self
                .anchor_instant
                .checked_sub(behind.duration())
                .unwrap_or(self.anchor_instant),
        }
    }

    /// Far enough in the future to mean "never" without overflowing.
    pub(crate) fn far_future(now: Instant) -> Instant {
        now + Duration::from_secs(100 * 365 * 24 * 3600)
    }
}

/// `at + d`, saturating at [`Clock::far_future`] (callers may pass `Duration::MAX`).
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    let cap = Clock::far_future(at);
    at.checked_add(d).map_or(cap, |t| t.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn maps_both_ways_and_follows_the_paused_clock() {
        let clock = Clock::new();
        let t0 = clock.now();
        let s0 = clock.to_system(t0);
        tokio::time::advance(Duration::from_secs(90)).await;
        let t1 = clock.now();
        assert_eq!(t1 - t0, Duration::from_secs(90));
        assert_eq!(
            clock.to_system(t1).duration_since(s0).unwrap(),
            Duration::from_secs(90)
        );
        let later = s0 + Duration::from_secs(30);
        assert_eq!(clock.to_instant(later), t0 + Duration::from_secs(30));
        assert!(clock.to_instant(SystemTime::UNIX_EPOCH) <= t0);
    }
}
