//! `/1/Subscription/{id}/Replay` and `/1/Subscription/{id}/DeadLetter/Redrive`:
//! delivering again, from Kafka.
//!
//! Replay moves the subscription to its next consumer group, positioned at a
//! time or at given offsets ([`crate::delivery::replay`]); every host's
//! pipeline restarts there. Redrive delivers again what the dead-letter topic
//! holds, on this host ([`crate::delivery::redrive`]). Both answer 202 with
//! what they will deliver; the status shows how it goes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Principal;
use super::json::ApiJson;
use super::openapi::{ErrorAnswer, Redriven, Replayed};
use super::subscriptions::load;
use super::{ApiError, AppState};
use crate::delivery::consumer::group_id;
use crate::delivery::redrive::{self, RedriveError};
use crate::delivery::replay::{self, PartitionOffset, ReplayError, ReplayFrom};
use crate::registry::PlatformStatus;

/// `{"from": "<RFC 3339 time>"}` or `{"offsets": [{"topic", "partition", "offset"}]}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Replay from this time (RFC 3339), never past the committed position.
    #[schema(format = DateTime)]
    from: Option<String>,
    /// Or from these positions.
    offsets: Option<Vec<PartitionOffset>>,
}

impl ReplayRequest {
    /// Exactly one of the two, the time parsed.
    fn parse(self) -> Result<ReplayFrom, ApiError> {
        match (self.from, self.offsets) {
            (Some(from), None) => chrono::DateTime::parse_from_rfc3339(&from)
                .map(|t| ReplayFrom::Time(t.with_timezone(&chrono::Utc)))
                .map_err(|e| ApiError::InvalidField {
                    field: "from".into(),
                    message: format!(
                        "{from:?} is not an RFC 3339 time ({e}), e.g. 2026-11-23T10:00:00Z"
                    ),
                }),
            (None, Some(offsets)) => Ok(ReplayFrom::Offsets(offsets)),
            (Some(_), Some(_)) => Err(ApiError::BadRequest(
                "give either from or offsets, not both".into(),
            )),
            (None, None) => Err(ApiError::BadRequest(
                "say where to replay from: {\"from\": \"<RFC 3339 time>\"} or \
                 {\"offsets\": [{\"topic\", \"partition\", \"offset\"}]}"
                    .into(),
            )),
        }
    }
}

#[utoipa::path(
    post,
    path = "/1/Subscription/{id}/Replay",
    tag = "subscriptions",
    params(("id" = uuid::Uuid, Path, description = "The subscription's id")),
    request_body = ReplayRequest,
    responses(
        (status = 202, description = "Moved to the next consumer group, positioned as asked", body = Replayed),
        (status = 400, description = "Invalid fields (each listed in `errors`), or not JSON", body = ErrorAnswer),
        (status = 408, description = "The body did not arrive in time", body = ErrorAnswer),
        (status = 413, description = "The body is over the limit", body = ErrorAnswer),
        (status = 415, description = "The body is not application/json", body = ErrorAnswer),
        (status = 404, description = "No such subscription (or another tenant's)", body = ErrorAnswer),
        (status = 409, description = "A subscribed topic does not exist, or the subscription changed meanwhile", body = ErrorAnswer),
        (status = 503, description = "The brokers do not answer", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn replay(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ReplayRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let from = request.parse()?;
    let current = load(&state, &principal, &id).await?;
    let next_group = group_id(current.id, current.consumer_generation + 1);
    let positions = replay::prepare(
        &state.kafka,
        state.kafka_timeout,
        current.id,
        group_id(current.id, current.consumer_generation),
        next_group.clone(),
        current
            .spec
            .topics()
            .into_iter()
            .map(String::from)
            .collect(),
        from,
    )
    .await
    .map_err(|error| match error {
        ReplayError::MissingTopic(_) => ApiError::Conflict(error.to_string()),
        ReplayError::Kafka(_) => ApiError::Unavailable(error.to_string()),
        other => ApiError::InvalidField {
            field: "offsets".into(),
            message: other.to_string(),
        },
    })?;
    // Only now, with the positions in place: every host moves to the group.
    let moved = state.registry.advance_consumer_generation(&current).await?;
    state.changes.notify_one();
    tracing::info!(subscription = %moved.id, group = %next_group, partitions = positions.len(), "Replay: moved to the next consumer group.");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "subscription": moved.id,
            "consumer_group": next_group,
            "partitions": positions,
        })),
    ))
}

#[utoipa::path(
    post,
    path = "/1/Subscription/{id}/DeadLetter/Redrive",
    tag = "subscriptions",
    params(("id" = uuid::Uuid, Path, description = "The subscription's id")),
    responses(
        (status = 202, description = "Delivering the dead-letter topic again; the status shows how it goes", body = Redriven),
        (status = 404, description = "No such subscription (or another tenant's)", body = ErrorAnswer),
        (status = 409, description = "The platform is offline, the topic is missing, or a redrive runs", body = ErrorAnswer),
        (status = 503, description = "The brokers do not answer, or delivery has not started", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn redrive(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let stored = load(&state, &principal, &id).await?;
    if state.registry.admin_state().await?.status == PlatformStatus::Offline {
        return Err(ApiError::Conflict(
            "the platform is offline: nothing is delivered until it is online".into(),
        ));
    }
    let plan = redrive::plan(&state.kafka, state.kafka_timeout, stored.id)
        .await
        .map_err(redrive_error)?;
    let body = json!({
        "subscription": stored.id,
        "topic": plan.topic,
        "partitions": plan.partitions,
        "messages": plan.messages,
    });
    state.redrives.start(stored, plan).map_err(redrive_error)?;
    Ok((StatusCode::ACCEPTED, Json(body)))
}

fn redrive_error(error: RedriveError) -> ApiError {
    match error {
        RedriveError::MissingTopic(_) | RedriveError::Running => {
            ApiError::Conflict(error.to_string())
        }
        RedriveError::NotStarted | RedriveError::Kafka(_) => {
            ApiError::Unavailable(error.to_string())
        }
    }
}
