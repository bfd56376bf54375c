//! `GET /1/Subscription/{id}/Series`: what this host delivered for a
//! subscription over the last 15 minutes, in 10-second buckets, for the
//! status page's plots. Who may see it is who may see the subscription
//! (another tenant's is a 404, as for its status).
//!
//! The answer: `{"id", "kind": "WebhookSeries", "host", "bucket_seconds": 10,
//! "window_seconds": 900, "points": [...]}`, `host` naming the answering
//! host (each keeps its own figures in memory, as for `/metrics`: sum over
//! hosts for the whole picture). `points` are every bucket of the window,
//! oldest first, the last one still filling: `{"start", "delivered",
//! "filtered", "denied", "dead_lettered", "latency_samples",
//! "latency_mean_ms", "latency_max_ms"}`, the counts being messages that
//! reached that outcome in the bucket, the latencies from each delivered
//! message's Kafka timestamp to its delivery (null when none was measured).

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::auth::Principal;
use super::openapi::{ErrorAnswer, SubscriptionSeries};
use super::subscriptions::load;
use super::{ApiError, AppState};
use crate::delivery::series::{BUCKET_MS, WINDOW_MS};

#[utoipa::path(
    get,
    path = "/1/Subscription/{id}/Series",
    tag = "subscriptions",
    params(("id" = uuid::Uuid, Path, description = "The subscription's id")),
    responses(
        (status = 200, description = "This host's last 15 minutes in 10-second buckets", body = SubscriptionSeries),
        (status = 404, description = "No such subscription (or another tenant's)", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn series(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let stored = load(&state, &principal, &id).await?;
    let now = chrono::Utc::now().timestamp_millis();
    Ok(Json(json!({
        "id": stored.id,
        "kind": "WebhookSeries",
        "host": state.states.host(),
        "bucket_seconds": BUCKET_MS / 1000,
        "window_seconds": WINDOW_MS / 1000,
        "points": state.ledger.series(stored.id, now),
    })))
}
