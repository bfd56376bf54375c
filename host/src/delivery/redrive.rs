//! Redrive: delivering again what a subscription's dead-letter topic holds.
//!
//! A redrive reads the dead-letter topic from where the last redrive stopped
//! (the group `webhooks-{id}-redrive`, which only commits: it never joins, so
//! no broker coordination is involved) up to the end the topic had when the
//! redrive was asked for, and delivers those messages as the subscription
//! delivers: its plugins, its signing, its retries. What fails again is
//! dead-lettered again, after that end, so one redrive never loops. Each
//! message goes out as it first came in: its original topic, partition and
//! offset (from the dead letter's `wasmhook-source-*` headers), so its
//! delivery id is the one the receiver would have seen.
//!
//! It runs on the host that was asked, as a task beside the pipelines ([`Redrives`]),
//! one at a time per subscription there; its progress is in that host's status.
//! It commits after each batch, so a redrive stopped part way (shutdown) goes
//! on from there next time. Two hosts asked at once would both deliver: the
//! receiver sees duplicates, never a loss.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::pipeline::{Deliverer, Shared};
use super::record::Record;
use super::replay::known;
use super::state::ConsumerStates;
use crate::kafka::KafkaConnection;
use crate::registry::StoredSubscription;

/// The group whose commits say how far redrives of `subscription` got.
pub fn group_id(subscription: Uuid) -> String {
    format!("webhooks-{subscription}-redrive")
}

/// The headers a dead letter adds to the message it carries.
const DEAD_LETTER_HEADERS: [&str; 5] = [
    "wasmhook-failure-reason",
    "wasmhook-delivery-id",
    "wasmhook-source-topic",
    "wasmhook-source-partition",
    "wasmhook-source-offset",
];

/// Pure: the message a dead letter carries, as it was first consumed: its
/// source position from the headers (kept as read when they are missing or
/// unreadable), without the headers the dead letter added.
pub fn restore(mut letter: Record) -> Record {
    let header = |name: &str| {
        letter
            .headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .and_then(|value| std::str::from_utf8(value).ok())
            .map(str::to_string)
    };
    let source = (
        header("wasmhook-source-topic"),
        header("wasmhook-source-partition").and_then(|p| p.parse().ok()),
        header("wasmhook-source-offset").and_then(|o| o.parse().ok()),
    );
    if let (Some(topic), Some(partition), Some(offset)) = source {
        letter.topic = topic;
        letter.partition = partition;
        letter.offset = offset;
    }
    letter
        .headers
        .retain(|(key, _)| !DEAD_LETTER_HEADERS.contains(&key.as_str()));
    letter
}

/// What a redrive covers: per partition of the dead-letter topic, from the
/// first message not yet redriven to the end it had when asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedrivePlan {
    pub topic: String,
    pub partitions: Vec<RedriveRange>,
    pub messages: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RedriveRange {
    pub partition: i32,
    /// The first offset to deliver again.
    pub from: i64,
    /// The end: the offset after the last one to deliver again.
    pub to: i64,
}

impl RedrivePlan {
    /// Pure: the ranges of `(partition, low, high, committed)`, leaving out
    /// partitions with nothing to redrive.
    pub fn of(topic: String, partitions: &[(i32, i64, i64, Option<i64>)]) -> Self {
        let partitions: Vec<RedriveRange> = partitions
            .iter()
            .map(|&(partition, low, high, committed)| RedriveRange {
                partition,
                from: committed.unwrap_or(low).max(low),
                to: high,
            })
            .filter(|range| range.from < range.to)
            .collect();
        let messages = partitions.iter().map(|r| r.to - r.from).sum();
        Self {
            topic,
            partitions,
            messages,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("the dead-letter topic {0} does not exist")]
    MissingTopic(String),
    #[error("a redrive of this subscription is already running on this host")]
    Running,
    #[error("the delivery engine is not running on this host")]
    NotStarted,
    #[error("Kafka: {0}")]
    Kafka(String),
}

impl From<rdkafka::error::KafkaError> for RedriveError {
    fn from(error: rdkafka::error::KafkaError) -> Self {
        RedriveError::Kafka(error.to_string())
    }
}

/// Reads what there is to redrive of `subscription`'s dead-letter topic.
pub async fn plan(
    kafka: &KafkaConnection,
    timeout: Duration,
    subscription: Uuid,
) -> Result<RedrivePlan, RedriveError> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let topic = super::dead_letter::topic_for(subscription);
        let reader: BaseConsumer = kafka
            .client_config(&format!("wasmhook-redrive-{subscription}"))
            .set("group.id", group_id(subscription))
            .set("enable.auto.commit", "false")
            .create()?;
        let metadata = reader.fetch_metadata(Some(&topic), timeout)?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| {
                !matches!(
                    t.error().map(RDKafkaErrorCode::from),
                    Some(
                        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
                    )
                )
            })
            .ok_or_else(|| RedriveError::MissingTopic(topic.clone()))?;
        if let Some(code) = found.error() {
            return Err(RedriveError::Kafka(format!(
                "topic {topic}: {}",
                RDKafkaErrorCode::from(code)
            )));
        }
        let mut list = TopicPartitionList::new();
        let mut marks = Vec::new();
        for partition in found.partitions() {
            let (low, high) = reader.fetch_watermarks(&topic, partition.id(), timeout)?;
            marks.push((partition.id(), low, high));
            list.add_partition(&topic, partition.id());
        }
        let committed = reader.committed_offsets(list, timeout)?;
        let partitions: Vec<_> = marks
            .into_iter()
            .map(|(partition, low, high)| {
                let done = committed
                    .find_partition(&topic, partition)
                    .and_then(|e| known(e.offset()));
                (partition, low, high, done)
            })
            .collect();
        Ok(RedrivePlan::of(topic, &partitions))
    })
    .await
    .map_err(|e| RedriveError::Kafka(format!("the redrive task failed: {e}")))?
}

/// How a redrive is going, as the status shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RedriveProgress {
    pub state: RedriveState,
    pub started_at: chrono::DateTime<chrono::Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub topic: String,
    /// Messages the redrive covers.
    pub messages: i64,
    /// Of those, brought to a final outcome so far.
    pub done: i64,
    pub delivered: i64,
    pub filtered: i64,
    pub denied: i64,
    /// Failed again, and dead-lettered again.
    pub dead_lettered: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RedriveState {
    Running,
    Done,
    /// Stopped by a shutdown: the next redrive goes on from where it was.
    Stopped,
    Failed,
}

/// This host's redrives: started by the API, run beside the pipelines.
#[derive(Clone, Default)]
pub struct Redrives {
    inner: Arc<RedrivesInner>,
}

#[derive(Default)]
struct RedrivesInner {
    /// The delivery engine's shared parts and its stop, once it runs.
    engine: OnceLock<(Arc<Shared>, CancellationToken)>,
    progress: Mutex<HashMap<Uuid, RedriveProgress>>,
}

impl Redrives {
    /// Called by the delivery engine when it starts.
    pub(super) fn attach(&self, shared: Arc<Shared>, stop: CancellationToken) {
        let _ = self.inner.engine.set((shared, stop));
    }

    /// The latest redrive of `subscription` on this host.
    pub fn progress(&self, subscription: Uuid) -> Option<RedriveProgress> {
        let progress = self.inner.progress.lock().expect("redrive lock");
        progress.get(&subscription).cloned()
    }

    /// Starts redriving `plan` for `stored`, unless one runs already.
    pub fn start(&self, stored: StoredSubscription, plan: RedrivePlan) -> Result<(), RedriveError> {
        let (shared, stop) = self.inner.engine.get().ok_or(RedriveError::NotStarted)?;
        {
            let mut progress = self.inner.progress.lock().expect("redrive lock");
            if progress
                .get(&stored.id)
                .is_some_and(|p| p.state == RedriveState::Running)
            {
                return Err(RedriveError::Running);
            }
            progress.insert(
                stored.id,
                RedriveProgress {
                    state: RedriveState::Running,
                    started_at: chrono::Utc::now(),
                    finished_at: None,
                    topic: plan.topic.clone(),
                    messages: plan.messages,
                    done: 0,
                    delivered: 0,
                    filtered: 0,
                    denied: 0,
                    dead_lettered: 0,
                    error: None,
                },
            );
        }
        let (shared, stop, redrives) = (shared.clone(), stop.child_token(), self.clone());
        tokio::spawn(async move {
            let id = stored.id;
            tracing::info!(subscription = %id, messages = plan.messages, topic = %plan.topic, "Redrive started.");
            let ended = run(&shared, &stored, &plan, &stop, &redrives).await;
            let (state, error) = match ended {
                Ok(true) => (RedriveState::Done, None),
                Ok(false) => (RedriveState::Stopped, None),
                Err(error) => (RedriveState::Failed, Some(error.to_string())),
            };
            tracing::info!(subscription = %id, state = ?state, error = ?error, "Redrive ended.");
            redrives.update(id, |p| {
                p.state = state;
                p.error = error;
                p.finished_at = Some(chrono::Utc::now());
            });
        });
        Ok(())
    }

    fn update(&self, subscription: Uuid, change: impl FnOnce(&mut RedriveProgress)) {
        let mut progress = self.inner.progress.lock().expect("redrive lock");
        if let Some(entry) = progress.get_mut(&subscription) {
            change(entry);
        }
    }
}

/// Delivers the plan's messages batch by batch; true when all were brought
/// to a final outcome, false when stopped first.
async fn run(
    shared: &Arc<Shared>,
    stored: &StoredSubscription,
    plan: &RedrivePlan,
    stop: &CancellationToken,
    redrives: &Redrives,
) -> Result<bool, RedriveError> {
    if plan.partitions.is_empty() {
        return Ok(true);
    }
    // Its own consumer states: a redrive's retries are not the pipeline's.
    let state = ConsumerStates::new("redrive").handle(stored.id);
    let mut deliverer = Deliverer::new(stored, shared.clone(), state);
    deliverer
        .arm(stored.tenant_id, &stored.spec)
        .await
        .map_err(|e| RedriveError::Kafka(e.to_string()))?;
    let consumer: StreamConsumer = shared
        .kafka
        .client_config(&format!("wasmhook-redrive-{}", stored.id))
        .set("group.id", group_id(stored.id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for range in &plan.partitions {
        assignment.add_partition_offset(
            &plan.topic,
            range.partition,
            Offset::Offset(range.from),
        )?;
        ends.insert(range.partition, range.to);
    }
    consumer.assign(&assignment)?;
    let consumer = Arc::new(consumer);
    let batch_size = stored.spec.configuration.batching.max_batch_size.get();

    let mut batch: Vec<Record> = Vec::new();
    let mut next: HashMap<i32, i64> = HashMap::new();
    let mut idle_since = tokio::time::Instant::now();
    // Set when nothing came for LINGER: the batch in hand goes out as it is.
    let mut lingered = false;
    let finished = loop {
        let all_read = ends
            .iter()
            .all(|(p, end)| next.get(p).copied().unwrap_or(i64::MIN) >= *end);
        if !batch.is_empty() && (batch.len() >= batch_size || all_read || lingered) {
            lingered = false;
            let records = std::mem::take(&mut batch);
            if !deliver(
                &mut deliverer,
                &consumer,
                plan,
                &next,
                records,
                stop,
                redrives,
                stored.id,
            )
            .await?
            {
                break false;
            }
            continue;
        }
        if all_read {
            break true;
        }
        let received = tokio::select! {
            _ = stop.cancelled() => break false,
            received = tokio::time::timeout(LINGER, consumer.recv()) => received,
        };
        let message = match received {
            // Nothing for a while: send what there is.
            Err(_) if !batch.is_empty() => {
                lingered = true;
                continue;
            }
            // The last offsets below the end may be unreadable (transaction
            // markers): what was read is all there is.
            Err(_) if idle_since.elapsed() > GIVE_UP_IDLE => break true,
            Err(_) => continue,
            Ok(Err(error)) => {
                tracing::warn!(subscription = %stored.id, error = %error, "Redrive: Kafka consumer error.");
                continue;
            }
            Ok(Ok(message)) => message,
        };
        idle_since = tokio::time::Instant::now();
        use rdkafka::Message;
        let (partition, offset) = (message.partition(), message.offset());
        let Some(&end) = ends.get(&partition) else {
            continue;
        };
        if offset >= end {
            // Dead-lettered since the redrive was asked for: not this one's.
            next.insert(partition, end);
            continue;
        }
        next.insert(partition, offset + 1);
        batch.push(restore(Record::from_kafka(&message)));
    };
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    Ok(finished)
}

/// How long a redrive waits for more before sending a partial batch.
const LINGER: Duration = Duration::from_millis(200);
/// How long a redrive waits, reading nothing, before it ends as done.
const GIVE_UP_IDLE: Duration = Duration::from_secs(30);

/// Delivers one batch, commits how far the redrive got and counts it;
/// false when stopped first.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    deliverer: &mut Deliverer,
    consumer: &Arc<StreamConsumer>,
    plan: &RedrivePlan,
    next: &HashMap<i32, i64>,
    records: Vec<Record>,
    stop: &CancellationToken,
    redrives: &Redrives,
    subscription: Uuid,
) -> Result<bool, RedriveError> {
    let Some(counts) = deliverer.deliver_all(&records, stop).await else {
        return Ok(false);
    };
    let mut done = TopicPartitionList::new();
    for (partition, offset) in next {
        done.add_partition_offset(&plan.topic, *partition, Offset::Offset(*offset))?;
    }
    let committing = consumer.clone();
    tokio::task::spawn_blocking(move || committing.commit(&done, CommitMode::Sync))
        .await
        .map_err(|e| RedriveError::Kafka(e.to_string()))??;
    redrives.update(subscription, |p| {
        p.done += records.len() as i64;
        p.delivered += counts.delivered;
        p.filtered += counts.filtered;
        p.denied += counts.denied;
        p.dead_lettered += counts.dead_lettered;
    });
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(headers: &[(&str, &str)]) -> Record {
        Record {
            topic: "webhooks-x-dlq".into(),
            partition: 0,
            offset: 7,
            timestamp: Some(1),
            key: Some(b"k".to_vec()),
            value: Some(b"{}".to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
                .collect(),
            value_is_json: false,
        }
    }

    #[test]
    fn a_dead_letter_is_restored_to_its_source_position_without_the_added_headers() {
        let restored = restore(letter(&[
            ("trace", "abc"),
            ("wasmhook-failure-reason", "HTTP 500"),
            ("wasmhook-delivery-id", "d1"),
            ("wasmhook-source-topic", "orders"),
            ("wasmhook-source-partition", "3"),
            ("wasmhook-source-offset", "41"),
        ]));
        assert_eq!(
            (restored.topic.as_str(), restored.partition, restored.offset),
            ("orders", 3, 41)
        );
        assert_eq!(
            restored.headers,
            [("trace".to_string(), Some(b"abc".to_vec()))]
        );
        assert_eq!(restored.key.as_deref(), Some(&b"k"[..]));
    }

    #[test]
    fn a_dead_letter_without_readable_source_headers_keeps_its_own_position() {
        let restored = restore(letter(&[
            ("wasmhook-source-topic", "orders"),
            ("wasmhook-source-partition", "three"),
        ]));
        assert_eq!(
            (restored.topic.as_str(), restored.offset),
            ("webhooks-x-dlq", 7)
        );
        assert!(restored.headers.is_empty());
    }

    #[test]
    fn a_plan_covers_what_was_not_redriven_up_to_the_end() {
        let plan = RedrivePlan::of(
            "dlq".into(),
            &[
                (0, 0, 10, None),
                (1, 5, 8, Some(2)),
                (2, 0, 4, Some(4)),
                (3, 0, 0, None),
            ],
        );
        assert_eq!(
            plan.partitions,
            [
                RedriveRange {
                    partition: 0,
                    from: 0,
                    to: 10
                },
                RedriveRange {
                    partition: 1,
                    from: 5,
                    to: 8
                },
            ]
        );
        assert_eq!(plan.messages, 13);
    }
}
