//! Time, injectable: the gateway reads its clock, tests move theirs
//! ([`ManualClock`]) instead of sleeping for time to pass.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where the gateway's rules get the time from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Wall-clock time, milliseconds since the Unix epoch (what records
    /// keep: created, updated, expires).
    fn now_ms(&self) -> i64;
    /// Monotonic time (liveness, holds).
    fn now(&self) -> Instant;
}

/// The system's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::control::now_ms()
    }
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    start_ms: i64,
    elapsed: Mutex<Duration>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            start_ms: crate::control::now_ms(),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }
}

impl ManualClock {
    /// Moves both clocks on by `by`.
    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().expect("clock") += by;
    }

    fn elapsed(&self) -> Duration {
        *self.elapsed.lock().expect("clock")
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.start_ms + self.elapsed().as_millis() as i64
    }
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::default();
        let (ms, at) = (c.now_ms(), c.now());
        assert_eq!((c.now_ms(), c.now()), (ms, at));
        c.advance(Duration::from_secs(6));
        assert_eq!(c.now_ms(), ms + 6000);
        assert_eq!(c.now() - at, Duration::from_secs(6));
    }
}
