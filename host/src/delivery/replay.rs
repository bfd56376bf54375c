//! Replay: delivering again from a point in time or from given offsets, the
//! Kafka way: by moving the subscription's consumer group.
//!
//! A running group cannot have its positions moved from outside (brokers
//! refuse commits from non-members while it has members), and stopping every
//! host's pipeline first would need the hosts to agree on when. So a replay
//! moves to a *new* group instead: generation `n + 1` of the subscription
//! ([`super::consumer::group_id`]). Its positions are committed before any
//! member joins it (any broker accepts that), then the registry's generation
//! and revision move, and every host restarts its pipeline in the new group,
//! which starts from those positions. The old group is left to the broker's
//! offset retention.
//!
//! Nothing is skipped by a replay from a time: a partition's new position is
//! the earlier of the time's offset and the old group's committed one, so
//! what the old group had not yet committed is delivered too (again, if it
//! was in flight: at least once). A partition not named in an offsets replay
//! keeps its committed position.
//!
//! This module computes the positions ([`targets`], pure) and talks to Kafka
//! ([`prepare`]); the registry's part is the caller's.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::kafka::KafkaConnection;

/// Where a replay starts.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayFrom {
    /// Every partition from its first message at or after this time.
    Time(chrono::DateTime<chrono::Utc>),
    /// These partitions from these offsets; the others stay where they are.
    Offsets(Vec<PartitionOffset>),
}

/// A position: the next message to deliver of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What Kafka says of one partition of a subscribed topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub topic: String,
    pub partition: i32,
    /// The first offset the topic still holds.
    pub low: i64,
    /// The offset the next message will get.
    pub high: i64,
    /// The current group's committed position, if any.
    pub committed: Option<i64>,
    /// The first offset at or after the replay's time (`None`: no message
    /// that late); only asked for a replay from a time.
    pub at_time: Option<i64>,
}

/// Why a replay cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("topic {0} does not exist")]
    MissingTopic(String),
    #[error("{topic} is not one of the subscription's topics ({subscribed})")]
    NotSubscribed { topic: String, subscribed: String },
    #[error("topic {topic} has no partition {partition}")]
    NoPartition { topic: String, partition: i32 },
    #[error("{topic}/{partition} is named more than once")]
    Duplicate { topic: String, partition: i32 },
    #[error(
        "offset {offset} of {topic}/{partition} is outside what the partition holds \
         ({low} to {high}; {high} is the next message's)"
    )]
    OutOfRange {
        topic: String,
        partition: i32,
        offset: i64,
        low: i64,
        high: i64,
    },
    #[error("no offsets given: name at least one partition")]
    NoOffsets,
    /// The brokers did not answer, or refused: trying again may work.
    #[error("Kafka: {0}")]
    Kafka(String),
}

impl ReplayError {
    /// True when the request itself is wrong (else Kafka is).
    pub fn is_bad_request(&self) -> bool {
        !matches!(self, ReplayError::Kafka(_))
    }
}

impl From<KafkaError> for ReplayError {
    fn from(error: KafkaError) -> Self {
        ReplayError::Kafka(error.to_string())
    }
}

/// Pure: the new group's positions. Every partition with a known position
/// gets one; a partition with none (nothing committed, not named) is left
/// to the group's `auto.offset.reset`, as it was in the old group.
pub fn targets(
    partitions: &[PartitionState],
    from: &ReplayFrom,
) -> Result<Vec<PartitionOffset>, ReplayError> {
    let position = |state: &PartitionState, offset: i64| PartitionOffset {
        topic: state.topic.clone(),
        partition: state.partition,
        offset,
    };
    match from {
        ReplayFrom::Time(_) => Ok(partitions
            .iter()
            .map(|state| {
                // No message that late: nothing to deliver again, and what
                // is not yet committed must not be skipped either.
                let at_time = state.at_time.unwrap_or(state.high);
                let offset = state.committed.map_or(at_time, |c| c.min(at_time));
                position(state, offset.max(state.low))
            })
            .collect()),
        ReplayFrom::Offsets(requested) => {
            if requested.is_empty() {
                return Err(ReplayError::NoOffsets);
            }
            let mut named = BTreeMap::new();
            for wanted in requested {
                let key = (wanted.topic.clone(), wanted.partition);
                if named.insert(key, wanted.offset).is_some() {
                    return Err(ReplayError::Duplicate {
                        topic: wanted.topic.clone(),
                        partition: wanted.partition,
                    });
                }
                let Some(state) = partitions
                    .iter()
                    .find(|s| s.topic == wanted.topic && s.partition == wanted.partition)
                else {
                    return Err(ReplayError::NoPartition {
                        topic: wanted.topic.clone(),
                        partition: wanted.partition,
                    });
                };
                if wanted.offset < state.low || wanted.offset > state.high {
                    return Err(ReplayError::OutOfRange {
                        topic: wanted.topic.clone(),
                        partition: wanted.partition,
                        offset: wanted.offset,
                        low: state.low,
                        high: state.high,
                    });
                }
            }
            Ok(partitions
                .iter()
                .filter_map(
                    |state| match named.get(&(state.topic.clone(), state.partition)) {
                        Some(offset) => Some(position(state, *offset)),
                        None => state.committed.map(|c| position(state, c)),
                    },
                )
                .collect())
        }
    }
}

/// Reads the subscription's partitions from Kafka, computes the positions
/// and commits them to the group `next_group` (which nobody has joined).
/// Blocking librdkafka calls run off the async runtime.
pub async fn prepare(
    kafka: &KafkaConnection,
    timeout: Duration,
    subscription: Uuid,
    current_group: String,
    next_group: String,
    topics: Vec<String>,
    from: ReplayFrom,
) -> Result<Vec<PartitionOffset>, ReplayError> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let client_id = format!("wasmhook-replay-{subscription}");
        if let ReplayFrom::Offsets(requested) = &from {
            let subscribed: HashSet<&str> = topics.iter().map(String::as_str).collect();
            if let Some(other) = requested
                .iter()
                .find(|p| !subscribed.contains(p.topic.as_str()))
            {
                return Err(ReplayError::NotSubscribed {
                    topic: other.topic.clone(),
                    subscribed: topics.join(", "),
                });
            }
        }
        let reader: BaseConsumer = kafka
            .client_config(&client_id)
            .set("group.id", &current_group)
            .set("enable.auto.commit", "false")
            .create()?;
        let states = read_partitions(&reader, &topics, &from, timeout)?;
        let positions = targets(&states, &from)?;
        if !positions.is_empty() {
            let writer: BaseConsumer = kafka
                .client_config(&client_id)
                .set("group.id", &next_group)
                .set("enable.auto.commit", "false")
                .create()?;
            let mut list = TopicPartitionList::new();
            for p in &positions {
                list.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.offset))?;
            }
            writer.commit(&list, CommitMode::Sync)?;
        }
        Ok(positions)
    })
    .await
    .map_err(|e| ReplayError::Kafka(format!("the replay task failed: {e}")))?
}

/// The partitions of `topics` with their watermarks, the committed
/// positions of the reader's group and, for a replay from a time, the
/// offsets for that time.
fn read_partitions(
    reader: &BaseConsumer,
    topics: &[String],
    from: &ReplayFrom,
    timeout: Duration,
) -> Result<Vec<PartitionState>, ReplayError> {
    let mut states = Vec::new();
    let mut list = TopicPartitionList::new();
    for topic in topics {
        let metadata = reader.fetch_metadata(Some(topic), timeout)?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(ReplayError::MissingTopic(topic.clone()));
        };
        if let Some(code) = found.error() {
            let code = RDKafkaErrorCode::from(code);
            return Err(match code {
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                    ReplayError::MissingTopic(topic.clone())
                }
                other => ReplayError::Kafka(format!("topic {topic}: {other}")),
            });
        }
        for partition in found.partitions() {
            let (low, high) = reader.fetch_watermarks(topic, partition.id(), timeout)?;
            states.push(PartitionState {
                topic: topic.clone(),
                partition: partition.id(),
                low,
                high,
                committed: None,
                at_time: None,
            });
            list.add_partition(topic, partition.id());
        }
    }
    let committed = reader.committed_offsets(list.clone(), timeout)?;
    let at_time = match from {
        ReplayFrom::Time(time) => {
            let mut wanted = TopicPartitionList::new();
            for state in &states {
                wanted.add_partition_offset(
                    &state.topic,
                    state.partition,
                    Offset::Offset(time.timestamp_millis()),
                )?;
            }
            Some(reader.offsets_for_times(wanted, timeout)?)
        }
        ReplayFrom::Offsets(_) => None,
    };
    for state in &mut states {
        state.committed = committed
            .find_partition(&state.topic, state.partition)
            .and_then(|e| known(e.offset()));
        state.at_time = at_time
            .as_ref()
            .and_then(|list| list.find_partition(&state.topic, state.partition))
            .and_then(|e| known(e.offset()));
    }
    Ok(states)
}

/// An offset Kafka reported as a position (not "none", "end" and the like).
pub(super) fn known(offset: Offset) -> Option<i64> {
    match offset {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(
        partition: i32,
        low: i64,
        high: i64,
        committed: Option<i64>,
        at_time: Option<i64>,
    ) -> PartitionState {
        PartitionState {
            topic: "orders".into(),
            partition,
            low,
            high,
            committed,
            at_time,
        }
    }

    fn at(partition: i32, offset: i64) -> PartitionOffset {
        PartitionOffset {
            topic: "orders".into(),
            partition,
            offset,
        }
    }

    fn time() -> ReplayFrom {
        ReplayFrom::Time(chrono::Utc::now())
    }

    #[test]
    fn a_replay_from_a_time_goes_back_to_the_times_offset() {
        let states = [state(0, 0, 100, Some(90), Some(40))];
        assert_eq!(targets(&states, &time()).unwrap(), [at(0, 40)]);
    }

    #[test]
    fn a_replay_from_a_time_never_skips_what_was_not_committed() {
        // The group lags behind the time: it goes on from its position.
        let states = [state(0, 0, 100, Some(20), Some(40))];
        assert_eq!(targets(&states, &time()).unwrap(), [at(0, 20)]);
        // No message that late: the committed position, not the end.
        let states = [state(1, 0, 100, Some(70), None)];
        assert_eq!(targets(&states, &time()).unwrap(), [at(1, 70)]);
    }

    #[test]
    fn a_replay_from_a_time_without_a_committed_position_starts_at_the_time() {
        let states = [state(0, 0, 100, None, Some(10)), state(1, 0, 5, None, None)];
        assert_eq!(targets(&states, &time()).unwrap(), [at(0, 10), at(1, 5)]);
    }

    #[test]
    fn a_position_below_what_the_partition_holds_moves_up_to_its_start() {
        let states = [state(0, 50, 100, Some(10), Some(60))];
        assert_eq!(targets(&states, &time()).unwrap(), [at(0, 50)]);
    }

    #[test]
    fn an_offsets_replay_moves_the_named_partitions_and_keeps_the_others() {
        let states = [
            state(0, 0, 100, Some(90), None),
            state(1, 0, 100, Some(80), None),
            state(2, 0, 100, None, None),
        ];
        let from = ReplayFrom::Offsets(vec![at(0, 3)]);
        assert_eq!(targets(&states, &from).unwrap(), [at(0, 3), at(1, 80)]);
    }

    #[test]
    fn an_offsets_replay_accepts_both_ends_of_a_partition() {
        let states = [state(0, 10, 100, None, None)];
        for offset in [10, 100] {
            let from = ReplayFrom::Offsets(vec![at(0, offset)]);
            assert_eq!(targets(&states, &from).unwrap(), [at(0, offset)]);
        }
    }

    #[test]
    fn an_offsets_replay_refuses_offsets_the_partition_does_not_hold() {
        let states = [state(0, 10, 100, None, None)];
        for offset in [9, 101, -1] {
            let from = ReplayFrom::Offsets(vec![at(0, offset)]);
            let error = targets(&states, &from).unwrap_err();
            assert!(matches!(error, ReplayError::OutOfRange { .. }), "{error}");
            assert!(error.to_string().contains("10 to 100"), "{error}");
        }
    }

    #[test]
    fn an_offsets_replay_refuses_unknown_partitions_duplicates_and_nothing() {
        let states = [state(0, 0, 100, None, None)];
        let unknown = targets(&states, &ReplayFrom::Offsets(vec![at(7, 0)])).unwrap_err();
        assert_eq!(unknown.to_string(), "topic orders has no partition 7");
        let twice = targets(&states, &ReplayFrom::Offsets(vec![at(0, 1), at(0, 2)])).unwrap_err();
        assert_eq!(twice.to_string(), "orders/0 is named more than once");
        let none = targets(&states, &ReplayFrom::Offsets(vec![])).unwrap_err();
        assert!(matches!(none, ReplayError::NoOffsets));
        assert!(none.is_bad_request());
        assert!(!ReplayError::Kafka("down".into()).is_bad_request());
    }
}
