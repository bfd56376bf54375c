//! The WebSocket door: seed 004's protocol between WebSocket clients and
//! Kafka — create and list topics, subscribe with a consumer group and have
//! messages pushed, produce messages (ingest and delivery are the HTTP doors).
//!
//! - [`frame`]: the frames `{id, refid, t, a, s, p}`, parsed into commands,
//!   and the answers and pushed arrays; [`ConsumerGroup`], [`MqLimit`].
//! - `connection`: one socket — reader, writer, ping and idle timeout, and
//!   at most one subscription.
//! - [`consumer`]: a subscription's consumer, automatic or acknowledged
//!   commits, pausing its partitions when the client falls behind.
//! - [`buffer`]: the per-connection buffer of notifications and when to pause.
//! - [`acks`]: the contiguous acknowledged prefix per partition.
//! - [`producer`]: the process's one producer for `notif` frames.
//! - [`error`]: [`BridgeError`], worded once for the `s: 1` answers.
//!
//! `GET /1/ws` is authenticated like the rest of the API (merged into its
//! router, under its token check; browsers may send `?token=`), and a
//! tenant may create, produce to and subscribe to only the topics its ACL
//! allows, and sees only its own connections in `health`. Every Kafka
//! client starts from the shared [`KafkaConnection`]. It never imports
//! another door.

pub mod acks;
pub mod buffer;
mod connection;
pub mod consumer;
pub mod error;
pub mod frame;
pub mod producer;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::response::Response;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub use error::BridgeError;
pub use frame::{ConsumerGroup, MqLimit};

use crate::api::ApiError;
use crate::api::auth::Principal;
use crate::config::BridgeSettings;
use crate::kafka::{KafkaConnection, TopicLayout, Topics};
use buffer::Outbox;
use consumer::Gauges;
use producer::BridgeProducer;

/// Largest frame a client may send.
pub const MAX_FRAME_BYTES: usize = 2 << 20;

/// What every connection shares: one per process.
pub struct Bridge {
    kafka: KafkaConnection,
    topics: Topics,
    producer: BridgeProducer,
    settings: BridgeSettings,
    /// The layout of topics created by `create` frames (their partition
    /// count may be asked for).
    layout: TopicLayout,
    connections: Mutex<BTreeMap<u64, Arc<ConnectionState>>>,
    next_connection: AtomicU64,
    /// Cancelled at shutdown: every connection closes.
    stop: CancellationToken,
}

/// A connection as `health` sees it.
pub(crate) struct ConnectionState {
    id: u64,
    tenant: Option<Uuid>,
    outbox: Arc<Outbox>,
    view: Mutex<Option<View>>,
}

/// A connection's subscription as `health` shows it.
pub(crate) struct View {
    topics: Vec<String>,
    group: String,
    ack: bool,
    gauges: Arc<Gauges>,
}

impl ConnectionState {
    fn show(&self, view: Option<View>) {
        *self.view.lock().expect("view lock") = view;
    }
}

impl Bridge {
    /// The producer; nothing connects yet.
    pub fn new(
        kafka: &KafkaConnection,
        topics: Topics,
        layout: TopicLayout,
        settings: BridgeSettings,
    ) -> Result<Arc<Self>, rdkafka::error::KafkaError> {
        Ok(Arc::new(Self {
            kafka: kafka.clone(),
            topics,
            producer: BridgeProducer::new(kafka, &settings)?,
            settings,
            layout,
            connections: Mutex::new(BTreeMap::new()),
            next_connection: AtomicU64::new(1),
            stop: CancellationToken::new(),
        }))
    }

    /// `GET /1/ws` with its entry in the OpenAPI document, for the API's
    /// router to merge (and guard).
    pub fn router<S: Clone + Send + Sync + 'static>(self: &Arc<Self>) -> OpenApiRouter<S> {
        OpenApiRouter::default()
            .routes(routes!(upgrade))
            .with_state(self.clone())
    }

    /// Closes every connection (their consumers leave their groups) and
    /// waits for them, at most `within`.
    pub async fn shutdown(&self, within: Duration) {
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + within;
        while !self.connections().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.connections().len();
        if left > 0 {
            tracing::warn!(
                connections = left,
                "WebSocket connections did not close in time."
            );
        }
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ConnectionState>>> {
        self.connections.lock().expect("connections lock")
    }

    /// Registers a connection (`None` when shutting down).
    fn open(&self, tenant: Option<Uuid>) -> Option<Arc<ConnectionState>> {
        if self.stop.is_cancelled() {
            return None;
        }
        let id = self.next_connection.fetch_add(1, Ordering::SeqCst);
        let state = Arc::new(ConnectionState {
            id,
            tenant,
            outbox: Arc::new(Outbox::new(self.settings.push_limit.get())),
            view: Mutex::new(None),
        });
        self.connections().insert(id, state.clone());
        crate::telemetry::ws_connection(true);
        Some(state)
    }

    fn close(&self, id: u64) {
        if self.connections().remove(&id).is_some() {
            crate::telemetry::ws_connection(false);
        }
    }

    /// The seed's `{"consumers": [{"ws", "topics"}]}`, with each
    /// subscription's group, partitions and buffers: every connection's for
    /// the admin, a tenant's own for a tenant.
    fn health(&self, principal: &Principal) -> Value {
        let connections: Vec<Arc<ConnectionState>> = self.connections().values().cloned().collect();
        let consumers: Vec<Value> = connections
            .iter()
            .filter(|c| principal.sees(c.tenant))
            .filter_map(|c| {
                let view = c.view.lock().expect("view lock");
                let view = view.as_ref()?;
                let partitions: Vec<Value> = view
                    .gauges
                    .assignment()
                    .iter()
                    .map(|(topic, partition)| json!({"topic": topic, "partition": partition}))
                    .collect();
                Some(json!({
                    "ws": c.id,
                    "topics": view.topics,
                    "consumer_group": view.group,
                    "ack": view.ack,
                    "partitions": partitions,
                    "buffered": c.outbox.waiting(),
                    "sending": c.outbox.sending(),
                    "limit": c.outbox.limit(),
                    "unacked": view.gauges.unacked(),
                    "paused": view.gauges.paused(),
                    "consumed": view.gauges.consumed(),
                }))
            })
            .collect();
        json!({ "consumers": consumers })
    }
}

/// The WebSocket of seed 004's protocol (its frames are not described here).
#[utoipa::path(
    get,
    path = "/1/ws",
    tag = "bridge",
    params(("token" = Option<String>, Query,
        description = "The bearer token, for browsers (which cannot set the header)")),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade", body = crate::api::openapi::ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = crate::api::openapi::ErrorAnswer),
        (status = 503, description = "The server is shutting down", body = crate::api::openapi::ErrorAnswer),
    ),
    security(("bearer" = []))
)]
async fn upgrade(
    State(bridge): State<Arc<Bridge>>,
    principal: Principal,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::BadRequest(format!(
            "GET /1/ws is a WebSocket: {}",
            rejection.body_text()
        ))
    })?;
    if bridge.stop.is_cancelled() {
        return Err(ApiError::Unavailable("the server is shutting down".into()));
    }
    Ok(upgrade
        .max_message_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| connection::serve(bridge, principal, socket)))
}
