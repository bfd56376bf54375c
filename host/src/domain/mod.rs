//! The domain: values that can only hold what the platform accepts.
//!
//! Every newtype here parses, it does not validate: once a `BatchSize` or a
//! `WebhookUrl` exists, it is in range. The wire shapes of the REST API live in
//! `api`; this module turns them into a [`SubscriptionSpec`] and collects every
//! violation with the path of the field that caused it. Nothing here does I/O.

mod access;
mod fields;
mod jmes;
mod plugin;
mod subscription;

pub use access::{
    AccessToken, TenantName, TenantRequest, TenantSpec, TopicAcl, TopicPattern, hash_matches,
};
pub use fields::{
    Active, AlertChannel, BatchBytes, BatchInterval, BatchSize, BodyFormat, EmailAddress,
    FixedDelay, HeaderLine, JmesFilter, MASK, MaxInFlightBatches, MaxRetries, RateLimit,
    RetryAlgorithm, SubscriptionName, TopicName, WebhookUrl,
};
pub use jmes::{JmesDocument, Reads as JmesReads};
pub use plugin::{
    PluginAttachment, PluginConfig, PluginName, PluginRole, PluginVersion, SecretConfig,
    UnknownRole,
};
pub use subscription::{
    Alerting, AlertingRequest, Batching, BatchingRequest, Configuration, ConfigurationRequest,
    Destination, DestinationKind, DestinationRequest, FieldError, PluginAttachmentRequest,
    RateLimitRequest, RetryPolicy, RetryRequest, SourceRequest, SourceSpec, SubscriptionRequest,
    SubscriptionSpec, ValidationErrors, WebhookDestination, WebhookRequest, map_stored_secrets,
};
