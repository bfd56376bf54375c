//! The process's one producer for records that come in over HTTP.
//!
//! Every record is acknowledged by all in-sync replicas (`acks=all`) and
//! written once per send however librdkafka retries (idempotence). The
//! producer never creates a topic (`allow.auto.create.topics=false`): a
//! missing topic is the caller's 404, not a topic made with the brokers'
//! defaults. Its queue is bounded (64 MiB, 100 000 records): when full, a
//! record is refused at once (503) rather than held in memory. Each record
//! gives up after the produce timeout (librdkafka's `message.timeout.ms`),
//! and its acknowledgement is awaited no longer than that, plus a second.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders, Timestamp};
use rdkafka::producer::FutureRecord;

use super::error::IngestError;
use super::record::Outgoing;
use crate::kafka::{Acked, AckingProducer, KafkaConnection};

/// Where a record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Written {
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch: the record's timestamp as stored.
    pub timestamp: i64,
}

/// A record handed to the producer, not yet acknowledged.
pub struct Pending {
    topic: String,
    timestamp: i64,
    delivery: Acked,
}

#[derive(Clone)]
pub struct RecordProducer {
    producer: AckingProducer,
    timeout: Duration,
}

impl RecordProducer {
    /// Builds the producer; nothing connects until the first record.
    pub fn new(kafka: &KafkaConnection, timeout: Duration) -> Result<Self, KafkaError> {
        let producer = AckingProducer::new(
            kafka
                .producer_config("wasmhook-ingest", timeout)
                .set("queue.buffering.max.kbytes", "65536")
                .set("queue.buffering.max.messages", "100000"),
        )?;
        Ok(Self { producer, timeout })
    }

    /// Queues `record` for `topic`; fails at once when the queue is full or
    /// librdkafka refuses it (a partition it knows does not exist, a record
    /// larger than `message.max.bytes`).
    pub fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        headers: &[(String, Vec<u8>)],
        record: &Outgoing,
    ) -> Result<Pending, IngestError> {
        let timestamp = chrono::Utc::now().timestamp_millis();
        let mut kafka_headers = OwnedHeaders::new_with_capacity(headers.len());
        for (key, value) in headers {
            kafka_headers = kafka_headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut message = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(&record.value)
            .timestamp(timestamp)
            .headers(kafka_headers);
        if let Some(key) = &record.key {
            message = message.key(key);
        }
        if let Some(partition) = partition {
            message = message.partition(partition);
        }
        match self.producer.send_result(message) {
            Ok(delivery) => Ok(Pending {
                topic: topic.to_string(),
                timestamp,
                delivery,
            }),
            Err((error, _)) => Err(IngestError::from_produce(topic, code_of(&error))),
        }
    }

    /// Waits for the brokers' answer about `pending`, within the produce
    /// timeout and a second of slack for librdkafka's own timer.
    pub async fn written(&self, pending: Pending) -> Result<Written, IngestError> {
        let Pending {
            topic,
            timestamp,
            delivery,
        } = pending;
        let answer = tokio::time::timeout(self.timeout + Duration::from_secs(1), delivery)
            .await
            .map_err(|_| IngestError::Timeout(self.timeout))?;
        match answer {
            Ok(Ok(delivery)) => Ok(Written {
                partition: delivery.partition,
                offset: delivery.offset,
                timestamp: stored_timestamp(delivery.timestamp, timestamp),
            }),
            Ok(Err((error, _))) => Err(IngestError::from_produce(&topic, code_of(&error))),
            // The producer went away with the record: only at shutdown.
            Err(_) => Err(IngestError::Unavailable {
                topic,
                code: RDKafkaErrorCode::PurgeQueue,
            }),
        }
    }

    /// Sends what is queued (the `ack=none` records) before shutdown, within `within`.
    pub fn flush(&self, within: Duration) -> Result<(), KafkaError> {
        self.producer.flush(within)
    }

    /// Records queued or in flight.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

/// The record's timestamp as stored: the brokers' when the topic uses
/// log-append time, else the one it was sent with (`created`). A log-append
/// time more than an hour before the record was created is not one (clock
/// skew aside): librdkafka's mock cluster answers 1234 to every produce while
/// it stores the create time.
fn stored_timestamp(answered: Timestamp, created: i64) -> i64 {
    match answered {
        Timestamp::LogAppendTime(at) if at >= created - 3_600_000 => at,
        _ => created,
    }
}

fn code_of(error: &KafkaError) -> RDKafkaErrorCode {
    error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_timestamp_is_the_log_append_time_when_there_is_one() {
        let created = 1_763_880_000_000;
        assert_eq!(stored_timestamp(Timestamp::NotAvailable, created), created);
        assert_eq!(
            stored_timestamp(Timestamp::CreateTime(created), created),
            created
        );
        assert_eq!(
            stored_timestamp(Timestamp::LogAppendTime(created + 5), created),
            created + 5
        );
        assert_eq!(
            stored_timestamp(Timestamp::LogAppendTime(1234), created),
            created
        );
    }
}
