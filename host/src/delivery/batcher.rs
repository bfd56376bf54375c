//! Batching by size or interval, whichever comes first; pure.
//!
//! The batcher also tracks the positions to commit: every consumed message
//! advances its partition's position, whether it was batched or filtered out, so
//! that filtered messages are committed with the next final outcome. The
//! interval runs from the first message consumed since the last flush.
//!
//! Each position carries the ownership epoch its messages were fetched in (see
//! [`super::consumer::Ownership`]): a partition revoked and assigned again is a
//! new epoch, and what was fetched in the old one is dropped, never mixed with
//! the new (the new fetch starts again from the committed position).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::record::Record;

/// A topic and partition.
pub type PartitionKey = (String, i32);

/// Where a partition stands in a batch: the next offset to read once the
/// batch is final, and the ownership epoch its messages were fetched in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub next: i64,
    pub epoch: u64,
}

/// Positions per (topic, partition).
pub type Positions = BTreeMap<PartitionKey, Position>;

/// What a flush hands to delivery: the records to send (maybe none, when all
/// were filtered) and the positions to commit once they reach a final outcome.
#[derive(Debug, Default)]
pub struct Flush {
    pub records: Vec<Record>,
    pub positions: Positions,
    pub filtered: u64,
}

pub struct Batcher {
    max_size: usize,
    max_wait: Duration,
    records: Vec<Record>,
    positions: Positions,
    filtered: u64,
    opened_at: Option<Instant>,
}

impl Batcher {
    pub fn new(max_size: usize, max_wait: Duration) -> Self {
        Self {
            max_size,
            max_wait,
            records: Vec::with_capacity(max_size),
            positions: Positions::new(),
            filtered: 0,
            opened_at: None,
        }
    }

    fn advance(&mut self, record: &Record, epoch: u64, now: Instant) {
        let key = (record.topic.clone(), record.partition);
        if let Some(held) = self.positions.get(&key)
            && held.epoch != epoch
        {
            // Revoked and assigned again since: what we hold of it is fetched anew.
            self.drop_partition(&key);
        }
        self.opened_at.get_or_insert(now);
        self.positions.insert(
            key,
            Position {
                next: record.offset + 1,
                epoch,
            },
        );
    }

    /// Adds a message that passed the filters, fetched in ownership `epoch`;
    /// true when the batch is full.
    pub fn push(&mut self, record: Record, epoch: u64, now: Instant) -> bool {
        self.advance(&record, epoch, now);
        self.records.push(record);
        self.is_full()
    }

    /// Records a message the filters removed: it is committed, never sent.
    pub fn skip(&mut self, record: &Record, epoch: u64, now: Instant) {
        self.advance(record, epoch, now);
        self.filtered += 1;
    }

    pub fn is_full(&self) -> bool {
        self.records.len() >= self.max_size
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// When the open batch must be flushed, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|at| at + self.max_wait)
    }

    pub fn take(&mut self) -> Flush {
        self.opened_at = None;
        Flush {
            records: std::mem::replace(&mut self.records, Vec::with_capacity(self.max_size)),
            positions: std::mem::take(&mut self.positions),
            filtered: std::mem::take(&mut self.filtered),
        }
    }

    /// Keeps only the partitions `owned` says are still owned in the epoch
    /// they were fetched in; the others' messages are dropped (their new owner
    /// fetches them from the committed position). Returns how many were dropped.
    pub fn retain_owned(&mut self, owned: impl Fn(&PartitionKey, u64) -> bool) -> usize {
        let lost: Vec<PartitionKey> = self
            .positions
            .iter()
            .filter(|(key, position)| !owned(key, position.epoch))
            .map(|(key, _)| key.clone())
            .collect();
        lost.iter().map(|key| self.drop_partition(key)).sum()
    }

    fn drop_partition(&mut self, key: &PartitionKey) -> usize {
        self.positions.remove(key);
        let before = self.records.len();
        self.records
            .retain(|r| !(r.partition == key.1 && r.topic == key.0));
        // Filtered messages of that partition are not counted apart: the count
        // of filtered messages is a statistic, and they are fetched again.
        if self.positions.is_empty() {
            self.opened_at = None;
            self.filtered = 0;
        }
        before - self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64) -> Record {
        Record {
            topic: "t".into(),
            partition,
            offset,
            timestamp: None,
            key: None,
            value: None,
            headers: vec![],
        }
    }

    fn key(partition: i32) -> PartitionKey {
        ("t".into(), partition)
    }

    #[test]
    fn a_batch_is_full_at_max_size() {
        let now = Instant::now();
        let mut b = Batcher::new(2, Duration::from_secs(5));
        assert!(!b.push(record(0, 0), 1, now));
        assert!(b.push(record(0, 1), 1, now));
        let flush = b.take();
        assert_eq!(flush.records.len(), 2);
        assert_eq!(flush.positions[&key(0)], Position { next: 2, epoch: 1 });
        assert!(b.deadline().is_none());
        assert!(b.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_interval_runs_from_the_first_message() {
        let mut b = Batcher::new(10, Duration::from_secs(5));
        let start = Instant::now();
        b.push(record(0, 0), 1, start);
        tokio::time::advance(Duration::from_secs(3)).await;
        b.push(record(0, 1), 1, Instant::now());
        assert_eq!(b.deadline(), Some(start + Duration::from_secs(5)));
    }

    #[test]
    fn filtered_messages_advance_positions_but_are_not_sent() {
        let now = Instant::now();
        let mut b = Batcher::new(10, Duration::from_secs(5));
        b.push(record(0, 0), 1, now);
        b.skip(&record(1, 9), 1, now);
        let flush = b.take();
        assert_eq!(flush.records.len(), 1);
        assert_eq!(flush.filtered, 1);
        assert_eq!(flush.positions[&key(1)].next, 10);
    }

    #[test]
    fn a_revoked_partition_is_dropped_and_the_others_kept() {
        let now = Instant::now();
        let mut b = Batcher::new(10, Duration::from_secs(5));
        b.push(record(0, 0), 1, now);
        b.push(record(1, 5), 1, now);
        b.push(record(0, 1), 1, now);
        let dropped = b.retain_owned(|key, _| key.1 == 1);
        assert_eq!(dropped, 2);
        let flush = b.take();
        assert_eq!(flush.records.len(), 1);
        assert_eq!(flush.records[0].partition, 1);
        assert!(!flush.positions.contains_key(&key(0)));
    }

    #[test]
    fn messages_of_an_earlier_ownership_are_dropped_when_the_partition_returns() {
        let now = Instant::now();
        let mut b = Batcher::new(10, Duration::from_secs(5));
        b.push(record(0, 3), 1, now);
        b.push(record(0, 4), 1, now);
        // Revoked, assigned again (epoch 2), fetched again from the committed 3.
        b.push(record(0, 3), 2, now);
        let flush = b.take();
        assert_eq!(
            flush.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            [3]
        );
        assert_eq!(flush.positions[&key(0)], Position { next: 4, epoch: 2 });
    }

    #[test]
    fn dropping_everything_closes_the_batch() {
        let now = Instant::now();
        let mut b = Batcher::new(10, Duration::from_secs(5));
        b.push(record(0, 0), 1, now);
        b.retain_owned(|_, _| false);
        assert!(b.deadline().is_none());
        assert!(b.is_empty());
    }
}
