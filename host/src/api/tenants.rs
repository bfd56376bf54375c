//! `/1/Tenant` and `/1/Token` handlers: tenants with their topic ACLs and
//! mandatory policy (admin only), and the tokens that act for them.
//!
//! A token is shown once, in the answer that mints it; afterwards only its
//! id and public prefix are listed.

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Principal;
use super::openapi::{ErrorAnswer, Tenant, Token};
use super::subscriptions::attachment_failure;
use super::{AppState, ListQuery, paged, parse_id};
use crate::api::ApiError;
use crate::domain::{
    AccessToken, FieldError, PluginAttachment, PluginRole, TenantRequest, TenantSpec,
    ValidationErrors,
};
use crate::plugin::loader::instantiate;
use crate::registry::{StoredTenant, StoredToken};

fn tenant_body(tenant: &StoredTenant) -> Value {
    json!({
        "id": tenant.id,
        "name": tenant.spec.name.as_str(),
        "topics": tenant.spec.topics,
        "mandatory_policy": tenant.spec.mandatory_policy.as_ref().map(PluginAttachment::to_public_json),
        "created_at": tenant.created_at,
        "updated_at": tenant.updated_at,
    })
}

fn token_body(token: &StoredToken) -> Value {
    json!({
        "id": token.id,
        "prefix": format!("whk_{}", token.prefix),
        "tenant_id": token.tenant_id,
        "admin": token.tenant_id.is_none(),
        "label": token.label,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "revoked_at": token.revoked_at,
    })
}

/// The mandatory policy must be a shared policy plugin that accepts its
/// configuration: checked as a subscription's attachments are.
async fn check_mandatory_policy(state: &AppState, spec: &TenantSpec) -> Result<(), ApiError> {
    let Some(attachment) = &spec.mandatory_policy else {
        return Ok(());
    };
    let started = instantiate(
        &state.registry,
        &state.engine,
        None,
        attachment,
        PluginRole::Policy,
    )
    .await;
    let Err(error) = started else {
        return Ok(());
    };
    let mut failure = attachment_failure("mandatory_policy".into(), attachment, error)?;
    failure
        .message
        .push_str(" (a mandatory policy must be a shared plugin)");
    Err(ApiError::Validation(ValidationErrors(vec![failure])))
}

#[utoipa::path(
    post,
    path = "/1/Tenant",
    tag = "tenants",
    request_body = TenantRequest,
    responses(
        (status = 201, description = "Created", body = Tenant),
        (status = 400, description = "Invalid fields (each listed in `errors`), or not JSON", body = ErrorAnswer),
        (status = 408, description = "The body did not arrive in time", body = ErrorAnswer),
        (status = 413, description = "The body is over the limit", body = ErrorAnswer),
        (status = 415, description = "The body is not application/json", body = ErrorAnswer),
        (status = 403, description = "Not the admin", body = ErrorAnswer),
        (status = 409, description = "The name is taken", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    super::json::ApiJson(request): super::json::ApiJson<TenantRequest>,
) -> Result<impl IntoResponse, ApiError> {
    principal.require_admin("creating tenants")?;
    let spec = TenantSpec::parse(request).map_err(ApiError::Validation)?;
    check_mandatory_policy(&state, &spec).await?;
    let tenant = state.registry.create_tenant(&spec).await?;
    tracing::info!(tenant = %tenant.id, name = spec.name.as_str(), "Tenant created.");
    Ok((StatusCode::CREATED, Json(tenant_body(&tenant))))
}

#[utoipa::path(
    get,
    path = "/1/Tenant",
    tag = "tenants",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of tenants", body = Vec<Tenant>, headers(("link" = String, description = "`<…>; rel=\"next\"` when there is a next page"))),
        (status = 400, description = "A bad `limit` or `cursor`", body = ErrorAnswer),
        (status = 403, description = "Not the admin", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<ListQuery>,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    principal.require_admin("listing tenants")?;
    let page = query.page()?;
    let listing = state.registry.list_tenants(&page).await?;
    Ok(paged("/1/Tenant", &page, &listing, tenant_body))
}

async fn load(state: &AppState, raw_id: &str) -> Result<StoredTenant, ApiError> {
    let id = parse_id(raw_id, "tenant")?;
    state
        .registry
        .get_tenant(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no tenant with id {id}")))
}

#[utoipa::path(
    get,
    path = "/1/Tenant/{id}",
    tag = "tenants",
    params(("id" = uuid::Uuid, Path, description = "The tenant's id")),
    responses(
        (status = 200, description = "The tenant", body = Tenant),
        (status = 403, description = "Not the admin", body = ErrorAnswer),
        (status = 404, description = "No such tenant", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin("reading tenants")?;
    Ok(Json(tenant_body(&load(&state, &id).await?)))
}

#[utoipa::path(
    put,
    path = "/1/Tenant/{id}",
    tag = "tenants",
    params(("id" = uuid::Uuid, Path, description = "The tenant's id")),
    request_body = TenantRequest,
    responses(
        (status = 200, description = "Replaced", body = Tenant),
        (status = 400, description = "Invalid fields (each listed in `errors`), or not JSON", body = ErrorAnswer),
        (status = 408, description = "The body did not arrive in time", body = ErrorAnswer),
        (status = 413, description = "The body is over the limit", body = ErrorAnswer),
        (status = 415, description = "The body is not application/json", body = ErrorAnswer),
        (status = 403, description = "Not the admin", body = ErrorAnswer),
        (status = 404, description = "No such tenant", body = ErrorAnswer),
        (status = 409, description = "The name is taken", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn replace(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    super::json::ApiJson(request): super::json::ApiJson<TenantRequest>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin("changing tenants")?;
    let current = load(&state, &id).await?;
    let spec = TenantSpec::parse(request).map_err(ApiError::Validation)?;
    check_mandatory_policy(&state, &spec).await?;
    let tenant = state
        .registry
        .replace_tenant(current.id, &spec)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no tenant with id {}", current.id)))?;
    // Its subscriptions' revisions moved: their pipelines restart with the new policy.
    state.changes.notify_one();
    tracing::info!(tenant = %tenant.id, "Tenant replaced.");
    Ok(Json(tenant_body(&tenant)))
}

#[utoipa::path(
    delete,
    path = "/1/Tenant/{id}",
    tag = "tenants",
    params(("id" = uuid::Uuid, Path, description = "The tenant's id")),
    responses(
        (status = 204, description = "Deleted, with its tokens"),
        (status = 403, description = "Not the admin", body = ErrorAnswer),
        (status = 404, description = "No such tenant", body = ErrorAnswer),
        (status = 409, description = "It still owns subscriptions or plugins", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require_admin("deleting tenants")?;
    let tenant = load(&state, &id).await?;
    let (subscriptions, plugins) = state.registry.tenant_holdings(tenant.id).await?;
    if subscriptions > 0 || plugins > 0 {
        return Err(ApiError::Conflict(format!(
            "tenant {} still owns {subscriptions} subscription(s) and {plugins} plugin(s); delete them first",
            tenant.spec.name.as_str()
        )));
    }
    if !state.registry.delete_tenant(tenant.id).await? {
        return Err(ApiError::NotFound(format!(
            "no tenant with id {}",
            tenant.id
        )));
    }
    tracing::info!(tenant = %tenant.id, "Tenant deleted, with its tokens.");
    Ok(StatusCode::NO_CONTENT)
}

/// The optional body of a token request.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    /// At most 200 characters.
    label: Option<String>,
    /// RFC 3339; absent: the token does not expire.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
}

const MAX_LABEL: usize = 200;

/// Reads the optional token request: no body is the defaults; a body must be
/// JSON, read within the server's body limit and timeout like any other.
async fn read_token_request(
    state: &AppState,
    request: Request,
) -> Result<(String, Option<chrono::DateTime<chrono::Utc>>), ApiError> {
    let json = super::json::require_json(request.headers());
    let limit = request
        .extensions()
        .get::<super::json::BodyLimit>()
        .map_or(super::json::DEFAULT_BODY_LIMIT, |l| l.0);
    let body = super::json::read_body(request, state, limit).await?;
    let request: TokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TokenRequest::default()
    } else {
        json?;
        super::json::parse(&body)?
    };
    let mut errors = Vec::new();
    let label = request.label.unwrap_or_default();
    if label.chars().count() > MAX_LABEL {
        errors.push(FieldError {
            field: "label".into(),
            message: format!("must be at most {MAX_LABEL} characters"),
        });
    }
    let expires_at = match request
        .expires_at
        .as_deref()
        .map(chrono::DateTime::parse_from_rfc3339)
    {
        None => None,
        Some(Ok(at)) if at > chrono::Utc::now() => Some(at.with_timezone(&chrono::Utc)),
        Some(Ok(_)) => {
            errors.push(FieldError {
                field: "expires_at".into(),
                message: "must be in the future".into(),
            });
            None
        }
        Some(Err(e)) => {
            errors.push(FieldError {
                field: "expires_at".into(),
                message: format!("must be an RFC 3339 time such as 2030-01-01T00:00:00Z: {e}"),
            });
            None
        }
    };
    if errors.is_empty() {
        Ok((label, expires_at))
    } else {
        Err(ApiError::Validation(ValidationErrors(errors)))
    }
}

async fn mint(
    state: &AppState,
    tenant: Option<uuid::Uuid>,
    label: &str,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let token = AccessToken::generate();
    let stored = state
        .registry
        .insert_token(&token, tenant, label, expires_at)
        .await?;
    tracing::info!(token = %stored.id, tenant = ?tenant, "Token minted.");
    let mut body = token_body(&stored);
    // Shown once: it is stored only as a hash.
    body["token"] = json!(token.reveal());
    Ok((StatusCode::CREATED, Json(body)))
}

/// `POST /1/Tenant/{id}/Token`: a token for that tenant (admin only).
#[utoipa::path(
    post,
    path = "/1/Tenant/{id}/Token",
    tag = "tokens",
    params(("id" = uuid::Uuid, Path, description = "The tenant's id")),
    request_body(
        content = Option<TokenRequest>,
        description = "Optional: without a body the token has no label and does not expire",
    ),
    responses(
        (status = 201, description = "Minted; `token` is shown this once", body = Token),
        (status = 400, description = "Invalid fields (each listed in `errors`), or not JSON", body = ErrorAnswer),
        (status = 408, description = "The body did not arrive in time", body = ErrorAnswer),
        (status = 413, description = "The body is over the limit", body = ErrorAnswer),
        (status = 415, description = "The body is not application/json", body = ErrorAnswer),
        (status = 403, description = "Not the admin", body = ErrorAnswer),
        (status = 404, description = "No such tenant", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn create_tenant_token(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    request: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    principal.require_admin("minting tenant tokens")?;
    let tenant = load(&state, &id).await?;
    let (label, expires_at) = read_token_request(&state, request).await?;
    mint(&state, Some(tenant.id), &label, expires_at).await
}

/// `POST /1/Token`: another token for the caller itself (an admin token for
/// the admin, one for its own tenant otherwise), e.g. to rotate its own.
#[utoipa::path(
    post,
    path = "/1/Token",
    tag = "tokens",
    request_body(
        content = Option<TokenRequest>,
        description = "Optional: without a body the token has no label and does not expire",
    ),
    responses(
        (status = 201, description = "Minted for the caller itself; `token` is shown this once", body = Token),
        (status = 400, description = "Invalid fields (each listed in `errors`), or not JSON", body = ErrorAnswer),
        (status = 408, description = "The body did not arrive in time", body = ErrorAnswer),
        (status = 413, description = "The body is over the limit", body = ErrorAnswer),
        (status = 415, description = "The body is not application/json", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn create_own_token(
    State(state): State<AppState>,
    principal: Principal,
    request: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (label, expires_at) = read_token_request(&state, request).await?;
    mint(&state, principal.tenant_id(), &label, expires_at).await
}

#[utoipa::path(
    get,
    path = "/1/Token",
    tag = "tokens",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of the caller's tokens (the admin: all)", body = Vec<Token>, headers(("link" = String, description = "`<…>; rel=\"next\"` when there is a next page"))),
        (status = 400, description = "A bad `limit` or `cursor`", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list_tokens(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<ListQuery>,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    let page = query.page()?;
    let listing = state
        .registry
        .list_tokens(principal.tenant_id(), &page)
        .await?;
    Ok(paged("/1/Token", &page, &listing, token_body))
}

/// `DELETE /1/Token/{id}`: revokes a token (the admin any; a tenant its own).
#[utoipa::path(
    delete,
    path = "/1/Token/{id}",
    tag = "tokens",
    params(("id" = uuid::Uuid, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked (or already revoked)"),
        (status = 404, description = "No such token that the caller sees", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn revoke_token(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "token")?;
    let not_found = || ApiError::NotFound(format!("no token with id {id}"));
    let token = state.registry.get_token(id).await?.ok_or_else(not_found)?;
    if !principal.sees(token.tenant_id) {
        return Err(not_found());
    }
    if token.revoked_at.is_none() {
        state.registry.revoke_token(id).await?;
        tracing::info!(token = %id, "Token revoked.");
    }
    Ok(StatusCode::NO_CONTENT)
}
