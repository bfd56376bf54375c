//! A subscription's recent delivery on this host, for the status page's
//! plots: outcome counts and publish → delivery latency in [`BUCKET_MS`]
//! buckets over the last [`WINDOW_MS`].
//!
//! A ring of buckets indexed by the bucket's number (its start divided by its
//! width): a slot holding another number than the one asked for is from an
//! earlier turn of the ring, older than the window, and counts as empty, so
//! nothing has to expire on a timer. Latency keeps a count, a sum and a
//! maximum per bucket (a mean and a worst case), which stay exact when
//! batches are added and cost the same whatever the rate, unlike percentiles.
//!
//! In memory, per host, like `/metrics`: each host plots what it delivered
//! itself, and a restart starts empty. Time comes in as milliseconds since the
//! epoch, so the ring is tested without a clock.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::registry::Counts;

/// The width of a bucket.
pub const BUCKET_MS: i64 = 10_000;
/// Buckets in the window: 15 minutes, the current (partial) bucket included.
pub const BUCKETS: usize = 90;
/// How far back a series reaches.
pub const WINDOW_MS: i64 = BUCKET_MS * BUCKETS as i64;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Its start divided by [`BUCKET_MS`]; 0 (1970) for a slot never used.
    number: i64,
    counts: Counts,
    latencies: u64,
    latency_sum_ms: i64,
    latency_max_ms: i64,
}

/// One subscription's ring of buckets.
#[derive(Debug, Clone)]
pub struct Series {
    ring: Vec<Bucket>,
}

/// One bucket as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Point {
    /// When the bucket starts (it lasts [`BUCKET_MS`]).
    pub start: DateTime<Utc>,
    pub delivered: i64,
    pub filtered: i64,
    pub denied: i64,
    pub dead_lettered: i64,
    /// Delivered messages whose latency was measured (those with a Kafka timestamp).
    pub latency_samples: u64,
    /// Mean publish → delivery latency; null without samples.
    pub latency_mean_ms: Option<f64>,
    /// Worst publish → delivery latency; null without samples.
    pub latency_max_ms: Option<i64>,
}

impl Default for Series {
    fn default() -> Self {
        Self {
            ring: vec![Bucket::default(); BUCKETS],
        }
    }
}

fn number_at(at_ms: i64) -> i64 {
    at_ms.div_euclid(BUCKET_MS)
}

fn slot(number: i64) -> usize {
    number.rem_euclid(BUCKETS as i64) as usize
}

impl Series {
    /// The bucket `at_ms` falls in, emptied first if its slot held an older one.
    fn bucket(&mut self, at_ms: i64) -> &mut Bucket {
        let number = number_at(at_ms);
        let bucket = &mut self.ring[slot(number)];
        if bucket.number != number {
            *bucket = Bucket {
                number,
                ..Bucket::default()
            };
        }
        bucket
    }

    /// Final outcomes of a batch, reached at `now_ms`.
    pub fn add_counts(&mut self, now_ms: i64, counts: Counts) {
        self.bucket(now_ms).counts += counts;
    }

    /// Publish → delivery latencies of messages delivered at `now_ms`.
    pub fn add_latencies(&mut self, now_ms: i64, latencies_ms: &[i64]) {
        if latencies_ms.is_empty() {
            return;
        }
        let bucket = self.bucket(now_ms);
        for &latency in latencies_ms {
            bucket.latencies += 1;
            bucket.latency_sum_ms = bucket.latency_sum_ms.saturating_add(latency);
            bucket.latency_max_ms = bucket.latency_max_ms.max(latency);
        }
    }

    /// Every bucket of the window that ends with the one `now_ms` falls in,
    /// oldest first, empty ones included: always [`BUCKETS`] points.
    pub fn points(&self, now_ms: i64) -> Vec<Point> {
        let newest = number_at(now_ms);
        (newest - BUCKETS as i64 + 1..=newest)
            .map(|number| {
                let bucket = self.ring[slot(number)];
                let bucket = if bucket.number == number {
                    bucket
                } else {
                    Bucket::default()
                };
                let sampled = bucket.latencies > 0;
                Point {
                    start: DateTime::from_timestamp_millis(number * BUCKET_MS).unwrap_or_default(),
                    delivered: bucket.counts.delivered,
                    filtered: bucket.counts.filtered,
                    denied: bucket.counts.denied,
                    dead_lettered: bucket.counts.dead_lettered,
                    latency_samples: bucket.latencies,
                    latency_mean_ms: sampled
                        .then(|| bucket.latency_sum_ms as f64 / bucket.latencies as f64),
                    latency_max_ms: sampled.then_some(bucket.latency_max_ms),
                }
            })
            .collect()
    }

    /// True when nothing happened within the window before `now_ms`: the
    /// series shows only empty buckets and can be forgotten.
    pub fn is_idle(&self, now_ms: i64) -> bool {
        let oldest = number_at(now_ms) - BUCKETS as i64 + 1;
        self.ring.iter().all(|bucket| bucket.number < oldest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A moment well after 1970, at the start of a bucket.
    const T0: i64 = 1_800_000_000_000;

    fn delivered(n: i64) -> Counts {
        Counts {
            delivered: n,
            ..Counts::default()
        }
    }

    #[test]
    fn a_new_series_shows_the_whole_window_empty() {
        let points = Series::default().points(T0 + 1234);
        assert_eq!(points.len(), BUCKETS);
        assert!(
            points
                .iter()
                .all(|p| p.delivered == 0 && p.latency_mean_ms.is_none())
        );
        let newest = points.last().unwrap().start.timestamp_millis();
        assert_eq!(newest, T0, "the newest bucket is the one now falls in");
        let oldest = points[0].start.timestamp_millis();
        assert_eq!(newest - oldest, WINDOW_MS - BUCKET_MS);
    }

    #[test]
    fn outcomes_add_up_per_bucket() {
        let mut series = Series::default();
        series.add_counts(T0 + 1, delivered(2));
        series.add_counts(
            T0 + 9_999,
            Counts {
                delivered: 1,
                filtered: 3,
                dead_lettered: 4,
                denied: 5,
            },
        );
        series.add_counts(T0 + BUCKET_MS, delivered(7));
        let points = series.points(T0 + BUCKET_MS);
        let [.., earlier, newest] = points.as_slice() else {
            panic!("a full window");
        };
        assert_eq!(
            (
                earlier.delivered,
                earlier.filtered,
                earlier.dead_lettered,
                earlier.denied
            ),
            (3, 3, 4, 5)
        );
        assert_eq!(newest.delivered, 7);
        assert_eq!(newest.start.timestamp_millis(), T0 + BUCKET_MS);
    }

    #[test]
    fn latency_keeps_mean_and_worst_per_bucket() {
        let mut series = Series::default();
        series.add_latencies(T0, &[10, 30]);
        series.add_latencies(T0 + 5_000, &[80]);
        series.add_latencies(T0 + 6_000, &[]);
        let newest = series.points(T0 + 5_000).pop().unwrap();
        assert_eq!(newest.latency_samples, 3);
        assert_eq!(newest.latency_mean_ms, Some(40.0));
        assert_eq!(newest.latency_max_ms, Some(80));
    }

    #[test]
    fn buckets_older_than_the_window_drop_out_and_their_slots_are_reused() {
        let mut series = Series::default();
        series.add_counts(T0, delivered(1));
        series.add_latencies(T0, &[5]);
        // Still in the window at its far end.
        let last_moment = T0 + WINDOW_MS - 1;
        assert_eq!(series.points(last_moment)[0].delivered, 1);
        assert!(!series.is_idle(last_moment));
        // One full turn later the same slot holds another bucket.
        let later = T0 + WINDOW_MS;
        assert!(series.points(later).iter().all(|p| p.delivered == 0));
        assert!(series.is_idle(later));
        series.add_counts(later, delivered(2));
        let points = series.points(later);
        assert_eq!(points.last().unwrap().delivered, 2);
        assert_eq!(
            points.last().unwrap().latency_samples,
            0,
            "emptied, not added to"
        );
        assert_eq!(points.iter().map(|p| p.delivered).sum::<i64>(), 2);
        assert!(!series.is_idle(later));
    }

    #[test]
    fn a_quiet_stretch_inside_the_window_shows_as_empty_buckets() {
        let mut series = Series::default();
        series.add_counts(T0, delivered(1));
        series.add_counts(T0 + 3 * BUCKET_MS, delivered(2));
        let points = series.points(T0 + 3 * BUCKET_MS);
        let tail: Vec<i64> = points[BUCKETS - 4..].iter().map(|p| p.delivered).collect();
        assert_eq!(tail, [1, 0, 0, 2]);
    }
}
