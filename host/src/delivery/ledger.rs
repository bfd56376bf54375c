//! The delivery engine's bookkeeping, kept in memory and written to the
//! registry about once a second: outcome counters and delivery attempts.
//!
//! Writing them per batch cost three registry statements for every request,
//! which bounded a subscription with batch size 1 to what the database could
//! commit (on SQLite, a few hundred a second). Here a pipeline only adds to a
//! map; [`Ledger::run`] writes what accumulated in one transaction per second
//! and once more when the engine stops. What is pending is bounded: counters
//! are sums, and each subscription keeps at most its activity ring's worth of
//! attempts (older ones would be trimmed from the ring anyway).
//!
//! The status route reads the registry and what is pending here together,
//! under [`Ledger::reading`], so it never counts a flushed entry twice or
//! misses one in the middle of a flush. A host that dies loses at most the
//! last second of bookkeeping; delivery itself (offsets, dead letters) never
//! depends on it.
//!
//! The same outcomes, and the latencies of delivered messages, also go into
//! each subscription's [`Series`] of the last minutes on this host (never
//! flushed: it is for the status page's plots, which read it as it is).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{RwLock, RwLockReadGuard};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::series::{Point, Series};
use crate::registry::{ACTIVITY_RING, Activity, ActivityEntry, Bookkeeping, Counts, Registry};

/// How often what accumulated is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Default)]
pub struct Ledger {
    pending: Arc<Mutex<HashMap<Uuid, Pending>>>,
    /// Held for writing while a flush moves entries from memory to the
    /// registry; readers that combine both hold it for reading.
    gate: Arc<RwLock<()>>,
    /// Recent outcomes and latencies per subscription; a series with nothing
    /// in its window is dropped at the next flush (a deleted subscription's).
    series: Arc<Mutex<HashMap<Uuid, Series>>>,
}

#[derive(Default)]
struct Pending {
    counts: Counts,
    /// Oldest first, at most `ACTIVITY_RING`.
    activity: VecDeque<ActivityEntry>,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a batch's outcomes to subscription `id`'s counters.
    pub fn add_counts(&self, id: Uuid, counts: Counts) {
        if counts == Counts::default() {
            return;
        }
        crate::telemetry::messages(id, &counts);
        let now = chrono::Utc::now().timestamp_millis();
        self.series_of(id, |series| series.add_counts(now, counts));
        let mut pending = self.pending.lock().expect("ledger lock");
        pending.entry(id).or_default().counts += counts;
    }

    /// Records publish → delivery latency for the messages of a batch
    /// delivered to subscription `id` now: `timestamps` are their Kafka
    /// timestamps (ms since the epoch); messages without one are left out.
    pub fn delivered(&self, id: Uuid, timestamps: impl Iterator<Item = Option<i64>>) {
        let now = chrono::Utc::now().timestamp_millis();
        let latencies: Vec<i64> = timestamps.flatten().map(|at| (now - at).max(0)).collect();
        crate::telemetry::latency(id, &latencies);
        self.series_of(id, |series| series.add_latencies(now, &latencies));
    }

    fn series_of(&self, id: Uuid, change: impl FnOnce(&mut Series)) {
        let mut series = self.series.lock().expect("series lock");
        change(series.entry(id).or_default());
    }

    /// Subscription `id`'s buckets on this host over the window ending at
    /// `now_ms`, oldest first (all empty when nothing happened here).
    pub fn series(&self, id: Uuid, now_ms: i64) -> Vec<Point> {
        let series = self.series.lock().expect("series lock");
        match series.get(&id) {
            Some(series) => series.points(now_ms),
            None => Series::default().points(now_ms),
        }
    }

    /// Records something that happened to subscription `id` now.
    pub fn record(&self, id: Uuid, activity: Activity) {
        let mut pending = self.pending.lock().expect("ledger lock");
        let ring = &mut pending.entry(id).or_default().activity;
        if ring.len() as i64 >= ACTIVITY_RING {
            ring.pop_front();
        }
        ring.push_back(ActivityEntry {
            timestamp: chrono::Utc::now(),
            activity,
        });
    }

    /// Hold this while reading the registry's counters and activity and then
    /// [`Self::pending`]: no flush moves entries in between.
    pub async fn reading(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// What is not written yet for `id`: counters, and attempts newest first.
    pub fn pending(&self, id: Uuid) -> (Counts, Vec<ActivityEntry>) {
        let pending = self.pending.lock().expect("ledger lock");
        match pending.get(&id) {
            None => (Counts::default(), Vec::new()),
            Some(p) => (p.counts, p.activity.iter().rev().cloned().collect()),
        }
    }

    /// Writes everything pending in one transaction. On failure it stays
    /// pending (merged with what came meanwhile) for the next flush.
    pub async fn flush(&self, registry: &Registry) {
        self.forget_idle_series(chrono::Utc::now().timestamp_millis());
        let _gate = self.gate.write().await;
        let taken = self.take();
        if taken.is_empty() {
            return;
        }
        if let Err(error) = registry.write_bookkeeping(&taken).await {
            tracing::warn!(error = %error, subscriptions = taken.len(), "Could not write delivery counters and activity; keeping them for the next try.");
            self.put_back(taken);
        }
    }

    fn forget_idle_series(&self, now_ms: i64) {
        let mut series = self.series.lock().expect("series lock");
        series.retain(|_, series| !series.is_idle(now_ms));
    }

    /// Everything pending, leaving nothing behind.
    fn take(&self) -> Vec<(Uuid, Bookkeeping)> {
        let mut pending = self.pending.lock().expect("ledger lock");
        pending
            .drain()
            .map(|(id, p)| {
                (
                    id,
                    Bookkeeping {
                        counts: p.counts,
                        activity: p.activity.into(),
                    },
                )
            })
            .collect()
    }

    fn put_back(&self, taken: Vec<(Uuid, Bookkeeping)>) {
        let mut pending = self.pending.lock().expect("ledger lock");
        for (id, book) in taken {
            let entry = pending.entry(id).or_default();
            entry.counts += book.counts;
            // The older entries go first; the ring keeps the newest.
            let newer = std::mem::take(&mut entry.activity);
            entry.activity = book.activity.into_iter().chain(newer).collect();
            while entry.activity.len() as i64 > ACTIVITY_RING {
                entry.activity.pop_front();
            }
        }
    }

    /// Flushes every [`FLUSH_INTERVAL`] until `stop`, then once more.
    pub async fn run(self, registry: Registry, stop: CancellationToken) {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => self.flush(&registry).await,
            }
        }
        self.flush(&registry).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::series::{BUCKETS, WINDOW_MS};
    use crate::registry::ApiCall;

    fn call(code: u16) -> Activity {
        Activity::ApiCall(ApiCall {
            request: "POST /".into(),
            request_headers: vec![],
            response_code: code,
            response_body: String::new(),
            response_headers: vec![],
        })
    }

    fn code(entry: &ActivityEntry) -> u16 {
        match &entry.activity {
            Activity::ApiCall(call) => call.response_code,
            _ => 0,
        }
    }

    #[test]
    fn counts_add_up_per_subscription() {
        let ledger = Ledger::new();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        ledger.add_counts(
            a,
            Counts {
                delivered: 2,
                filtered: 1,
                ..Counts::default()
            },
        );
        ledger.add_counts(
            a,
            Counts {
                delivered: 3,
                dead_lettered: 4,
                ..Counts::default()
            },
        );
        let (counts, _) = ledger.pending(a);
        assert_eq!(
            counts,
            Counts {
                delivered: 5,
                filtered: 1,
                dead_lettered: 4,
                denied: 0
            }
        );
        assert_eq!(ledger.pending(b).0, Counts::default());
    }

    #[test]
    fn outcomes_and_latencies_go_into_the_series_until_it_is_idle() {
        let ledger = Ledger::new();
        let id = Uuid::new_v4();
        ledger.add_counts(
            id,
            Counts {
                delivered: 2,
                ..Counts::default()
            },
        );
        let now = chrono::Utc::now().timestamp_millis();
        ledger.delivered(id, [Some(now - 50), None, Some(now - 150)].into_iter());
        let points = ledger.series(id, chrono::Utc::now().timestamp_millis());
        assert_eq!(points.iter().map(|p| p.delivered).sum::<i64>(), 2);
        assert_eq!(points.iter().map(|p| p.latency_samples).sum::<u64>(), 2);
        let worst = points
            .iter()
            .filter_map(|p| p.latency_max_ms)
            .max()
            .unwrap();
        assert!((150..10_000).contains(&worst), "{worst}");
        // Kept while in the window, forgotten once nothing is left in it.
        ledger.forget_idle_series(now);
        assert_eq!(ledger.series.lock().unwrap().len(), 1);
        ledger.forget_idle_series(now + WINDOW_MS + 1);
        assert!(ledger.series.lock().unwrap().is_empty());
        assert_eq!(ledger.series(Uuid::new_v4(), now).len(), BUCKETS);
    }

    #[test]
    fn activity_is_shown_newest_first_and_bounded_by_the_ring() {
        let ledger = Ledger::new();
        let id = Uuid::new_v4();
        for n in 0..(ACTIVITY_RING as u16 + 5) {
            ledger.record(id, call(n));
        }
        let (_, activity) = ledger.pending(id);
        assert_eq!(activity.len() as i64, ACTIVITY_RING);
        assert_eq!(code(&activity[0]), ACTIVITY_RING as u16 + 4);
        assert_eq!(code(activity.last().unwrap()), 5);
    }

    #[test]
    fn what_could_not_be_written_comes_back_before_what_came_meanwhile() {
        let ledger = Ledger::new();
        let id = Uuid::new_v4();
        ledger.record(id, call(1));
        ledger.add_counts(
            id,
            Counts {
                delivered: 1,
                ..Counts::default()
            },
        );
        let taken = ledger.take();
        ledger.record(id, call(2));
        ledger.put_back(taken);
        let (counts, activity) = ledger.pending(id);
        assert_eq!(counts.delivered, 1);
        assert_eq!(activity.iter().map(code).collect::<Vec<_>>(), [2, 1]);
    }
}
