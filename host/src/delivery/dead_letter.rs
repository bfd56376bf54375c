//! The dead letter: where a batch goes when its retries are exhausted.
//!
//! Each message is produced, as consumed (key, value, headers), to the topic
//! `webhooks-{id}-dlq`, with headers saying why and where it came from:
//! `wasmhook-failure-reason`, `wasmhook-delivery-id`, `wasmhook-source-topic`,
//! `wasmhook-source-partition`, `wasmhook-source-offset`. The pipeline commits the
//! source offsets only after every message is acknowledged here.

use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use super::alert::Transition;
use super::health::HealthKeeper;
use super::record::Record;
use super::state::{ConsumerState, StateHandle};
use crate::registry::Health;

pub fn topic_for(subscription: Uuid) -> String {
    format!("webhooks-{subscription}-dlq")
}

#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
}

impl DeadLetters {
    pub fn new(brokers: &str) -> Result<Self, KafkaError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "wasmhook-dead-letter")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Self { producer })
    }

    /// Produces the whole batch and waits for every acknowledgement.
    pub async fn publish(
        &self,
        topic: &str,
        records: &[Record],
        delivery_id: &str,
        reason: &str,
    ) -> Result<(), KafkaError> {
        let sends = records.iter().map(|record| {
            let partition = record.partition.to_string();
            let offset = record.offset.to_string();
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len() + 5);
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key,
                    value: value.as_deref(),
                });
            }
            let headers = headers
                .insert(Header {
                    key: "wasmhook-failure-reason",
                    value: Some(reason),
                })
                .insert(Header {
                    key: "wasmhook-delivery-id",
                    value: Some(delivery_id),
                })
                .insert(Header {
                    key: "wasmhook-source-topic",
                    value: Some(&record.topic),
                })
                .insert(Header {
                    key: "wasmhook-source-partition",
                    value: Some(&partition),
                })
                .insert(Header {
                    key: "wasmhook-source-offset",
                    value: Some(&offset),
                });
            let mut message = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
            if let Some(key) = record.key.as_deref() {
                message = message.key(key);
            }
            if let Some(value) = record.value.as_deref() {
                message = message.payload(value);
            }
            if let Some(ts) = record.timestamp {
                message = message.timestamp(ts);
            }
            let send = self.producer.send(message, Duration::from_secs(30));
            async move { send.await.map(|_| ()).map_err(|(error, _)| error) }
        });
        try_join_all(sends).await.map(|_| ())
    }
}

/// How long the dead-letter loop waits between attempts, at most.
const MAX_DEAD_LETTER_WAIT: Duration = Duration::from_secs(10);

/// Produces `records` to `topic` until every one is acknowledged (the source
/// offsets are committed only after), backing off between attempts. A failure
/// that waiting will not cure (the topic missing, a message too large, no
/// authorisation) is reported once through `stuck`, so the subscription turns
/// unhealthy with the reason while the loop goes on trying. Returns false when
/// stopped first.
pub async fn write_until_acknowledged(
    dead_letters: &DeadLetters,
    topic: &str,
    records: &[Record],
    delivery_id: &str,
    reason: &str,
    stop: &tokio_util::sync::CancellationToken,
    health: &mut HealthKeeper,
    state: &StateHandle,
) -> bool {
    let mut wait = Duration::from_millis(200);
    let mut reported = false;
    loop {
        match dead_letters
            .publish(topic, records, delivery_id, reason)
            .await
        {
            Ok(()) => return true,
            Err(error) => {
                tracing::error!(topic, error = %error, "Could not write to the dead-letter topic; retrying.");
                if !reported && is_permanent(&error) {
                    // Waiting will not cure it: the operator must act (create
                    // the topic, raise its message size, grant access).
                    reported = true;
                    let reason = format!(
                        "a batch cannot be written to the dead-letter topic {topic} ({error}); \
                         nothing after it is committed until it can"
                    );
                    state.set(ConsumerState::Retrying, Some(reason.clone()));
                    health
                        .set(Health::Unhealthy, Transition::Unhealthy { reason })
                        .await;
                }
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(MAX_DEAD_LETTER_WAIT);
            }
        }
    }
}

/// Errors that retrying will not cure.
fn is_permanent(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::UnknownTopic
                | Code::UnknownTopicOrPartition
                | Code::MessageSizeTooLarge
                | Code::InvalidMessageSize
                | Code::TopicAuthorizationFailed
                | Code::ClusterAuthorizationFailed
        )
    )
}
