//! A subscription's consumer: one librdkafka consumer per subscribe frame,
//! in the frame's group, feeding the connection's [`Outbox`].
//!
//! Two ways to commit, chosen at subscribe time:
//! - automatic (seed 004's): librdkafka stores a message's offset when the
//!   consumer hands it over and commits every 500 ms, so whatever is
//!   buffered or in flight when the client goes away is lost to the group;
//! - acknowledged (`"ack": true`): offsets are stored only for the
//!   contiguous acknowledged prefix of each partition ([`AckTracker`]) and
//!   committed at once; a disconnect closes the consumer, the group
//!   rebalances, and the next member starts where the acknowledgements stop.
//!
//! Back-pressure: when the outbox is full (or, acknowledged, as many
//! messages are unacknowledged as the limit) every assigned partition is
//! paused, and partitions assigned meanwhile are paused as they come; they
//! resume when the client has caught up ([`should_pause`]). The loop keeps
//! polling while paused, so heartbeats and rebalances go on.
//!
//! It neither reads nor writes the socket.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::acks::{AckTracker, Acked};
use super::buffer::{Outbox, should_pause};
use super::frame::{ConsumerGroup, Notification, Position};
use crate::config::BridgeSettings;
use crate::kafka::KafkaConnection;

type Key = (String, i32);

/// What a subscription's consumer shows (health) and what its callbacks
/// tell the loop.
#[derive(Debug, Default)]
pub struct Gauges {
    assignment: Mutex<BTreeSet<Key>>,
    /// Lost in a rebalance, not yet forgotten by the loop.
    revoked: Mutex<Vec<Key>>,
    paused: AtomicBool,
    /// Pushed and not yet committed (acknowledged mode).
    unacked: AtomicUsize,
    /// Messages handed to the outbox.
    consumed: AtomicU64,
    rebalanced: Notify,
}

impl Gauges {
    pub fn assignment(&self) -> Vec<Key> {
        self.assignment
            .lock()
            .expect("assignment lock")
            .iter()
            .cloned()
            .collect()
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub fn unacked(&self) -> usize {
        self.unacked.load(Ordering::SeqCst)
    }

    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::SeqCst)
    }
}

/// The consumer's context: keeps the assignment and pauses what is assigned
/// while the connection is paused.
pub struct BridgeContext {
    connection: u64,
    gauges: Arc<Gauges>,
}

impl ClientContext for BridgeContext {}

fn keys(list: &TopicPartitionList) -> Vec<Key> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ConsumerContext for BridgeContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let lost = keys(partitions);
            {
                let mut assignment = self.gauges.assignment.lock().expect("assignment lock");
                for key in &lost {
                    assignment.remove(key);
                }
            }
            tracing::info!(
                connection = self.connection,
                partitions = lost.len(),
                "Bridge partitions revoked."
            );
            self.gauges
                .revoked
                .lock()
                .expect("revoked lock")
                .extend(lost);
            self.gauges.rebalanced.notify_one();
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                self.gauges
                    .assignment
                    .lock()
                    .expect("assignment lock")
                    .extend(keys(partitions));
                if self.gauges.paused()
                    && let Err(error) = consumer.pause(partitions)
                {
                    tracing::warn!(connection = self.connection, error = %error, "Could not pause newly assigned partitions.");
                }
                tracing::info!(
                    connection = self.connection,
                    partitions = partitions.count(),
                    "Bridge partitions assigned."
                );
                self.gauges.rebalanced.notify_one();
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(connection = self.connection, error = %error, "Bridge rebalance failed.");
            }
        }
    }
}

type BridgeConsumer = StreamConsumer<BridgeContext>;

/// An ack frame on its way to the consumer, and where its outcome goes.
pub struct AckRequest {
    pub positions: Vec<Position>,
    pub answer: oneshot::Sender<Acked>,
}

/// What a subscribe frame asked, its group resolved.
pub struct Wanted {
    pub topics: Vec<String>,
    pub group: ConsumerGroup,
    pub ack: bool,
    /// The tenant asking (`None`: the admin): a tenant's groups live in a
    /// namespace of its own.
    pub tenant: Option<uuid::Uuid>,
}

/// The Kafka group id for `group` as `tenant` names it: the admin's as
/// given, a tenant's prefixed with its id, so that two tenants allowed the
/// same topic never share (or steal from) each other's group.
pub fn kafka_group_id(tenant: Option<uuid::Uuid>, group: &ConsumerGroup) -> String {
    match tenant {
        None => group.as_str().to_string(),
        Some(tenant) => format!("wasmhook-tenant-{tenant}.{}", group.as_str()),
    }
}

/// A running subscription, as the connection holds it.
pub struct Subscription {
    pub topics: Vec<String>,
    pub group: ConsumerGroup,
    pub ack: bool,
    pub gauges: Arc<Gauges>,
    acks: mpsc::Sender<AckRequest>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Subscription {
    /// Creates the consumer, joins the group and starts feeding `outbox`.
    pub fn start(
        connection: u64,
        kafka: &KafkaConnection,
        settings: &BridgeSettings,
        wanted: Wanted,
        outbox: Arc<Outbox>,
        stop: CancellationToken,
    ) -> Result<Self, KafkaError> {
        let Wanted {
            topics,
            group,
            ack,
            tenant,
        } = wanted;
        let gauges = Arc::new(Gauges::default());
        let context = BridgeContext {
            connection,
            gauges: gauges.clone(),
        };
        let consumer: BridgeConsumer = config(
            connection,
            kafka,
            settings,
            &kafka_group_id(tenant, &group),
            ack,
        )
        .create_with_context(context)?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        let (acks, requests) = mpsc::channel(16);
        let task = tokio::spawn(run(
            connection,
            consumer,
            ack,
            outbox,
            requests,
            stop.clone(),
        ));
        tracing::info!(connection, group = group.as_str(), topics = ?topics, ack, "Bridge subscription started.");
        Ok(Self {
            topics,
            group,
            ack,
            gauges,
            acks,
            stop,
            task,
        })
    }

    /// Hands an ack frame to the consumer; `None` once it has stopped.
    pub async fn acknowledge(&self, positions: Vec<Position>) -> Option<Acked> {
        let (answer, outcome) = oneshot::channel();
        self.acks
            .send(AckRequest { positions, answer })
            .await
            .ok()?;
        outcome.await.ok()
    }

    /// Leaves the group (committing what is stored) and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(error) = self.task.await {
            tracing::error!(error = %error, "Bridge consumer task panicked.");
        }
    }
}

fn config(
    connection: u64,
    kafka: &KafkaConnection,
    settings: &BridgeSettings,
    group_id: &str,
    ack: bool,
) -> rdkafka::ClientConfig {
    let mut config = kafka.client_config(&format!("wasmhook-ws-{connection}"));
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        // The seed's autoCommitIntervalMs.
        .set("auto.commit.interval.ms", "500")
        // Acknowledged: only what the client acknowledged is ever stored.
        .set(
            "enable.auto.offset.store",
            if ack { "false" } else { "true" },
        )
        .set("auto.offset.reset", settings.start_from.as_kafka())
        // A vanished client's partitions move on within this.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "3000")
        .set("partition.assignment.strategy", "cooperative-sticky")
        // The seed's fetchMaxWaitMs.
        .set("fetch.wait.max.ms", "100")
        // What librdkafka prefetches stays modest: the outbox is the buffer.
        .set("queued.max.messages.kbytes", "4096")
        .set("queued.min.messages", "10000")
        .set("allow.auto.create.topics", "false")
        .set("topic.metadata.refresh.interval.ms", "5000");
    config
}

async fn run(
    connection: u64,
    consumer: BridgeConsumer,
    ack: bool,
    outbox: Arc<Outbox>,
    mut requests: mpsc::Receiver<AckRequest>,
    stop: CancellationToken,
) {
    let gauges = consumer.context().gauges.clone();
    let mut tracker = AckTracker::default();
    loop {
        let mut failed = false;
        tokio::select! {
            () = stop.cancelled() => break,
            received = consumer.recv() => match received {
                Ok(message) => {
                    let notification = Notification {
                        topic: message.topic().to_string(),
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        value: message.payload().map(<[u8]>::to_vec),
                    };
                    if ack {
                        tracker.pushed(&notification.topic, notification.partition, notification.offset);
                        gauges.unacked.store(tracker.outstanding(), Ordering::SeqCst);
                    }
                    outbox.put(notification);
                    gauges.consumed.fetch_add(1, Ordering::SeqCst);
                }
                Err(error) => {
                    tracing::warn!(connection, error = %error, "Bridge consumer error.");
                    failed = true;
                }
            },
            Some(request) = requests.recv() => {
                let acked = tracker.ack(&request.positions);
                gauges.unacked.store(tracker.outstanding(), Ordering::SeqCst);
                store_and_commit(connection, &consumer, &acked.commit);
                let _ = request.answer.send(acked);
            }
            () = outbox.drained.notified() => {}
            () = gauges.rebalanced.notified() => {
                let lost = std::mem::take(&mut *gauges.revoked.lock().expect("revoked lock"));
                if ack && !lost.is_empty() {
                    // Their next owner delivers them again from the committed position.
                    tracker.revoke(&lost);
                    gauges.unacked.store(tracker.outstanding(), Ordering::SeqCst);
                    outbox.forget(&lost);
                }
            }
        }
        let waiting = if ack {
            tracker.outstanding()
        } else {
            outbox.waiting()
        };
        set_paused(
            connection,
            &consumer,
            should_pause(gauges.paused(), waiting, outbox.limit()),
        );
        if failed {
            // Errors repeat while the brokers are away: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if ack {
        // What was pushed and not acknowledged goes to the group's next member.
        outbox.clear();
    }
    // Closing leaves the group and commits what is stored; it blocks.
    let closed = tokio::task::spawn_blocking(move || drop(consumer)).await;
    if closed.is_err() {
        tracing::error!(connection, "Closing the bridge consumer panicked.");
    }
    tracing::info!(connection, "Bridge subscription stopped.");
}

/// Stores the acknowledged positions and commits them at once (and, as a
/// safety net, at every auto-commit interval and when partitions move).
fn store_and_commit(connection: u64, consumer: &BridgeConsumer, commit: &[Position]) {
    if commit.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::with_capacity(commit.len());
    for position in commit {
        if let Err(error) = list.add_partition_offset(
            &position.topic,
            position.partition,
            Offset::Offset(position.offset),
        ) {
            tracing::error!(connection, error = %error, "Invalid offset to store.");
        }
    }
    // librdkafka refuses positions of partitions no longer assigned.
    if let Err(error) = consumer.store_offsets(&list) {
        tracing::warn!(connection, error = %error, "Could not store acknowledged positions (partitions revoked?); their next owner delivers them again.");
        return;
    }
    if let Err(error) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Async) {
        tracing::warn!(connection, error = %error, "Could not start a commit; auto-commit sends it later.");
    }
}

/// Pauses or resumes every assigned partition.
fn set_paused(connection: u64, consumer: &BridgeConsumer, paused: bool) {
    let gauges = &consumer.context().gauges;
    if gauges.paused.swap(paused, Ordering::SeqCst) == paused {
        return;
    }
    let list = match consumer.assignment() {
        Ok(list) => list,
        Err(error) => {
            tracing::warn!(connection, error = %error, "Could not read the assignment.");
            return;
        }
    };
    if list.count() > 0 {
        let result = if paused {
            consumer.pause(&list)
        } else {
            consumer.resume(&list)
        };
        if let Err(error) = result {
            tracing::warn!(connection, error = %error, paused, "Could not pause or resume.");
        }
    }
    tracing::debug!(connection, paused, "Bridge partitions paused or resumed.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_group_is_namespaced_and_the_admins_is_as_given() {
        let group = ConsumerGroup::parse("ingestion_1".into()).unwrap();
        assert_eq!(kafka_group_id(None, &group), "ingestion_1");
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        assert_eq!(
            kafka_group_id(Some(a), &group),
            format!("wasmhook-tenant-{a}.ingestion_1")
        );
        assert_ne!(
            kafka_group_id(Some(a), &group),
            kafka_group_id(Some(b), &group)
        );
    }
}
