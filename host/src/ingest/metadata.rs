//! How many partitions a topic has, as the ingest door needs to know before
//! producing: a missing topic is answered 404 at once (the producer would only
//! fail after its metadata wait), and a partition out of range names the
//! range. Answers come from [`Topics::partitions`] (a metadata request that
//! never creates the topic), cached briefly: a topic that exists for 10 s
//! (partitions may be added), one that does not for 1 s (so a topic created
//! meanwhile is usable at once, and a client hammering a missing topic costs
//! one request a second). At most 4096 topics are remembered.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::kafka::{TopicError, Topics};

const FOUND_FOR: Duration = Duration::from_secs(10);
const MISSING_FOR: Duration = Duration::from_secs(1);
const CAPACITY: NonZeroUsize = NonZeroUsize::new(4096).expect("not zero");

pub struct PartitionCounts {
    topics: Topics,
    known: Mutex<LruCache<String, (Option<usize>, Instant)>>,
}

impl PartitionCounts {
    pub fn new(topics: Topics) -> Self {
        Self {
            topics,
            known: Mutex::new(LruCache::new(CAPACITY)),
        }
    }

    /// The partition count of `topic`; `None` when it does not exist.
    pub async fn of(&self, topic: &str) -> Result<Option<usize>, TopicError> {
        if let Some(known) = self.cached(topic) {
            return Ok(known);
        }
        let found = self.topics.partitions(topic).await?;
        self.lock().put(topic.to_string(), (found, Instant::now()));
        Ok(found)
    }

    /// Forgets `topic`, after the brokers said something the cache did not
    /// (it was deleted, or gained partitions).
    pub fn forget(&self, topic: &str) {
        self.lock().pop(topic);
    }

    fn cached(&self, topic: &str) -> Option<Option<usize>> {
        let mut known = self.lock();
        let (count, at) = *known.get(topic)?;
        let fresh_for = if count.is_some() {
            FOUND_FOR
        } else {
            MISSING_FOR
        };
        if at.elapsed() < fresh_for {
            Some(count)
        } else {
            known.pop(topic);
            None
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, (Option<usize>, Instant)>> {
        // Poisoned only if a holder panicked; the map itself is still sound.
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}
