//! The API's OpenAPI 3.1 document, served at `GET /openapi.json` and shown by
//! Swagger UI at `/docs` (both without a token).
//!
//! The document is not written by hand: every route is registered with
//! `utoipa_axum`'s router from its handler's `#[utoipa::path]`, so a route
//! and its entry come from one registration (see [`super::router_with`]).
//! This module holds what the handlers share: the base document (title,
//! version, the bearer security scheme) and the schemas of answers that are
//! built as JSON values rather than from a type (subscriptions, their
//! status, plugins, tenants, tokens, …). Those schemas describe the answers
//! as they are; the black-box tests check real answers against them.

use chrono::{DateTime, Utc};
use serde_json::Value;
use utoipa::openapi::path::{HttpMethod, OperationBuilder};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;

use crate::delivery::redrive::{RedriveProgress, RedriveRange};
use crate::delivery::replay::PartitionOffset;
use crate::delivery::state::ConsumerView;
use crate::domain::{
    ConfigurationRequest, DestinationRequest, FieldError, PluginAttachmentRequest, SourceRequest,
};
use crate::registry::{Counts, DeadLetter};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wasmhook",
        description = "Delivers Kafka messages to webhooks, with WebAssembly plugins. \
            Every route but /healthz, /readyz, /openapi.json and /docs needs \
            `Authorization: Bearer <token>`; every error answers an ErrorAnswer."
    ),
    modifiers(&BearerScheme, &ItsOwnPath),
    components(schemas(ErrorAnswer))
)]
struct Base;

/// The document the router adds every route to: title `wasmhook`, the
/// crate's version, the bearer scheme and the error answer.
pub fn base() -> utoipa::openapi::OpenApi {
    let mut document = Base::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_string();
    document
}

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        // Routes name it in their `security(("bearer" = []))`.
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// `GET /openapi.json` itself: Swagger UI's router serves it (beside
/// `/docs`), so no handler of ours carries its entry.
struct ItsOwnPath;

impl Modify for ItsOwnPath {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let answer = ResponseBuilder::new()
            .description("This document")
            .content("application/json", ContentBuilder::new().build())
            .build();
        let operation = OperationBuilder::new()
            .tag("operations")
            .summary(Some("The OpenAPI 3.1 document (no token needed)"))
            .response("200", answer)
            .build();
        openapi
            .paths
            .add_path_operation("/openapi.json", vec![HttpMethod::Get], operation);
    }
}

/// Every error: `code` says which (`validation_failed`, `not_found`, …),
/// `errors` lists each offending field of a validation failure, and an
/// internal error carries the `reference` it is logged under.
#[derive(ToSchema)]
pub struct ErrorAnswer {
    pub code: String,
    pub message: String,
    pub errors: Option<Vec<FieldError>>,
    pub reference: Option<Uuid>,
}

/// The error answers of both ingest doors (`POST /1/Topic/{topic}/Records`
/// and `POST /log`), which read, check and produce through the same code;
/// each door documents its own 404.
#[derive(utoipa::IntoResponses)]
pub enum ProduceErrors {
    #[response(
        status = 400,
        description = "Not JSON, a bad key path, header or query"
    )]
    BadRequest(ErrorAnswer),
    #[response(status = 401, description = "No usable bearer token")]
    Unauthorized(ErrorAnswer),
    #[response(status = 403, description = "A topic the tenant may not produce to")]
    Forbidden(ErrorAnswer),
    #[response(status = 408, description = "The body did not arrive in time")]
    Timeout(ErrorAnswer),
    #[response(
        status = 413,
        description = "A record, the body or the batch's count is over its limit"
    )]
    TooLarge(ErrorAnswer),
    #[response(status = 415, description = "The body is not application/json")]
    UnsupportedType(ErrorAnswer),
    #[response(status = 502, description = "The brokers refused the record")]
    Refused(ErrorAnswer),
    #[response(status = 503, description = "The brokers do not answer in time")]
    Unavailable(ErrorAnswer),
}

/// A subscription as answers show it: secret header values and
/// `secret_config` values masked (`********`).
#[derive(ToSchema)]
pub struct Subscription {
    pub id: Uuid,
    /// Always `Webhook`.
    pub kind: String,
    /// The owning tenant; absent for the admin's.
    pub tenant_id: Option<Uuid>,
    pub name: String,
    /// `yes` or `no`.
    pub active: String,
    pub destination: DestinationRequest,
    pub source: Vec<SourceRequest>,
    pub configuration: ConfigurationRequest,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Only in the answer that creates it: the secret webhooks are signed with.
    pub signing_secret: Option<String>,
}

/// `GET /1/Subscription/{id}/Status`.
#[derive(ToSchema)]
pub struct SubscriptionStatus {
    pub id: Uuid,
    /// Always `WebhookStatus`.
    pub kind: String,
    pub name: String,
    pub active: String,
    pub payload_url: String,
    /// When the status last changed.
    pub timestamp: DateTime<Utc>,
    /// `healthy`, `unhealthy` or `inactive`.
    pub status: String,
    pub status_reason: Option<String>,
    /// Newest first.
    pub recent_activity: Vec<ActivityEntry>,
    pub counts: Counts,
    pub dead_letter_topic: String,
    /// The newest dead letters, newest first.
    pub dead_letters: Vec<DeadLetter>,
    pub consumer_group: String,
    /// This host's consumer, if the subscription runs here.
    pub consumer: Option<ConsumerView>,
    /// This host's latest redrive, if it ran one.
    pub redrive: Option<RedriveProgress>,
    /// Only while the platform is offline.
    pub offline_message: Option<String>,
}

/// One entry of a subscription's recent activity; the `request` and
/// `response_*` fields only for `api_call`.
#[derive(ToSchema)]
pub struct ActivityEntry {
    pub timestamp: DateTime<Utc>,
    /// `active`, `inactive` or `api_call`.
    pub event: String,
    pub request: Option<Value>,
    pub request_headers: Option<Value>,
    pub response_code: Option<Value>,
    pub response_body: Option<Value>,
    pub response_headers: Option<Value>,
}

/// `POST /1/Subscription/{id}/Secret/Rotate`: the new secret, shown this once.
#[derive(ToSchema)]
pub struct RotatedSecret {
    pub signing_secret: String,
    /// Until then the replaced secret signs too.
    pub previous_secret_expires_at: DateTime<Utc>,
}

/// `GET /1/Subscription/{id}/Series`: what the answering host delivered over
/// the last `window_seconds`, in buckets of `bucket_seconds`, oldest first.
#[derive(ToSchema)]
pub struct SubscriptionSeries {
    pub id: Uuid,
    /// Always `WebhookSeries`.
    pub kind: String,
    /// The host whose figures these are (each host keeps its own).
    pub host: String,
    pub bucket_seconds: i64,
    pub window_seconds: i64,
    pub points: Vec<crate::delivery::series::Point>,
}

/// `POST /1/Subscription/{id}/Replay`: the consumer group the subscription
/// moved to, and where it starts on each partition.
#[derive(ToSchema)]
pub struct Replayed {
    pub subscription: Uuid,
    pub consumer_group: String,
    pub partitions: Vec<PartitionOffset>,
}

/// `POST /1/Subscription/{id}/DeadLetter/Redrive`: what will be delivered again.
#[derive(ToSchema)]
pub struct Redriven {
    pub subscription: Uuid,
    pub topic: String,
    pub partitions: Vec<RedriveRange>,
    pub messages: i64,
}

/// `/1/EventNotificationAdmin`: the platform's switch and its webhooks (a
/// tenant sees only its own).
#[derive(ToSchema)]
pub struct AdminOverview {
    /// This installation's id.
    pub id: Uuid,
    /// Always `WebhookAdmin`.
    pub kind: String,
    /// `online` or `offline`.
    pub status: String,
    pub offline_message: String,
    pub timestamp: DateTime<Utc>,
    pub webhooks: Vec<AdminWebhook>,
}

#[derive(ToSchema)]
pub struct AdminWebhook {
    pub id: Uuid,
    pub name: String,
    pub timestamp: DateTime<Utc>,
    pub status: String,
    pub topics: Vec<String>,
}

/// A plugin; `limits` are those its instances run under.
#[derive(ToSchema)]
pub struct Plugin {
    pub name: String,
    pub version: String,
    pub shared: bool,
    pub tenant_id: Option<Uuid>,
    /// `filter`, `policy` or `serialiser`.
    pub role: String,
    pub sha256: String,
    pub size: i64,
    pub limits: PluginLimits,
    pub created_at: DateTime<Utc>,
}

#[derive(ToSchema)]
pub struct PluginLimits {
    pub memory_bytes: u64,
    pub cpu_deadline_ms: u64,
    pub wall_deadline_ms: u64,
}

/// A `multipart/form-data` plugin upload (`application/wasm` sends the
/// component as the body and these fields in the query).
#[derive(ToSchema)]
pub struct PluginUpload {
    pub name: String,
    pub version: String,
    /// `filter`, `policy` or `serialiser`.
    pub role: String,
    /// The component's bytes.
    #[schema(value_type = String, format = Binary)]
    pub wasm: Vec<u8>,
    pub memory_bytes: Option<u64>,
    pub cpu_deadline_ms: Option<u64>,
    pub wall_deadline_ms: Option<u64>,
}

/// A tenant; its mandatory policy's `secret_config` values are masked.
#[derive(ToSchema)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub topics: Vec<String>,
    pub mandatory_policy: Option<PluginAttachmentRequest>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A token, by its id and public prefix; `token` only in the answer that
/// mints it.
#[derive(ToSchema)]
pub struct Token {
    pub id: Uuid,
    pub prefix: String,
    pub tenant_id: Option<Uuid>,
    pub admin: bool,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub token: Option<String>,
}

/// `/readyz`: `ok`, or `unreachable: <why>`, for each.
#[derive(ToSchema)]
pub struct Readiness {
    pub registry: String,
    pub broker: String,
}

/// A record the brokers acknowledged.
#[derive(ToSchema)]
pub struct Written {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
}

/// With `ack=none`: queued, not yet acknowledged.
#[derive(ToSchema)]
pub struct Queued {
    pub topic: String,
    pub records: u64,
}
