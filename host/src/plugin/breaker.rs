//! The circuit breaker of one plugin instance: after [`FAILURES_TO_OPEN`]
//! failed entries in a row the plugin is suspended — calls fail at once,
//! without instantiating or running anything — for a back-off that doubles
//! with each suspension in a row (from [`FIRST_BACK_OFF`] up to
//! [`LONGEST_BACK_OFF`]). When the back-off ends, one entry is let through:
//! a success closes the breaker, a failure suspends it again for longer.
//!
//! Pure: the caller passes the time.

use std::time::Duration;

use tokio::time::Instant;

/// Failed entries in a row that suspend a plugin.
pub const FAILURES_TO_OPEN: u32 = 3;
/// The first suspension's length.
pub const FIRST_BACK_OFF: Duration = Duration::from_secs(1);
/// The longest suspension.
pub const LONGEST_BACK_OFF: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Default)]
pub struct Breaker {
    /// Failed entries since the last success.
    failures: u32,
    /// Suspensions since the last success.
    suspensions: u32,
    open_until: Option<Instant>,
    last_failure: String,
}

/// The breaker is open: do not run the plugin before `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub failures: u32,
    pub until: Instant,
    pub last_failure: String,
}

impl Breaker {
    /// `Err` while the plugin is suspended.
    pub fn check(&self, now: Instant) -> Result<(), Open> {
        match self.open_until {
            Some(until) if now < until => Err(Open {
                failures: self.failures,
                until,
                last_failure: self.last_failure.clone(),
            }),
            _ => Ok(()),
        }
    }

    pub fn succeeded(&mut self) {
        *self = Breaker::default();
    }

    /// Records a failed entry; returns the back-off when this failure
    /// suspends the plugin.
    pub fn failed(&mut self, now: Instant, reason: &str) -> Option<Duration> {
        self.failures += 1;
        self.last_failure = reason.to_string();
        if self.failures < FAILURES_TO_OPEN {
            return None;
        }
        let doublings = self.suspensions.min(16);
        let back_off = (FIRST_BACK_OFF * 2u32.pow(doublings)).min(LONGEST_BACK_OFF);
        self.suspensions += 1;
        self.open_until = Some(now + back_off);
        Some(back_off)
    }

    /// Whether the plugin is suspended or was when its last entry failed:
    /// it keeps failing, as far as anyone can tell.
    pub fn tripped(&self) -> bool {
        self.open_until.is_some()
    }

    pub fn last_failure(&self) -> &str {
        &self.last_failure
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_failures_do_not_suspend_and_a_success_forgets_them() {
        let now = Instant::now();
        let mut breaker = Breaker::default();
        assert_eq!(breaker.failed(now, "trap"), None);
        assert_eq!(breaker.failed(now, "trap"), None);
        breaker.succeeded();
        assert_eq!(breaker.failed(now, "trap"), None);
        assert!(breaker.check(now).is_ok());
        assert!(!breaker.tripped());
    }

    #[test]
    fn failures_in_a_row_suspend_for_a_back_off_that_doubles() {
        let start = Instant::now();
        let mut breaker = Breaker::default();
        for _ in 1..FAILURES_TO_OPEN {
            assert_eq!(breaker.failed(start, "deadline"), None);
        }
        assert_eq!(breaker.failed(start, "deadline"), Some(FIRST_BACK_OFF));
        let open = breaker.check(start).unwrap_err();
        assert_eq!(open.failures, FAILURES_TO_OPEN);
        assert_eq!(open.last_failure, "deadline");
        assert!(breaker.tripped());

        // When the back-off ends one entry is let through; it fails again.
        let later = start + FIRST_BACK_OFF;
        assert!(breaker.check(later).is_ok());
        assert_eq!(breaker.failed(later, "again"), Some(FIRST_BACK_OFF * 2));
        assert!(breaker.check(later + FIRST_BACK_OFF).is_err());
        assert!(breaker.check(later + FIRST_BACK_OFF * 2).is_ok());

        // ...and a success closes it.
        breaker.succeeded();
        assert!(!breaker.tripped());
        assert!(breaker.check(later).is_ok());
    }

    #[test]
    fn the_back_off_stops_growing_at_its_longest() {
        let now = Instant::now();
        let mut breaker = Breaker::default();
        let mut last = None;
        for _ in 0..100 {
            last = breaker.failed(now, "x").or(last);
        }
        assert_eq!(last, Some(LONGEST_BACK_OFF));
    }
}
