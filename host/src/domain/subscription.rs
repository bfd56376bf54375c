//! A subscription as the platform holds it, and its parsing from the REST shape.
//!
//! [`SubscriptionRequest`] is the wire shape of the REST API, lenient so that every
//! violation can be reported at once; [`SubscriptionSpec::parse`] turns it into a
//! spec that can only hold valid values. The spec serialises to the same shape
//! (with secrets in full: that form is for the registry, which seals them with
//! [`map_stored_secrets`], not for responses; see [`SubscriptionSpec::to_public_json`]).

use serde::{Deserialize, Serialize};

use super::fields::*;
use super::plugin::{
    PluginAttachment, PluginConfig, PluginName, PluginRole, PluginVersion, SecretConfig,
};

/// One violated rule, with the JSON path of the field that broke it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Every violation found in one request, in document order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    pub(crate) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Parses `value` (when present) with `parse`, recording a failure under `field`.
    pub(crate) fn check<T, R>(
        &mut self,
        field: &str,
        value: Option<R>,
        parse: impl FnOnce(R) -> Result<T, String>,
    ) -> Option<T> {
        match value {
            None => {
                self.push(field, "is required");
                None
            }
            Some(raw) => parse(raw).map_err(|message| self.push(field, message)).ok(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

/// Caps on what one subscription may list: each keeps a single request's
/// work (compiling filters, opening consumers, sending mail) bounded.
pub const MAX_SOURCES: usize = 64;
pub const MAX_HEADERS: usize = 32;
pub const MAX_JMES_FILTERS_PER_SOURCE: usize = 16;
pub const MAX_ALERT_EMAILS: usize = 20;

/// The message of a list longer than its cap.
fn too_many(cap: usize, what: &str, got: usize) -> String {
    format!("must list at most {cap} {what}, got {got}")
}

// ---- The wire shape, as clients send it ----

/// `POST /1/Subscription` and `PUT /1/Subscription/{id}` bodies.
///
/// Every field is optional here so that a missing one is reported beside the
/// others instead of stopping deserialisation; unknown fields are refused.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionRequest {
    /// Accepted so that a fetched subscription can be sent back as it is.
    pub id: Option<String>,
    pub kind: Option<String>,
    /// Read-only; accepted and ignored for the same reason.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub created_at: Option<serde::de::IgnoredAny>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<serde::de::IgnoredAny>,
    /// Read-only (the owner is whoever created it).
    #[schema(value_type = Option<String>, format = Uuid)]
    pub tenant_id: Option<serde::de::IgnoredAny>,
    pub name: Option<String>,
    pub active: Option<String>,
    pub destination: Option<DestinationRequest>,
    pub source: Option<Vec<SourceRequest>>,
    pub configuration: Option<ConfigurationRequest>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationRequest {
    pub kind: Option<String>,
    pub webhook: Option<WebhookRequest>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    pub url: Option<String>,
    pub headers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceRequest {
    pub topic: Option<String>,
    pub jmes_filters: Option<Vec<String>>,
    pub filter_plugin: Option<PluginAttachmentRequest>,
    pub policy_plugin: Option<PluginAttachmentRequest>,
}

/// `{"name", "version", "config": {"key": "value"}, "secret_config": {…}}`
/// naming an uploaded plugin.
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginAttachmentRequest {
    pub name: Option<String>,
    pub version: Option<String>,
    /// Keys to string values, passed to the plugin's `init`.
    #[schema(value_type = Option<HashMap<String, String>>)]
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
    /// Like `config`, stored sealed and never shown (answers mask the values).
    #[schema(value_type = Option<HashMap<String, String>>)]
    pub secret_config: Option<serde_json::Map<String, serde_json::Value>>,
}

impl std::fmt::Debug for PluginAttachmentRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret_keys: Option<Vec<&String>> =
            self.secret_config.as_ref().map(|c| c.keys().collect());
        f.debug_struct("PluginAttachmentRequest")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("config", &self.config)
            .field("secret_config (keys)", &secret_keys)
            .finish()
    }
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigurationRequest {
    pub batching: Option<BatchingRequest>,
    pub retry: Option<RetryRequest>,
    pub alerting: Option<AlertingRequest>,
    pub rate_limit: Option<RateLimitRequest>,
    pub serialiser_plugin: Option<PluginAttachmentRequest>,
    pub body_format: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchingRequest {
    pub max_batch_size: Option<i64>,
    pub max_batch_interval_seconds: Option<i64>,
    pub max_batch_bytes: Option<i64>,
    /// Batches delivered at once, 1 to 64 (default 1: one at a time, in order
    /// across the subscription). Above 1 the subscription's partitions are
    /// spread over that many lanes, each with one batch in flight: each
    /// partition stays in order, partitions no longer wait for each other.
    pub max_in_flight_batches: Option<i64>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    pub max_retries: Option<i64>,
    pub retry_algorithm: Option<String>,
    pub fixed_delay_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertingRequest {
    pub alert_channel: Option<String>,
    pub alert_emails: Option<Vec<String>>,
    pub alert_url: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRequest {
    pub max_requests_per_second: Option<i64>,
}

// ---- The parsed spec ----

/// A subscription that passed every rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionSpec {
    pub name: SubscriptionName,
    pub active: Active,
    pub destination: Destination,
    pub source: Vec<SourceSpec>,
    pub configuration: Configuration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Destination {
    pub kind: DestinationKind,
    pub webhook: WebhookDestination,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DestinationKind {
    #[serde(rename = "webhook")]
    Webhook,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDestination {
    pub url: WebhookUrl,
    #[serde(default)]
    pub headers: Vec<HeaderLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSpec {
    pub topic: TopicName,
    #[serde(default)]
    pub jmes_filters: Vec<JmesFilter>,
    /// Runs after the JMES filters; keeps or drops each message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_plugin: Option<PluginAttachment>,
    /// Runs after the filter plugin; allows, denies or redacts each message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_plugin: Option<PluginAttachment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Configuration {
    pub batching: Batching,
    pub retry: RetryPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerting: Option<Alerting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Builds the request body instead of the built-in JSON array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serialiser_plugin: Option<PluginAttachment>,
    /// What the built-in JSON array holds per message (not used with a serialiser plugin).
    #[serde(default, skip_serializing_if = "BodyFormat::is_envelope")]
    pub body_format: BodyFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Batching {
    pub max_batch_size: BatchSize,
    pub max_batch_interval_seconds: BatchInterval,
    /// A cap on the message bytes per request besides the count; unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_bytes: Option<BatchBytes>,
    /// Lanes delivering at once, one batch in flight each; unset: one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight_batches: Option<MaxInFlightBatches>,
}

impl Batching {
    /// How many batches may be in flight at once (one unless set).
    pub fn in_flight_batches(&self) -> MaxInFlightBatches {
        self.max_in_flight_batches
            .unwrap_or(MaxInFlightBatches::ONE)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_retries: MaxRetries,
    pub retry_algorithm: RetryAlgorithm,
    /// `fixed_time`'s wait; unset: the host's `--retry-fixed-delay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay_seconds: Option<FixedDelay>,
}

/// Where a subscription's health alerts go. Tagged by `alert_channel`, so
/// it stores and shows as the REST shape (`{"alert_channel": "email",
/// "alert_emails": [...]}` or `{"alert_channel": "webhook", "alert_url": ...}`),
/// and a channel cannot be without its destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "alert_channel")]
pub enum Alerting {
    #[serde(rename = "email")]
    Email { alert_emails: Vec<EmailAddress> },
    /// A POST signed as deliveries are, with the subscription's secret.
    #[serde(rename = "webhook")]
    Webhook { alert_url: WebhookUrl },
}

impl Alerting {
    pub fn channel(&self) -> AlertChannel {
        match self {
            Alerting::Email { .. } => AlertChannel::Email,
            Alerting::Webhook { .. } => AlertChannel::Webhook,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateLimitSpec {
    pub max_requests_per_second: RateLimit,
}

/// Defaults where the request leaves a section out.
const DEFAULT_BATCH_SIZE: i64 = 10;
const DEFAULT_BATCH_INTERVAL_SECONDS: i64 = 10;
const DEFAULT_MAX_RETRIES: i64 = 3;

impl SubscriptionSpec {
    /// Parses a request, collecting every violation.
    ///
    /// `previous` is the stored spec on update: a header sent back in its masked
    /// form keeps the stored value while the URL's origin is unchanged, and a
    /// masked secret config value keeps the stored one of the same plugin
    /// attached at the same place, so clients can PUT what they GET.
    pub fn parse(
        request: SubscriptionRequest,
        previous: Option<&SubscriptionSpec>,
    ) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();

        if let Some(kind) = &request.kind
            && kind != "Webhook"
        {
            errors.push(
                "kind",
                format!("must be \"Webhook\" when given, got {kind:?}"),
            );
        }
        let name = errors.check("name", request.name, SubscriptionName::parse);
        let active = match request.active {
            None => Some(Active::Yes),
            Some(a) => errors.check("active", Some(a), |a| a.parse::<Active>()),
        };
        let destination = parse_destination(request.destination, previous, &mut errors);
        let source = parse_sources(request.source, previous, &mut errors);
        let configuration = parse_configuration(request.configuration, previous, &mut errors);

        match (name, active, destination, source, configuration) {
            (Some(name), Some(active), Some(destination), Some(source), Some(configuration))
                if errors.is_empty() =>
            {
                Ok(Self {
                    name,
                    active,
                    destination,
                    source,
                    configuration,
                })
            }
            _ => Err(errors),
        }
    }

    /// The topics this subscription reads, in the order given.
    pub fn topics(&self) -> Vec<&str> {
        self.source.iter().map(|s| s.topic.as_str()).collect()
    }

    /// Every plugin the subscription uses, with the field path that attaches it
    /// (`source[0].filter_plugin`, …), in document order.
    pub fn plugins(&self) -> Vec<(String, PluginRole, &PluginAttachment)> {
        let mut out = Vec::new();
        for (i, source) in self.source.iter().enumerate() {
            if let Some(a) = &source.filter_plugin {
                out.push((format!("source[{i}].filter_plugin"), PluginRole::Filter, a));
            }
            if let Some(a) = &source.policy_plugin {
                out.push((format!("source[{i}].policy_plugin"), PluginRole::Policy, a));
            }
        }
        if let Some(a) = &self.configuration.serialiser_plugin {
            out.push((
                "configuration.serialiser_plugin".to_string(),
                PluginRole::Serialiser,
                a,
            ));
        }
        out
    }

    /// True when the subscription attaches the plugin `name`@`version`.
    pub fn uses_plugin(&self, name: &str, version: &str) -> bool {
        self.plugins()
            .iter()
            .any(|(_, _, a)| a.name.as_str() == name && a.version.as_str() == version)
    }

    /// The spec as responses show it: header values and secret config values masked.
    pub fn to_public_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("a spec always serialises");
        map_stored_secrets(&mut value, |_, _| {
            Ok::<_, std::convert::Infallible>(MASK.into())
        })
        .unwrap_or_else(|never| match never {});
        value
    }
}

/// Replaces every secret value in a spec's stored JSON form (header values,
/// `secret_config` values) with what `f` makes of it, given the place the value
/// belongs to (`destination.webhook.headers.authorization`,
/// `source[0].filter_plugin.secret_config.token`, …) and the value. The
/// registry seals and opens with it; responses mask with it. A header line
/// without a colon is left for deserialising to report.
pub fn map_stored_secrets<E>(
    stored: &mut serde_json::Value,
    mut f: impl FnMut(&str, &str) -> Result<String, E>,
) -> Result<(), E> {
    if let Some(headers) = stored
        .pointer_mut("/destination/webhook/headers")
        .and_then(serde_json::Value::as_array_mut)
    {
        for line in headers {
            let Some((name, value)) = line.as_str().and_then(|l| l.split_once(':')) else {
                continue;
            };
            let name = name.trim().to_ascii_lowercase();
            let mapped = f(&format!("destination.webhook.headers.{name}"), value.trim())?;
            *line = serde_json::Value::String(format!("{name}: {mapped}"));
        }
    }
    // Taken from one pass over the object, so the borrows stay apart.
    let mut attachments: Vec<(String, &mut serde_json::Value)> = Vec::new();
    for (key, value) in stored.as_object_mut().into_iter().flatten() {
        match (key.as_str(), value) {
            ("source", serde_json::Value::Array(sources)) => {
                for (i, source) in sources.iter_mut().enumerate() {
                    for (role, attachment) in source.as_object_mut().into_iter().flatten() {
                        if role == "filter_plugin" || role == "policy_plugin" {
                            attachments.push((format!("source[{i}].{role}"), attachment));
                        }
                    }
                }
            }
            ("configuration", configuration) => {
                if let Some(attachment) = configuration.get_mut("serialiser_plugin") {
                    attachments.push(("configuration.serialiser_plugin".into(), attachment));
                }
            }
            _ => {}
        }
    }
    for (path, attachment) in attachments {
        let Some(secrets) = attachment
            .get_mut("secret_config")
            .and_then(serde_json::Value::as_object_mut)
        else {
            continue;
        };
        for (key, value) in secrets.iter_mut() {
            if let Some(text) = value.as_str() {
                let mapped = f(&format!("{path}.secret_config.{key}"), text)?;
                *value = serde_json::Value::String(mapped);
            }
        }
    }
    Ok(())
}

fn parse_destination(
    request: Option<DestinationRequest>,
    previous: Option<&SubscriptionSpec>,
    errors: &mut ValidationErrors,
) -> Option<Destination> {
    let Some(request) = request else {
        errors.push("destination", "is required");
        return None;
    };
    let kind = errors.check("destination.kind", request.kind, |k| match k.as_str() {
        "webhook" => Ok(DestinationKind::Webhook),
        other => Err(format!("must be webhook, got {other:?}")),
    });
    let Some(webhook) = request.webhook else {
        errors.push("destination.webhook", "is required");
        return None;
    };
    let url = errors.check("destination.webhook.url", webhook.url, |u| {
        WebhookUrl::parse(&u)
    });
    // A masked header stands for the stored value only towards the same origin:
    // the secret must not follow the URL to another host.
    let same_origin = match (&url, previous) {
        (Some(url), Some(previous)) => {
            url.url().origin() == previous.destination.webhook.url.url().origin()
        }
        _ => false,
    };
    let previous_headers = previous.map(|p| p.destination.webhook.headers.as_slice());
    let mut lines = webhook.headers.unwrap_or_default();
    let within_cap = lines.len() <= MAX_HEADERS;
    if !within_cap {
        errors.push(
            "destination.webhook.headers",
            too_many(MAX_HEADERS, "headers", lines.len()),
        );
        lines.clear();
    }
    let mut headers = Vec::new();
    for (i, line) in lines.into_iter().enumerate() {
        let field = format!("destination.webhook.headers[{i}]");
        let Some(header) = errors.check(&field, Some(line), |l| HeaderLine::parse(&l)) else {
            continue;
        };
        if !header.is_mask() {
            headers.push(header);
            continue;
        }
        if url.is_none() {
            // The URL's own error is reported; origins cannot be compared.
            continue;
        }
        if previous.is_some() && !same_origin {
            errors.push(
                field,
                format!(
                    "{MASK} stands for the stored value of {}, which is kept only while the \
                     URL's scheme, host and port stay the same; with a new origin, send the value again",
                    header.name()
                ),
            );
            continue;
        }
        match previous_headers
            .into_iter()
            .flatten()
            .find(|stored| stored.name() == header.name())
        {
            Some(stored) => headers.push(stored.clone()),
            None => errors.push(
                field,
                format!(
                    "{MASK} stands for a stored value, but {} has none; send the value",
                    header.name()
                ),
            ),
        }
    }
    within_cap.then_some(())?;
    Some(Destination {
        kind: kind?,
        webhook: WebhookDestination { url: url?, headers },
    })
}

fn parse_sources(
    request: Option<Vec<SourceRequest>>,
    previous: Option<&SubscriptionSpec>,
    errors: &mut ValidationErrors,
) -> Option<Vec<SourceSpec>> {
    let Some(request) = request else {
        errors.push("source", "is required: at least one topic");
        return None;
    };
    if request.is_empty() {
        errors.push("source", "must list at least one topic");
        return None;
    }
    if request.len() > MAX_SOURCES {
        errors.push("source", too_many(MAX_SOURCES, "topics", request.len()));
        return None;
    }
    let mut sources = Vec::with_capacity(request.len());
    let mut complete = true;
    for (i, source) in request.into_iter().enumerate() {
        let topic = errors.check(
            &format!("source[{i}].topic"),
            source.topic,
            TopicName::parse,
        );
        let mut filters = Vec::new();
        let expressions = source.jmes_filters.unwrap_or_default();
        if expressions.len() > MAX_JMES_FILTERS_PER_SOURCE {
            // Not compiled one by one: the cap exists to spare that work.
            errors.push(
                format!("source[{i}].jmes_filters"),
                too_many(MAX_JMES_FILTERS_PER_SOURCE, "filters", expressions.len()),
            );
            complete = false;
        } else {
            for (j, expression) in expressions.into_iter().enumerate() {
                let field = format!("source[{i}].jmes_filters[{j}]");
                match errors.check(&field, Some(expression), JmesFilter::parse) {
                    Some(f) => filters.push(f),
                    None => complete = false,
                }
            }
        }
        let Some(topic) = topic else {
            complete = false;
            continue;
        };
        if let Some(first) = sources.iter().position(|s: &SourceSpec| s.topic == topic) {
            errors.push(
                format!("source[{i}].topic"),
                format!(
                    "{} is already listed at source[{first}]; put its filters there",
                    topic.as_str()
                ),
            );
            complete = false;
            continue;
        }
        // "The same place" for a source's plugins is the source of the same topic.
        let before = previous.and_then(|p| p.source.iter().find(|s| s.topic == topic));
        let filter_plugin = parse_attachment(
            &format!("source[{i}].filter_plugin"),
            source.filter_plugin,
            before.and_then(|s| s.filter_plugin.as_ref()),
            errors,
        );
        let policy_plugin = parse_attachment(
            &format!("source[{i}].policy_plugin"),
            source.policy_plugin,
            before.and_then(|s| s.policy_plugin.as_ref()),
            errors,
        );
        let (Some(filter_plugin), Some(policy_plugin)) = (filter_plugin, policy_plugin) else {
            complete = false;
            continue;
        };
        sources.push(SourceSpec {
            topic,
            jmes_filters: filters,
            filter_plugin,
            policy_plugin,
        });
    }
    complete.then_some(sources)
}

fn parse_configuration(
    request: Option<ConfigurationRequest>,
    previous: Option<&SubscriptionSpec>,
    errors: &mut ValidationErrors,
) -> Option<Configuration> {
    let request = request.unwrap_or_default();

    let batching = request.batching.unwrap_or(BatchingRequest {
        max_batch_size: Some(DEFAULT_BATCH_SIZE),
        max_batch_interval_seconds: Some(DEFAULT_BATCH_INTERVAL_SECONDS),
        max_batch_bytes: None,
        max_in_flight_batches: None,
    });
    let size = errors.check(
        "configuration.batching.max_batch_size",
        Some(batching.max_batch_size.unwrap_or(DEFAULT_BATCH_SIZE)),
        BatchSize::parse,
    );
    let interval = errors.check(
        "configuration.batching.max_batch_interval_seconds",
        Some(
            batching
                .max_batch_interval_seconds
                .unwrap_or(DEFAULT_BATCH_INTERVAL_SECONDS),
        ),
        BatchInterval::parse,
    );
    let bytes = match batching.max_batch_bytes {
        None => Some(None),
        Some(bytes) => errors
            .check(
                "configuration.batching.max_batch_bytes",
                Some(bytes),
                BatchBytes::parse,
            )
            .map(Some),
    };
    let in_flight = match batching.max_in_flight_batches {
        None => Some(None),
        Some(batches) => errors
            .check(
                "configuration.batching.max_in_flight_batches",
                Some(batches),
                MaxInFlightBatches::parse,
            )
            .map(Some),
    };

    let retry = request.retry.unwrap_or_default();
    let max_retries = errors.check(
        "configuration.retry.max_retries",
        Some(retry.max_retries.unwrap_or(DEFAULT_MAX_RETRIES)),
        MaxRetries::parse,
    );
    let algorithm = errors.check(
        "configuration.retry.retry_algorithm",
        Some(
            retry
                .retry_algorithm
                .unwrap_or_else(|| "exponential_backoff".into()),
        ),
        |a| a.parse::<RetryAlgorithm>(),
    );
    let fixed_delay = match retry.fixed_delay_seconds {
        None => Some(None),
        Some(seconds) => {
            let field = "configuration.retry.fixed_delay_seconds";
            let parsed = errors.check(field, Some(seconds), FixedDelay::parse);
            if parsed.is_some() && algorithm.is_some_and(|a| a != RetryAlgorithm::FixedTime) {
                errors.push(field, "is only for retry_algorithm fixed_time");
                None
            } else {
                parsed.map(Some)
            }
        }
    };

    let alerting = match request.alerting {
        None => Some(None),
        Some(alerting) => parse_alerting(alerting, errors).map(Some),
    };

    let rate_limit = match request.rate_limit {
        None => Some(None),
        Some(limit) => errors
            .check(
                "configuration.rate_limit.max_requests_per_second",
                limit.max_requests_per_second,
                RateLimit::parse,
            )
            .map(|max_requests_per_second| {
                Some(RateLimitSpec {
                    max_requests_per_second,
                })
            }),
    };

    let serialiser_plugin = parse_attachment(
        "configuration.serialiser_plugin",
        request.serialiser_plugin,
        previous.and_then(|p| p.configuration.serialiser_plugin.as_ref()),
        errors,
    );
    let body_format = match request.body_format {
        None => Some(BodyFormat::Envelope),
        Some(format) => errors.check("configuration.body_format", Some(format), |f| {
            f.parse::<BodyFormat>()
        }),
    };

    Some(Configuration {
        batching: Batching {
            max_batch_size: size?,
            max_batch_interval_seconds: interval?,
            max_batch_bytes: bytes?,
            max_in_flight_batches: in_flight?,
        },
        retry: RetryPolicy {
            max_retries: max_retries?,
            retry_algorithm: algorithm?,
            fixed_delay_seconds: fixed_delay?,
        },
        alerting: alerting?,
        rate_limit: rate_limit?,
        serialiser_plugin: serialiser_plugin?,
        body_format: body_format?,
    })
}

/// Parses an optional attachment: `Some(None)` when absent, `None` when invalid.
/// `previous` is what was attached at the same place before, whose secret
/// config values masked ones stand for (if it is the same plugin).
pub(crate) fn parse_attachment(
    field: &str,
    request: Option<PluginAttachmentRequest>,
    previous: Option<&PluginAttachment>,
    errors: &mut ValidationErrors,
) -> Option<Option<PluginAttachment>> {
    let Some(request) = request else {
        return Some(None);
    };
    let name = errors.check(&format!("{field}.name"), request.name, PluginName::parse);
    let version = errors.check(
        &format!("{field}.version"),
        request.version,
        PluginVersion::parse,
    );
    let config = match PluginConfig::parse(request.config.unwrap_or_default()) {
        Ok(config) => Some(config),
        Err(problems) => {
            for (key, message) in problems {
                let path = if key.is_empty() {
                    format!("{field}.config")
                } else {
                    format!("{field}.config.{key}")
                };
                errors.push(path, message);
            }
            None
        }
    };
    let previous = previous
        .filter(|p| Some(&p.name) == name.as_ref())
        .map(|p| &p.secret_config);
    let sent = PluginConfig::parse(request.secret_config.unwrap_or_default());
    let secret_config = match (sent, &config) {
        (Ok(sent), Some(plain)) => SecretConfig::resolve(sent, plain, previous),
        (Ok(_), None) => Err(Vec::new()),
        (Err(problems), _) => Err(problems),
    };
    let secret_config = secret_config
        .map_err(|problems| {
            for (key, message) in problems {
                let path = if key.is_empty() {
                    format!("{field}.secret_config")
                } else {
                    format!("{field}.secret_config.{key}")
                };
                errors.push(path, message);
            }
        })
        .ok();
    Some(Some(PluginAttachment {
        name: name?,
        version: version?,
        config: config?,
        secret_config: secret_config?,
    }))
}

fn parse_alerting(request: AlertingRequest, errors: &mut ValidationErrors) -> Option<Alerting> {
    const CHANNEL: &str = "configuration.alerting.alert_channel";
    const EMAILS: &str = "configuration.alerting.alert_emails";
    const URL: &str = "configuration.alerting.alert_url";
    let channel = errors.check(CHANNEL, request.alert_channel, |c| {
        c.parse::<AlertChannel>()
    })?;
    match channel {
        AlertChannel::Email => {
            if request.alert_url.is_some() {
                errors.push(
                    URL,
                    "is only for alert_channel webhook; leave it out for email",
                );
            }
            let emails = parse_alert_emails(request.alert_emails.unwrap_or_default(), errors);
            (request.alert_url.is_none())
                .then_some(())
                .and(emails)
                .map(|alert_emails| Alerting::Email { alert_emails })
        }
        AlertChannel::Webhook => {
            if request.alert_emails.is_some() {
                errors.push(
                    EMAILS,
                    "is only for alert_channel email; leave it out for webhook",
                );
            }
            let Some(url) = request.alert_url else {
                errors.push(URL, "is required when alert_channel is webhook");
                return None;
            };
            let url = errors.check(URL, Some(url), |u| WebhookUrl::parse(&u));
            (request.alert_emails.is_none())
                .then_some(())
                .and(url)
                .map(|alert_url| Alerting::Webhook { alert_url })
        }
    }
}

fn parse_alert_emails(
    raw: Vec<String>,
    errors: &mut ValidationErrors,
) -> Option<Vec<EmailAddress>> {
    const EMAILS: &str = "configuration.alerting.alert_emails";
    if raw.is_empty() {
        errors.push(
            EMAILS,
            "must list at least one address when alert_channel is email",
        );
        return None;
    }
    if raw.len() > MAX_ALERT_EMAILS {
        errors.push(EMAILS, too_many(MAX_ALERT_EMAILS, "addresses", raw.len()));
        return None;
    }
    let mut emails = Vec::with_capacity(raw.len());
    let mut complete = true;
    for (i, address) in raw.into_iter().enumerate() {
        let field = format!("{EMAILS}[{i}]");
        match errors.check(&field, Some(address), EmailAddress::parse) {
            Some(a) => emails.push(a),
            None => complete = false,
        }
    }
    complete.then_some(emails)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> SubscriptionRequest {
        serde_json::from_value(json).unwrap()
    }

    fn valid() -> serde_json::Value {
        serde_json::json!({
            "name": "orders",
            "active": "yes",
            "destination": {"kind": "webhook", "webhook": {"url": "http://127.0.0.1:9/hook", "headers": ["Authorization: Bearer t"]}},
            "source": [{"topic": "orders", "jmes_filters": ["amount > `1`"]}],
            "configuration": {
                "batching": {"max_batch_size": 10, "max_batch_interval_seconds": 5},
                "retry": {"max_retries": 3, "retry_algorithm": "fixed_time"},
                "alerting": {"alert_channel": "email", "alert_emails": ["ops@example.com"]}
            }
        })
    }

    #[test]
    fn a_valid_request_round_trips_through_storage_form() {
        let spec = SubscriptionSpec::parse(request(valid()), None).unwrap();
        let stored = serde_json::to_string(&spec).unwrap();
        let back: SubscriptionSpec = serde_json::from_str(&stored).unwrap();
        assert_eq!(spec, back);
        assert!(stored.contains("Bearer t"), "storage keeps the secret");
        assert!(!spec.to_public_json().to_string().contains("Bearer t"));
    }

    #[test]
    fn every_violation_is_reported_with_its_path() {
        let mut body = valid();
        body["configuration"]["batching"]["max_batch_size"] = 0.into();
        body["configuration"]["retry"]["max_retries"] = 11.into();
        body["source"][0]["jmes_filters"][0] = "amount >".into();
        body["active"] = "maybe".into();
        let errors = SubscriptionSpec::parse(request(body), None).unwrap_err();
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "active",
                "source[0].jmes_filters[0]",
                "configuration.batching.max_batch_size",
                "configuration.retry.max_retries"
            ]
        );
    }

    #[test]
    fn a_masked_header_keeps_the_stored_value_on_update() {
        let stored = SubscriptionSpec::parse(request(valid()), None).unwrap();
        let mut body = valid();
        body["destination"]["webhook"]["headers"] = serde_json::json!(["Authorization: ********"]);
        let updated = SubscriptionSpec::parse(request(body.clone()), Some(&stored)).unwrap();
        assert_eq!(
            updated.destination.webhook.headers,
            stored.destination.webhook.headers
        );
        assert!(SubscriptionSpec::parse(request(body), None).is_err());
    }

    #[test]
    fn a_masked_header_follows_the_url_only_within_its_origin() {
        let stored = SubscriptionSpec::parse(request(valid()), None).unwrap();
        let mut body = valid();
        body["destination"]["webhook"]["headers"] = serde_json::json!(["Authorization: ********"]);
        body["destination"]["webhook"]["url"] = "http://127.0.0.1:9/other/path?q=1".into();
        let kept = SubscriptionSpec::parse(request(body.clone()), Some(&stored)).unwrap();
        assert_eq!(
            kept.destination.webhook.headers,
            stored.destination.webhook.headers
        );
        for other in [
            "https://127.0.0.1:9/hook",
            "http://127.0.0.1:10/hook",
            "http://localhost:9/hook",
        ] {
            body["destination"]["webhook"]["url"] = other.into();
            let errors = SubscriptionSpec::parse(request(body.clone()), Some(&stored)).unwrap_err();
            assert_eq!(errors.0.len(), 1, "{other}: {errors}");
            assert_eq!(errors.0[0].field, "destination.webhook.headers[0]");
            assert!(errors.0[0].message.contains("send the value again"));
        }
        // A new value is fine with any origin.
        body["destination"]["webhook"]["headers"] = serde_json::json!(["Authorization: Bearer n"]);
        assert!(SubscriptionSpec::parse(request(body), Some(&stored)).is_ok());
    }

    #[test]
    fn stored_secrets_are_every_header_value_and_secret_config_value() {
        let mut body = valid();
        body["destination"]["webhook"]["headers"] =
            serde_json::json!(["Authorization: Bearer t", "X-Key: a:b"]);
        body["source"][0]["filter_plugin"] = serde_json::json!({"name": "f", "version": "1.0.0",
            "config": {"plain": "p"}, "secret_config": {"token": "s1"}});
        body["configuration"]["serialiser_plugin"] =
            serde_json::json!({"name": "c", "version": "1.0.0", "secret_config": {"k": "s2"}});
        let spec = SubscriptionSpec::parse(request(body), None).unwrap();
        let mut stored = serde_json::to_value(&spec).unwrap();
        let mut seen = Vec::new();
        map_stored_secrets(&mut stored, |field, value| {
            seen.push((field.to_string(), value.to_string()));
            Ok::<_, ()>(format!("<{value}>"))
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                (
                    "destination.webhook.headers.authorization".to_string(),
                    "Bearer t".to_string()
                ),
                ("destination.webhook.headers.x-key".into(), "a:b".into()),
                (
                    "source[0].filter_plugin.secret_config.token".into(),
                    "s1".into()
                ),
                (
                    "configuration.serialiser_plugin.secret_config.k".into(),
                    "s2".into()
                ),
            ]
        );
        assert_eq!(
            stored["destination"]["webhook"]["headers"][1],
            "x-key: <a:b>"
        );
        assert_eq!(stored["source"][0]["filter_plugin"]["config"]["plain"], "p");
        let public = spec.to_public_json();
        assert_eq!(
            public["source"][0]["filter_plugin"]["secret_config"]["token"],
            MASK
        );
        assert_eq!(public["source"][0]["filter_plugin"]["config"]["plain"], "p");
        assert!(!public.to_string().contains("s2"));
    }

    #[test]
    fn secret_config_masks_stand_for_the_same_plugin_at_the_same_place() {
        let mut body = valid();
        body["source"][0]["filter_plugin"] = serde_json::json!({"name": "f", "version": "1.0.0",
            "secret_config": {"token": "s1"}});
        let stored = SubscriptionSpec::parse(request(body.clone()), None).unwrap();
        body["source"][0]["filter_plugin"]["secret_config"]["token"] = MASK.into();
        body["source"][0]["filter_plugin"]["version"] = "1.1.0".into();
        let kept = SubscriptionSpec::parse(request(body.clone()), Some(&stored)).unwrap();
        assert_eq!(kept.source[0].filter_plugin, {
            let mut a = stored.source[0].filter_plugin.clone().unwrap();
            a.version = PluginVersion::parse("1.1.0".into()).unwrap();
            Some(a)
        });
        body["source"][0]["filter_plugin"]["name"] = "g".into();
        let errors = SubscriptionSpec::parse(request(body.clone()), Some(&stored)).unwrap_err();
        assert_eq!(
            errors.0[0].field,
            "source[0].filter_plugin.secret_config.token"
        );
        body["source"][0]["filter_plugin"] = serde_json::json!({"name": "f", "version": "1.0.0",
            "config": {"token": "a"}, "secret_config": {"token": "b"}});
        let errors = SubscriptionSpec::parse(request(body), None).unwrap_err();
        assert_eq!(
            errors.0[0].field,
            "source[0].filter_plugin.secret_config.token"
        );
    }

    #[test]
    fn plugin_attachments_parse_and_report_their_paths() {
        let mut body = valid();
        body["source"][0]["filter_plugin"] = serde_json::json!({"name": "field-match", "version": "1.0.0", "config": {"field": "/a", "equals": "1"}});
        body["configuration"]["serialiser_plugin"] =
            serde_json::json!({"name": "cloudevents", "version": "0.1.0"});
        let spec = SubscriptionSpec::parse(request(body.clone()), None).unwrap();
        let plugins = spec.plugins();
        assert_eq!(plugins.len(), 2);
        assert_eq!(plugins[0].0, "source[0].filter_plugin");
        assert_eq!(plugins[0].1, PluginRole::Filter);
        assert_eq!(
            plugins[0].2.config.pairs()[1],
            ("equals".into(), "1".into())
        );
        assert_eq!(plugins[1].0, "configuration.serialiser_plugin");
        assert!(spec.uses_plugin("cloudevents", "0.1.0"));
        assert!(!spec.uses_plugin("cloudevents", "0.2.0"));
        let stored = serde_json::to_string(&spec).unwrap();
        assert_eq!(
            serde_json::from_str::<SubscriptionSpec>(&stored).unwrap(),
            spec
        );

        body["source"][0]["policy_plugin"] =
            serde_json::json!({"name": "Bad Name", "version": "1", "config": {"n": 1}});
        let errors = SubscriptionSpec::parse(request(body), None).unwrap_err();
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "source[0].policy_plugin.name",
                "source[0].policy_plugin.version",
                "source[0].policy_plugin.config.n"
            ]
        );
    }

    #[test]
    fn lists_beyond_their_caps_are_refused_naming_the_cap() {
        /// The list's field, its cap, and how to grow a request's list to `n`.
        type Case = (&'static str, usize, fn(&mut serde_json::Value, usize));
        let cases: [Case; 4] = [
            ("source", MAX_SOURCES, |b, n| {
                b["source"] = (0..n)
                    .map(|i| serde_json::json!({"topic": format!("t{i}")}))
                    .collect();
            }),
            ("destination.webhook.headers", MAX_HEADERS, |b, n| {
                b["destination"]["webhook"]["headers"] =
                    (0..n).map(|i| format!("X-H{i}: v")).collect();
            }),
            (
                "source[0].jmes_filters",
                MAX_JMES_FILTERS_PER_SOURCE,
                |b, n| {
                    b["source"][0]["jmes_filters"] = vec!["a"; n].into();
                },
            ),
            (
                "configuration.alerting.alert_emails",
                MAX_ALERT_EMAILS,
                |b, n| {
                    b["configuration"]["alerting"]["alert_emails"] =
                        (0..n).map(|i| format!("ops{i}@example.com")).collect();
                },
            ),
        ];
        for (field, cap, fill) in cases {
            let mut body = valid();
            fill(&mut body, cap);
            assert!(
                SubscriptionSpec::parse(request(body.clone()), None).is_ok(),
                "{field}"
            );
            fill(&mut body, cap + 1);
            let errors = SubscriptionSpec::parse(request(body), None).unwrap_err();
            assert_eq!(errors.0.len(), 1, "{errors}");
            assert_eq!(errors.0[0].field, field);
            assert!(
                errors.0[0].message.contains(&format!("at most {cap} ")),
                "{errors}"
            );
        }
    }

    #[test]
    fn alerting_is_email_with_addresses_or_webhook_with_a_url_and_stores_as_sent() {
        let mut body = valid();
        body["configuration"]["alerting"] =
            serde_json::json!({"alert_channel": "webhook", "alert_url": "https://ops.example/a"});
        let spec = SubscriptionSpec::parse(request(body.clone()), None).unwrap();
        assert_eq!(
            spec.configuration.alerting.as_ref().map(Alerting::channel),
            Some(AlertChannel::Webhook)
        );
        assert_eq!(
            spec.to_public_json()["configuration"]["alerting"],
            body["configuration"]["alerting"]
        );
        let stored = serde_json::to_string(&spec).unwrap();
        assert_eq!(
            serde_json::from_str::<SubscriptionSpec>(&stored).unwrap(),
            spec
        );
        // The email form stores as it always did.
        let spec = SubscriptionSpec::parse(request(valid()), None).unwrap();
        assert_eq!(
            spec.to_public_json()["configuration"]["alerting"],
            valid()["configuration"]["alerting"]
        );

        let refused = |alerting: serde_json::Value| {
            let mut body = valid();
            body["configuration"]["alerting"] = alerting;
            let errors = SubscriptionSpec::parse(request(body), None).unwrap_err();
            errors.0.into_iter().map(|e| e.field).collect::<Vec<_>>()
        };
        let url = "configuration.alerting.alert_url";
        let emails = "configuration.alerting.alert_emails";
        assert_eq!(
            refused(serde_json::json!({"alert_channel": "webhook"})),
            [url]
        );
        assert_eq!(
            refused(
                serde_json::json!({"alert_channel": "webhook", "alert_url": "https://u:p@x.example/"})
            ),
            [url]
        );
        assert_eq!(
            refused(
                serde_json::json!({"alert_channel": "webhook", "alert_url": "https://x.example/", "alert_emails": []})
            ),
            [emails]
        );
        assert_eq!(
            refused(
                serde_json::json!({"alert_channel": "email", "alert_emails": ["a@b.co"], "alert_url": "https://x.example/"})
            ),
            [url]
        );
        assert_eq!(
            refused(serde_json::json!({"alert_channel": "email"})),
            [emails]
        );
    }

    #[test]
    fn duplicate_topics_are_refused() {
        let mut body = valid();
        body["source"] = serde_json::json!([{"topic": "a"}, {"topic": "a"}]);
        let errors = SubscriptionSpec::parse(request(body), None).unwrap_err();
        assert_eq!(errors.0[0].field, "source[1].topic");
    }

    #[test]
    fn a_fixed_delay_is_for_fixed_time_only_and_within_1_to_300_seconds() {
        let mut body = valid();
        body["configuration"]["retry"]["fixed_delay_seconds"] = 2.into();
        let spec = SubscriptionSpec::parse(request(body.clone()), None).unwrap();
        let delay = spec.configuration.retry.fixed_delay_seconds.unwrap();
        assert_eq!(delay.duration(), std::time::Duration::from_secs(2));
        let field = "configuration.retry.fixed_delay_seconds";
        body["configuration"]["retry"]["fixed_delay_seconds"] = 0.into();
        let errors = SubscriptionSpec::parse(request(body.clone()), None).unwrap_err();
        assert_eq!(errors.0[0].field, field);
        body["configuration"]["retry"]["fixed_delay_seconds"] = 2.into();
        body["configuration"]["retry"]["retry_algorithm"] = "exponential_backoff".into();
        let errors = SubscriptionSpec::parse(request(body), None).unwrap_err();
        assert_eq!(errors.0[0].field, field);
        assert!(errors.0[0].message.contains("fixed_time"), "{errors}");
    }

    #[test]
    fn the_body_format_defaults_to_the_envelope_and_is_shown_only_when_values() {
        let spec = SubscriptionSpec::parse(request(valid()), None).unwrap();
        assert_eq!(spec.configuration.body_format, BodyFormat::Envelope);
        assert!(
            spec.to_public_json()["configuration"]
                .get("body_format")
                .is_none()
        );
        let mut body = valid();
        body["configuration"]["body_format"] = "values".into();
        let spec = SubscriptionSpec::parse(request(body.clone()), None).unwrap();
        assert_eq!(spec.configuration.body_format, BodyFormat::Values);
        assert_eq!(
            spec.to_public_json()["configuration"]["body_format"],
            "values"
        );
        body["configuration"]["body_format"] = "xml".into();
        let errors = SubscriptionSpec::parse(request(body), None).unwrap_err();
        assert_eq!(errors.0[0].field, "configuration.body_format");
    }
}
