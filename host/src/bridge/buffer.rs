//! A connection's buffer of notifications waiting to be pushed (seed 004's
//! consumer `mq_limit` / `mq_interval`), and when its partitions pause.
//!
//! The consumer puts messages in; the connection's writer takes them out as
//! one JSON array every push interval, or at once when the buffer is full.
//! A client that reads slowly (or never) blocks the writer on the socket,
//! the buffer fills, and at the limit the consumer pauses its partitions:
//! nothing is dropped, and what waits in memory is at most the buffer plus
//! the one array being written. Partitions resume once the buffer has
//! drained to half its limit ([`should_pause`] — hysteresis, so a client at
//! the edge does not flap pause and resume on every message).
//!
//! In acknowledged mode, messages pushed but not yet acknowledged count
//! against the same limit: a client that reads but never acknowledges is
//! paused too, and the acknowledgement bookkeeping stays bounded.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::frame::Notification;

/// Whether the partitions should be paused, given whether they are now:
/// pause at `limit` waiting, resume at half of it. Pure, tested alone.
pub fn should_pause(paused: bool, waiting: usize, limit: usize) -> bool {
    if paused {
        waiting > limit / 2
    } else {
        waiting >= limit
    }
}

/// Notifications waiting for the socket.
pub struct Outbox {
    queue: Mutex<VecDeque<Notification>>,
    limit: usize,
    /// The consumer put something in (the writer may have to flush now).
    pub filled: Notify,
    /// The writer took something out (the consumer may resume).
    pub drained: Notify,
    /// Notifications in the array being written now.
    sending: AtomicUsize,
}

impl Outbox {
    pub fn new(limit: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            limit,
            filled: Notify::new(),
            drained: Notify::new(),
            sending: AtomicUsize::new(0),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Notification>> {
        self.queue.lock().expect("outbox lock")
    }

    /// Adds a notification; never refuses one (the consumer pauses first).
    pub fn put(&self, notification: Notification) {
        self.queue().push_back(notification);
        self.filled.notify_one();
    }

    /// How many wait.
    pub fn waiting(&self) -> usize {
        self.queue().len()
    }

    pub fn is_full(&self) -> bool {
        self.waiting() >= self.limit
    }

    /// Takes up to `limit` notifications to write as one array; they count
    /// as being sent until [`Self::sent`].
    pub fn take(&self) -> Vec<Notification> {
        let taken: Vec<Notification> = {
            let mut queue = self.queue();
            let n = queue.len().min(self.limit);
            queue.drain(..n).collect()
        };
        self.sending.store(taken.len(), Ordering::SeqCst);
        if !taken.is_empty() {
            self.drained.notify_one();
        }
        taken
    }

    /// The array taken last is written.
    pub fn sent(&self) {
        self.sending.store(0, Ordering::SeqCst);
    }

    /// Notifications in the array being written now.
    pub fn sending(&self) -> usize {
        self.sending.load(Ordering::SeqCst)
    }

    /// Forgets everything waiting (an acknowledged subscription ended: the
    /// group's next member gets these).
    pub fn clear(&self) {
        self.queue().clear();
        self.drained.notify_one();
    }

    /// Forgets what waits for the socket from partitions the consumer lost
    /// (their next owner delivers them), keeping the rest in order.
    pub fn forget(&self, lost: &[(String, i32)]) -> usize {
        let mut queue = self.queue();
        let before = queue.len();
        queue.retain(|n| !lost.iter().any(|(t, p)| *t == n.topic && *p == n.partition));
        let forgotten = before - queue.len();
        if forgotten > 0 {
            self.drained.notify_one();
        }
        forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(partition: i32, offset: i64) -> Notification {
        Notification {
            topic: "t".into(),
            partition,
            offset,
            key: None,
            value: Some(b"v".to_vec()),
        }
    }

    #[test]
    fn partitions_pause_at_the_limit_and_resume_at_half() {
        assert!(!should_pause(false, 9, 10));
        assert!(should_pause(false, 10, 10));
        assert!(should_pause(true, 6, 10));
        assert!(!should_pause(true, 5, 10));
        // A limit of one pauses with one waiting and resumes when empty.
        assert!(should_pause(false, 1, 1));
        assert!(!should_pause(true, 0, 1));
    }

    #[test]
    fn the_writer_takes_at_most_the_limit_in_order() {
        let outbox = Outbox::new(3);
        for offset in 0..5 {
            outbox.put(note(0, offset));
        }
        assert!(outbox.is_full());
        let first: Vec<i64> = outbox.take().iter().map(|n| n.offset).collect();
        assert_eq!(first, [0, 1, 2]);
        assert_eq!(outbox.sending(), 3);
        assert_eq!(outbox.waiting(), 2);
        outbox.sent();
        assert_eq!(outbox.sending(), 0);
        let rest: Vec<i64> = outbox.take().iter().map(|n| n.offset).collect();
        assert_eq!(rest, [3, 4]);
    }

    #[test]
    fn what_waits_from_a_lost_partition_is_forgotten() {
        let outbox = Outbox::new(10);
        outbox.put(note(0, 0));
        outbox.put(note(1, 0));
        outbox.put(note(0, 1));
        assert_eq!(outbox.forget(&[("t".into(), 0)]), 2);
        let left: Vec<i32> = outbox.take().iter().map(|n| n.partition).collect();
        assert_eq!(left, [1]);
    }
}
