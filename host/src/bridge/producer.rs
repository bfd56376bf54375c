//! The bridge's one producer, for every connection's `notif` `create` frames.
//!
//! Seed 004's producer buffering is librdkafka's own: messages wait up to
//! the produce interval (`linger.ms`) to be sent together, and at most the
//! produce limit of them are queued (`queue.buffering.max.messages`). When
//! the queue is full a frame waits for room, up to the produce timeout, and
//! then fails (`s: 1`) rather than growing memory. Every message is
//! acknowledged by all in-sync replicas, once however librdkafka retries
//! (idempotence). It never creates a topic.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;

use super::error::BridgeError;
use super::frame::Outgoing;
use crate::config::BridgeSettings;
use crate::kafka::{Acked, AckingProducer, KafkaConnection};

/// Where a message was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone)]
pub struct BridgeProducer {
    producer: AckingProducer,
    timeout: Duration,
}

impl BridgeProducer {
    /// Builds the producer; nothing connects until the first message.
    pub fn new(kafka: &KafkaConnection, settings: &BridgeSettings) -> Result<Self, KafkaError> {
        let producer = AckingProducer::new(
            kafka
                .producer_config("wasmhook-bridge", settings.produce_timeout)
                .set(
                    "linger.ms",
                    settings.produce_interval.as_millis().to_string(),
                )
                .set(
                    "queue.buffering.max.messages",
                    settings.produce_limit.get().to_string(),
                ),
        )?;
        Ok(Self {
            producer,
            timeout: settings.produce_timeout,
        })
    }

    /// Queues `message`, waiting (up to the produce timeout) while the queue is full.
    pub async fn send(&self, message: &Outgoing) -> Result<Acked, BridgeError> {
        let topic = message.topic.as_str();
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(&message.value);
        if let Some(key) = &message.key {
            record = record.key(key);
        }
        self.producer
            .queue(record, self.timeout)
            .await
            .map_err(|error| BridgeError::from_produce(topic, &error))
    }

    /// The brokers' answer about a queued message.
    pub async fn written(&self, topic: &str, delivery: Acked) -> Result<Written, BridgeError> {
        let answer = tokio::time::timeout(self.timeout + Duration::from_secs(1), delivery)
            .await
            .map_err(|_| BridgeError::ProduceTimeout(self.timeout))?;
        match answer {
            Ok(Ok(delivery)) => Ok(Written {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((error, _))) => Err(BridgeError::from_produce(topic, &error)),
            Err(_) => Err(BridgeError::ShuttingDown),
        }
    }
}
