//! Time source for everything that stamps or checks a time (key creation,
//! expiry, audit rows). Production uses the system clock; tests pin or move it
//! so that no test depends on the wall clock.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// The current time truncated to whole seconds, as OpenPGP and the store
    /// keep it.
    fn now_secs(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix_secs(self.now()))
    }
}

/// Seconds since the Unix epoch (0 for times before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that stands still until moved; for tests.
#[derive(Debug)]
pub struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    /// A clock showing `t`.
    pub fn new(t: SystemTime) -> Self {
        Self(Mutex::new(t))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let c = ManualClock::new(start);
        assert_eq!(c.now(), start);
        c.advance(Duration::from_secs(86_400));
        assert_eq!(unix_secs(c.now()), 1_700_086_400);
    }

    #[test]
    fn now_secs_drops_sub_second_part() {
        let c = ManualClock::new(UNIX_EPOCH + Duration::from_millis(1_500));
        assert_eq!(c.now_secs(), UNIX_EPOCH + Duration::from_secs(1));
    }
}
