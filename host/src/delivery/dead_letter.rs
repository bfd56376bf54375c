//! The dead letter: where a batch goes when its retries are exhausted.
//!
//! Each message is produced, as consumed (key, value, headers), to the topic
//! `webhooks-{id}-dlq`, with headers saying why and where it came from:
//! `wasmhook-failure-reason`, `wasmhook-delivery-id`, `wasmhook-source-topic`,
//! `wasmhook-source-partition`, `wasmhook-source-offset`. The pipeline commits the
//! source offsets only after every message is acknowledged here.
//!
//! The topic is created with the subscription ([`crate::kafka::Topics`]); the
//! producer never auto-creates it, so a topic deleted since (or never created
//! on a broker that refused) is reported as missing, not silently re-created
//! with the broker's defaults. A failure is a [`DeadLetterError`] whose
//! [`kind`](DeadLetterError::kind) tells one that will not go away by
//! retrying (missing topic, message too large, not authorised) from one that may.

use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use uuid::Uuid;

use super::alert::Transition;
use super::health::LaneHealth;
use super::record::Record;
use super::state::{ConsumerState, StateHandle};
use crate::kafka::{AckingProducer, KafkaConnection, TopicLayout, Topics};
use crate::registry::Health;

pub fn topic_for(subscription: Uuid) -> String {
    crate::kafka::dead_letter_topic(subscription)
}

/// Why a dead letter could not be written, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterFailure {
    /// The topic does not exist (deleted, or never created).
    MissingTopic,
    /// A message is larger than the brokers (or the topic) accept.
    TooLarge,
    /// wasmhook's principal may not write to the topic.
    NotAuthorised,
    /// Anything else: brokers down, timeouts, leader elections. Retrying may work.
    Transient,
}

impl DeadLetterFailure {
    /// Pure: what a Kafka error code means here.
    pub fn of(code: RDKafkaErrorCode) -> Self {
        use RDKafkaErrorCode as C;
        match code {
            C::UnknownTopic | C::UnknownTopicOrPartition | C::InvalidTopic => Self::MissingTopic,
            C::MessageSizeTooLarge | C::MessageBatchTooLarge => Self::TooLarge,
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::Authentication => Self::NotAuthorised,
            _ => Self::Transient,
        }
    }
}

/// A dead letter that was not written: which topic, what Kafka said, and what kind of failure.
#[derive(Debug, Clone)]
pub struct DeadLetterError {
    topic: String,
    code: RDKafkaErrorCode,
    kind: DeadLetterFailure,
}

impl DeadLetterError {
    pub fn new(topic: &str, code: RDKafkaErrorCode) -> Self {
        Self {
            topic: topic.to_string(),
            code,
            kind: DeadLetterFailure::of(code),
        }
    }

    fn from_kafka(topic: &str, error: &KafkaError) -> Self {
        Self::new(
            topic,
            error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail),
        )
    }

    pub fn kind(&self) -> DeadLetterFailure {
        self.kind
    }

    /// True when retrying will not help until someone changes the topic,
    /// the brokers or the ACLs.
    pub fn permanent(&self) -> bool {
        self.kind != DeadLetterFailure::Transient
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn code(&self) -> RDKafkaErrorCode {
        self.code
    }
}

impl std::error::Error for DeadLetterError {}

/// What is wrong and what to do about it, for the log, the status and the alert.
impl std::fmt::Display for DeadLetterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(self.kind, &self.topic, self.code))
    }
}

fn describe(kind: DeadLetterFailure, topic: &str, code: RDKafkaErrorCode) -> String {
    match kind {
        DeadLetterFailure::MissingTopic => format!(
            "the dead-letter topic {topic} does not exist ({code}): create it, or save the \
             subscription again so that wasmhook creates it"
        ),
        DeadLetterFailure::TooLarge => format!(
            "a dead letter is larger than the brokers accept on topic {topic} ({code}): raise \
             the topic's max.message.bytes, or make the webhook's messages smaller"
        ),
        DeadLetterFailure::NotAuthorised => format!(
            "wasmhook may not write to the dead-letter topic {topic} ({code}): grant its \
             Kafka principal WRITE on the topic"
        ),
        DeadLetterFailure::Transient => {
            format!("could not write to the dead-letter topic {topic}: {code}")
        }
    }
}

#[derive(Clone)]
pub struct DeadLetters {
    producer: AckingProducer,
}

impl DeadLetters {
    pub fn new(kafka: &KafkaConnection) -> Result<Self, KafkaError> {
        // The topic is created with its subscription; re-creating it here
        // would use the broker's defaults and hide that it went missing: the
        // producer configuration never auto-creates.
        let producer = AckingProducer::new(
            kafka
                .producer_config("wasmhook-dead-letter", Duration::from_secs(30))
                // How long a missing topic is waited for before its messages
                // fail as unknown: its creation is long past.
                .set("topic.metadata.propagation.max.ms", "5000"),
        )?;
        Ok(Self { producer })
    }

    /// Produces the whole batch and waits for every acknowledgement.
    pub async fn publish(
        &self,
        topic: &str,
        records: &[Record],
        delivery_id: &str,
        reason: &str,
    ) -> Result<(), DeadLetterError> {
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
            async move {
                send.await
                    .map(|_| ())
                    .map_err(|error| DeadLetterError::from_kafka(topic, &error))
            }
        });
        try_join_all(sends).await.map(|_| ())
    }
}

/// A batch to dead-letter: where, what, under which delivery id, and why.
#[derive(Debug, Clone, Copy)]
pub struct Letter<'a> {
    pub topic: &'a str,
    pub records: &'a [Record],
    pub delivery_id: &'a str,
    pub reason: &'a str,
}

/// How long the dead-letter loop waits between attempts, at most.
const MAX_DEAD_LETTER_WAIT: Duration = Duration::from_secs(10);

/// Produces `records` to `topic` until every one is acknowledged (the source
/// offsets are committed only after), backing off between attempts. A failure
/// that waiting will not cure (the topic missing, a message too large, no
/// authorisation) is reported once through `stuck`, so the subscription turns
/// unhealthy with the reason while the loop goes on trying. A missing topic
/// is first created once through `topics` (a subscription saved before
/// dead-letter topics were created with it has none on a strict broker).
/// Returns false when stopped first.
pub async fn write_until_acknowledged(
    dead_letters: &DeadLetters,
    letter: Letter<'_>,
    stop: &tokio_util::sync::CancellationToken,
    health: &LaneHealth,
    state: &StateHandle,
    topics: &(Topics, TopicLayout),
) -> bool {
    let Letter {
        topic,
        records,
        delivery_id,
        reason,
    } = letter;
    let mut wait = Duration::from_millis(200);
    let mut reported = false;
    let mut created = false;
    loop {
        match dead_letters
            .publish(topic, records, delivery_id, reason)
            .await
        {
            Ok(()) => return true,
            Err(error) => {
                tracing::error!(topic, error = %error, "Could not write to the dead-letter topic; retrying.");
                if error.kind() == DeadLetterFailure::MissingTopic && !created {
                    created = true;
                    match topics.0.ensure(topic, topics.1).await {
                        Ok(ensured) => {
                            tracing::info!(
                                topic,
                                ?ensured,
                                "Dead-letter topic was missing; it exists now."
                            );
                            continue;
                        }
                        Err(error) => {
                            tracing::warn!(topic, error = %error, "Could not create the missing dead-letter topic.");
                        }
                    }
                }
                if !reported && error.permanent() {
                    // Waiting will not cure it: the operator must act (create
                    // the topic, raise its message size, grant access).
                    reported = true;
                    let reason = format!(
                        "{error}; nothing after this batch is committed until it is written"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_topic_is_permanent() {
        for code in [
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ] {
            let error = DeadLetterError::new("webhooks-x-dlq", code);
            assert_eq!(error.kind(), DeadLetterFailure::MissingTopic);
            assert!(error.permanent());
        }
    }

    #[test]
    fn a_message_too_large_is_permanent() {
        let error = DeadLetterError::new("t", RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(error.kind(), DeadLetterFailure::TooLarge);
        assert!(error.permanent());
    }

    #[test]
    fn a_refused_authorisation_is_permanent() {
        for code in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::ClusterAuthorizationFailed,
        ] {
            assert_eq!(
                DeadLetterFailure::of(code),
                DeadLetterFailure::NotAuthorised
            );
        }
    }

    #[test]
    fn timeouts_and_unreachable_brokers_are_transient() {
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::QueueFull,
        ] {
            let error = DeadLetterError::new("t", code);
            assert!(!error.permanent(), "{code:?}");
        }
    }

    #[test]
    fn the_text_names_the_topic_and_what_to_do() {
        let text =
            DeadLetterError::new("webhooks-x-dlq", RDKafkaErrorCode::UnknownTopic).to_string();
        assert!(text.contains("webhooks-x-dlq does not exist"), "{text}");
        assert!(text.contains("create it"), "{text}");
        let text =
            DeadLetterError::new("webhooks-x-dlq", RDKafkaErrorCode::TopicAuthorizationFailed)
                .to_string();
        assert!(text.contains("grant"), "{text}");
    }
}
