//! Building and running the application: registry, REST server (with the
//! ingest routes and the WebSocket bridge), ingest's producer and delivery.
//!
//! `Application::build` does everything that can fail at start-up (find the
//! secret key, open and migrate the registry and check the key opens it, bind
//! the listener) so that `main` and the tests see
//! those errors before anything runs; `run_until_stopped` serves until the
//! given shutdown future completes, then stops delivery within its grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::bridge::Bridge;
use crate::config::{Settings, redact_url};
use crate::delivery::Supervisor;
use crate::delivery::ledger::Ledger;
use crate::delivery::redrive::Redrives;
use crate::delivery::state::ConsumerStates;
use crate::domain::AccessToken;
use crate::ingest::{Ingest, forwarder};
use crate::kafka::{BrokerHealth, Topics};
use crate::plugin::PluginEngine;
use crate::registry::Registry;
use crate::secrets::{KeyOrigin, resolve_key};

pub struct Application {
    listener: TcpListener,
    state: AppState,
    ingest: Arc<Ingest>,
    /// The WebSocket door (seed 004).
    bridge: Arc<Bridge>,
    /// Seed 001's forwarder, when configured: what start-up says about it.
    forwarder: Option<String>,
    settings: Settings,
    generated_admin_token: Option<AccessToken>,
    key_origin: KeyOrigin,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        if !crate::telemetry::install() {
            tracing::warn!(
                "Another metrics recorder is installed in this process: /metrics has nothing to show."
            );
        }
        let (key, key_origin) = resolve_key(settings.secrets.key.as_ref(), &settings.database_url)
            .context("finding the secret key")?;
        let registry = Registry::open_with(&settings.database_url, key)
            .await
            .with_context(|| {
                format!(
                    "opening the registry at {}",
                    redact_url(&settings.database_url)
                )
            })?;
        let generated_admin_token = bootstrap_admin(&registry, settings.admin_token.as_ref())
            .await
            .context("setting up the admin token")?;
        // One engine for the API (compiling uploads) and every pipeline, so a
        // component compiled at upload is reused from the cache by sha256.
        let engine =
            PluginEngine::new(settings.delivery.plugins).context("starting the plugin runtime")?;
        tracing::info!(
            brokers = settings.kafka.brokers(),
            security = %settings.kafka.describe(),
            "Kafka connection settings (every client uses them)."
        );
        // Builds clients only: nothing connects until a subscription is saved.
        let topics = Topics::new(&settings.kafka, settings.delivery.kafka_admin_timeout)
            .context("creating the Kafka admin client")?;
        let ingest = Ingest::new(&settings.kafka, topics.clone(), settings.ingest.clone())
            .context("creating the Kafka producer for ingest")?;
        let bridge = Bridge::new(
            &settings.kafka,
            topics.clone(),
            settings.delivery.dead_letter_topic,
            settings.bridge.clone(),
        )
        .context("creating the Kafka producer of the WebSocket bridge")?;
        let forwarder = match &settings.ingest.forwarder {
            None => None,
            Some(forwarding) => {
                let stored = forwarder::ensure(
                    &registry,
                    &topics,
                    settings.delivery.dead_letter_topic,
                    &settings.delivery.destinations,
                    &settings.ingest.log_topic,
                    forwarding,
                )
                .await
                .context("setting up seed 001's forwarder (--post-endpoint)")?;
                let line = format!(
                    "Forwarding topic {} to {} in batches of {} or every {} s, 3 retries 2 s                      apart (subscription {}, id {})",
                    settings.ingest.log_topic.as_str(),
                    forwarder::origin(forwarding),
                    forwarding.batch_size.get(),
                    forwarding.batch_interval.seconds(),
                    forwarder::FORWARDER_NAME,
                    stored.id,
                );
                tracing::info!(
                    subscription = %stored.id,
                    topic = settings.ingest.log_topic.as_str(),
                    endpoint = %forwarder::origin(forwarding),
                    batch_size = forwarding.batch_size.get(),
                    batch_interval_seconds = forwarding.batch_interval.seconds(),
                    "Seed 001's forwarder is configured."
                );
                Some(line)
            }
        };
        // Connects at the first /readyz.
        let broker =
            BrokerHealth::new(&settings.kafka).context("creating the Kafka health client")?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding the REST API to {}", settings.listen))?;
        Ok(Self {
            listener,
            state: AppState {
                registry,
                changes: Arc::new(Notify::new()),
                engine,
                max_plugin_bytes: settings.delivery.plugins.max_component_bytes,
                destinations: settings.delivery.destinations.clone(),
                secret_rotation_overlap: settings.secrets.rotation_overlap,
                states: ConsumerStates::new(host_name(settings.delivery.instance_id.as_deref())),
                ledger: Ledger::new(),
                topics,
                dead_letter_topic: settings.delivery.dead_letter_topic,
                broker,
                readiness_timeout: settings.server.readiness_timeout,
                kafka: settings.kafka.clone(),
                kafka_timeout: settings.delivery.kafka_admin_timeout,
                redrives: Redrives::default(),
            },
            ingest,
            bridge,
            forwarder,
            settings,
            generated_admin_token,
            key_origin,
        })
    }

    /// What seed 001's forwarder does, for the start-up banner (`None`: not configured).
    pub fn forwarder_banner(&self) -> Option<&str> {
        self.forwarder.as_deref()
    }

    /// Where the secret key came from, for the start-up banner.
    pub fn key_origin(&self) -> &KeyOrigin {
        &self.key_origin
    }

    /// The admin token this start generated (none was configured and none
    /// existed): the caller shows it once.
    pub fn generated_admin_token(&self) -> Option<&AccessToken> {
        self.generated_admin_token.as_ref()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn registry(&self) -> &Registry {
        &self.state.registry
    }

    /// Serves until `shutdown` completes. Then the API stops accepting, every
    /// pipeline stops fetching, and in-flight batches get `shutdown_grace` to
    /// finish; whatever has not finished is abandoned uncommitted (redelivered later).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(address = %self.local_addr(), "wasmhook started: serving the REST API.");
        let stop = CancellationToken::new();
        let supervisor = Supervisor::new(
            self.state.registry.clone(),
            self.state.changes.clone(),
            &self.settings,
            self.state.engine.clone(),
            self.state.states.clone(),
            self.state.ledger.clone(),
        )
        .context("starting the delivery engine")?;
        supervisor.serve_redrives(&self.state.redrives, stop.clone());
        let delivery = tokio::spawn(supervisor.run(stop.clone()));
        // Stopped after the delivery engine, so its last counts are written.
        let ledger_stop = CancellationToken::new();
        let ledger = tokio::spawn(
            self.state
                .ledger
                .clone()
                .run(self.state.registry.clone(), ledger_stop.clone()),
        );

        let router = api::router_with(
            self.state.clone(),
            self.settings.max_body_bytes,
            self.ingest.router().merge(self.bridge.router()),
        );
        let server_stop = stop.clone();
        let server = api::server::serve(self.listener, router, self.settings.server, async move {
            server_stop.cancelled().await
        });

        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("Shutting down.");
            trigger.cancel();
        });

        let served = server.await.context("serving the REST API");
        stop.cancel();
        // WebSocket connections outlive the server's own: close them, so
        // their consumers leave their groups.
        self.bridge
            .shutdown(std::time::Duration::from_secs(5))
            .await;
        // Records accepted with ack=none are still queued: send them.
        self.ingest.flush(std::time::Duration::from_secs(5)).await;
        match delivery.await {
            Ok(()) => {}
            Err(e) => tracing::error!(error = %e, "Delivery engine panicked."),
        }
        ledger_stop.cancel();
        let _ = ledger.await;
        self.state.registry.close().await;
        served
    }
}

/// Makes the configured admin token valid, or generates one when none is
/// configured and no admin token exists (returned, to be shown once).
async fn bootstrap_admin(
    registry: &Registry,
    configured: Option<&AccessToken>,
) -> anyhow::Result<Option<AccessToken>> {
    if let Some(token) = configured {
        registry.set_configured_admin_token(token).await?;
        return Ok(None);
    }
    if registry.has_admin_token().await? {
        return Ok(None);
    }
    let token = AccessToken::generate();
    registry
        .insert_token(&token, None, "generated at first start", None)
        .await?;
    Ok(Some(token))
}

/// How this host names itself in status: its instance id, or the machine's
/// host name and the process id (several processes may share a machine).
fn host_name(instance_id: Option<&str>) -> String {
    if let Some(id) = instance_id {
        return id.to_string();
    }
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into());
    format!("{}:{}", machine.trim(), std::process::id())
}
