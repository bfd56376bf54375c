//! Seed 001's forwarder: the log topic posted to `--post-endpoint` as JSON
//! arrays of records, in batches of `--batch-size` or every
//! `--batch-interval`, retried 3 times about 2 s apart.
//!
//! It is not a delivery engine of its own: start-up saves a subscription
//! named `log-forwarder` with the fixed id [`FORWARDER_ID`], and the delivery
//! engine runs it like any other (dead letter, health, alerts and status
//! included; it never exits on failure). The settings own the fields they
//! configure — the URL, the topic, batching, the retry policy and the body
//! format (`values`: each element is a record as it was posted) — and replace
//! them at every start; whatever else was set through the API (headers,
//! alerting, a rate limit, filters or plugins on that topic) is kept.
//!
//! Start-up creates the log topic (one partition, replicated as dead-letter
//! topics are, when it does not exist) and the subscription's dead-letter topic
//! first, so the forwarder works on brokers that do not auto-create topics,
//! and refuses to start if the endpoint is one the SSRF guard refuses.

use crate::config::ForwarderSettings;
use crate::domain::{
    Active, Batching, BodyFormat, Configuration, Destination, DestinationKind, FixedDelay,
    MaxRetries, RetryAlgorithm, RetryPolicy, SourceSpec, SubscriptionName, SubscriptionSpec,
    TopicName, WebhookDestination,
};
use crate::egress::DestinationPolicy;
use crate::kafka::{TopicError, TopicLayout, Topics, dead_letter_topic};
use crate::registry::{Activity, Registry, RegistryError, StoredSubscription};
use crate::signing::SigningSecret;

/// The built-in subscription's id: the same on every host and every start,
/// so hosts sharing a registry share one forwarder (one consumer group).
pub const FORWARDER_ID: uuid::Uuid = uuid::uuid!("5eed0001-0000-4000-8000-000000000001");

pub const FORWARDER_NAME: &str = "log-forwarder";

/// Seed 001: "retry 3 times, waiting 2 seconds before each retry".
const RETRIES: i64 = 3;
const RETRY_DELAY_SECONDS: i64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    #[error("the post endpoint {endpoint} may not be reached: {reason}")]
    Destination { endpoint: String, reason: String },
    #[error("the forwarder's topics could not be made ready: {0}")]
    Topic(#[from] TopicError),
    #[error("the built-in subscription {FORWARDER_NAME} could not be saved: {0}")]
    Registry(#[from] RegistryError),
    #[error(
        "the built-in subscription {FORWARDER_NAME} kept changing while it was being saved \
         (other hosts starting?); start again"
    )]
    Contention,
}

/// The forwarder's spec: `previous` (the stored one) with the fields the
/// settings own replaced. Pure.
pub fn spec(
    settings: &ForwarderSettings,
    topic: &TopicName,
    previous: Option<&SubscriptionSpec>,
) -> SubscriptionSpec {
    let kept_source = previous
        .and_then(|p| p.source.iter().find(|s| &s.topic == topic))
        .cloned();
    let source = kept_source.unwrap_or_else(|| SourceSpec {
        topic: topic.clone(),
        jmes_filters: Vec::new(),
        filter_plugin: None,
        policy_plugin: None,
    });
    let headers = previous
        .map(|p| p.destination.webhook.headers.clone())
        .unwrap_or_default();
    let kept = previous.map(|p| &p.configuration);
    SubscriptionSpec {
        name: SubscriptionName::parse(FORWARDER_NAME.into()).expect("a valid name"),
        active: Active::Yes,
        destination: Destination {
            kind: DestinationKind::Webhook,
            webhook: WebhookDestination {
                url: settings.endpoint.clone(),
                headers,
            },
        },
        source: vec![source],
        configuration: Configuration {
            batching: Batching {
                max_batch_size: settings.batch_size,
                max_batch_interval_seconds: settings.batch_interval,
                // Seed 001 has no byte cap; one the API set is kept.
                max_batch_bytes: kept.and_then(|c| c.batching.max_batch_bytes),
                max_in_flight_batches: kept.and_then(|c| c.batching.max_in_flight_batches),
            },
            retry: RetryPolicy {
                max_retries: MaxRetries::parse(RETRIES).expect("in range"),
                retry_algorithm: RetryAlgorithm::FixedTime,
                fixed_delay_seconds: Some(
                    FixedDelay::parse(RETRY_DELAY_SECONDS).expect("in range"),
                ),
            },
            alerting: kept.and_then(|c| c.alerting.clone()),
            rate_limit: kept.and_then(|c| c.rate_limit),
            serialiser_plugin: kept.and_then(|c| c.serialiser_plugin.clone()),
            body_format: BodyFormat::Values,
        },
    }
}

/// Makes the built-in subscription match `settings`: its topics exist, and
/// its row is created, or replaced where the settings changed (its revision
/// then moves and its pipeline restarts with them).
pub async fn ensure(
    registry: &Registry,
    topics: &Topics,
    dead_letter_layout: TopicLayout,
    destinations: &DestinationPolicy,
    topic: &TopicName,
    settings: &ForwarderSettings,
) -> Result<StoredSubscription, ForwarderError> {
    destinations
        .check_url(settings.endpoint.url())
        .map_err(|refused| ForwarderError::Destination {
            endpoint: origin(settings),
            reason: refused.to_string(),
        })?;
    // One partition keeps the records in the order they were posted, as
    // seed 001's queue did; replicated as the dead-letter topics are.
    let log_layout = TopicLayout::new(1, dead_letter_layout.replication()).unwrap_or_default();
    topics.ensure(topic.as_str(), log_layout).await?;
    topics
        .ensure(&dead_letter_topic(FORWARDER_ID), dead_letter_layout)
        .await?;
    // Other hosts may be saving it at the same time: read again and retry.
    for _ in 0..5 {
        match registry.get_subscription(FORWARDER_ID).await? {
            None => {
                let spec = spec(settings, topic, None);
                let secret = SigningSecret::generate();
                match registry
                    .create_subscription(FORWARDER_ID, None, &spec, &secret)
                    .await
                {
                    Ok(stored) => {
                        registry
                            .record_activity(stored.id, &Activity::Active)
                            .await?;
                        return Ok(stored);
                    }
                    Err(error) => {
                        // Another host may have created it first: then take
                        // its row; else the error stands.
                        if registry.get_subscription(FORWARDER_ID).await?.is_some() {
                            continue;
                        }
                        return Err(error.into());
                    }
                }
            }
            Some(current) => {
                let spec = spec(settings, topic, Some(&current.spec));
                if current.spec == spec {
                    return Ok(current);
                }
                match registry.replace_subscription(&current, &spec).await {
                    Ok(stored) => {
                        if !current.spec.active.is_active() {
                            registry
                                .record_activity(stored.id, &Activity::Active)
                                .await?;
                        }
                        return Ok(stored);
                    }
                    Err(RegistryError::Conflict) => continue,
                    Err(other) => return Err(other.into()),
                }
            }
        }
    }
    Err(ForwarderError::Contention)
}

/// The endpoint as logs show it: scheme, host and port (a path or query may
/// carry a token).
pub fn origin(settings: &ForwarderSettings) -> String {
    settings.endpoint.url().origin().ascii_serialization()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BatchInterval, BatchSize, HeaderLine, WebhookUrl};

    fn settings() -> ForwarderSettings {
        ForwarderSettings {
            endpoint: WebhookUrl::parse("https://bin.example/x?token=t").unwrap(),
            batch_size: BatchSize::parse(5).unwrap(),
            batch_interval: BatchInterval::parse(2).unwrap(),
        }
    }

    fn topic() -> TopicName {
        TopicName::parse("log".into()).unwrap()
    }

    #[test]
    fn a_new_forwarder_retries_3_times_2_seconds_apart_and_posts_values() {
        let spec = spec(&settings(), &topic(), None);
        assert_eq!(spec.name.as_str(), "log-forwarder");
        assert_eq!(spec.topics(), ["log"]);
        assert_eq!(spec.configuration.batching.max_batch_size.get(), 5);
        assert_eq!(
            spec.configuration
                .batching
                .max_batch_interval_seconds
                .seconds(),
            2
        );
        let retry = spec.configuration.retry;
        assert_eq!(retry.max_retries.get(), 3);
        assert_eq!(retry.retry_algorithm, RetryAlgorithm::FixedTime);
        assert_eq!(
            retry.fixed_delay_seconds.unwrap().duration(),
            std::time::Duration::from_secs(2)
        );
        assert_eq!(spec.configuration.body_format, BodyFormat::Values);
        assert_eq!(
            spec.destination.webhook.url.as_str(),
            "https://bin.example/x?token=t"
        );
    }

    #[test]
    fn the_settings_replace_their_fields_and_keep_what_the_api_added() {
        let mut previous = spec(&settings(), &topic(), None);
        previous.destination.webhook.headers =
            vec![HeaderLine::parse("Authorization: Bearer x").unwrap()];
        previous.configuration.batching.max_batch_size = BatchSize::parse(100).unwrap();
        previous.active = Active::No;
        let next = spec(&settings(), &topic(), Some(&previous));
        assert_eq!(
            next.destination.webhook.headers,
            previous.destination.webhook.headers
        );
        assert_eq!(next.configuration.batching.max_batch_size.get(), 5);
        assert_eq!(next.active, Active::Yes);
        assert_eq!(next, spec(&settings(), &topic(), Some(&next)), "stable");
    }

    #[test]
    fn logs_show_only_the_endpoints_origin() {
        assert_eq!(origin(&settings()), "https://bin.example");
    }
}
