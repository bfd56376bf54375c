//! The supervisor: keeps one running pipeline per active subscription while the
//! platform is online, and none while it is offline.
//!
//! It reconciles the running set with the registry whenever the local API
//! changes something (a `Notify`), whenever another host does (PostgreSQL
//! LISTEN/NOTIFY, see [`crate::registry`]'s change notifications), and every
//! `reconcile_interval` as a fallback; the fallback reads only ids and
//! revisions, and the full rows only when those changed. A pipeline whose subscription changed is stopped
//! and started again with the new spec, in the same consumer group, so it goes
//! on from the committed position. A pipeline that ended by itself (an error) is
//! restarted at the next reconcile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::alert::Alerter;
use super::dead_letter::DeadLetters;
use super::pipeline::{Ended, Pipeline, Shared};
use super::sender::Sender;
use super::state::{ConsumerState, ConsumerStates};
use crate::config::Settings;
use crate::registry::{Fingerprint, PlatformStatus, Registry, StoredSubscription};

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("could not build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("could not create the dead-letter producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Alert(#[from] super::alert::AlertError),
}

struct Running {
    revision: i64,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

pub struct Supervisor {
    shared: Arc<Shared>,
    changes: Arc<Notify>,
    running: HashMap<Uuid, Running>,
    /// What the running set was last reconciled against.
    seen: Option<Fingerprint>,
}

impl Supervisor {
    pub fn new(
        registry: Registry,
        changes: Arc<Notify>,
        settings: &Settings,
        engine: crate::plugin::PluginEngine,
        states: ConsumerStates,
        ledger: super::ledger::Ledger,
    ) -> Result<Self, SupervisorError> {
        let delivery = settings.delivery.clone();
        let (delivery_admin_timeout, dead_letter_layout) =
            (delivery.kafka_admin_timeout, delivery.dead_letter_topic);
        let sender = Sender::new(
            delivery.request_timeout,
            delivery.max_concurrent_deliveries,
            delivery.destinations.clone(),
        )?;
        let shared = Shared {
            registry,
            alerter: Alerter::new(
                settings.smtp.as_ref(),
                delivery.alert_interval,
                sender.clone(),
            )?,
            sender,
            dead_letters: DeadLetters::new(&settings.kafka)?,
            kafka: settings.kafka.clone(),
            settings: delivery,
            engine,
            states,
            ledger,
            hibernation: super::hibernation::Watcher::new(settings.kafka.clone()),
            dead_letter_topics: (
                crate::kafka::Topics::new(&settings.kafka, delivery_admin_timeout)?,
                dead_letter_layout,
            ),
        };
        Ok(Self {
            shared: Arc::new(shared),
            changes,
            running: HashMap::new(),
            seen: None,
        })
    }

    /// Lets `redrives` deliver with this engine's parts until `stop`.
    pub fn serve_redrives(&self, redrives: &super::redrive::Redrives, stop: CancellationToken) {
        redrives.attach(self.shared.clone(), stop);
    }

    pub async fn run(mut self, stop: CancellationToken) {
        let interval = self.shared.settings.reconcile_interval;
        self.shared.hibernation.spawn(stop.clone());
        self.shared
            .registry
            .listen_for_changes(self.changes.clone(), stop.clone());
        let mut notified = true;
        loop {
            self.reconcile(notified).await;
            notified = tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.changes.notified() => true,
                _ = tokio::time::sleep(interval) => false,
            };
        }
        let grace = self.shared.settings.shutdown_grace;
        let ids: Vec<Uuid> = self.running.keys().copied().collect();
        self.stop_all(&ids, grace).await;
        tracing::info!("Delivery stopped.");
    }

    /// Brings the running set in line with the registry. Unless told of a
    /// change (`notified`), it first compares the cheap fingerprint and stops
    /// there when nothing changed and no pipeline ended.
    async fn reconcile(&mut self, notified: bool) {
        let fingerprint = match self.shared.registry.fingerprint().await {
            Ok(fingerprint) => Some(fingerprint),
            Err(error) => {
                tracing::warn!(error = %error, "Could not read the registry's revisions.");
                None
            }
        };
        let any_ended = self.running.values().any(|r| r.task.is_finished());
        if !notified && !any_ended && fingerprint.is_some() && fingerprint == self.seen {
            return;
        }
        let desired = match self.desired().await {
            Ok(desired) => desired,
            Err(error) => {
                tracing::error!(error = %error, "Could not read the registry; keeping pipelines as they are.");
                return;
            }
        };
        let outdated: Vec<Uuid> = self
            .running
            .iter()
            .filter(|(id, running)| {
                running.task.is_finished()
                    || desired
                        .get(id)
                        .is_none_or(|s| s.revision != running.revision)
            })
            .map(|(id, _)| *id)
            .collect();
        // An outdated pipeline must leave its group before its successor joins.
        self.stop_all(&outdated, self.shared.settings.shutdown_grace)
            .await;
        // A pipeline no longer wanted here has nothing left to show.
        for id in &outdated {
            if !desired.contains_key(id) {
                self.shared.states.remove(*id);
            }
        }
        for (id, subscription) in desired {
            if !self.running.contains_key(&id) {
                self.start(subscription);
            }
        }
        self.seen = fingerprint;
    }

    /// The subscriptions that should be delivering now, by id.
    async fn desired(
        &self,
    ) -> Result<HashMap<Uuid, StoredSubscription>, crate::registry::RegistryError> {
        let registry = &self.shared.registry;
        if registry.admin_state().await?.status == PlatformStatus::Offline {
            return Ok(HashMap::new());
        }
        Ok(registry
            .list_subscriptions()
            .await?
            .into_iter()
            .filter(|s| s.spec.active.is_active())
            .map(|s| (s.id, s))
            .collect())
    }

    fn start(&mut self, subscription: StoredSubscription) {
        let id = subscription.id;
        let stop = CancellationToken::new();
        let pipeline = match Pipeline::new(&subscription, self.shared.clone()) {
            Ok(p) => p,
            Err(error) => {
                tracing::error!(subscription = %id, error = %error, "Pipeline could not be built.");
                return;
            }
        };
        let token = stop.clone();
        let shared = self.shared.clone();
        let revision = subscription.revision;
        let task = tokio::spawn(async move {
            let mut pipeline = pipeline;
            loop {
                match pipeline.run(token.clone()).await {
                    Ok(Ended::Stopped) => break,
                    // Asleep until a message arrives for it (or stopped:
                    // deleted, updated, offline, shutdown). Then the same
                    // subscription starts again in the same group.
                    Ok(Ended::Hibernated(marks)) => {
                        tokio::select! {
                            _ = token.cancelled() => {
                                shared.states.handle(id).set(ConsumerState::Stopped, None);
                                break;
                            }
                            _ = shared.hibernation.until_new_messages(marks) => {}
                        }
                        tracing::info!(subscription = %id, "Messages arrived; waking the pipeline.");
                        pipeline = match Pipeline::new(&subscription, shared.clone()) {
                            Ok(p) => p,
                            Err(error) => {
                                tracing::error!(subscription = %id, error = %error, "Pipeline could not be built; it restarts at the next reconcile.");
                                break;
                            }
                        };
                    }
                    Err(error) => {
                        tracing::error!(subscription = %id, error = %error, "Pipeline failed; it restarts at the next reconcile.");
                        break;
                    }
                }
            }
        });
        self.running.insert(
            id,
            Running {
                revision,
                stop,
                task,
            },
        );
    }

    /// Stops pipelines together; those not done within `grace` are aborted (their
    /// batch in hand is not committed and will be delivered again).
    async fn stop_all(&mut self, ids: &[Uuid], grace: Duration) {
        let stopping: Vec<(Uuid, Running)> = ids
            .iter()
            .filter_map(|id| self.running.remove(id).map(|r| (*id, r)))
            .collect();
        for (_, running) in &stopping {
            running.stop.cancel();
        }
        let deadline = tokio::time::Instant::now() + grace;
        for (id, mut running) in stopping {
            if tokio::time::timeout_at(deadline, &mut running.task)
                .await
                .is_err()
            {
                tracing::warn!(subscription = %id, "Pipeline did not stop within the grace period; abandoning its batch.");
                running.task.abort();
            }
        }
    }
}
