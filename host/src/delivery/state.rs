//! What each pipeline on this host is doing, for the status route: the
//! consumer's lifecycle (the states of a consumer library such as seed 002's)
//! and its lag per partition, as librdkafka's statistics last reported it.
//!
//! In memory only: every host knows its own pipelines, and the status route
//! shows the answering host's view beside the registry's shared health.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use rdkafka::statistics::Statistics;
use serde::Serialize;
use uuid::Uuid;

use super::batcher::PartitionKey;

/// Where a pipeline's consumer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerState {
    /// Created, joining its group, not yet assigned anything.
    Starting,
    /// Fetching and delivering.
    Running,
    /// Fetching paused: commits keep failing, so nothing more is taken on.
    Paused,
    /// A batch failed and waits for its next attempt (polling goes on).
    Retrying,
    /// Nothing to deliver anywhere: the consumer is closed (it left its
    /// group) until a message arrives, then it starts again.
    Hibernating,
    /// Stopped (switched off, updated, deleted, or the host shuts down).
    Stopped,
    /// Could not start or ended with an error; restarted at the next reconcile.
    Failed,
}

/// One partition's lag, as librdkafka last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// The partition's high watermark minus the committed position (-1: unknown).
    pub lag: i64,
    pub committed_offset: i64,
    pub high_watermark: i64,
}

/// One pipeline as this host sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConsumerView {
    pub host: String,
    pub state: ConsumerState,
    pub since: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// By partition; shown as a list in partition order.
    #[serde(serialize_with = "as_list")]
    #[schema(value_type = Vec<PartitionLag>)]
    pub partitions: BTreeMap<PartitionKey, PartitionLag>,
}

fn as_list<S: serde::Serializer>(
    partitions: &BTreeMap<PartitionKey, PartitionLag>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(partitions.values())
}

/// Every pipeline of this host, by subscription.
#[derive(Clone)]
pub struct ConsumerStates {
    host: Arc<str>,
    views: Arc<RwLock<HashMap<Uuid, ConsumerView>>>,
}

impl ConsumerStates {
    pub fn new(host: impl Into<Arc<str>>) -> Self {
        Self {
            host: host.into(),
            views: Arc::default(),
        }
    }

    /// How this host names itself in status.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// This host's view of `subscription`, if a pipeline for it ran here.
    pub fn get(&self, subscription: Uuid) -> Option<ConsumerView> {
        let views = self.views.read().expect("consumer states lock");
        views.get(&subscription).cloned()
    }

    pub fn handle(&self, subscription: Uuid) -> StateHandle {
        StateHandle {
            subscription,
            states: self.clone(),
        }
    }

    pub fn remove(&self, subscription: Uuid) {
        self.views
            .write()
            .expect("consumer states lock")
            .remove(&subscription);
    }

    fn update(&self, subscription: Uuid, change: impl FnOnce(&mut ConsumerView)) {
        let mut views = self.views.write().expect("consumer states lock");
        let view = views.entry(subscription).or_insert_with(|| ConsumerView {
            host: self.host.to_string(),
            state: ConsumerState::Starting,
            since: Utc::now(),
            reason: None,
            partitions: BTreeMap::new(),
        });
        change(view);
    }
}

/// A pipeline's handle on its own entry.
#[derive(Clone)]
pub struct StateHandle {
    subscription: Uuid,
    states: ConsumerStates,
}

impl StateHandle {
    /// Moves to `state`; the time is kept only when the state changes.
    pub fn set(&self, state: ConsumerState, reason: Option<String>) {
        self.states.update(self.subscription, |view| {
            if view.state != state {
                view.state = state;
                view.since = Utc::now();
            }
            view.reason = reason;
        });
    }

    pub fn state(&self) -> Option<ConsumerState> {
        let views = self.states.views.read().expect("consumer states lock");
        views.get(&self.subscription).map(|view| view.state)
    }

    /// Moves to [`ConsumerState::Hibernating`]: no partition is held, and
    /// none has lag (it sleeps only when caught up).
    pub fn hibernating(&self) {
        self.states.update(self.subscription, |view| {
            for (topic, partition) in view.partitions.keys() {
                crate::telemetry::lag(self.subscription, topic, *partition, 0);
            }
            view.partitions.clear();
        });
        self.set(ConsumerState::Hibernating, None);
    }

    pub fn forget_partitions(&self, partitions: &[PartitionKey]) {
        self.states.update(self.subscription, |view| {
            for key in partitions {
                view.partitions.remove(key);
            }
        });
    }

    /// Shows newly assigned partitions at once, their lag unknown (-1) until
    /// the next statistics.
    pub fn assigned(&self, partitions: &[PartitionKey]) {
        self.states.update(self.subscription, |view| {
            for (topic, partition) in partitions {
                view.partitions
                    .entry((topic.clone(), *partition))
                    .or_insert_with(|| PartitionLag {
                        topic: topic.clone(),
                        partition: *partition,
                        lag: -1,
                        committed_offset: -1,
                        high_watermark: -1,
                    });
            }
        });
    }

    /// Takes the lag of every partition `owned` says the consumer owns from
    /// librdkafka's statistics (which list every partition it knows of).
    pub fn record_lag(&self, statistics: &Statistics, owned: impl Fn(&PartitionKey) -> bool) {
        let lags = lags_of(statistics, owned);
        for ((topic, partition), lag) in &lags {
            // Unknown until the first fetch (-1): not reported.
            if lag.lag >= 0 {
                crate::telemetry::lag(self.subscription, topic, *partition, lag.lag);
            }
        }
        self.states
            .update(self.subscription, |view| view.partitions = lags);
    }
}

/// The lag of each owned partition in the statistics.
fn lags_of(
    statistics: &Statistics,
    owned: impl Fn(&PartitionKey) -> bool,
) -> BTreeMap<PartitionKey, PartitionLag> {
    let mut lags = BTreeMap::new();
    for (name, topic) in &statistics.topics {
        for (number, partition) in &topic.partitions {
            if *number < 0 || !owned(&(name.clone(), *number)) {
                continue;
            }
            lags.insert(
                (name.clone(), *number),
                PartitionLag {
                    topic: name.clone(),
                    partition: *number,
                    lag: partition.consumer_lag,
                    committed_offset: partition.committed_offset,
                    high_watermark: partition.hi_offset,
                },
            );
        }
    }
    lags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_keeps_its_time_until_it_changes() {
        let states = ConsumerStates::new("host-a");
        let id = Uuid::new_v4();
        let handle = states.handle(id);
        handle.set(ConsumerState::Running, None);
        let since = states.get(id).unwrap().since;
        handle.set(ConsumerState::Running, None);
        assert_eq!(states.get(id).unwrap().since, since);
        handle.set(
            ConsumerState::Retrying,
            Some("the webhook answered 500".into()),
        );
        let view = states.get(id).unwrap();
        assert_eq!(view.state, ConsumerState::Retrying);
        assert_eq!(view.host, "host-a");
        assert_eq!(view.reason.as_deref(), Some("the webhook answered 500"));
        states.remove(id);
        assert!(states.get(id).is_none());
    }

    #[test]
    fn lag_is_read_from_librdkafka_statistics_for_owned_partitions_only() {
        let window = r#"{"min":0,"max":0,"avg":0,"sum":0,"stddev":0,"p50":0,"p75":0,"p90":0,"p95":0,"p99":0,"p99_99":0,"outofrange":0,"hdrsize":0,"cnt":0}"#;
        let text = format!(
            r#"{{"name": "c", "client_id": "c", "type": "consumer", "ts": 0, "time": 0,
            "age": 0, "replyq": 0, "msg_cnt": 0, "msg_size": 0, "msg_max": 0,
            "msg_size_max": 0, "tx": 0, "tx_bytes": 0, "rx": 0, "rx_bytes": 0,
            "txmsgs": 0, "txmsg_bytes": 0, "rxmsgs": 0, "rxmsg_bytes": 0,
            "simple_cnt": 0, "metadata_cache_cnt": 0, "brokers": {{}},
            "topics": {{"orders": {{"topic": "orders", "age": 0, "metadata_age": 0,
                "batchsize": {window}, "batchcnt": {window},
                "partitions": {{"0": {}, "1": {}, "-1": {}}}}}}}}}"#,
            partition(0, "active", 7),
            partition(1, "none", 0),
            partition(-1, "none", 0)
        );
        let statistics: Statistics = serde_json::from_str(&text).expect("statistics parse");
        let lags = lags_of(&statistics, |(_, partition)| *partition == 0);
        assert_eq!(lags.len(), 1);
        assert_eq!(lags[&("orders".to_string(), 0)].lag, 7);
    }

    fn partition(number: i32, fetch_state: &str, lag: i64) -> String {
        format!(
            r#"{{"partition": {number}, "broker": 1, "leader": 1, "desired": {desired},
            "unknown": false, "msgq_cnt": 0, "msgq_bytes": 0, "xmit_msgq_cnt": 0,
            "xmit_msgq_bytes": 0, "fetchq_cnt": 0, "fetchq_size": 0,
            "fetch_state": "{fetch_state}", "query_offset": 0, "next_offset": 0,
            "app_offset": 0, "stored_offset": 0, "committed_offset": 3,
            "committed_leader_epoch": -1, "eof_offset": 0, "lo_offset": 0,
            "hi_offset": 10, "ls_offset": 10, "consumer_lag": {lag},
            "consumer_lag_stored": {lag}, "txmsgs": 0, "txbytes": 0, "rxmsgs": 0,
            "rxbytes": 0, "msgs": 0, "rx_ver_drops": 0, "msgs_inflight": 0,
            "next_ack_seq": 0, "next_err_seq": 0, "acked_msgid": 0}}"#,
            desired = number == 0
        )
    }
}
