//! `/1/Subscription` handlers: create, list, get, replace, delete, status and
//! signing-secret rotation.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::auth::Principal;
use super::json::ApiJson;
use super::openapi::{ErrorAnswer, RotatedSecret, Subscription, SubscriptionStatus};
use super::{AppState, ListQuery, paged, parse_id};
use crate::api::ApiError;
use crate::domain::{
    Alerting, FieldError, PluginAttachment, SubscriptionRequest, SubscriptionSpec, ValidationErrors,
};
use crate::plugin::PluginError;
use crate::plugin::loader::{AttachmentError, instantiate};
use crate::registry::{Activity, ActivityEntry, Health, PlatformStatus, StoredSubscription};
use crate::signing::SigningSecret;

/// A subscription as every response shows it: id and kind first, secrets masked.
pub(super) fn subscription_body(stored: &StoredSubscription) -> Value {
    let mut body = serde_json::Map::new();
    body.insert("id".into(), json!(stored.id));
    body.insert("kind".into(), json!("Webhook"));
    if let Some(tenant) = stored.tenant_id {
        body.insert("tenant_id".into(), json!(tenant));
    }
    if let Value::Object(spec) = stored.spec.to_public_json() {
        body.extend(spec);
    }
    body.insert("created_at".into(), json!(stored.created_at));
    body.insert("updated_at".into(), json!(stored.updated_at));
    Value::Object(body)
}

#[utoipa::path(
    post,
    path = "/1/Subscription",
    tag = "subscriptions",
    request_body = SubscriptionRequest,
    responses(
        (status = 201, description = "Registered; `signing_secret` is shown this once", body = Subscription),
        (status = 400, description = "Invalid fields (each listed in `errors`), or not JSON", body = ErrorAnswer),
        (status = 403, description = "A topic the tenant may not read", body = ErrorAnswer),
        (status = 408, description = "The body did not arrive in time", body = ErrorAnswer),
        (status = 413, description = "The body is over the limit", body = ErrorAnswer),
        (status = 415, description = "The body is not application/json", body = ErrorAnswer),
        (status = 502, description = "The brokers refused the dead-letter topic", body = ErrorAnswer),
        (status = 503, description = "The brokers do not answer, or a plugin's compiler is busy", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<SubscriptionRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if request.id.is_some() {
        return Err(ApiError::InvalidField {
            field: "id".into(),
            message: "is assigned by wasmhook; leave it out when creating".into(),
        });
    }
    let spec = SubscriptionSpec::parse(request, None).map_err(ApiError::Validation)?;
    principal.may_read(spec.topics())?;
    check_destination(&state, &spec)?;
    let tenant = principal.tenant_id();
    check_plugins(&state, tenant, &spec).await?;
    let secret = SigningSecret::generate();
    // The topic first: a refusal leaves no row behind (at worst an empty
    // topic, when the insert fails after it).
    let id = uuid::Uuid::new_v4();
    ensure_dead_letter_topic(&state, id).await?;
    let stored = state
        .registry
        .create_subscription(id, tenant, &spec, &secret)
        .await?;
    if spec.active.is_active() {
        state
            .registry
            .record_activity(stored.id, &Activity::Active)
            .await?;
    }
    state.changes.notify_one();
    tracing::info!(subscription = %stored.id, name = spec.name.as_str(), "Subscription registered.");
    let mut body = subscription_body(&stored);
    // Shown once: later responses never carry it.
    body["signing_secret"] = json!(secret.as_str());
    Ok((StatusCode::CREATED, Json(body)))
}

/// Creates the subscription's dead-letter topic unless it exists: the
/// dead-letter producer never auto-creates it, and many brokers would not.
async fn ensure_dead_letter_topic(state: &AppState, id: uuid::Uuid) -> Result<(), ApiError> {
    let topic = crate::delivery::dead_letter::topic_for(id);
    match state.topics.ensure(&topic, state.dead_letter_topic).await {
        Ok(ensured) => {
            tracing::debug!(subscription = %id, topic = %topic, ?ensured, "Dead-letter topic ready.");
            Ok(())
        }
        Err(error) => {
            tracing::warn!(subscription = %id, error = %error, "Could not create the dead-letter topic.");
            Err(error.into())
        }
    }
}

/// Refuses a webhook URL, or a webhook alert channel's URL, whose host is an
/// IP literal the SSRF guard refuses. A name is accepted: what it resolves to
/// is checked on every request.
fn check_destination(state: &AppState, spec: &SubscriptionSpec) -> Result<(), ApiError> {
    let alert_url = match &spec.configuration.alerting {
        Some(Alerting::Webhook { alert_url }) => Some(alert_url),
        _ => None,
    };
    let urls = std::iter::once(("destination.webhook.url", &spec.destination.webhook.url))
        .chain(alert_url.map(|url| ("configuration.alerting.alert_url", url)));
    for (field, url) in urls {
        state
            .destinations
            .check_url(url.url())
            .map_err(|refused| ApiError::InvalidField {
                field: field.into(),
                message: refused.to_string(),
            })?;
    }
    Ok(())
}

/// Checks that every attached plugin is uploaded, has the role it is attached
/// as, starts within its limits and accepts its configuration (its `init` is
/// run once, in a throwaway instance), reporting every failure with the field
/// path that attaches it. Names resolve as `tenant` sees them (its own
/// plugins, then the shared ones). The plugins are tried at once, so the
/// answer takes as long as the slowest, which its wall-clock deadline bounds.
async fn check_plugins(
    state: &AppState,
    tenant: Option<uuid::Uuid>,
    spec: &SubscriptionSpec,
) -> Result<(), ApiError> {
    let attached = spec.plugins();
    let tries = attached.iter().map(|(_, role, attachment)| {
        instantiate(&state.registry, &state.engine, tenant, attachment, *role)
    });
    let outcomes = futures::future::join_all(tries).await;
    let mut errors = Vec::new();
    for ((field, _, attachment), outcome) in attached.into_iter().zip(outcomes) {
        if let Err(error) = outcome {
            errors.push(attachment_failure(field, attachment, error)?);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(ValidationErrors(errors)))
    }
}

/// Why the plugin attached at `field` could not start, as a field error; a
/// registry failure or a busy compiler is the host's problem, not the
/// request's, and answers as such.
pub(super) fn attachment_failure(
    field: String,
    attachment: &PluginAttachment,
    error: AttachmentError,
) -> Result<FieldError, ApiError> {
    match error {
        AttachmentError::Registry(e) => Err(e.into()),
        AttachmentError::Plugin {
            source: PluginError::CompilerBusy(_),
            plugin,
        } => Err(ApiError::Unavailable(format!(
            "{field}: plugin {plugin} could not be compiled now: the compiler is busy; try again"
        ))),
        // A plugin may quote its configuration back: secret values are masked.
        AttachmentError::Plugin {
            source: PluginError::Config(reason),
            ..
        } => Ok(FieldError {
            field: format!("{field}.config"),
            message: attachment.scrub(&format!(
                "plugin {attachment} rejected its configuration: {reason}"
            )),
        }),
        other => Ok(FieldError {
            field,
            message: attachment.scrub(&other.to_string()),
        }),
    }
}

#[utoipa::path(
    get,
    path = "/1/Subscription",
    tag = "subscriptions",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of the caller's subscriptions", body = Vec<Subscription>,
            headers(("link" = String, description = "`<…>; rel=\"next\"` when there is a next page"))),
        (status = 400, description = "A bad `limit` or `cursor`", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<ListQuery>,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    let page = query.page()?;
    let listing = state
        .registry
        .list_subscriptions_page(principal.tenant_id(), &page)
        .await?;
    Ok(paged("/1/Subscription", &page, &listing, subscription_body))
}

/// The subscription with this id if the caller may see it: another tenant's
/// is a 404, as if it did not exist.
pub(super) async fn load(
    state: &AppState,
    principal: &Principal,
    raw_id: &str,
) -> Result<StoredSubscription, ApiError> {
    let id = parse_id(raw_id, "subscription")?;
    state
        .registry
        .get_subscription(id)
        .await?
        .filter(|s| principal.sees(s.tenant_id))
        .ok_or_else(|| ApiError::NotFound(format!("no subscription with id {id}")))
}

#[utoipa::path(
    get,
    path = "/1/Subscription/{id}",
    tag = "subscriptions",
    params(("id" = uuid::Uuid, Path, description = "The subscription's id")),
    responses(
        (status = 200, description = "The subscription, secrets masked", body = Subscription),
        (status = 404, description = "No such subscription (or another tenant's)", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(subscription_body(
        &load(&state, &principal, &id).await?,
    )))
}

#[utoipa::path(
    put,
    path = "/1/Subscription/{id}",
    tag = "subscriptions",
    params(("id" = uuid::Uuid, Path, description = "The subscription's id")),
    request_body(content = SubscriptionRequest, description = "The whole subscription; a masked value keeps the stored secret"),
    responses(
        (status = 200, description = "Replaced", body = Subscription),
        (status = 400, description = "Invalid fields (each listed in `errors`), or not JSON", body = ErrorAnswer),
        (status = 403, description = "A topic the tenant may not read", body = ErrorAnswer),
        (status = 408, description = "The body did not arrive in time", body = ErrorAnswer),
        (status = 413, description = "The body is over the limit", body = ErrorAnswer),
        (status = 415, description = "The body is not application/json", body = ErrorAnswer),
        (status = 502, description = "The brokers refused the dead-letter topic", body = ErrorAnswer),
        (status = 503, description = "The brokers do not answer, or a plugin's compiler is busy", body = ErrorAnswer),
        (status = 404, description = "No such subscription (or another tenant's)", body = ErrorAnswer),
        (status = 409, description = "Changed meanwhile", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn replace(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<SubscriptionRequest>,
) -> Result<Json<Value>, ApiError> {
    let current = load(&state, &principal, &id).await?;
    if let Some(body_id) = &request.id
        && body_id.parse() != Ok(current.id)
    {
        return Err(ApiError::InvalidField {
            field: "id".into(),
            message: format!("{body_id:?} differs from the id in the path"),
        });
    }
    let spec =
        SubscriptionSpec::parse(request, Some(&current.spec)).map_err(ApiError::Validation)?;
    principal.may_read(spec.topics())?;
    check_destination(&state, &spec)?;
    // The owner's view, even when the admin edits a tenant's subscription:
    // that is how its pipeline will resolve the names.
    check_plugins(&state, current.tenant_id, &spec).await?;
    // Again on replace: the topic may have been deleted, or the subscription
    // saved before wasmhook created these topics. Not when it is being
    // deactivated: that must work while the brokers are down.
    if spec.active.is_active() {
        ensure_dead_letter_topic(&state, current.id).await?;
    }
    let stored = state.registry.replace_subscription(&current, &spec).await?;
    let (was, is) = (current.spec.active.is_active(), spec.active.is_active());
    if was != is {
        let activity = if is {
            Activity::Active
        } else {
            Activity::Inactive
        };
        state.registry.record_activity(stored.id, &activity).await?;
        state.registry.touch_status(stored.id).await?;
    }
    state.changes.notify_one();
    tracing::info!(subscription = %stored.id, revision = stored.revision, "Subscription replaced.");
    Ok(Json(subscription_body(&stored)))
}

#[utoipa::path(
    delete,
    path = "/1/Subscription/{id}",
    tag = "subscriptions",
    params(("id" = uuid::Uuid, Path, description = "The subscription's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such subscription (or another tenant's)", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = load(&state, &principal, &id).await?.id;
    if !state.registry.delete_subscription(id).await? {
        return Err(ApiError::NotFound(format!("no subscription with id {id}")));
    }
    state.changes.notify_one();
    tracing::info!(subscription = %id, "Subscription deleted.");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /1/Subscription/{id}/Secret/Rotate`: a new signing secret, shown this
/// once; the replaced one goes on signing beside it for the overlap window,
/// so receivers can switch without rejecting a delivery.
#[utoipa::path(
    post,
    path = "/1/Subscription/{id}/Secret/Rotate",
    tag = "subscriptions",
    params(("id" = uuid::Uuid, Path, description = "The subscription's id")),
    responses(
        (status = 200, description = "The new signing secret, shown this once", body = RotatedSecret),
        (status = 404, description = "No such subscription (or another tenant's)", body = ErrorAnswer),
        (status = 409, description = "Changed meanwhile", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn rotate_secret(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let current = load(&state, &principal, &id).await?;
    let secret = SigningSecret::generate();
    let overlap =
        chrono::Duration::from_std(state.secret_rotation_overlap).unwrap_or(chrono::Duration::MAX);
    let expires_at = chrono::Utc::now()
        .checked_add_signed(overlap)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    let stored = state
        .registry
        .rotate_signing_secret(&current, &secret, expires_at)
        .await?;
    // The revision moved: the pipeline restarts signing with both secrets.
    state.changes.notify_one();
    tracing::info!(subscription = %stored.id, revision = stored.revision, "Signing secret rotated.");
    Ok(Json(json!({
        "signing_secret": secret.as_str(),
        "previous_secret_expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })))
}

/// The status the API shows: inactive when switched off (by the subscription
/// or the platform), else the health the delivery engine recorded.
pub(super) fn shown_status(stored: &StoredSubscription, platform: PlatformStatus) -> &'static str {
    if !stored.spec.active.is_active() || platform == PlatformStatus::Offline {
        "inactive"
    } else {
        match stored.health {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

fn activity_body(entry: &ActivityEntry) -> Value {
    match &entry.activity {
        Activity::Active => json!({"timestamp": entry.timestamp, "event": "active"}),
        Activity::Inactive => json!({"timestamp": entry.timestamp, "event": "inactive"}),
        Activity::ApiCall(call) => json!({
            "timestamp": entry.timestamp,
            "event": "api_call",
            "request": call.request,
            "request_headers": call.request_headers,
            "response_code": call.response_code,
            "response_body": call.response_body,
            "response_headers": call.response_headers,
        }),
    }
}

#[utoipa::path(
    get,
    path = "/1/Subscription/{id}/Status",
    tag = "subscriptions",
    params(("id" = uuid::Uuid, Path, description = "The subscription's id")),
    responses(
        (status = 200, description = "Health, counts, recent activity and dead letters", body = SubscriptionStatus),
        (status = 404, description = "No such subscription (or another tenant's)", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn status(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // Counters and attempts are partly in the registry, partly still in this
    // host's ledger: both are read while no flush moves them.
    let reading = state.ledger.reading().await;
    let mut stored = load(&state, &principal, &id).await?;
    let stored_activity = state.registry.recent_activity(stored.id).await?;
    let (pending_counts, pending_activity) = state.ledger.pending(stored.id);
    drop(reading);
    stored.counts += pending_counts;
    // Newest first: what is pending is newer; the sort is stable, so entries
    // stored with a coarser time keep that order.
    let mut activity = [pending_activity, stored_activity].concat();
    activity.sort_by_key(|entry| std::cmp::Reverse(entry.timestamp));
    activity.truncate(crate::registry::ACTIVITY_RING as usize);
    let admin = state.registry.admin_state().await?;
    let dead_letters = state.registry.recent_dead_letters(stored.id).await?;
    let mut body = json!({
        "id": stored.id,
        "kind": "WebhookStatus",
        "name": stored.spec.name.as_str(),
        "active": stored.spec.active.as_str(),
        "payload_url": stored.spec.destination.webhook.url.as_str(),
        "timestamp": stored.status_changed_at,
        "status": shown_status(&stored, admin.status),
        "status_reason": stored.status_reason,
        "recent_activity": activity.iter().map(activity_body).collect::<Vec<_>>(),
        "counts": stored.counts,
        "dead_letter_topic": crate::delivery::dead_letter::topic_for(stored.id),
        "dead_letters": dead_letters,
        "consumer_group": crate::delivery::consumer::group_id(stored.id, stored.consumer_generation),
        // This host's consumer, if the subscription runs here (another host
        // may hold its partitions: each answers for its own).
        "consumer": state.states.get(stored.id),
    });
    // This host's latest redrive, if it ran one.
    if let Some(redrive) = state.redrives.progress(stored.id) {
        body["redrive"] = json!(redrive);
    }
    if admin.status == PlatformStatus::Offline {
        body["offline_message"] = json!(admin.offline_message);
    }
    Ok(Json(body))
}
