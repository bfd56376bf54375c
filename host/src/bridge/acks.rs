//! Acknowledged mode: which pushed messages the client has acknowledged,
//! and how far each partition may be committed.
//!
//! Only the contiguous acknowledged prefix of each partition is committed:
//! with 0, 1, 2 and 4 acknowledged out of 0..=4 pushed, the partition's
//! position becomes 3 and stays there until 3 is acknowledged, so after a
//! disconnect the group's next member gets 3 and 4 again (at-least-once).
//! "Contiguous" follows the offsets pushed, not offset + 1: Kafka offsets
//! may have gaps (compaction, transaction markers).
//!
//! Pure: the consumer stores and commits what [`AckTracker::ack`] returns.

use std::collections::{BTreeMap, HashMap};

use super::frame::Position;

type Key = (String, i32);

/// Pushed messages not yet committed, per partition.
#[derive(Debug, Default)]
pub struct AckTracker {
    partitions: HashMap<Key, BTreeMap<i64, bool>>,
    /// Entries in all partitions (acknowledged or not) not yet committed.
    outstanding: usize,
}

/// What one ack frame did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Acked {
    /// Partitions whose committable position moved: the next offset to read.
    pub commit: Vec<Position>,
    /// Acknowledged positions that were never pushed on this connection's
    /// current assignment (or were already committed).
    pub unknown: Vec<Position>,
}

impl AckTracker {
    /// Records a message pushed (or about to be) to the client.
    pub fn pushed(&mut self, topic: &str, partition: i32, offset: i64) {
        let pending = self
            .partitions
            .entry((topic.to_string(), partition))
            .or_default();
        if pending.insert(offset, false).is_none() {
            self.outstanding += 1;
        }
    }

    /// Marks `positions` acknowledged; returns the positions to commit.
    pub fn ack(&mut self, positions: &[Position]) -> Acked {
        let mut acked = Acked::default();
        let mut touched: Vec<Key> = Vec::new();
        for position in positions {
            let key = (position.topic.clone(), position.partition);
            match self
                .partitions
                .get_mut(&key)
                .and_then(|p| p.get_mut(&position.offset))
            {
                Some(flag) => {
                    *flag = true;
                    if !touched.contains(&key) {
                        touched.push(key);
                    }
                }
                None => acked.unknown.push(position.clone()),
            }
        }
        for key in touched {
            let pending = self.partitions.get_mut(&key).expect("touched exists");
            let mut next = None;
            while let Some(entry) = pending.first_entry() {
                if !*entry.get() {
                    break;
                }
                next = Some(*entry.key() + 1);
                entry.remove();
                self.outstanding -= 1;
            }
            if let Some(offset) = next {
                acked.commit.push(Position {
                    topic: key.0.clone(),
                    partition: key.1,
                    offset,
                });
            }
        }
        acked.commit.sort();
        acked
    }

    /// Forgets partitions the consumer lost: their next owner delivers what
    /// was not committed again, and acknowledgements for them are unknown.
    pub fn revoke<'a>(&mut self, keys: impl IntoIterator<Item = &'a Key>) {
        for key in keys {
            if let Some(pending) = self.partitions.remove(key) {
                self.outstanding -= pending.len();
            }
        }
    }

    /// Messages pushed and not yet committed (acknowledged or not).
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> Position {
        Position {
            topic: "t".into(),
            partition,
            offset,
        }
    }

    #[test]
    fn only_the_contiguous_acknowledged_prefix_is_committed() {
        let mut tracker = AckTracker::default();
        for offset in 0..5 {
            tracker.pushed("t", 0, offset);
        }
        let acked = tracker.ack(&[at(0, 0), at(0, 1), at(0, 4)]);
        assert_eq!(acked.commit, [at(0, 2)]);
        assert_eq!(tracker.outstanding(), 3);
        // 2 alone moves the position to 3; 4 waits for 3.
        assert_eq!(tracker.ack(&[at(0, 2)]).commit, [at(0, 3)]);
        assert_eq!(tracker.ack(&[at(0, 3)]).commit, [at(0, 5)]);
        assert_eq!(tracker.outstanding(), 0);
    }

    #[test]
    fn a_gap_in_offsets_is_not_a_gap_in_acknowledgements() {
        let mut tracker = AckTracker::default();
        for offset in [10, 12, 15] {
            tracker.pushed("t", 0, offset);
        }
        let acked = tracker.ack(&[at(0, 10), at(0, 12)]);
        assert_eq!(acked.commit, [at(0, 13)]);
    }

    #[test]
    fn nothing_is_committed_while_the_first_is_unacknowledged() {
        let mut tracker = AckTracker::default();
        for offset in 0..3 {
            tracker.pushed("t", 0, offset);
        }
        assert!(tracker.ack(&[at(0, 1), at(0, 2)]).commit.is_empty());
        assert_eq!(tracker.outstanding(), 3);
    }

    #[test]
    fn partitions_advance_alone() {
        let mut tracker = AckTracker::default();
        tracker.pushed("t", 0, 0);
        tracker.pushed("t", 1, 7);
        let acked = tracker.ack(&[at(1, 7)]);
        assert_eq!(acked.commit, [at(1, 8)]);
        assert_eq!(tracker.outstanding(), 1);
    }

    #[test]
    fn unknown_and_repeated_acknowledgements_are_reported() {
        let mut tracker = AckTracker::default();
        tracker.pushed("t", 0, 0);
        assert_eq!(tracker.ack(&[at(0, 0)]).commit, [at(0, 1)]);
        let again = tracker.ack(&[at(0, 0), at(3, 1)]);
        assert!(again.commit.is_empty());
        assert_eq!(again.unknown, [at(0, 0), at(3, 1)]);
    }

    #[test]
    fn a_revoked_partition_is_forgotten() {
        let mut tracker = AckTracker::default();
        tracker.pushed("t", 0, 0);
        tracker.pushed("t", 0, 1);
        tracker.pushed("t", 1, 0);
        tracker.revoke(&[("t".to_string(), 0)]);
        assert_eq!(tracker.outstanding(), 1);
        assert_eq!(tracker.ack(&[at(0, 0)]).unknown, [at(0, 0)]);
    }
}
