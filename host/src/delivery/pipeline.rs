//! One subscription's pipeline: consume, filter, batch, run the plugins,
//! deliver, commit.
//!
//! The loop never stops polling its consumer: a flushed batch is delivered
//! (with its retries) by a task of its own while the loop goes on serving the
//! consumer, so heartbeats and rebalances proceed however slow the webhook.
//! Meanwhile the next batches fill and wait their turn in a bounded buffer;
//! at its high-water mark the partitions are paused, and resumed at half
//! (nothing fetched is lost: librdkafka fetches again from the last consumed
//! message on resume; a resume costs a fetch round trip, hence the marks).
//!
//! One batch in flight per lane keeps order per partition: a subscription has
//! one lane unless its `max_in_flight_batches` says more, and a partition is
//! in one lane at a time ([`super::lanes`]). Offsets are
//! stored for commit only after the batch they cover reached a final outcome
//! (delivered, filtered out, denied, or dead-lettered), and only for
//! partitions still owned in the epoch their messages were fetched in
//! ([`super::consumer`]). Checks of ownership happen at every rebalance (the
//! batch being filled drops what was revoked), at every flush and before every
//! commit. A batch in flight whose partitions were all revoked is abandoned:
//! their new owner delivers them.
//!
//! Plugins run on each flushed batch, as part of each delivery attempt until
//! one succeeds in preparing it; what a filter removes or a policy denies is a
//! final outcome. A plugin that fails fails the attempt, which is retried like
//! a failed request and finally dead-lettered with the reason.
//!
//! Stopping (delete, update, offline, shutdown) abandons the batches in hand
//! without committing them; they are fetched again by whoever consumes next.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::alert::{Alerter, Transition};
use super::batcher::{Flush, Positions};
use super::consumer::{self, COMMIT_FAILURES_BEFORE_PAUSE, PipelineConsumer, PipelineContext};
use super::dead_letter::{self, DeadLetters};
use super::failure::DeliveryFailure;
use super::filter::SourceFilters;
use super::health::{HealthKeeper, LaneHealth};
use super::hibernation::{self, Marks};
use super::lanes::Lanes;
use super::plugins::PluginStages;
use super::record::{self, Record};
use super::retry::RetrySchedule;
use super::sender::{Outcome, Sender, Target};
use super::state::{ConsumerState, ConsumerStates, StateHandle};
use crate::config::DeliverySettings;
use crate::domain::{PluginAttachment, SubscriptionSpec};
use crate::kafka::{TopicLayout, Topics};
use crate::plugin::PluginEngine;
use crate::registry::{Activity, Counts, DeadLetter, Health, Registry, StoredSubscription};

/// What every pipeline shares: the registry, the HTTP sender, the dead-letter
/// producer, the alerter, this host's consumer states and the settings.
pub struct Shared {
    pub registry: Registry,
    pub settings: DeliverySettings,
    pub kafka: crate::kafka::KafkaConnection,
    pub sender: Sender,
    pub dead_letters: DeadLetters,
    pub alerter: Alerter,
    pub engine: PluginEngine,
    pub states: ConsumerStates,
    /// Counters and attempts, written to the registry once a second.
    pub ledger: super::ledger::Ledger,
    /// Creates a dead-letter topic found missing, with this layout.
    pub dead_letter_topics: (Topics, TopicLayout),
    /// Wakes hibernating pipelines when messages arrive for them.
    pub hibernation: hibernation::Watcher,
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
    #[error("the delivery task ended abnormally: {0}")]
    Delivery(String),
}

/// How a pipeline ended without an error.
#[derive(Debug)]
pub enum Ended {
    /// Stopped from outside (delete, update, offline, shutdown).
    Stopped,
    /// Nothing left to deliver anywhere: its consumer is closed until a
    /// message arrives past these marks ([`super::hibernation`]).
    Hibernated(Marks),
}

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
    /// Its consumer group ([`consumer::group_id`]).
    group: String,
    /// One per lane; taken by the loop when it starts.
    deliverers: Vec<Deliverer>,
    /// Reports the health of the pipeline as a whole (its consumer).
    health: LaneHealth,
    shared: Arc<Shared>,
    state: StateHandle,
}

impl Pipeline {
    pub fn new(stored: &StoredSubscription, shared: Arc<Shared>) -> Result<Self, PipelineError> {
        let state = shared.states.handle(stored.id);
        let lanes = stored.spec.configuration.batching.in_flight_batches().get();
        let (deliverers, health) = Deliverer::lanes(stored, shared.clone(), state.clone(), lanes);
        Ok(Self {
            id: stored.id,
            tenant: stored.tenant_id,
            group: consumer::group_id(stored.id, stored.consumer_generation),
            spec: stored.spec.clone(),
            deliverers,
            health,
            shared,
            state,
        })
    }

    pub async fn run(self, stop: CancellationToken) -> Result<Ended, PipelineError> {
        let state = self.state.clone();
        state.set(ConsumerState::Starting, None);
        let result = self.consume(stop).await;
        match &result {
            Ok(Ended::Stopped) => state.set(ConsumerState::Stopped, None),
            Ok(Ended::Hibernated(_)) => state.hibernating(),
            Err(error) => state.set(ConsumerState::Failed, Some(error.to_string())),
        }
        result
    }

    async fn consume(mut self, stop: CancellationToken) -> Result<Ended, PipelineError> {
        let mut deliverers = std::mem::take(&mut self.deliverers);
        assert!(!deliverers.is_empty(), "a pipeline runs once");
        Deliverer::arm_lanes(&mut deliverers, self.tenant, &self.spec).await?;

        let consumer = consumer::create(
            self.id,
            &self.group,
            &self.shared.kafka,
            &self.shared.settings,
            PipelineContext::new(self.id, self.state.clone()),
        )
        .map_err(PipelineError::Consumer)?;
        consumer
            .subscribe(&self.spec.topics())
            .map_err(PipelineError::Subscribe)?;
        let consumer = Arc::new(consumer);
        tracing::info!(subscription = %self.id, topics = ?self.spec.topics(), "Pipeline started.");

        let result = self.run_loop(deliverers, &consumer, &stop).await;
        // Nothing is delivered from here on; closing may take a round trip.
        if !matches!(result, Ok(Ended::Hibernated(_))) {
            self.state.set(ConsumerState::Stopped, None);
        }

        // Closing a consumer commits what was stored and leaves the group, which
        // blocks on round trips (or for as long as the broker is unreachable). A
        // successor in the same group should join after it left, but shutdown
        // must not hang on a dead broker.
        let _ = off_runtime(CLOSE_TIMEOUT, move || drop(consumer)).await;
        match &result {
            Ok(Ended::Hibernated(_)) => {
                tracing::info!(subscription = %self.id, "Pipeline hibernating: nothing to deliver; its consumer is closed until a message arrives.");
            }
            _ => tracing::info!(subscription = %self.id, "Pipeline stopped."),
        }
        result
    }

    async fn run_loop(
        &mut self,
        deliverers: Vec<Deliverer>,
        consumer: &Arc<PipelineConsumer>,
        stop: &CancellationToken,
    ) -> Result<Ended, PipelineError> {
        let context = consumer.context();
        let filters = SourceFilters::new(&self.spec);
        // Each lane's batch being filled, its batch in flight, and the full
        // batches waiting behind it; one lane unless max_in_flight_batches.
        let mut lanes = Lanes::new(&self.spec.configuration.batching, deliverers);
        // Set while commits keep failing: nothing more is fetched or handed off.
        let mut commits_blocked = false;
        let mut consumer_errors = ConsumerErrors::default();
        let mut commit_tick = tokio::time::interval(COMMIT_CHECK_INTERVAL);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Hibernation: once the consumer joined its group, with nothing in
        // hand, the subscription's partitions are looked at every half
        // `hibernate_after`; two looks in a row that find it caught up
        // everywhere with the same marks put it to sleep. A look runs beside
        // the loop (the consumer must go on being polled: rebalances are
        // served while its messages are); any activity drops it and starts
        // the count again.
        let look_every = self.shared.settings.hibernate_after.map(|after| after / 2);
        let topics: Vec<String> = self.spec.topics().into_iter().map(str::to_string).collect();
        let mut joined = false;
        let mut last_activity = Instant::now();
        let mut looking: Option<JoinHandle<Option<Marks>>> = None;
        let mut quiet: Option<Marks> = None;
        let mut ended = Ended::Stopped;
        // One stream for the pipeline's life: each `recv()` would register
        // a waker slot with the consumer (two lock round trips per message).
        let mut messages = consumer.stream();

        loop {
            // Hand each lane's oldest batch to delivery as soon as both are ready.
            if !commits_blocked && lanes.hand_off(context, stop) {
                crate::telemetry::in_flight(self.id, lanes.in_flight());
            }
            // Fetching pauses while commits fail or while the batches waiting
            // behind those in flight reach the buffer's high-water mark, and
            // resumes at its low-water mark (hysteresis: a resume costs a
            // fetch round trip, so it must not happen for every batch).
            // Recomputed every turn: a rebalance may have emptied the buffer.
            if commits_blocked || lanes.is_high() {
                consumer::set_paused(consumer, true);
            } else if lanes.is_low() {
                consumer::set_paused(consumer, false);
            }
            let deadline = lanes.deadline().filter(|_| !commits_blocked);
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                (lane, done) = lanes.next_done(), if lanes.in_flight() > 0 => {
                    last_activity = Instant::now();
                    drop_look(&mut looking);
                    let (deliverer, positions) = done.map_err(|e| PipelineError::Delivery(e.to_string()))?;
                    lanes.done(lane, deliverer);
                    crate::telemetry::in_flight(self.id, lanes.in_flight());
                    if let Some(positions) = positions {
                        let stale = consumer::store_and_commit(consumer, &positions);
                        if stale > 0 {
                            tracing::info!(subscription = %self.id, partitions = stale, "Delivered batch not committed for partitions revoked meanwhile; their new owner delivers them again.");
                        }
                    }
                    commits_blocked = self.check_commits(consumer, commits_blocked);
                }
                _ = context.rebalanced.notified() => {
                    joined = true;
                    last_activity = Instant::now();
                    quiet = None;
                    drop_look(&mut looking);
                    let (dropped, abandoned) = lanes.retain_owned(context);
                    if dropped > 0 {
                        tracing::debug!(subscription = %self.id, dropped, "Dropped messages of revoked partitions from the batch being filled.");
                    }
                    if abandoned > 0 {
                        tracing::info!(subscription = %self.id, batches = abandoned, "Every partition of a batch in flight was revoked; abandoning it to the new owner.");
                    }
                    let ownership = context.ownership();
                    if self.state.state() == Some(ConsumerState::Starting)
                        && ownership.partitions().next().is_some()
                    {
                        self.state.set(ConsumerState::Running, None);
                    }
                }
                // Commit results arrive by callback (auto-commit's, every
                // second): looked at on every batch and on this tick. While
                // blocked, the tick commits synchronously, off the runtime, to
                // learn at first hand whether commits go through again.
                _ = commit_tick.tick() => {
                    // Refreshed, so that the gauge is never idle long
                    // enough for the exporter to drop it.
                    crate::telemetry::in_flight(self.id, lanes.in_flight());
                    if commits_blocked {
                        let committing = consumer.clone();
                        let result = off_runtime(COMMIT_TIMEOUT, move || {
                            committing.commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
                        })
                        .await;
                        context.record_commit(result);
                    }
                    commits_blocked = self.check_commits(consumer, commits_blocked);
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
                _ = sleep_until(last_activity + look_every.unwrap_or_default()),
                    if look_every.is_some() && joined && looking.is_none() && lanes.is_idle()
                        && !commits_blocked =>
                {
                    looking = Some(tokio::spawn(look(self.id, topics.clone(), consumer.clone())));
                }
                looked = async { looking.as_mut().expect("guarded").await }, if looking.is_some() => {
                    looking = None;
                    last_activity = Instant::now();
                    match looked.ok().flatten() {
                        Some(marks) if quiet.as_ref() == Some(&marks) => {
                            ended = Ended::Hibernated(marks);
                            break;
                        }
                        marks => quiet = marks,
                    }
                }
                received = messages.next().map(|next| next.expect("Kafka streams never end")) => {
                    // One clock reading serves the turn: it only takes what
                    // was fetched already (a few microseconds per message).
                    let now = Instant::now();
                    last_activity = now;
                    quiet = None;
                    drop_look(&mut looking);
                    // What else has arrived already is taken without a turn
                    // of this loop each (a turn sets up its futures and timers
                    // again): up to DRAIN_LIMIT messages, and only until some
                    // lane has a batch to hand off.
                    let mut received = received;
                    for taken in 1.. {
                        let message = match received {
                            Ok(message) => Record::from_kafka(&message),
                            Err(error) => {
                                // Persistent consumer trouble (brokers unreachable, a
                                // topic gone, no authorisation) is the subscription's
                                // health, not only a log line.
                                if let Some(reason) = consumer_errors.failed(&error) {
                                    self.state.set(ConsumerState::Running, Some(reason.clone()));
                                    self.health.set(Health::Unhealthy, Transition::Unhealthy { reason }).await;
                                }
                                tracing::warn!(subscription = %self.id, error = %error, "Kafka consumer error.");
                                sleep(Duration::from_millis(200)).await;
                                break;
                            }
                        };
                        consumer_errors.cleared();
                        take(context, &filters, &mut lanes, message, now, commits_blocked);
                        if taken == DRAIN_LIMIT || lanes.wants_hand_off(now) || lanes.is_high() {
                            break;
                        }
                        // (A message fetched here is always taken: the
                        // checks above come first.)
                        match messages.next().now_or_never().flatten() {
                            Some(next) => received = next,
                            None => break,
                        }
                    }
                }
            }
        }

        drop_look(&mut looking);
        crate::telemetry::in_flight(self.id, 0);
        // Stopping: the batches in flight get until the grace period ends
        // (the supervisor aborts us then); those that became final are stored
        // and committed when the consumer closes.
        for mut flight in lanes.stop() {
            if let Ok((_, Some(positions))) = (&mut flight.task).await {
                consumer::store_and_commit(consumer, &positions);
            }
        }
        Ok(ended)
    }

    /// Updates the back-pressure on commits: after repeated failures nothing
    /// more is fetched until a commit succeeds. Returns whether it is on.
    fn check_commits(&self, consumer: &PipelineConsumer, blocked: bool) -> bool {
        let (failures, last) = consumer.context().commit_failures();
        let block = failures >= COMMIT_FAILURES_BEFORE_PAUSE;
        if block && !blocked {
            let reason = format!(
                "{failures} commits failed in a row ({}); fetching is paused until one succeeds",
                last.as_deref().unwrap_or("no error text")
            );
            tracing::warn!(subscription = %self.id, reason = %reason, "Pausing the consumer.");
            self.state.set(ConsumerState::Paused, Some(reason));
        } else if !block && blocked {
            tracing::info!(subscription = %self.id, "Commits succeed again; resuming the consumer.");
            self.state.set(ConsumerState::Running, None);
        }
        block
    }
}

/// Takes a consumed message into its partition's lane, where a full batch
/// waits its turn while the lane (or committing) is busy; drops it when its
/// partition was revoked between fetch and now (its owner fetches it).
fn take(
    context: &PipelineContext,
    filters: &SourceFilters,
    lanes: &mut Lanes,
    mut message: Record,
    now: Instant,
    commits_blocked: bool,
) {
    let key = (message.topic.clone(), message.partition);
    let Some(epoch) = context.ownership().epoch(&key) else {
        return;
    };
    let passes = filters.passes(&mut message);
    lanes.take(&key, message, (epoch, now), passes, commits_blocked);
}

/// Looks whether subscription `id` is caught up everywhere (nothing is in
/// hand here when this is called): commits what this consumer may commit,
/// and returns the marks to sleep with, or `None` while something is still
/// to be delivered or committed.
async fn look(id: Uuid, topics: Vec<String>, consumer: Arc<PipelineConsumer>) -> Option<Marks> {
    let looking = consumer;
    let watched = topics.clone();
    let looked = off_runtime(hibernation::KAFKA_TIMEOUT * 4, move || {
        let facts = hibernation::read_facts(looking.as_ref(), &topics, hibernation::KAFKA_TIMEOUT)?;
        let look = hibernation::verdict(&facts);
        hibernation::commit(looking.as_ref(), &look.commit)?;
        Ok::<_, KafkaError>(look)
    })
    .await;
    match looked {
        Some(Ok(look)) => match look.busy {
            None => Some(Marks {
                topics: watched,
                highs: look.highs,
            }),
            Some(reason) => {
                tracing::debug!(subscription = %id, reason, "Not hibernating yet.");
                None
            }
        },
        Some(Err(error)) => {
            tracing::debug!(subscription = %id, error = %error, "Could not look whether the subscription may hibernate.");
            None
        }
        None => None,
    }
}

/// Drops a look under way: something happened since it began. (What it
/// commits, if it gets that far, was delivered when it read it.)
fn drop_look(looking: &mut Option<JoinHandle<Option<Marks>>>) {
    if let Some(look) = looking.take() {
        look.abort();
    }
}

/// Consumer errors in a row; past a while they are reported as unhealthy.
#[derive(Default)]
struct ConsumerErrors {
    since: Option<Instant>,
    reported: bool,
}

/// How long consumer errors must go on, with nothing consumed in between,
/// before they turn the subscription unhealthy (brief broker hiccups do not).
const CONSUMER_ERRORS_UNHEALTHY_AFTER: Duration = Duration::from_secs(30);

impl ConsumerErrors {
    /// Counts an error; returns the reason once, when they have lasted too long.
    fn failed(&mut self, error: &KafkaError) -> Option<String> {
        let since = *self.since.get_or_insert_with(Instant::now);
        if self.reported || since.elapsed() < CONSUMER_ERRORS_UNHEALTHY_AFTER {
            return None;
        }
        self.reported = true;
        Some(format!(
            "the Kafka consumer keeps failing ({error}) for {} s",
            since.elapsed().as_secs()
        ))
    }

    fn cleared(&mut self) {
        self.since = None;
        self.reported = false;
    }
}

/// Delivers batches: plugins, requests, retries, dead letters, health. It
/// moves into the task of its lane's batch in flight and back (and a redrive
/// has one of its own). The lanes of a pipeline each have one, with plugin
/// instances of its own; they share the subscription's rate limiter and
/// health.
pub(super) struct Deliverer {
    id: Uuid,
    target: Target,
    health: LaneHealth,
    schedule: RetrySchedule,
    /// The subscription's, shared by its lanes.
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    shared: Arc<Shared>,
    plugins: Option<PluginStages>,
    state: StateHandle,
}

impl Deliverer {
    /// A deliverer of its own (a redrive's).
    pub(super) fn new(
        stored: &StoredSubscription,
        shared: Arc<Shared>,
        state: StateHandle,
    ) -> Self {
        let (mut lanes, _) = Self::lanes(stored, shared, state, 1);
        lanes.pop().expect("one lane")
    }

    /// The deliverers of a pipeline's `lanes` (at least one), sharing the
    /// subscription's rate limiter and health; and the reporter of the
    /// pipeline's own health.
    pub(super) fn lanes(
        stored: &StoredSubscription,
        shared: Arc<Shared>,
        state: StateHandle,
        lanes: usize,
    ) -> (Vec<Self>, LaneHealth) {
        let spec = &stored.spec;
        let limiter = spec.configuration.rate_limit.map(|limit| {
            let per_second = NonZeroU32::new(limit.max_requests_per_second.per_second())
                .expect("a parsed rate limit is at least 1");
            Arc::new(RateLimiter::direct(Quota::per_second(per_second)))
        });
        let target = Target {
            url: spec.destination.webhook.url.url().clone(),
            headers: spec.destination.webhook.headers.clone(),
            secret: stored.signing_secret.clone(),
            previous_secret: stored.previous_secret.clone(),
        };
        let schedule = RetrySchedule::new(&spec.configuration.retry, &shared.settings);
        let (healths, pipeline) =
            LaneHealth::lanes(HealthKeeper::new(stored, shared.clone()), lanes.max(1));
        let deliverers = healths
            .into_iter()
            .map(|health| Self {
                id: stored.id,
                target: target.clone(),
                health,
                schedule: schedule.clone(),
                limiter: limiter.clone(),
                shared: shared.clone(),
                plugins: None,
                state: state.clone(),
            })
            .collect();
        (deliverers, pipeline)
    }

    /// Starts the plugins: the subscription's, and its tenant's mandatory
    /// policy (read now: nothing is delivered without it).
    pub(super) async fn arm(
        &mut self,
        tenant: Option<Uuid>,
        spec: &SubscriptionSpec,
    ) -> Result<(), PipelineError> {
        Self::arm_lanes(std::slice::from_mut(self), tenant, spec).await
    }

    /// Starts the plugins of every lane, reading the tenant's mandatory
    /// policy once. The first lane's are loaded and instantiated now, so that
    /// a plugin that cannot start shows at once; the other lanes load theirs
    /// on their first batch, so that plugin memory grows with the lanes in
    /// use rather than with those allowed (a partition goes to a lane of its
    /// own only while the others are busy).
    pub(super) async fn arm_lanes(
        lanes: &mut [Deliverer],
        tenant: Option<Uuid>,
        spec: &SubscriptionSpec,
    ) -> Result<(), PipelineError> {
        let Some(first) = lanes.first() else {
            return Ok(());
        };
        let mandatory = mandatory_policy(&first.shared, tenant).await?;
        for (index, lane) in lanes.iter_mut().enumerate() {
            let mut plugins = PluginStages::new(
                lane.id,
                spec,
                tenant,
                mandatory.as_ref(),
                &lane.shared.registry,
                &lane.shared.engine,
            );
            if index == 0 {
                // A plugin that cannot start does not stop the pipeline: its
                // batches fail their attempts (retried, then dead-lettered),
                // and its circuit breaker keeps it from being rebuilt for
                // every one of them.
                for failure in plugins.warm().await {
                    tracing::warn!(subscription = %lane.id, reason = %failure.reason, "Plugin could not start; its batches will fail until it does.");
                    lane.set_health(
                        Health::Unhealthy,
                        Transition::Unhealthy {
                            reason: failure.reason,
                        },
                    )
                    .await;
                }
            }
            lane.plugins = Some(plugins);
        }
        Ok(())
    }

    /// Tells the health board whether this lane has a batch in flight.
    pub(super) fn busy(&self, busy: bool) {
        self.health.busy(busy);
    }

    /// Brings `records` to a final outcome (delivered, filtered, denied or
    /// dead-lettered) and counts it; `None` when stopped first.
    pub(super) async fn deliver_all(
        &mut self,
        records: &[Record],
        stop: &CancellationToken,
    ) -> Option<Counts> {
        match self.deliver(records, stop).await {
            Ending::Final(counts) => {
                self.shared.ledger.add_counts(self.id, counts);
                Some(counts)
            }
            Ending::Abandoned => None,
        }
    }

    /// Brings a flushed batch to a final outcome; returns the positions to
    /// commit, or `None` when stopped (or revoked) first.
    pub(super) async fn finish(
        &mut self,
        flush: Flush,
        stop: &CancellationToken,
    ) -> Option<Positions> {
        let mut counts = Counts {
            filtered: flush.filtered as i64,
            ..Counts::default()
        };
        if !flush.records.is_empty() {
            match self.deliver(&flush.records, stop).await {
                Ending::Abandoned => return None,
                Ending::Final(outcome) => {
                    counts.delivered += outcome.delivered;
                    counts.filtered += outcome.filtered;
                    counts.denied += outcome.denied;
                    counts.dead_lettered += outcome.dead_lettered;
                }
            }
        }
        self.shared.ledger.add_counts(self.id, counts);
        Some(flush.positions)
    }

    /// Attempts a batch until it reaches a final outcome: each attempt runs
    /// the plugins (until they once succeed: their answer is kept across
    /// retries) and sends what they kept; failures are retried per the
    /// schedule, then the batch is dead-lettered.
    async fn deliver(&mut self, records: &[Record], stop: &CancellationToken) -> Ending {
        let mut retry = 0;
        let mut prepared = None;
        let mut plugins = self
            .plugins
            .take()
            .expect("plugins are set before delivery");
        let ending = loop {
            if stop.is_cancelled() {
                break Ending::Abandoned;
            }
            let ready = match prepared.take() {
                Some(ready) => ready,
                None => match plugins.prepare(records).await {
                    Ok(ready) => ready,
                    Err(failure) => {
                        let failure = DeliveryFailure::Plugin {
                            reason: failure.reason,
                            suspended: failure.suspended,
                        };
                        if let DeliveryFailure::Plugin {
                            suspended: Some(why),
                            ..
                        } = &failure
                        {
                            self.set_health(
                                Health::Unhealthy,
                                Transition::Unhealthy {
                                    reason: why.clone(),
                                },
                            )
                            .await;
                        }
                        let delivery_id = record::delivery_id(records);
                        match self
                            .wait_to_retry(&mut retry, &delivery_id, failure, stop)
                            .await
                        {
                            Retry::Again => continue,
                            Retry::Stopped => break Ending::Abandoned,
                            Retry::Exhausted(reason) => {
                                break self.give_up(records, &delivery_id, &reason, stop).await;
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
                break Ending::Final(outcome);
            }
            let delivery_id = record::delivery_id(&ready.kept);
            if let Some(limiter) = &self.limiter {
                tokio::select! {
                    _ = stop.cancelled() => break Ending::Abandoned,
                    _ = limiter.until_ready() => {}
                }
            }
            let started = Instant::now();
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
            // One line per request, whatever its outcome (status 0: no answer).
            tracing::info!(
                subscription = %self.id,
                delivery = %delivery_id,
                messages = ready.kept.len(),
                status = attempt.call.response_code,
                duration_ms = started.elapsed().as_millis() as u64,
                "Batch sent."
            );
            crate::telemetry::attempt(
                self.id,
                attempt.call.response_code,
                matches!(attempt.outcome, Outcome::Delivered),
                started.elapsed(),
            );
            self.shared
                .ledger
                .record(self.id, Activity::ApiCall(attempt.call));
            let failure = match attempt.outcome {
                Outcome::Delivered => {
                    self.shared
                        .ledger
                        .delivered(self.id, ready.kept.iter().map(|r| r.timestamp));
                    if retry > 0 {
                        self.state.set(ConsumerState::Running, None);
                    }
                    self.set_health(Health::Healthy, Transition::Recovered)
                        .await;
                    outcome.delivered = ready.kept.len() as i64;
                    break Ending::Final(outcome);
                }
                Outcome::Failed(failure) => failure,
            };
            match self
                .wait_to_retry(&mut retry, &delivery_id, failure, stop)
                .await
            {
                Retry::Again => prepared = Some(ready),
                Retry::Stopped => break Ending::Abandoned,
                Retry::Exhausted(reason) => {
                    break match self.give_up(&ready.kept, &delivery_id, &reason, stop).await {
                        Ending::Final(dead) => {
                            outcome.dead_lettered = dead.dead_lettered;
                            Ending::Final(outcome)
                        }
                        Ending::Abandoned => Ending::Abandoned,
                    };
                }
            }
        };
        self.plugins = Some(plugins);
        if retry > 0 && self.state.state() == Some(ConsumerState::Retrying) {
            self.state.set(ConsumerState::Running, None);
        }
        ending
    }

    /// Counts a failed attempt and waits per the retry schedule, unless the
    /// retries are used up.
    async fn wait_to_retry(
        &mut self,
        retry: &mut u32,
        delivery_id: &str,
        failure: DeliveryFailure,
        stop: &CancellationToken,
    ) -> Retry {
        *retry += 1;
        let jitter = rand::rng().random::<f64>();
        match self.schedule.delay(*retry, failure.retry_after(), jitter) {
            Some(wait) => {
                tracing::info!(subscription = %self.id, delivery = %delivery_id, retry = *retry, wait_ms = wait.as_millis() as u64, kind = failure.kind(), reason = %failure, "Delivery failed; retrying.");
                self.state
                    .set(ConsumerState::Retrying, Some(failure.to_string()));
                tokio::select! {
                    _ = stop.cancelled() => Retry::Stopped,
                    _ = sleep(wait) => Retry::Again,
                }
            }
            None => Retry::Exhausted(format!("{failure} (after {retry} attempts)")),
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
        let topic = dead_letter::topic_for(self.id);
        let written = dead_letter::write_until_acknowledged(
            &self.shared.dead_letters,
            dead_letter::Letter {
                topic: &topic,
                records,
                delivery_id,
                reason,
            },
            stop,
            &self.health,
            &self.state,
            &self.shared.dead_letter_topics,
        )
        .await;
        if !written {
            return Ending::Abandoned;
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
        Ending::Final(Counts {
            dead_lettered: records.len() as i64,
            ..Counts::default()
        })
    }

    async fn set_health(&mut self, health: Health, transition: Transition) {
        self.health.set(health, transition).await;
    }
}

/// The mandatory policy of `tenant` (`None`: the admin's subscription, or a
/// tenant without one).
async fn mandatory_policy(
    shared: &Shared,
    tenant: Option<Uuid>,
) -> Result<Option<PluginAttachment>, PipelineError> {
    let Some(tenant) = tenant else {
        return Ok(None);
    };
    Ok(shared
        .registry
        .get_tenant(tenant)
        .await
        .map_err(|e| PipelineError::Tenant(e.to_string()))?
        .ok_or_else(|| PipelineError::Tenant(format!("tenant {tenant} no longer exists")))?
        .spec
        .mandatory_policy)
}

/// How often a pipeline looks at its commits' results (and, while they keep
/// failing, sends its stored positions again).
const COMMIT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a synchronous commit (while commits keep failing) may take.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping pipeline waits for its consumer to leave the group.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most how many messages one turn of the loop takes from the consumer's
/// queue: enough that a turn's fixed cost is spread thin, few enough (a few
/// milliseconds' work) that a stop or a finished batch is not kept waiting.
const DRAIN_LIMIT: usize = 512;

/// Runs a blocking librdkafka call on a thread of its own and waits for it at
/// most `timeout`; `None` when it did not finish in time. A plain thread, not
/// tokio's blocking pool: a call stuck on an unreachable broker must not keep
/// the runtime (and so the process) from shutting down.
pub(super) async fn off_runtime<T: Send + 'static>(
    timeout: Duration,
    call: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = done.send(call());
    });
    tokio::time::timeout(timeout, result).await.ok()?.ok()
}
