//! One subscription's pipeline: consume, filter, batch, run the plugins,
//! deliver, commit.
//!
//! Plugins run on each flushed batch, as part of each delivery attempt until
//! one succeeds in preparing it; what a filter removes or a policy denies is
//! a final outcome, committed with the batch. A plugin that fails (traps,
//! overruns, errs, cannot start) fails the attempt, which is retried like a
//! failed request and finally dead-lettered with the reason; a plugin that
//! keeps failing turns the subscription unhealthy.
//!
//! The loop is sequential on purpose: one batch in flight per subscription keeps
//! order per partition, and offsets are committed only after the batch they
//! cover reached a final outcome (delivered, filtered out, or dead-lettered).
//! Stopping (delete, update, offline, shutdown) abandons the batch in hand
//! without committing it; it is fetched again by whoever consumes next.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::alert::{Alerter, Transition};
use super::batcher::{Batcher, Flush, Positions};
use super::dead_letter::{self, DeadLetters};
use super::filter::SourceFilters;
use super::plugins::PluginStages;
use super::record::{self, Record};
use super::retry::RetrySchedule;
use super::sender::{Outcome, Sender, Target};
use crate::config::DeliverySettings;
use crate::domain::SubscriptionSpec;
use crate::plugin::PluginEngine;
use crate::registry::{Activity, Counts, DeadLetter, Health, Registry, StoredSubscription};

/// What every pipeline shares: the registry, the HTTP sender, the dead-letter
/// producer, the alerter and the settings.
pub struct Shared {
    pub registry: Registry,
    pub settings: DeliverySettings,
    pub brokers: String,
    pub sender: Sender,
    pub dead_letters: DeadLetters,
    pub alerter: Alerter,
    pub engine: PluginEngine,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("could not create the Kafka consumer: {0}")]
    Consumer(#[source] KafkaError),
    #[error("could not subscribe to the topics: {0}")]
    Subscribe(#[source] KafkaError),
    /// Its tenant (and so its mandatory policy) could not be read: nothing
    /// is delivered without it.
    #[error("could not read the subscription's tenant: {0}")]
    Tenant(String),
}

/// Counts rebalances, so the loop can tell that the batch it holds may contain
/// messages of partitions it no longer owns.
pub struct PipelineContext {
    subscription: Uuid,
    generation: AtomicU64,
}

impl ClientContext for PipelineContext {}

impl ConsumerContext for PipelineContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            self.generation.fetch_add(1, Ordering::SeqCst);
            tracing::info!(subscription = %self.subscription, partitions = partitions.count(), "Partitions revoked.");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            tracing::info!(subscription = %self.subscription, partitions = partitions.count(), "Partitions assigned.");
        }
    }
}

type PipelineConsumer = StreamConsumer<PipelineContext>;

/// What to do after a failed attempt.
enum Retry {
    Again,
    Stopped,
    /// No retries left; the reason to dead-letter the batch with.
    Exhausted(String),
}

/// How a batch ended.
enum Ending {
    /// A final outcome for every message: its offsets may be committed.
    Final(Counts),
    /// Stopped before a final outcome: nothing may be committed.
    Abandoned,
}

pub struct Pipeline {
    id: Uuid,
    /// The owning tenant (`None`: the admin).
    tenant: Option<Uuid>,
    spec: SubscriptionSpec,
    target: Target,
    health: Health,
    schedule: RetrySchedule,
    limiter: Option<DefaultDirectRateLimiter>,
    shared: Arc<Shared>,
    /// Why it is unhealthy, as last recorded by this pipeline.
    reason: Option<String>,
    /// Final positions whose commit failed; sent again with the next commit.
    uncommitted: Positions,
}

impl Pipeline {
    pub fn new(stored: &StoredSubscription, shared: Arc<Shared>) -> Result<Self, PipelineError> {
        let spec = stored.spec.clone();
        let limiter = spec.configuration.rate_limit.map(|limit| {
            let per_second = NonZeroU32::new(limit.max_requests_per_second.per_second())
                .expect("a parsed rate limit is at least 1");
            RateLimiter::direct(Quota::per_second(per_second))
        });
        Ok(Self {
            id: stored.id,
            tenant: stored.tenant_id,
            target: Target {
                url: spec.destination.webhook.url.url().clone(),
                headers: spec.destination.webhook.headers.clone(),
                secret: stored.signing_secret.clone(),
                previous_secret: stored.previous_secret.clone(),
            },
            health: stored.health,
            reason: stored.status_reason.clone(),
            schedule: RetrySchedule::new(&spec.configuration.retry, &shared.settings),
            limiter,
            spec,
            shared,
            uncommitted: Positions::new(),
        })
    }

    fn consumer(&self) -> Result<Arc<PipelineConsumer>, PipelineError> {
        let settings = &self.shared.settings;
        // A pipeline does not poll while it waits between retries; the group must
        // not evict it for that, so the poll interval covers a whole retry run.
        let retries = self.schedule.max_retries + 1;
        let max_poll = (settings.retry_max_delay + settings.request_timeout) * retries
            + Duration::from_secs(60);
        let consumer: PipelineConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.shared.brokers)
            .set("group.id", format!("webhooks-{}", self.id))
            .set("client.id", format!("wasmhook-{}", self.id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", settings.start_from.as_kafka())
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "3000")
            .set("max.poll.interval.ms", max_poll.as_millis().to_string())
            .set("fetch.wait.max.ms", "100")
            // Notice topics created after the subscription within seconds, not minutes.
            .set("topic.metadata.refresh.interval.ms", "5000")
            .create_with_context(PipelineContext {
                subscription: self.id,
                generation: AtomicU64::new(0),
            })
            .map_err(PipelineError::Consumer)?;
        consumer
            .subscribe(&self.spec.topics())
            .map_err(PipelineError::Subscribe)?;
        Ok(Arc::new(consumer))
    }

    pub async fn run(mut self, stop: CancellationToken) -> Result<(), PipelineError> {
        let mandatory = match self.tenant {
            None => None,
            Some(tenant) => {
                self.shared
                    .registry
                    .get_tenant(tenant)
                    .await
                    .map_err(|e| PipelineError::Tenant(e.to_string()))?
                    .ok_or_else(|| {
                        PipelineError::Tenant(format!("tenant {tenant} no longer exists"))
                    })?
                    .spec
                    .mandatory_policy
            }
        };
        let mut plugins = PluginStages::new(
            self.id,
            &self.spec,
            self.tenant,
            mandatory.as_ref(),
            &self.shared.registry,
            &self.shared.engine,
        );
        // A plugin that cannot start does not stop the pipeline: its batches
        // fail their attempts (retried, then dead-lettered), and its circuit
        // breaker keeps it from being rebuilt for every one of them.
        for failure in plugins.warm().await {
            tracing::warn!(subscription = %self.id, reason = %failure.reason, "Plugin could not start; its batches will fail until it does.");
            self.set_health(
                Health::Unhealthy,
                Transition::Unhealthy {
                    reason: failure.reason,
                },
            )
            .await;
        }
        let consumer = self.consumer()?;
        tracing::info!(subscription = %self.id, topics = ?self.spec.topics(), "Pipeline started.");
        let filters = SourceFilters::new(&self.spec);
        let batching = self.spec.configuration.batching;
        let mut batcher = Batcher::new(
            batching.max_batch_size.get(),
            batching.max_batch_interval_seconds.duration(),
        );
        let mut generation = consumer.context().generation.load(Ordering::SeqCst);

        loop {
            let deadline = batcher.deadline();
            let flush = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => batcher.take(),
                received = consumer.recv() => {
                    let message = match received {
                        Ok(message) => Record::from_kafka(&message),
                        Err(error) => {
                            tracing::warn!(subscription = %self.id, error = %error, "Kafka consumer error.");
                            sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    };
                    let now_generation = consumer.context().generation.load(Ordering::SeqCst);
                    if now_generation != generation {
                        // Partitions were revoked: what we hold is fetched again from
                        // the committed positions by whoever owns them now.
                        generation = now_generation;
                        batcher.discard();
                    }
                    let full = if filters.passes(&message) {
                        batcher.push(message, Instant::now())
                    } else {
                        batcher.skip(&message, Instant::now());
                        false
                    };
                    if !full {
                        continue;
                    }
                    batcher.take()
                }
            };
            match self.finish(flush, &mut plugins, &stop).await {
                Some(positions) => self.commit(&consumer, positions).await,
                None => break,
            }
        }

        // Whatever reached a final outcome but failed to commit gets one more try.
        if !self.uncommitted.is_empty() {
            self.commit(&consumer, Positions::new()).await;
        }
        // Closing a consumer leaves the group, which blocks on a round trip (or
        // for as long as the broker is unreachable). A successor in the same group
        // should join after it left, but shutdown must not hang on a dead broker.
        let _ = off_runtime(CLOSE_TIMEOUT, move || drop(consumer)).await;
        tracing::info!(subscription = %self.id, "Pipeline stopped.");
        Ok(())
    }

    /// Brings a flushed batch to a final outcome; returns the positions to
    /// commit, or `None` when stopped first.
    async fn finish(
        &mut self,
        flush: Flush,
        plugins: &mut PluginStages,
        stop: &CancellationToken,
    ) -> Option<Positions> {
        let mut counts = Counts {
            filtered: flush.filtered as i64,
            ..Counts::default()
        };
        if !flush.records.is_empty() {
            match self.deliver(&flush.records, plugins, stop).await {
                Ending::Abandoned => return None,
                Ending::Final(outcome) => {
                    counts.delivered += outcome.delivered;
                    counts.filtered += outcome.filtered;
                    counts.denied += outcome.denied;
                    counts.dead_lettered += outcome.dead_lettered;
                }
            }
        }
        if let Err(error) = self.shared.registry.add_counts(self.id, counts).await {
            tracing::warn!(subscription = %self.id, error = %error, "Could not update the counters.");
        }
        Some(flush.positions)
    }

    /// Attempts a batch until it reaches a final outcome: each attempt runs
    /// the plugins (until they once succeed: their answer is kept across
    /// retries) and sends what they kept; failures are retried per the
    /// schedule, then the batch is dead-lettered.
    async fn deliver(
        &mut self,
        records: &[Record],
        plugins: &mut PluginStages,
        stop: &CancellationToken,
    ) -> Ending {
        let mut retry = 0;
        let mut prepared = None;
        loop {
            if stop.is_cancelled() {
                return Ending::Abandoned;
            }
            let ready = match prepared.take() {
                Some(ready) => ready,
                None => match plugins.prepare(records).await {
                    Ok(ready) => ready,
                    Err(failure) => {
                        if let Some(why) = failure.suspended {
                            self.set_health(
                                Health::Unhealthy,
                                Transition::Unhealthy { reason: why },
                            )
                            .await;
                        }
                        let delivery_id = record::delivery_id(records);
                        match self
                            .wait_to_retry(&mut retry, &delivery_id, failure.reason, None, stop)
                            .await
                        {
                            Retry::Again => continue,
                            Retry::Stopped => return Ending::Abandoned,
                            Retry::Exhausted(reason) => {
                                return self.give_up(records, &delivery_id, &reason, stop).await;
                            }
                        }
                    }
                },
            };
            let mut outcome = Counts {
                filtered: ready.filtered as i64,
                denied: ready.denied as i64,
                ..Counts::default()
            };
            if ready.kept.is_empty() {
                return Ending::Final(outcome);
            }
            let delivery_id = record::delivery_id(&ready.kept);
            if let Some(limiter) = &self.limiter {
                tokio::select! {
                    _ = stop.cancelled() => return Ending::Abandoned,
                    _ = limiter.until_ready() => {}
                }
            }
            let attempt = self
                .shared
                .sender
                .send(
                    &self.target,
                    &delivery_id,
                    &ready.content_type,
                    ready.body.clone(),
                )
                .await;
            if let Err(error) = self
                .shared
                .registry
                .record_activity(self.id, &Activity::ApiCall(attempt.call))
                .await
            {
                tracing::warn!(subscription = %self.id, error = %error, "Could not record the attempt.");
            }
            let (reason, retry_after) = match attempt.outcome {
                Outcome::Delivered => {
                    tracing::debug!(subscription = %self.id, delivery = %delivery_id, messages = ready.kept.len(), "Batch delivered.");
                    self.set_health(Health::Healthy, Transition::Recovered)
                        .await;
                    outcome.delivered = ready.kept.len() as i64;
                    return Ending::Final(outcome);
                }
                Outcome::Failed {
                    reason,
                    retry_after,
                } => (reason, retry_after),
            };
            match self
                .wait_to_retry(&mut retry, &delivery_id, reason, retry_after, stop)
                .await
            {
                Retry::Again => prepared = Some(ready),
                Retry::Stopped => return Ending::Abandoned,
                Retry::Exhausted(reason) => {
                    return match self.give_up(&ready.kept, &delivery_id, &reason, stop).await {
                        Ending::Final(dead) => {
                            outcome.dead_lettered = dead.dead_lettered;
                            Ending::Final(outcome)
                        }
                        Ending::Abandoned => Ending::Abandoned,
                    };
                }
            }
        }
    }

    /// Counts a failed attempt and waits per the retry schedule, unless the
    /// retries are used up.
    async fn wait_to_retry(
        &self,
        retry: &mut u32,
        delivery_id: &str,
        reason: String,
        retry_after: Option<Duration>,
        stop: &CancellationToken,
    ) -> Retry {
        *retry += 1;
        let jitter = rand::rng().random::<f64>();
        match self.schedule.delay(*retry, retry_after, jitter) {
            Some(wait) => {
                tracing::info!(subscription = %self.id, delivery = %delivery_id, retry = *retry, wait_ms = wait.as_millis() as u64, reason = %reason, "Delivery failed; retrying.");
                tokio::select! {
                    _ = stop.cancelled() => Retry::Stopped,
                    _ = sleep(wait) => Retry::Again,
                }
            }
            None => Retry::Exhausted(format!("{reason} (after {retry} attempts)")),
        }
    }

    /// Dead-letters `records`: final unless stopped first.
    async fn give_up(
        &mut self,
        records: &[Record],
        delivery_id: &str,
        reason: &str,
        stop: &CancellationToken,
    ) -> Ending {
        match self.dead_letter(records, delivery_id, reason, stop).await {
            true => Ending::Final(Counts {
                dead_lettered: records.len() as i64,
                ..Counts::default()
            }),
            false => Ending::Abandoned,
        }
    }

    /// Produces the batch to the dead-letter topic, retrying until acknowledged
    /// (nothing is committed before); false when stopped first.
    async fn dead_letter(
        &mut self,
        records: &[Record],
        delivery_id: &str,
        reason: &str,
        stop: &CancellationToken,
    ) -> bool {
        let topic = dead_letter::topic_for(self.id);
        let mut wait = Duration::from_millis(200);
        loop {
            match self
                .shared
                .dead_letters
                .publish(&topic, records, delivery_id, reason)
                .await
            {
                Ok(()) => break,
                Err(error) => {
                    tracing::error!(subscription = %self.id, error = %error, "Could not write to the dead-letter topic; retrying.");
                    tokio::select! {
                        _ = stop.cancelled() => return false,
                        _ = sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
        tracing::warn!(subscription = %self.id, delivery = %delivery_id, messages = records.len(), topic = %topic, reason, "Batch dead-lettered.");
        let entry = DeadLetter {
            timestamp: chrono::Utc::now(),
            delivery_id: delivery_id.to_string(),
            topic,
            messages: records.len() as i64,
            reason: reason.to_string(),
        };
        if let Err(error) = self
            .shared
            .registry
            .record_dead_letter(self.id, &entry)
            .await
        {
            tracing::warn!(subscription = %self.id, error = %error, "Could not record the dead letter.");
        }
        self.set_health(
            Health::Unhealthy,
            Transition::Unhealthy {
                reason: reason.to_string(),
            },
        )
        .await;
        true
    }

    /// Records a health transition once (across hosts) and alerts on it; a
    /// new reason for being unhealthy is recorded without a new alert.
    async fn set_health(&mut self, health: Health, transition: Transition) {
        let reason = match &transition {
            Transition::Unhealthy { reason } => Some(reason.as_str()),
            Transition::Recovered => None,
        };
        if self.health == health && self.reason.as_deref() == reason {
            return;
        }
        self.health = health;
        self.reason = reason.map(str::to_string);
        match self
            .shared
            .registry
            .set_health(self.id, health, reason)
            .await
        {
            Ok(true) => {
                alert(
                    &self.shared.alerter,
                    self.id,
                    &self.spec,
                    &self.target,
                    &transition,
                );
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(subscription = %self.id, error = %error, "Could not record the health change.")
            }
        }
    }

    async fn commit(&mut self, consumer: &Arc<PipelineConsumer>, positions: Positions) {
        for (key, offset) in positions {
            let slot = self.uncommitted.entry(key).or_insert(offset);
            *slot = (*slot).max(offset);
        }
        if self.uncommitted.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &self.uncommitted {
            if let Err(error) =
                list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            {
                tracing::error!(subscription = %self.id, error = %error, "Invalid offset to commit.");
            }
        }
        let consumer = consumer.clone();
        // A synchronous commit is a broker round trip: keep it off the async workers.
        let result = off_runtime(COMMIT_TIMEOUT, move || {
            consumer.commit(&list, CommitMode::Sync)
        })
        .await;
        match result {
            Some(Ok(())) => self.uncommitted.clear(),
            Some(Err(error)) => {
                tracing::warn!(subscription = %self.id, error = %error, "Commit failed; it will be sent again with the next one.")
            }
            None => {
                tracing::warn!(subscription = %self.id, "Commit did not answer in time; it will be sent again with the next one.")
            }
        }
    }
}

/// How long a commit may take before the pipeline goes on without it (the
/// positions stay pending and are sent again with the next commit).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping pipeline waits for its consumer to leave the group.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a blocking librdkafka call on a thread of its own and waits for it at
/// most `timeout`; `None` when it did not finish in time. A plain thread, not
/// tokio's blocking pool: a call stuck on an unreachable broker must not keep
/// the runtime (and so the process) from shutting down.
async fn off_runtime<T: Send + 'static>(
    timeout: Duration,
    call: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = done.send(call());
    });
    tokio::time::timeout(timeout, result).await.ok()?.ok()
}

/// Queues the alert (never waits): webhook alerts are signed as deliveries are.
fn alert(
    alerter: &Alerter,
    id: Uuid,
    spec: &SubscriptionSpec,
    target: &Target,
    transition: &Transition,
) {
    alerter.notify(
        id,
        spec.name.as_str(),
        spec.configuration.alerting.as_ref(),
        transition,
        &target.secret,
        target.previous_secret.as_ref(),
    );
}
