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

use super::record::Record;

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
