//! `/1/Plugin` handlers: upload (validated by compiling), list, get, delete.
//!
//! An upload is `multipart/form-data` with the fields `name`, `version`,
//! `role` and `wasm` (and optionally the limits `memory_bytes`,
//! `cpu_deadline_ms`, `wall_deadline_ms`), or the raw component as the body
//! with the same fields in the query, sent as `application/wasm`; other
//! content types are refused (415). It is compiled once and checked against
//! its role's world before it is stored; once stored, the compiled artefact
//! goes to the engine's cache for the pipelines.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Principal;
use super::json::{BodyLimit, MediaType, body_timeout, read_body, sent_type, unsupported};
use super::openapi::{ErrorAnswer, Plugin, PluginUpload};
use super::{AppState, ListQuery, paged};
use crate::api::ApiError;
use crate::domain::{FieldError, PluginName, PluginRole, PluginVersion, ValidationErrors};
use crate::plugin::limits::LIMIT_FIELDS;
use crate::plugin::{HostLimits, PluginError, RequestedLimits};
use crate::registry::{NewPlugin, Page, PluginOwner, StoredPlugin};

/// A plugin as responses show it: `limits` are those its instances run
/// under (what it asked for at upload, or this host's defaults).
fn plugin_body(plugin: &StoredPlugin, host: &HostLimits) -> Value {
    let limits = host.resolve(plugin.limits);
    json!({
        "name": plugin.name,
        "version": plugin.version,
        "shared": plugin.owner == PluginOwner::Shared,
        "tenant_id": plugin.owner.tenant(),
        "role": plugin.role.as_str(),
        "sha256": plugin.sha256,
        "size": plugin.size,
        "limits": {
            "memory_bytes": limits.memory_bytes,
            "cpu_deadline_ms": limits.cpu_deadline.as_millis() as u64,
            "wall_deadline_ms": limits.wall_deadline.as_millis() as u64,
        },
        "created_at": plugin.created_at,
    })
}

/// The query of a raw-body upload.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UploadQuery {
    /// With `application/wasm`: the plugin's name.
    name: Option<String>,
    /// With `application/wasm`: its version.
    version: Option<String>,
    /// With `application/wasm`: `filter`, `policy` or `serialiser`.
    role: Option<String>,
    /// With `application/wasm`: its memory limit (else the host's).
    #[param(value_type = Option<u64>)]
    memory_bytes: Option<String>,
    /// With `application/wasm`: its CPU deadline (else the host's).
    #[param(value_type = Option<u64>)]
    cpu_deadline_ms: Option<String>,
    /// With `application/wasm`: its wall-clock deadline (else the host's).
    #[param(value_type = Option<u64>)]
    wall_deadline_ms: Option<String>,
}

/// The parts of an upload, as received.
#[derive(Default)]
struct Upload {
    name: Option<String>,
    version: Option<String>,
    role: Option<String>,
    memory_bytes: Option<String>,
    cpu_deadline_ms: Option<String>,
    wall_deadline_ms: Option<String>,
    wasm: Option<Bytes>,
}

const UPLOAD_TYPES: &str = "multipart/form-data or application/wasm";

/// A raw-body upload: the component is the body, the fields are in the query.
fn raw_upload(query: UploadQuery, wasm: Bytes) -> Upload {
    Upload {
        name: query.name,
        version: query.version,
        role: query.role,
        memory_bytes: query.memory_bytes,
        cpu_deadline_ms: query.cpu_deadline_ms,
        wall_deadline_ms: query.wall_deadline_ms,
        wasm: (!wasm.is_empty()).then_some(wasm),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::PayloadTooLarge { limit }
}

async fn read_multipart(request: Request, state: &AppState) -> Result<Upload, ApiError> {
    let limit = state.max_plugin_bytes;
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::BadRequest(format!("could not read the form: {}", e.body_text())))?;
    let mut upload = Upload::default();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large(limit)),
            Err(e) => {
                return Err(ApiError::BadRequest(format!(
                    "could not read the form: {}",
                    e.body_text()
                )));
            }
        };
        let name = field.name().unwrap_or_default().to_string();
        let bytes = match field.bytes().await {
            Ok(bytes) => bytes,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large(limit)),
            Err(e) => {
                return Err(ApiError::BadRequest(format!(
                    "could not read the form field {name:?}: {}",
                    e.body_text()
                )));
            }
        };
        let text = || {
            String::from_utf8(bytes.to_vec()).map_err(|_| ApiError::InvalidField {
                field: name.clone(),
                message: "must be UTF-8 text".into(),
            })
        };
        match name.as_str() {
            "name" => upload.name = Some(text()?),
            "version" => upload.version = Some(text()?),
            "role" => upload.role = Some(text()?),
            "memory_bytes" => upload.memory_bytes = Some(text()?),
            "cpu_deadline_ms" => upload.cpu_deadline_ms = Some(text()?),
            "wall_deadline_ms" => upload.wall_deadline_ms = Some(text()?),
            "wasm" => upload.wasm = Some(bytes),
            other => {
                return Err(ApiError::InvalidField {
                    field: other.to_string(),
                    message: format!(
                        "is not a field of a plugin upload (name, version, role, wasm, {})",
                        LIMIT_FIELDS.join(", ")
                    ),
                });
            }
        }
    }
    Ok(upload)
}

#[utoipa::path(
    post,
    path = "/1/Plugin",
    tag = "plugins",
    params(UploadQuery),
    request_body(
        description = "The form, or the component's bytes with the fields in the query",
        content(
            (PluginUpload = "multipart/form-data"),
            (String = "application/wasm"),
        ),
    ),
    responses(
        (status = 201, description = "Compiled, checked against its role's world and stored", body = Plugin),
        (status = 400, description = "Invalid fields, or not a usable plugin (`code` says why:             `not_a_component`, `wrong_world`, `forbidden_import`, `compile_timeout`)", body = ErrorAnswer),
        (status = 408, description = "The body did not arrive in time", body = ErrorAnswer),
        (status = 409, description = "This name and version exist already", body = ErrorAnswer),
        (status = 413, description = "The component is over the upload limit", body = ErrorAnswer),
        (status = 415, description = "Neither multipart/form-data nor application/wasm", body = ErrorAnswer),
        (status = 503, description = "The compiler is busy", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn upload(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<UploadQuery>,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    let upload = match MediaType::of(request.headers()) {
        MediaType::Multipart => {
            let timeout = body_timeout(&request);
            tokio::time::timeout(timeout, read_multipart(request, &state))
                .await
                .map_err(|_| ApiError::BodyTimeout {
                    seconds: timeout.as_secs(),
                })??
        }
        MediaType::Wasm => {
            let limit = request
                .extensions()
                .get::<BodyLimit>()
                .map_or(state.max_plugin_bytes, |l| l.0);
            let wasm = read_body(request, &state, limit).await?;
            raw_upload(query, wasm)
        }
        MediaType::Absent | MediaType::Json | MediaType::Other(_) => {
            return Err(unsupported(&sent_type(request.headers()), UPLOAD_TYPES));
        }
    };

    let mut errors = Vec::new();
    let mut field = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.to_string(),
            message,
        })
    };
    let name = match upload.name.map(PluginName::parse) {
        None => {
            field("name", "is required".into());
            None
        }
        Some(Err(message)) => {
            field("name", message);
            None
        }
        Some(Ok(name)) => Some(name),
    };
    let version = match upload.version.map(PluginVersion::parse) {
        None => {
            field("version", "is required".into());
            None
        }
        Some(Err(message)) => {
            field("version", message);
            None
        }
        Some(Ok(version)) => Some(version),
    };
    let role = match upload.role.as_deref().map(str::parse::<PluginRole>) {
        None => {
            field("role", format!("is required: {}", PluginRole::choices()));
            None
        }
        Some(Err(e)) => {
            field("role", e.to_string());
            None
        }
        Some(Ok(role)) => Some(role),
    };
    let limits = match RequestedLimits::parse(
        upload.memory_bytes.as_deref(),
        upload.cpu_deadline_ms.as_deref(),
        upload.wall_deadline_ms.as_deref(),
        state.engine.limits(),
    ) {
        Ok(limits) => Some(limits),
        Err(bad) => {
            for (name, message) in bad {
                field(name, message);
            }
            None
        }
    };
    if upload.wasm.is_none() {
        field("wasm", "is required: the component's bytes".into());
    }
    let (Some(name), Some(version), Some(role), Some(limits), Some(wasm)) =
        (name, version, role, limits, upload.wasm)
    else {
        return Err(ApiError::Validation(ValidationErrors(errors)));
    };

    // A tenant's upload is private to it; the admin's is shared with all.
    let owner = PluginOwner::of(principal.tenant_id());
    // Fail fast on a duplicate before spending seconds compiling; the insert
    // below is what actually guarantees it.
    if state
        .registry
        .get_plugin(owner, name.as_str(), version.as_str())
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict(format!(
            "plugin {name} version {version} exists already; upload a new version"
        )));
    }

    let compiled = state
        .engine
        .compile(role, wasm.to_vec())
        .await
        .map_err(|error| rejected(role, error))?;
    let stored = state
        .registry
        .insert_plugin(NewPlugin {
            owner,
            name: name.as_str(),
            version: version.as_str(),
            role,
            sha256: compiled.sha256(),
            limits,
            wasm: &wasm,
        })
        .await?;
    // Stored: from now on its compiled code may be kept for the pipelines.
    state.engine.remember(&compiled);
    tracing::info!(plugin = %name, version = %version, role = %role, sha256 = %stored.sha256, size = stored.size, "Plugin uploaded.");
    Ok((
        StatusCode::CREATED,
        Json(plugin_body(&stored, state.engine.limits())),
    ))
}

/// The answer for a component that could not be compiled as a plugin of
/// `role`: a 4xx when it is the upload's fault.
fn rejected(role: PluginRole, error: PluginError) -> ApiError {
    let code = match &error {
        PluginError::InvalidComponent(_) => "not_a_component",
        PluginError::WrongWorld(_) => "wrong_world",
        PluginError::ForbiddenImport(_) => "forbidden_import",
        PluginError::CompileTimeout(_) => "compile_timeout",
        PluginError::CompilerBusy(_) => return ApiError::Unavailable(error.to_string()),
        _ => return ApiError::Internal(format!("compiling the {role} plugin: {error}")),
    };
    ApiError::InvalidPlugin {
        code,
        message: format!("wasm: {error}"),
    }
}

#[utoipa::path(
    get,
    path = "/1/Plugin",
    tag = "plugins",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of the plugins the caller sees", body = Vec<Plugin>,
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
) -> Result<(axum::http::HeaderMap, Json<Value>), ApiError> {
    let page = query.page()?;
    let listing = state
        .registry
        .list_plugins_page(principal.tenant_id(), &page)
        .await?;
    let host = state.engine.limits();
    Ok(paged("/1/Plugin", &page, &listing, |p| {
        plugin_body(p, host)
    }))
}

/// `?tenant=ID`: the admin addressing a tenant's private plugin (without it,
/// the shared one).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct OwnerQuery {
    /// The admin only: the tenant whose private plugin is meant.
    #[param(value_type = Option<uuid::Uuid>)]
    tenant: Option<String>,
}

/// The plugin a caller means by `name`/`version`: a tenant sees its own, then
/// the shared one; the admin the shared one, or a tenant's with `?tenant=`.
async fn find(
    state: &AppState,
    principal: &Principal,
    query: &OwnerQuery,
    name: &str,
    version: &str,
) -> Result<StoredPlugin, ApiError> {
    let found = match (principal.tenant_id(), &query.tenant) {
        (Some(tenant), _) => {
            state
                .registry
                .resolve_plugin(Some(tenant), name, version)
                .await?
        }
        (None, None) => {
            state
                .registry
                .get_plugin(PluginOwner::Shared, name, version)
                .await?
        }
        (None, Some(raw)) => {
            let tenant = super::parse_id(raw, "tenant")?;
            state
                .registry
                .get_plugin(PluginOwner::Tenant(tenant), name, version)
                .await?
        }
    };
    found.ok_or_else(|| not_found(name, version))
}

#[utoipa::path(
    get,
    path = "/1/Plugin/{name}/{version}",
    tag = "plugins",
    params(
        ("name" = String, Path, description = "The plugin's name"),
        ("version" = String, Path, description = "Its version"),
        OwnerQuery,
    ),
    responses(
        (status = 200, description = "The plugin", body = Plugin),
        (status = 404, description = "No such plugin that the caller sees", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<OwnerQuery>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    if unstorable(&name, &version) {
        return Err(not_found(&name, &version));
    }
    let plugin = find(&state, &principal, &query, &name, &version).await?;
    Ok(Json(plugin_body(&plugin, state.engine.limits())))
}

/// PostgreSQL refuses a NUL byte in a text parameter (a 500); no stored
/// plugin can have one, so such a name is simply not found.
fn unstorable(name: &str, version: &str) -> bool {
    name.contains('\0') || version.contains('\0')
}

fn not_found(name: &str, version: &str) -> ApiError {
    ApiError::NotFound(format!("no plugin {name} version {version}"))
}

/// What still uses `plugin`: subscriptions whose names resolve to it, and
/// tenants that have it as their mandatory policy.
async fn users_of(state: &AppState, plugin: &StoredPlugin) -> Result<Vec<String>, ApiError> {
    let (name, version) = (plugin.name.as_str(), plugin.version.as_str());
    let mut users = Vec::new();
    for subscription in state.registry.list_subscriptions().await? {
        if !subscription.spec.uses_plugin(name, version) {
            continue;
        }
        let resolves_here = match plugin.owner {
            PluginOwner::Tenant(owner) => subscription.tenant_id == Some(owner),
            // A tenant's own copy of the name would hide the shared one.
            PluginOwner::Shared => match subscription.tenant_id {
                None => true,
                Some(tenant) => state
                    .registry
                    .get_plugin(PluginOwner::Tenant(tenant), name, version)
                    .await?
                    .is_none(),
            },
        };
        if resolves_here {
            users.push(format!("subscription {}", subscription.id));
        }
    }
    if plugin.owner == PluginOwner::Shared {
        let mut page = Page::default();
        loop {
            let listing = state.registry.list_tenants(&page).await?;
            for tenant in &listing.items {
                if tenant
                    .spec
                    .mandatory_policy
                    .as_ref()
                    .is_some_and(|p| p.name.as_str() == name && p.version.as_str() == version)
                {
                    users.push(format!(
                        "tenant {} (mandatory policy)",
                        tenant.spec.name.as_str()
                    ));
                }
            }
            match listing.next {
                Some(next) => page.after = Some(next),
                None => break,
            }
        }
    }
    Ok(users)
}

#[utoipa::path(
    delete,
    path = "/1/Plugin/{name}/{version}",
    tag = "plugins",
    params(
        ("name" = String, Path, description = "The plugin's name"),
        ("version" = String, Path, description = "Its version"),
        OwnerQuery,
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "A shared plugin, and not the admin", body = ErrorAnswer),
        (status = 404, description = "No such plugin that the caller sees", body = ErrorAnswer),
        (status = 409, description = "Still attached to a subscription or a tenant", body = ErrorAnswer),
        (status = 401, description = "No usable bearer token", body = ErrorAnswer),
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<OwnerQuery>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if unstorable(&name, &version) {
        return Err(not_found(&name, &version));
    }
    let plugin = find(&state, &principal, &query, &name, &version).await?;
    if !principal.sees(plugin.owner.tenant()) {
        return Err(ApiError::Forbidden(format!(
            "plugin {name} version {version} is shared; only the admin may delete it"
        )));
    }
    // Not atomic with the delete: a subscription attached in between keeps a
    // dangling reference, and its pipeline reports the plugin missing.
    let users = users_of(&state, &plugin).await?;
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "plugin {name} version {version} is used by {}; detach it first",
            users.join(", ")
        )));
    }
    if !state
        .registry
        .delete_plugin(plugin.owner, &name, &version)
        .await?
    {
        return Err(not_found(&name, &version));
    }
    let still_stored = state
        .registry
        .list_plugins()
        .await?
        .iter()
        .any(|p| p.sha256 == plugin.sha256);
    if !still_stored {
        state.engine.forget(&plugin.sha256);
    }
    tracing::info!(plugin = %name, version = %version, "Plugin deleted.");
    Ok(StatusCode::NO_CONTENT)
}
