//! Hibernation: a subscription with nothing to deliver gives up its Kafka
//! consumer until a message arrives.
//!
//! A librdkafka consumer costs four threads and a steady stream of fetches
//! and heartbeats whatever the traffic, so a host carrying a thousand quiet
//! subscriptions would spend its threads and a core on doing nothing. So a
//! pipeline that has seen no message for `--hibernate-after` checks whether
//! the whole subscription is caught up ([`verdict`]: every partition of its
//! topics committed up to its high watermark, nothing of its own pending),
//! commits what is needed for that to stay true, closes its consumer (leaving
//! the group) and hands the high watermarks it saw (its [`Marks`]) to this
//! host's [`Watcher`]. The watcher asks the brokers for the high watermarks
//! of every hibernating subscription's topics once a second, in one request
//! per broker, and wakes a subscription as soon as any of its partitions grew
//! past its mark (or a new partition holds messages); its pipeline then joins
//! the group again and goes on from the committed positions.
//!
//! Why nothing is lost: a subscription hibernates only when the group's
//! committed position of every partition equals that partition's high
//! watermark, so whatever arrives later lies past both the committed
//! position (the woken consumer starts there) and the mark (which wakes it).
//! A partition that never had a message and no committed position gets its
//! high watermark committed first, so that a consumer starting from `latest`
//! cannot skip the message that woke it. A partition owned by another host
//! and not committed yet keeps this host awake until its owner commits.
//!
//! The price: the first message after a quiet period waits for the next
//! check (up to a second) and a group join (seconds).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::batcher::PartitionKey;
use super::replay::known;
use crate::kafka::KafkaConnection;

/// A subscription's topics, and the high watermark of every partition they
/// had when it went to sleep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks {
    /// Every subscribed topic, also one missing then: it may be created.
    pub topics: Vec<String>,
    pub highs: BTreeMap<PartitionKey, i64>,
}

impl Marks {
    /// True when `highs` (the high watermarks now) show a message that
    /// arrived since for one of its topics: a partition grew past its mark,
    /// or a partition (or topic) not known then holds messages.
    pub fn woken_by(&self, highs: &HashMap<PartitionKey, i64>) -> bool {
        highs.iter().any(|(key, high)| {
            self.topics.contains(&key.0) && *high > self.highs.get(key).copied().unwrap_or(0)
        })
    }
}

/// What Kafka and the consumer say of one partition of a subscription's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFacts {
    pub key: PartitionKey,
    /// The first offset the partition holds, and the offset its next message gets.
    pub low: i64,
    pub high: i64,
    /// The group's committed position, if any.
    pub committed: Option<i64>,
    /// `Some` when assigned to this consumer: the offset after the last
    /// message it consumed (`None` inside: none consumed since assignment).
    pub position: Option<Option<i64>>,
}

/// One look at a subscription's partitions, while nothing is in hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    /// Positions of this consumer's partitions to commit now: delivered but
    /// not committed yet, or an empty partition never committed. Safe to
    /// commit whatever the rest says, since nothing is in hand; committing
    /// them also lets the other hosts' looks find this host caught up.
    pub commit: Vec<(PartitionKey, i64)>,
    /// The high watermarks seen.
    pub highs: BTreeMap<PartitionKey, i64>,
    /// Why it may not sleep yet (something is still to be delivered or
    /// committed, here or on another host); `None`: caught up everywhere
    /// once `commit` is committed.
    pub busy: Option<String>,
}

/// Judges, from one look at every partition (`facts`), whether the
/// subscription is caught up everywhere. Pure: the Kafka calls are in
/// [`read_facts`].
pub fn verdict(facts: &[PartitionFacts]) -> Look {
    let mut look = Look {
        commit: Vec::new(),
        highs: BTreeMap::new(),
        // A missing topic: its consumer waits for it, and there is nothing
        // to mark. Stay awake.
        busy: facts.is_empty().then(|| "no partition found".to_string()),
    };
    for fact in facts {
        let (topic, partition) = &fact.key;
        let caught_up = fact.committed.is_some_and(|c| c >= fact.high);
        let empty = fact.low >= fact.high;
        let busy = match fact.position {
            Some(Some(position)) if position < fact.high => Some(format!(
                "{topic}/{partition}: consumed up to {position} of {}",
                fact.high
            )),
            // Everything consumed here was delivered (nothing is in hand
            // when this is asked), so its position may be committed.
            Some(Some(_)) if !caught_up => {
                look.commit.push((fact.key.clone(), fact.high));
                None
            }
            Some(None) if !caught_up && fact.committed.is_none() && empty => {
                look.commit.push((fact.key.clone(), fact.high));
                None
            }
            Some(None) if !caught_up => Some(format!(
                "{topic}/{partition}: not consumed yet up to {}",
                fact.high
            )),
            None if !caught_up => Some(format!(
                "{topic}/{partition}: its owner has not committed up to {}",
                fact.high
            )),
            _ => None,
        };
        if look.busy.is_none() {
            look.busy = busy;
        }
        look.highs.insert(fact.key.clone(), fact.high);
    }
    look
}

/// Reads the facts [`verdict`] needs for `topics` through `consumer`
/// (blocking: metadata, two offset lookups, the group's committed positions,
/// the assignment and its positions).
pub fn read_facts<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    topics: &[String],
    timeout: Duration,
) -> KafkaResult<Vec<PartitionFacts>> {
    let all = partitions_of(consumer, topics, timeout)?;
    if all.count() == 0 {
        return Ok(Vec::new());
    }
    let lows = offsets_at(consumer, &all, Offset::Beginning, timeout)?;
    let highs = offsets_at(consumer, &all, Offset::End, timeout)?;
    let committed = known_offsets(&consumer.committed_offsets(all.clone(), timeout)?);
    let assigned: HashMap<PartitionKey, Option<i64>> = consumer
        .position()?
        .elements()
        .iter()
        .map(|e| ((e.topic().to_string(), e.partition()), known(e.offset())))
        .collect();
    Ok(all
        .elements()
        .iter()
        .map(|e| {
            let key = (e.topic().to_string(), e.partition());
            PartitionFacts {
                low: lows.get(&key).copied().unwrap_or(0),
                high: highs.get(&key).copied().unwrap_or(0),
                committed: committed.get(&key).copied(),
                position: assigned.get(&key).copied(),
                key,
            }
        })
        .collect())
}

/// Commits `positions` for the consumer's group and waits for the answer.
pub fn commit<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    positions: &[(PartitionKey, i64)],
) -> KafkaResult<()> {
    if positions.is_empty() {
        return Ok(());
    }
    let mut list = TopicPartitionList::with_capacity(positions.len());
    for ((topic, partition), offset) in positions {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.commit(&list, rdkafka::consumer::CommitMode::Sync)
}

/// Every partition of `topics` (those that exist), in one metadata request.
fn partitions_of<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    topics: &[String],
    timeout: Duration,
) -> KafkaResult<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    let mut add = |metadata: rdkafka::metadata::Metadata| {
        for topic in metadata.topics() {
            if topic.error().is_some() || !topics.iter().any(|t| t == topic.name()) {
                continue;
            }
            for partition in topic.partitions() {
                list.add_partition(topic.name(), partition.id());
            }
        }
    };
    // Topics are asked for by name, one request each; beyond a few dozen
    // (the watcher's, with many sleepers) one request for the whole cluster
    // is cheaper.
    if topics.len() <= 32 {
        for topic in topics {
            add(consumer.fetch_metadata(Some(topic), timeout)?);
        }
    } else {
        add(consumer.fetch_metadata(None, timeout)?);
    }
    Ok(list)
}

/// The offsets of every partition of `list` at `at` (the beginning or the
/// end), in one ListOffsets request per broker.
fn offsets_at<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    list: &TopicPartitionList,
    at: Offset,
    timeout: Duration,
) -> KafkaResult<HashMap<PartitionKey, i64>> {
    let mut query = list.clone();
    query.set_all_offsets(at)?;
    Ok(known_offsets(&consumer.offsets_for_times(query, timeout)?))
}

fn known_offsets(list: &TopicPartitionList) -> HashMap<PartitionKey, i64> {
    list.elements()
        .iter()
        .filter(|e| e.error().is_ok())
        .filter_map(|e| Some(((e.topic().to_string(), e.partition()), known(e.offset())?)))
        .collect()
}

/// How often the watcher asks for the high watermarks of what sleeps.
pub const WAKE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on the watcher's requests (and on a pipeline's look before it sleeps).
pub const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// This host's hibernating subscriptions, woken when a message arrives for them.
#[derive(Clone)]
pub struct Watcher {
    inner: Arc<Inner>,
}

struct Inner {
    kafka: KafkaConnection,
    /// Created at the first look; one handle serves every subscription.
    client: OnceLock<KafkaResult<Arc<BaseConsumer>>>,
    sleeping: Mutex<Sleeping>,
}

#[derive(Default)]
struct Sleeping {
    next: u64,
    by_ticket: HashMap<u64, (Marks, oneshot::Sender<()>)>,
}

/// Removes a sleeper that stopped waiting (its pipeline was stopped).
struct Ticket {
    number: u64,
    inner: Arc<Inner>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.inner
            .sleeping
            .lock()
            .expect("sleepers lock")
            .by_ticket
            .remove(&self.number);
    }
}

impl Watcher {
    pub fn new(kafka: KafkaConnection) -> Self {
        Self {
            inner: Arc::new(Inner {
                kafka,
                client: OnceLock::new(),
                sleeping: Mutex::default(),
            }),
        }
    }

    /// Returns once a message arrived past `marks` (waits forever when
    /// `marks` is empty; the caller stops waiting by dropping the future).
    pub async fn until_new_messages(&self, marks: Marks) {
        let (woken, wait) = oneshot::channel();
        let number = {
            let mut sleeping = self.inner.sleeping.lock().expect("sleepers lock");
            sleeping.next += 1;
            let number = sleeping.next;
            sleeping.by_ticket.insert(number, (marks, woken));
            number
        };
        let _ticket = Ticket {
            number,
            inner: self.inner.clone(),
        };
        let _ = wait.await;
    }

    /// Looks every [`WAKE_CHECK_INTERVAL`] until `stop`.
    pub fn spawn(&self, stop: CancellationToken) {
        let watcher = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WAKE_CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => watcher.look().await,
                }
            }
        });
    }

    /// One look: the high watermarks of every sleeping subscription's
    /// topics, and a wake-up for each that has new messages.
    async fn look(&self) {
        let topics: Vec<String> = {
            let sleeping = self.inner.sleeping.lock().expect("sleepers lock");
            let mut topics: Vec<String> = sleeping
                .by_ticket
                .values()
                .flat_map(|(marks, _)| marks.topics.iter().cloned())
                .collect();
            topics.sort();
            topics.dedup();
            topics
        };
        if topics.is_empty() {
            return;
        }
        let inner = self.inner.clone();
        let highs = super::pipeline::off_runtime(KAFKA_TIMEOUT * 3, move || {
            let client = inner
                .client
                .get_or_init(|| {
                    inner
                        .kafka
                        .client_config("wasmhook-hibernation")
                        .create::<BaseConsumer>()
                        .map(Arc::new)
                })
                .clone()?;
            let all = partitions_of(client.as_ref(), &topics, KAFKA_TIMEOUT)?;
            offsets_at(client.as_ref(), &all, Offset::End, KAFKA_TIMEOUT)
        })
        .await;
        let highs = match highs {
            Some(Ok(highs)) => highs,
            Some(Err(error)) => {
                tracing::warn!(error = %error, "Could not read the high watermarks of hibernating subscriptions; trying again.");
                return;
            }
            None => {
                tracing::warn!(
                    "The high watermarks of hibernating subscriptions took too long; trying again."
                );
                return;
            }
        };
        let mut sleeping = self.inner.sleeping.lock().expect("sleepers lock");
        let woken: Vec<u64> = sleeping
            .by_ticket
            .iter()
            .filter(|(_, (marks, _))| marks.woken_by(&highs))
            .map(|(number, _)| *number)
            .collect();
        for number in woken {
            if let Some((_, wake)) = sleeping.by_ticket.remove(&number) {
                let _ = wake.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(
        partition: i32,
        (low, high): (i64, i64),
        committed: Option<i64>,
        position: Option<Option<i64>>,
    ) -> PartitionFacts {
        PartitionFacts {
            key: ("t".into(), partition),
            low,
            high,
            committed,
            position,
        }
    }

    fn key(partition: i32) -> PartitionKey {
        ("t".into(), partition)
    }

    #[test]
    fn a_subscription_committed_everywhere_up_to_the_end_may_sleep() {
        let look = verdict(&[
            fact(0, (0, 10), Some(10), Some(Some(10))),
            fact(1, (0, 5), Some(5), None),
        ]);
        assert_eq!(
            look,
            Look {
                commit: vec![],
                highs: [(key(0), 10), (key(1), 5)].into(),
                busy: None,
            }
        );
    }

    #[test]
    fn what_this_consumer_delivered_but_did_not_commit_yet_is_committed_first() {
        let look = verdict(&[fact(0, (0, 10), Some(7), Some(Some(10)))]);
        assert_eq!(look.commit, vec![(key(0), 10)]);
        assert_eq!(look.busy, None);
    }

    #[test]
    fn an_empty_partition_never_committed_gets_its_end_committed() {
        // Otherwise a consumer starting from `latest` would skip the message
        // that woke it.
        let look = verdict(&[fact(0, (3, 3), None, Some(None))]);
        assert_eq!(look.commit, vec![(key(0), 3)]);
        assert_eq!(look.busy, None);
    }

    #[test]
    fn messages_not_consumed_yet_keep_it_awake() {
        for facts in [
            vec![fact(0, (0, 10), Some(7), Some(Some(8)))],
            vec![fact(0, (0, 10), Some(7), Some(None))],
            vec![fact(0, (0, 10), None, Some(None))],
        ] {
            let look = verdict(&facts);
            assert!(look.busy.is_some(), "{facts:?}");
            assert!(look.commit.is_empty(), "{facts:?}");
        }
    }

    #[test]
    fn a_partition_of_another_host_not_committed_to_its_end_keeps_it_awake() {
        let look = verdict(&[
            fact(0, (0, 10), Some(10), Some(Some(10))),
            fact(1, (0, 10), Some(4), None),
        ]);
        assert!(
            look.busy.as_deref().is_some_and(|b| b.contains("t/1")),
            "{look:?}"
        );
        // Nor does an empty one that its owner never committed: only the
        // owner commits it.
        assert!(verdict(&[fact(1, (0, 0), None, None)]).busy.is_some());
    }

    #[test]
    fn its_own_partitions_are_committed_even_while_another_host_keeps_it_awake() {
        // Two hosts each waiting for the other's empty partitions to be
        // committed would never sleep.
        let look = verdict(&[
            fact(0, (0, 0), None, Some(None)),
            fact(1, (0, 0), None, None),
        ]);
        assert_eq!(look.commit, vec![(key(0), 0)]);
        assert!(look.busy.is_some());
    }

    #[test]
    fn no_partition_at_all_is_not_quiet() {
        assert!(verdict(&[]).busy.is_some());
    }

    #[test]
    fn a_sleeper_wakes_when_a_partition_grows_past_its_mark_or_a_new_one_of_its_topics_fills() {
        let marks = Marks {
            topics: vec!["t".into(), "later".into()],
            highs: [(key(0), 10), (key(1), 5)].into(),
        };
        let highs = |pairs: &[(i32, i64)]| -> HashMap<PartitionKey, i64> {
            pairs.iter().map(|(p, h)| (key(*p), *h)).collect()
        };
        assert!(!marks.woken_by(&highs(&[(0, 10), (1, 5)])));
        assert!(!marks.woken_by(&highs(&[(0, 10), (1, 5), (2, 0)])));
        assert!(marks.woken_by(&highs(&[(0, 11), (1, 5)])));
        assert!(marks.woken_by(&highs(&[(0, 10), (1, 5), (2, 1)])));
        // Another subscription's topic does not wake it; a topic of its own
        // created since does.
        let other = HashMap::from([(("other".to_string(), 0), 7)]);
        assert!(!marks.woken_by(&other));
        let created = HashMap::from([(("later".to_string(), 0), 1)]);
        assert!(marks.woken_by(&created));
    }
}
