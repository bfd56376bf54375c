//! The REST API: subscriptions, their status, the admin switch, plugins.
//!
//! Routes: `/1/Subscription` (create, list), `/1/Subscription/{id}` (get, replace,
//! delete), `/1/Subscription/{id}/Status`, `/1/Subscription/{id}/Secret/Rotate`,
//! `/1/EventNotificationAdmin` (get, set),
//! `/1/Plugin` (upload, list), `/1/Plugin/{name}/{version}` (get, delete) and `/healthz`. Handlers parse into domain types, talk to the registry and poke
//! the delivery supervisor; they hold no delivery logic.

mod admin;
pub mod error;
pub mod json;
mod plugins;
mod subscriptions;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::Method;
use axum::routing::{get, post};
use tokio::sync::Notify;

use crate::plugin::PluginEngine;
use crate::registry::Registry;
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
    /// How long a rotated-out signing secret keeps signing.
    pub secret_rotation_overlap: std::time::Duration,
}

pub fn router(state: AppState, body_limit: usize) -> Router {
    // Components are megabytes: uploads get their own, larger limit. These
    // layers sit inside the general ones below, so they win for this route.
    let upload_limit = state.max_plugin_bytes;
    let uploads = Router::new()
        .route("/1/Plugin", get(plugins::list).post(plugins::upload))
        .layer(DefaultBodyLimit::max(upload_limit))
        .layer(axum::Extension(BodyLimit(upload_limit)));
    Router::new()
        .merge(uploads)
        .route(
            "/1/Plugin/{name}/{version}",
            get(plugins::get).delete(plugins::delete),
        )
        .route(
            "/1/Subscription",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route(
            "/1/Subscription/{id}",
            get(subscriptions::get)
                .put(subscriptions::replace)
                .delete(subscriptions::delete),
        )
        .route("/1/Subscription/{id}/Status", get(subscriptions::status))
        .route(
            "/1/Subscription/{id}/Secret/Rotate",
            post(subscriptions::rotate_secret),
        )
        .route(
            "/1/EventNotificationAdmin",
            get(admin::get).post(admin::set),
        )
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::Extension(BodyLimit(body_limit)))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Liveness: 200 and the body `OK`.
async fn healthz() -> &'static str {
    "OK"
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
