//! A pipeline's Kafka consumer: its configuration, which partitions it owns,
//! and the positions it may commit.
//!
//! Ownership is counted in epochs: every partition assigned to the consumer
//! gets a fresh epoch, and loses it when revoked. A batch remembers the epoch
//! each partition's messages were fetched in; its positions are stored for
//! commit only while that same epoch is current, so a partition that moved to
//! another member (even if it came back since) is never committed from a stale
//! batch, and no commit can move another member's position backwards.
//!
//! Positions are stored (`store_offsets`, which librdkafka also refuses for
//! partitions not assigned) and committed asynchronously after every batch;
//! librdkafka's auto-commit sends whatever is stored at every interval, when
//! partitions are revoked and when the consumer closes. The loop keeps polling
//! while a batch is delivered and retried, so heartbeats and rebalances go on:
//! partitions are paused when too much waits behind it, never left unpolled.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::Notify;
use uuid::Uuid;

use super::batcher::{PartitionKey, Positions};
use super::state::StateHandle;
use crate::config::DeliverySettings;
use crate::kafka::KafkaConnection;

/// Which partitions the consumer owns, each with the epoch it was assigned in.
#[derive(Debug, Default)]
pub struct Ownership {
    last_epoch: u64,
    owned: HashMap<PartitionKey, u64>,
}

impl Ownership {
    pub fn assign(&mut self, partitions: impl IntoIterator<Item = PartitionKey>) {
        for key in partitions {
            self.last_epoch += 1;
            self.owned.insert(key, self.last_epoch);
        }
    }

    pub fn revoke<'a>(&mut self, partitions: impl IntoIterator<Item = &'a PartitionKey>) {
        for key in partitions {
            self.owned.remove(key);
        }
    }

    /// The epoch `key` is owned in now, if owned.
    pub fn epoch(&self, key: &PartitionKey) -> Option<u64> {
        self.owned.get(key).copied()
    }

    /// True while `key` is owned in `epoch`.
    pub fn holds(&self, key: &PartitionKey, epoch: u64) -> bool {
        self.epoch(key) == Some(epoch)
    }

    pub fn partitions(&self) -> impl Iterator<Item = &PartitionKey> {
        self.owned.keys()
    }

    /// The positions still owned in the epoch they were fetched in.
    pub fn current(&self, positions: &Positions) -> Positions {
        positions
            .iter()
            .filter(|(key, position)| self.holds(key, position.epoch))
            .map(|(key, position)| (key.clone(), *position))
            .collect()
    }
}

fn keys(list: &TopicPartitionList) -> Vec<PartitionKey> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// After this many failed commits in a row the pipeline stops fetching
/// until a commit succeeds again: delivering more cannot be made final.
pub const COMMIT_FAILURES_BEFORE_PAUSE: u32 = 3;

/// Shared between the consumer's callbacks (run inside `recv`) and the loop.
pub struct PipelineContext {
    subscription: Uuid,
    ownership: Mutex<Ownership>,
    /// Set while the loop holds a full batch it cannot hand off yet: partitions
    /// assigned meanwhile are paused as they arrive.
    paused: AtomicBool,
    /// Woken on every assignment change, so the loop re-checks what it holds.
    pub rebalanced: Notify,
    commit_failures: AtomicU32,
    last_commit_error: Mutex<Option<String>>,
    state: StateHandle,
}

impl PipelineContext {
    pub fn new(subscription: Uuid, state: StateHandle) -> Self {
        Self {
            subscription,
            ownership: Mutex::new(Ownership::default()),
            paused: AtomicBool::new(false),
            rebalanced: Notify::new(),
            commit_failures: AtomicU32::new(0),
            last_commit_error: Mutex::new(None),
            state,
        }
    }

    pub fn ownership(&self) -> std::sync::MutexGuard<'_, Ownership> {
        self.ownership.lock().expect("ownership lock")
    }

    /// Failed commits in a row, and the last error.
    pub fn commit_failures(&self) -> (u32, Option<String>) {
        (
            self.commit_failures.load(Ordering::SeqCst),
            self.last_commit_error
                .lock()
                .expect("commit error lock")
                .clone(),
        )
    }
}

impl ClientContext for PipelineContext {
    fn stats(&self, statistics: Statistics) {
        let ownership = self.ownership();
        self.state
            .record_lag(&statistics, |key| ownership.epoch(key).is_some());
    }
}

impl ConsumerContext for PipelineContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let revoked = keys(partitions);
            self.ownership().revoke(&revoked);
            self.state.forget_partitions(&revoked);
            tracing::info!(subscription = %self.subscription, partitions = revoked.len(), "Partitions revoked.");
            self.rebalanced.notify_one();
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let assigned = keys(partitions);
                self.state.assigned(&assigned);
                self.ownership().assign(assigned);
                if self.paused.load(Ordering::SeqCst)
                    && let Err(error) = consumer.pause(partitions)
                {
                    tracing::warn!(subscription = %self.subscription, error = %error, "Could not pause newly assigned partitions.");
                }
                tracing::info!(subscription = %self.subscription, partitions = partitions.count(), "Partitions assigned.");
                self.rebalanced.notify_one();
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(subscription = %self.subscription, error = %error, "Rebalance failed.");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        // A commit can succeed as a request and fail for its partitions:
        // both count.
        let partition_error = offsets
            .elements()
            .iter()
            .find_map(|element| element.error().err());
        match (result, partition_error) {
            (Err(error), _) | (Ok(()), Some(error)) => self.record_commit(Some(Err(error))),
            (Ok(()), None) => self.record_commit(Some(Ok(()))),
        }
    }
}

impl PipelineContext {
    /// Counts a commit's result (`None`: it did not answer in time).
    pub fn record_commit(&self, result: Option<KafkaResult<()>>) {
        let error = match result {
            // Nothing stored that is not committed: nothing is failing either.
            Some(Ok(()))
            | Some(Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset))) => {
                self.commit_failures.store(0, Ordering::SeqCst);
                return;
            }
            Some(Err(error)) => error.to_string(),
            None => "the commit did not answer in time".to_string(),
        };
        let failures = self.commit_failures.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::warn!(subscription = %self.subscription, error = %error, failures, "Commit failed; the positions stay stored and are sent again.");
        *self.last_commit_error.lock().expect("commit error lock") = Some(error);
    }
}

pub type PipelineConsumer = StreamConsumer<PipelineContext>;

/// The consumer group of subscription `id` at consumer generation
/// `generation`: `webhooks-{id}`, then `webhooks-{id}.r{n}` after the n-th
/// replay ([`super::replay`]).
pub fn group_id(id: Uuid, generation: i64) -> String {
    match generation {
        0 => format!("webhooks-{id}"),
        n => format!("webhooks-{id}.r{n}"),
    }
}

/// The consumer of subscription `id` in group `group`
/// ([`group_id`]), positions stored by the pipeline and committed by it and
/// by auto-commit.
pub fn create(
    id: Uuid,
    group: &str,
    kafka: &KafkaConnection,
    settings: &DeliverySettings,
    context: PipelineContext,
) -> Result<PipelineConsumer, KafkaError> {
    let mut config = kafka.client_config(&format!("wasmhook-{id}"));
    config
        .set("group.id", group)
        // Only what the pipeline stored (final outcomes) is ever committed.
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            AUTO_COMMIT_INTERVAL.as_millis().to_string(),
        )
        .set("auto.offset.reset", settings.start_from.as_kafka())
        .set(
            "session.timeout.ms",
            settings.session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (settings.session_timeout / 3).as_millis().to_string(),
        )
        // The loop polls all the time, also while it delivers and retries.
        .set(
            "max.poll.interval.ms",
            MAX_POLL_INTERVAL.as_millis().to_string(),
        )
        .set(
            "partition.assignment.strategy",
            settings.assignment_strategy.as_kafka(),
        )
        .set(
            "fetch.wait.max.ms",
            settings.fetch_wait.as_millis().max(1).to_string(),
        )
        // Topics are created explicitly; a subscription to a missing topic waits for it.
        .set("allow.auto.create.topics", "false")
        // Notice topics created after the subscription within seconds, not minutes.
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set(
            "statistics.interval.ms",
            settings.lag_interval.as_millis().to_string(),
        );
    if let Some(instance) = &settings.instance_id {
        // Static membership: a restart of this host takes its partitions back
        // without a rebalance, as long as it returns within the session timeout.
        config.set("group.instance.id", format!("{instance}-{id}"));
    }
    config.create_with_context(context)
}

/// How often librdkafka commits what was stored, besides the pipeline's own
/// commit after every batch (a safety net for failed commits).
const AUTO_COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// The loop polls continuously; this only catches a wedged pipeline.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// Stores the final positions still owned in their epoch and commits them
/// asynchronously; returns how many partitions were left out because they
/// are no longer owned (their new owner delivers them again).
pub fn store_and_commit(consumer: &PipelineConsumer, positions: &Positions) -> usize {
    let current = consumer.context().ownership().current(positions);
    let stale = positions.len() - current.len();
    if current.is_empty() {
        return stale;
    }
    let mut list = TopicPartitionList::with_capacity(current.len());
    for ((topic, partition), position) in &current {
        if let Err(error) =
            list.add_partition_offset(topic, *partition, Offset::Offset(position.next))
        {
            tracing::error!(error = %error, "Invalid offset to store.");
        }
    }
    // librdkafka checks the assignment again: a partition revoked in between
    // is refused here rather than committed.
    if let Err(error) = consumer.store_offsets(&list) {
        tracing::warn!(error = %error, "Could not store the positions (partitions revoked?); their new owner delivers them again.");
        return positions.len();
    }
    commit_stored(consumer);
    stale
}

/// Commits what is stored, asynchronously (the result reaches the context).
fn commit_stored(consumer: &PipelineConsumer) {
    if let Err(error) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Async) {
        match error {
            KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
            error => tracing::warn!(error = %error, "Could not start a commit."),
        }
    }
}

/// Pauses or resumes every owned partition (pausing drops what was fetched
/// and not yet consumed; resuming fetches it again from there).
pub fn set_paused(consumer: &PipelineConsumer, paused: bool) {
    let context = consumer.context();
    if context.paused.swap(paused, Ordering::SeqCst) == paused {
        return;
    }
    let list = match consumer.assignment() {
        Ok(list) => list,
        Err(error) => {
            tracing::warn!(error = %error, "Could not read the assignment.");
            return;
        }
    };
    if list.count() == 0 {
        return;
    }
    let result = if paused {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    if let Err(error) = result {
        tracing::warn!(error = %error, paused, "Could not pause or resume the partitions.");
    }
}

#[cfg(test)]
mod tests {
    use super::super::batcher::Position;
    use super::*;

    fn key(partition: i32) -> PartitionKey {
        ("t".into(), partition)
    }

    #[test]
    fn every_assignment_is_a_new_epoch() {
        let mut ownership = Ownership::default();
        ownership.assign([key(0), key(1)]);
        let first = ownership.epoch(&key(0)).unwrap();
        ownership.revoke(&[key(0)]);
        assert_eq!(ownership.epoch(&key(0)), None);
        assert!(ownership.epoch(&key(1)).is_some());
        ownership.assign([key(0)]);
        assert_ne!(ownership.epoch(&key(0)), Some(first));
    }

    #[test]
    fn only_positions_of_the_current_epoch_may_be_committed() {
        let mut ownership = Ownership::default();
        ownership.assign([key(0), key(1), key(2)]);
        let batch: Positions = [0, 1, 2]
            .into_iter()
            .map(|p| {
                let epoch = ownership.epoch(&key(p)).unwrap();
                (key(p), Position { next: 10, epoch })
            })
            .collect();
        // 1 moved away; 2 moved away and came back: both are stale.
        ownership.revoke(&[key(1), key(2)]);
        ownership.assign([key(2)]);
        let current = ownership.current(&batch);
        assert_eq!(current.keys().cloned().collect::<Vec<_>>(), [key(0)]);
    }
}
