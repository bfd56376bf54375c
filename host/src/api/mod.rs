//! The REST API: subscriptions, their status, the admin switch, plugins,
//! tenants and tokens.
//!
//! Routes: `/1/Subscription` (create, list), `/1/Subscription/{id}` (get, replace,
//! delete), `/1/Subscription/{id}/Status`, `/1/Subscription/{id}/Series`,
//! `/1/Subscription/{id}/Secret/Rotate`,
//! `/1/EventNotificationAdmin` (get, set),
//! `/1/Plugin` (upload, list), `/1/Plugin/{name}/{version}` (get, delete),
//! `/1/Tenant` (create, list), `/1/Tenant/{id}` (get, replace, delete),
//! `/1/Tenant/{id}/Token` (mint), `/1/Token` (mint own, list),
//! `/1/Token/{id}` (revoke), `/metrics`, and the unauthenticated `/healthz`,
//! `/readyz`, `/openapi.json` (the OpenAPI document, [`openapi`]), `/docs` and
//! the status page (`/ui`, [`crate::ui`]).
//! Other doors' routes (ingest's `/1/Topic/{topic}/Records` and `/log`, the
//! bridge's `/1/ws`) are merged in by [`router_with`], behind the same
//! authentication.
//! Every other route needs a bearer token ([`auth`]). Handlers parse into
//! domain types, talk to the registry and poke the delivery supervisor; they
//! hold no delivery logic. List routes page with `limit` and `cursor`; the
//! next page's URL is in the `link` header (`rel="next"`).

mod admin;
pub mod auth;
pub mod error;
pub mod json;
pub mod openapi;
mod plugins;
mod replay;
mod series;
pub mod server;
mod subscriptions;
mod tenants;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::sync::Notify;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::plugin::PluginEngine;
use crate::registry::{Listing, Page, Registry};
pub use error::ApiError;
use json::BodyLimit;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub registry: Registry,
    /// Woken after every registry change so the local supervisor reconciles at once
    /// (other hosts notice on their next periodic reconcile).
    pub changes: Arc<Notify>,
    /// Compiles and validates uploads; shared with the pipelines (one cache).
    pub engine: PluginEngine,
    /// Body limit of `POST /1/Plugin`, larger than the others.
    pub max_plugin_bytes: usize,
    /// Where webhooks may go: registration refuses IP literals outside it.
    pub destinations: crate::egress::DestinationPolicy,
    /// What each pipeline on this host is doing (shown in status).
    pub states: crate::delivery::state::ConsumerStates,
    /// This host's counters and attempts not yet written (shown in status).
    pub ledger: crate::delivery::ledger::Ledger,
    /// How long a rotated-out signing secret keeps signing.
    pub secret_rotation_overlap: std::time::Duration,
    /// Creates each subscription's dead-letter topic before it is saved.
    pub topics: crate::kafka::Topics,
    /// The layout a dead-letter topic is created with.
    pub dead_letter_topic: crate::kafka::TopicLayout,
    /// Whether the brokers answer, for `/readyz`.
    pub broker: crate::kafka::BrokerHealth,
    /// How long each `/readyz` check may take.
    pub readiness_timeout: std::time::Duration,
    /// How the API reaches Kafka itself (replay, redrive).
    pub kafka: crate::kafka::KafkaConnection,
    /// How long the API waits for each Kafka request.
    pub kafka_timeout: std::time::Duration,
    /// This host's dead-letter redrives.
    pub redrives: crate::delivery::redrive::Redrives,
}

pub fn router(state: AppState, body_limit: usize) -> Router {
    router_with(state, body_limit, OpenApiRouter::default())
}

/// The API with the routes of other doors (`doors`, e.g. ingest's) merged in
/// before the authentication and the limits, so they are guarded alike. A
/// door reads its own body with its own limits. Every route, the doors'
/// included, comes with its entry in the OpenAPI document, served at
/// `/openapi.json` and shown at `/docs`.
pub fn router_with(state: AppState, body_limit: usize, doors: OpenApiRouter<AppState>) -> Router {
    let (routes, document) = api_routes(state.max_plugin_bytes)
        .merge(doors)
        .split_for_parts();
    // Swagger UI's files are built into the binary; its validator (an
    // external service) is off, so the page works offline.
    let docs = SwaggerUi::new("/docs")
        .url("/openapi.json", document)
        .config(Config::new(["/openapi.json"]).validator_url("none"));
    routes
        .merge(docs)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::Extension(BodyLimit(body_limit)))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// The API's own routes, each registered with its handler's
/// `#[utoipa::path]`, so that no route is served without its entry in the
/// document (a test scans the sources for routes added another way).
fn api_routes(upload_limit: usize) -> OpenApiRouter<AppState> {
    // Components are megabytes: uploads get their own, larger limit. These
    // layers sit inside the general ones, so they win for this route.
    let uploads = OpenApiRouter::default()
        .routes(routes!(plugins::list, plugins::upload))
        .layer(DefaultBodyLimit::max(upload_limit))
        .layer(axum::Extension(BodyLimit(upload_limit)));
    OpenApiRouter::with_openapi(openapi::base())
        .merge(uploads)
        .routes(routes!(plugins::get, plugins::delete))
        .routes(routes!(subscriptions::list, subscriptions::create))
        .routes(routes!(
            subscriptions::get,
            subscriptions::replace,
            subscriptions::delete
        ))
        .routes(routes!(subscriptions::status))
        .routes(routes!(series::series))
        .routes(routes!(replay::replay))
        .routes(routes!(replay::redrive))
        .routes(routes!(subscriptions::rotate_secret))
        .routes(routes!(admin::get, admin::set))
        .routes(routes!(tenants::list, tenants::create))
        .routes(routes!(tenants::get, tenants::replace, tenants::delete))
        .routes(routes!(tenants::create_tenant_token))
        .routes(routes!(tenants::list_tokens, tenants::create_own_token))
        .routes(routes!(tenants::revoke_token))
        .routes(routes!(metrics))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(crate::ui::page))
        .routes(routes!(crate::ui::asset))
}

/// Prometheus metrics, for the admin (they name every subscription).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "The Prometheus text format", body = String,
            content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 401, description = "No usable bearer token", body = openapi::ErrorAnswer),
        (status = 403, description = "Not the admin", body = openapi::ErrorAnswer),
        (status = 503, description = "Another recorder was installed in this process", body = openapi::ErrorAnswer),
    ),
    security(("bearer" = []))
)]
async fn metrics(principal: auth::Principal) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    principal.require_admin("reading metrics")?;
    match crate::telemetry::render() {
        Some(text) => Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response()),
        None => Err(ApiError::Unavailable(
            "metrics are not recorded: another recorder was installed in this process".into(),
        )),
    }
}

/// Liveness: 200 and the body `OK`.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain; charset=utf-8"))
)]
async fn healthz() -> &'static str {
    "OK"
}

/// Readiness: the registry and the brokers, checked at once, each within
/// the readiness timeout. 200 `{"registry": "ok", "broker": "ok"}`, else 503
/// with what is down and why (`"unreachable: …"`).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "The registry and the brokers answer", body = openapi::Readiness),
        (status = 503, description = "What does not answer, and why", body = openapi::Readiness),
    )
)]
async fn readyz(State(state): State<AppState>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let timeout = state.readiness_timeout;
    let registry = async {
        match tokio::time::timeout(timeout, state.registry.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    };
    let broker = async {
        state
            .broker
            .check(timeout)
            .await
            .map_err(|down| down.reason().to_string())
    };
    let (registry, broker) = tokio::join!(registry, broker);
    let ready = registry.is_ok() && broker.is_ok();
    let describe = |check: Result<(), String>, what: &str| match check {
        Ok(()) => "ok".to_string(),
        Err(reason) => {
            tracing::warn!(reason = %reason, "Not ready: the {what} does not answer.");
            format!("unreachable: {reason}")
        }
    };
    let body = serde_json::json!({
        "registry": describe(registry, "registry"),
        "broker": describe(broker, "broker"),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

/// `limit` and `cursor` of a list route.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Items per page, from 1 to 1000 (default 100).
    #[param(value_type = Option<u32>)]
    limit: Option<String>,
    /// Where the page starts: taken from the previous page's `link` header.
    cursor: Option<String>,
}

impl ListQuery {
    pub(crate) fn page(&self) -> Result<Page, ApiError> {
        Page::parse(self.limit.as_deref(), self.cursor.as_deref()).map_err(|(field, message)| {
            ApiError::InvalidField {
                field: field.into(),
                message,
            }
        })
    }
}

/// A list route's answer: the page as a JSON array, and
/// `link: <path?limit=…&cursor=…>; rel="next"` when there is a next page.
pub(crate) fn paged<T>(
    path: &str,
    page: &Page,
    listing: &Listing<T>,
    body: impl Fn(&T) -> serde_json::Value,
) -> (HeaderMap, axum::Json<serde_json::Value>) {
    let mut headers = HeaderMap::new();
    if let Some(next) = &listing.next {
        let link = format!(
            "<{path}?limit={}&cursor={}>; rel=\"next\"",
            page.limit,
            next.encode()
        );
        if let Ok(value) = HeaderValue::from_str(&link) {
            headers.insert(axum::http::header::LINK, value);
        }
    }
    let items = listing.items.iter().map(body).collect();
    (headers, axum::Json(serde_json::Value::Array(items)))
}

async fn not_found(method: Method, request: Request) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", request.uri().path()))
}

async fn method_not_allowed(method: Method, request: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{method} is not allowed on {}",
        request.uri().path()
    ))
}

/// Parses a path id; an id that is not a UUID cannot name anything, so it is a 404.
fn parse_id(raw: &str, what: &str) -> Result<uuid::Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("no {what} with id {raw:?}")))
}
