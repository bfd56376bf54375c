//! `/1/EventNotificationAdmin`: the platform's online/offline switch and overview.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Principal;
use super::json::ApiJson;
use super::openapi::{AdminOverview, ErrorAnswer};
use super::subscriptions::shown_status;
use crate::api::ApiError;
use crate::domain::{FieldError, ValidationErrors};
use crate::registry::{Activity, PlatformStatus};

const MAX_OFFLINE_MESSAGE: usize = 1000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminRequest {
    /// `online` or `offline`.
    status: Option<String>,
    /// Shown while offline; at most 1000 characters.
    offline_message: Option<String>,
}

fn parse(request: AdminRequest) -> Result<(PlatformStatus, String), ValidationErrors> {
    let mut errors = Vec::new();
    let status = match request.status.as_deref() {
        Some("online") => Some(PlatformStatus::Online),
        Some("offline") => Some(PlatformStatus::Offline),
        Some(other) => {
            errors.push(FieldError {
                field: "status".into(),
                message: format!("must be one of online | offline, got {other:?}"),
            });
            None
        }
        None => {
            errors.push(FieldError {
                field: "status".into(),
                message: "is required".into(),
            });
            None
        }
    };
    let message = request.offline_message.unwrap_or_default();
    if message.contains('\0') {
        // PostgreSQL cannot store it in text (it answered a 500).
        errors.push(FieldError {
            field: "offline_message".into(),
            message: "must not contain NUL characters".into(),
        });
    }
    if message.chars().count() > MAX_OFFLINE_MESSAGE {
        errors.push(FieldError {
            field: "offline_message".into(),
            message: format!("must be at most {MAX_OFFLINE_MESSAGE} characters"),
        });
    }
    match status {
        Some(status) if errors.is_empty() => Ok((status, message)),
        _ => Err(ValidationErrors(errors)),
    }
}

/// Anyone may read the switch; a tenant sees only its own webhooks in it.
#[utoipa::path(
    get,
    path = "/1/EventNotificationAdmin",
    tag = "admin",
    responses(
        (status = 200, description = "The platform's status and the caller's webhooks", body = AdminOverview),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Value>, ApiError> {
    overview(&state, &principal).await.map(Json)
}

#[utoipa::path(
    post,
    path = "/1/EventNotificationAdmin",
    tag = "admin",
    request_body = AdminRequest,
    responses(
        (status = 200, description = "Switched; the overview after it", body = AdminOverview),
        (status = 400, description = "Invalid fields (each listed in `errors`), or not JSON", body = ErrorAnswer),
        (status = 408, description = "The body did not arrive in time", body = ErrorAnswer),
        (status = 413, description = "The body is over the limit", body = ErrorAnswer),
        (status = 415, description = "The body is not application/json", body = ErrorAnswer),
        (status = 403, description = "Not the admin", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn set(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<AdminRequest>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin("switching the platform online or offline")?;
    let (status, message) = parse(request).map_err(ApiError::Validation)?;
    let previous = state.registry.set_admin_state(status, &message).await?;
    if previous.status != status {
        // Switching the platform records active/inactive on every running webhook.
        let activity = match status {
            PlatformStatus::Online => Activity::Active,
            PlatformStatus::Offline => Activity::Inactive,
        };
        for subscription in state.registry.list_subscriptions().await? {
            if subscription.spec.active.is_active() {
                state
                    .registry
                    .record_activity(subscription.id, &activity)
                    .await?;
                state.registry.touch_status(subscription.id).await?;
            }
        }
        tracing::warn!(status = status.as_str(), message = %message, "Platform switched.");
    }
    state.changes.notify_one();
    overview(&state, &principal).await.map(Json)
}

async fn overview(state: &AppState, principal: &Principal) -> Result<Value, ApiError> {
    let admin = state.registry.admin_state().await?;
    let webhooks: Vec<Value> = state
        .registry
        .list_subscriptions()
        .await?
        .iter()
        .filter(|s| principal.sees(s.tenant_id))
        .map(|s| {
            json!({
                "id": s.id,
                "name": s.spec.name.as_str(),
                "timestamp": s.status_changed_at,
                "status": shown_status(s, admin.status),
                "topics": s.spec.topics(),
            })
        })
        .collect();
    Ok(json!({
        "id": admin.id,
        "kind": "WebhookAdmin",
        "status": admin.status.as_str(),
        "offline_message": admin.offline_message,
        "timestamp": admin.updated_at,
        "webhooks": webhooks,
    }))
}
