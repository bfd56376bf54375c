//! Batching by size or interval, whichever comes first; pure.
//!
//! The batcher also tracks the positions to commit: every consumed message
//! advances its partition's position, whether it was batched or filtered out, so
//! that filtered messages are committed with the next final outcome. The
//! interval runs from the first message consumed since the last flush.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::record::Record;

/// Next offset to read, per (topic, partition).
pub type Positions = BTreeMap<(String, i32), i64>;

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

    fn advance(&mut self, record: &Record, now: Instant) {
        self.opened_at.get_or_insert(now);
        self.positions
            .insert((record.topic.clone(), record.partition), record.offset + 1);
    }

    /// Adds a message that passed the filters; true when the batch is full.
    pub fn push(&mut self, record: Record, now: Instant) -> bool {
        self.advance(&record, now);
        self.records.push(record);
        self.records.len() >= self.max_size
    }

    /// Records a message the filters removed: it is committed, never sent.
    pub fn skip(&mut self, record: &Record, now: Instant) {
        self.advance(record, now);
        self.filtered += 1;
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

    /// Forgets everything pending (after a rebalance: it will be fetched again).
    pub fn discard(&mut self) {
        self.take();
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

    #[test]
    fn a_batch_is_full_at_max_size() {
        let now = Instant::now();
        let mut b = Batcher::new(2, Duration::from_secs(5));
        assert!(!b.push(record(0, 0), now));
        assert!(b.push(record(0, 1), now));
        let flush = b.take();
        assert_eq!(flush.records.len(), 2);
        assert_eq!(flush.positions[&("t".into(), 0)], 2);
        assert!(b.deadline().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_interval_runs_from_the_first_message() {
        let mut b = Batcher::new(10, Duration::from_secs(5));
        let start = Instant::now();
        b.push(record(0, 0), start);
        tokio::time::advance(Duration::from_secs(3)).await;
        b.push(record(0, 1), Instant::now());
        assert_eq!(b.deadline(), Some(start + Duration::from_secs(5)));
    }

    #[test]
    fn filtered_messages_advance_positions_but_are_not_sent() {
        let now = Instant::now();
        let mut b = Batcher::new(10, Duration::from_secs(5));
        b.push(record(0, 0), now);
        b.skip(&record(1, 9), now);
        let flush = b.take();
        assert_eq!(flush.records.len(), 1);
        assert_eq!(flush.filtered, 1);
        assert_eq!(flush.positions[&("t".into(), 1)], 10);
    }
}
