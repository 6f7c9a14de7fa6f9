//! Time source: monotonic `tokio::time::Instant` for deadlines (so tests can pause time),
//! mapped to wall-clock time for the timestamps clients see.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Maps tokio instants to wall-clock times, anchored when the clock is made.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall0: SystemTime,
    mono0: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// Anchors a clock at the current instant.
    pub fn new() -> Self {
        Self {
            wall0: SystemTime::now(),
            mono0: Instant::now(),
        }
    }
    /// The current instant.
    pub fn now(&self) -> Instant {
        Instant::now()
    }
    /// Wall-clock time of an instant.
    pub fn wall(&self, at: Instant) -> SystemTime {
        match at.checked_duration_since(self.mono0) {
            Some(d) => self.wall0 + d,
            None => self.wall0 - self.mono0.duration_since(at),
        }
    }
    /// The instant of a wall-clock time (clamped to the anchor's past at most a day).
    pub fn instant_of(&self, wall: SystemTime) -> Instant {
        match wall.duration_since(self.wall0) {
            Ok(d) => self.mono0 + d,
            Err(e) => {
                let back = e.duration().min(Duration::from_secs(86_400));
                self.mono0.checked_sub(back).unwrap_or(self.mono0)
            }
        }
    }
    /// Milliseconds since the Unix epoch of an instant.
    pub fn unix_millis(&self, at: Instant) -> i64 {
        self.wall(at)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}
