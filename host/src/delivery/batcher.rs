//! Batching by size or interval, whichever comes first; pure.
//!
//! Size is counted in messages and, when the subscription caps it, in bytes
//! of message content ([`Record::content_bytes`]): a message that would take
//! the batch past its byte cap closes the batch and opens the next one, so a
//! batch exceeds the cap only when one message alone does.
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
    max_bytes: Option<usize>,
    records: Vec<Record>,
    /// Content bytes of `records`.
    bytes: usize,
    positions: Positions,
    filtered: u64,
    opened_at: Option<Instant>,
}

impl Batcher {
    pub fn new(max_size: usize, max_wait: Duration) -> Self {
        Self {
            max_size,
            max_wait,
            max_bytes: None,
            records: Vec::with_capacity(max_size),
            bytes: 0,
            positions: Positions::new(),
            filtered: 0,
            opened_at: None,
        }
    }

    /// Caps each batch at `max_bytes` of message content too.
    pub fn with_max_bytes(mut self, max_bytes: Option<usize>) -> Self {
        self.max_bytes = max_bytes;
        self
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

    /// Adds a message that passed the filters, fetched in ownership `epoch`.
    /// When it would take the open batch past its byte cap, that batch is
    /// closed first and returned, and the message opens the next one.
    pub fn push(&mut self, record: Record, epoch: u64, now: Instant) -> Option<Flush> {
        let size = record.content_bytes();
        let closed = self
            .max_bytes
            .filter(|max| !self.records.is_empty() && self.bytes + size > *max)
            .map(|_| self.take());
        self.advance(&record, epoch, now);
        self.bytes += size;
        self.records.push(record);
        closed
    }

    /// Records a message the filters removed: it is committed, never sent.
    pub fn skip(&mut self, record: &Record, epoch: u64, now: Instant) {
        self.advance(record, epoch, now);
        self.filtered += 1;
    }

    pub fn is_full(&self) -> bool {
        self.records.len() >= self.max_size || self.max_bytes.is_some_and(|max| self.bytes >= max)
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Whether the open batch holds anything of `key` (sent or filtered).
    pub fn holds(&self, key: &PartitionKey) -> bool {
        self.positions.contains_key(key)
    }

    /// When the open batch must be flushed, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|at| at + self.max_wait)
    }

    pub fn take(&mut self) -> Flush {
        self.opened_at = None;
        self.bytes = 0;
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
        self.bytes = self.records.iter().map(Record::content_bytes).sum();
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
            value_is_json: false,
        }
    }

    fn key(partition: i32) -> PartitionKey {
        ("t".into(), partition)
    }

    #[test]
    fn a_batch_is_full_at_max_size() {
        let now = Instant::now();
        let mut b = Batcher::new(2, Duration::from_secs(5));
        assert!(b.push(record(0, 0), 1, now).is_none());
        assert!(!b.is_full());
        assert!(b.push(record(0, 1), 1, now).is_none());
        assert!(b.is_full());
        let flush = b.take();
        assert_eq!(flush.records.len(), 2);
        assert_eq!(flush.positions[&key(0)], Position { next: 2, epoch: 1 });
        assert!(b.deadline().is_none());
        assert!(b.is_empty());
    }

    fn sized(partition: i32, offset: i64, bytes: usize) -> Record {
        Record {
            value: Some(vec![b'x'; bytes]),
            ..record(partition, offset)
        }
    }

    #[test]
    fn a_message_that_would_pass_the_byte_cap_closes_the_batch_and_opens_the_next() {
        let now = Instant::now();
        let mut b = Batcher::new(100, Duration::from_secs(5)).with_max_bytes(Some(1000));
        assert!(b.push(sized(0, 0, 400), 1, now).is_none());
        assert!(b.push(sized(1, 7, 400), 1, now).is_none());
        let closed = b.push(sized(0, 1, 400), 1, now).expect("1200 > 1000");
        assert_eq!(
            closed.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            [0, 7]
        );
        assert_eq!(
            closed.positions[&key(0)].next,
            1,
            "the next batch's message is not in it"
        );
        let next = b.take();
        assert_eq!(next.records.len(), 1);
        assert_eq!(next.positions[&key(0)].next, 2);
    }

    #[test]
    fn a_batch_reaching_its_byte_cap_exactly_is_full() {
        let now = Instant::now();
        let mut b = Batcher::new(100, Duration::from_secs(5)).with_max_bytes(Some(1000));
        b.push(sized(0, 0, 600), 1, now);
        assert!(!b.is_full());
        b.push(sized(0, 1, 400), 1, now);
        assert!(b.is_full());
    }

    #[test]
    fn a_message_larger_than_the_cap_goes_alone() {
        let now = Instant::now();
        let mut b = Batcher::new(100, Duration::from_secs(5)).with_max_bytes(Some(1000));
        b.push(sized(0, 0, 10), 1, now);
        let closed = b
            .push(sized(0, 1, 5000), 1, now)
            .expect("closes the small one");
        assert_eq!(closed.records.len(), 1);
        assert!(b.is_full(), "the large one is a batch of its own");
        assert_eq!(b.take().records.len(), 1);
    }

    #[test]
    fn without_a_byte_cap_only_the_count_closes_a_batch() {
        let now = Instant::now();
        let mut b = Batcher::new(3, Duration::from_secs(5));
        assert!(b.push(sized(0, 0, 10 << 20), 1, now).is_none());
        assert!(b.push(sized(0, 1, 10 << 20), 1, now).is_none());
        assert!(!b.is_full());
    }

    #[test]
    fn dropping_a_partition_gives_back_its_bytes() {
        let now = Instant::now();
        let mut b = Batcher::new(100, Duration::from_secs(5)).with_max_bytes(Some(1000));
        b.push(sized(0, 0, 900), 1, now);
        b.push(sized(1, 0, 50), 1, now);
        b.retain_owned(|key, _| key.1 == 1);
        assert!(b.push(sized(1, 1, 900), 1, now).is_none(), "50 + 900 fits");
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
