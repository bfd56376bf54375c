//! The retry schedule: how long to wait before retry n, or that retries are
//! exhausted; pure (the jitter is an argument).

use std::time::Duration;

use crate::domain::{RetryAlgorithm, RetryPolicy};

#[derive(Debug, Clone)]
pub struct RetrySchedule {
    pub algorithm: RetryAlgorithm,
    pub max_retries: u32,
    /// exponential_backoff: the first wait; it doubles per retry.
    pub base: Duration,
    /// The longest wait, whatever the algorithm or Retry-After says.
    pub max: Duration,
    /// fixed_time: the wait between attempts (the subscription's, else the host's).
    pub fixed: Duration,
}

impl RetrySchedule {
    pub fn new(policy: &RetryPolicy, settings: &crate::config::DeliverySettings) -> Self {
        Self {
            algorithm: policy.retry_algorithm,
            max_retries: policy.max_retries.get(),
            base: settings.retry_base_delay,
            max: settings.retry_max_delay,
            fixed: policy
                .fixed_delay_seconds
                .map_or(settings.retry_fixed_delay, |delay| delay.duration()),
        }
    }

    /// The wait before retry number `retry` (1 for the first retry), or `None`
    /// when it would exceed `max_retries`. `jitter` in [0, 1) spreads retries of
    /// many subscriptions apart; `retry_after` (the receiver's wish) is honoured
    /// as a lower bound, within `max`.
    pub fn delay(
        &self,
        retry: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        if retry == 0 || retry > self.max_retries {
            return None;
        }
        let jitter = jitter.clamp(0.0, 1.0);
        let computed = match self.algorithm {
            RetryAlgorithm::ExponentialBackoff => {
                let full = self
                    .base
                    .saturating_mul(1u32.checked_shl(retry - 1).unwrap_or(u32::MAX))
                    .min(self.max);
                // "Equal jitter": at least half the backoff, so it still grows.
                full / 2 + full.mul_f64(jitter / 2.0)
            }
            RetryAlgorithm::FixedTime => self.fixed.mul_f64(0.9 + 0.2 * jitter).min(self.max),
        };
        let wanted = retry_after.map_or(computed, |after| computed.max(after));
        Some(wanted.min(self.max))
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - now)
        .to_std()
        .ok()
        .or(Some(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(algorithm: RetryAlgorithm, max_retries: u32) -> RetrySchedule {
        RetrySchedule {
            algorithm,
            max_retries,
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            fixed: Duration::from_secs(5),
        }
    }

    #[test]
    fn exponential_backoff_doubles_within_its_jitter_band_and_caps() {
        let s = schedule(RetryAlgorithm::ExponentialBackoff, 10);
        assert_eq!(s.delay(1, None, 0.0), Some(Duration::from_millis(500)));
        assert_eq!(s.delay(1, None, 0.999_999).unwrap().as_millis(), 999);
        assert_eq!(s.delay(4, None, 0.0), Some(Duration::from_secs(4)));
        assert_eq!(s.delay(10, None, 0.0), Some(Duration::from_secs(30)));
        assert!(s.delay(10, None, 0.99).unwrap() <= Duration::from_secs(60));
    }

    #[test]
    fn fixed_time_waits_about_the_same_each_time() {
        let s = schedule(RetryAlgorithm::FixedTime, 3);
        assert_eq!(s.delay(1, None, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(s.delay(3, None, 0.0), Some(Duration::from_millis(4500)));
    }

    #[test]
    fn retries_stop_at_max_retries_and_zero_means_none() {
        assert_eq!(
            schedule(RetryAlgorithm::FixedTime, 3).delay(4, None, 0.0),
            None
        );
        assert_eq!(
            schedule(RetryAlgorithm::FixedTime, 0).delay(1, None, 0.0),
            None
        );
    }

    #[test]
    fn retry_after_is_a_lower_bound_within_the_cap() {
        let s = schedule(RetryAlgorithm::ExponentialBackoff, 3);
        assert_eq!(
            s.delay(1, Some(Duration::from_secs(7)), 0.0),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            s.delay(1, Some(Duration::from_secs(600)), 0.0),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
