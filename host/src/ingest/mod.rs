//! The door into Kafka: records that come in over HTTP, produced to topics
//! (delivery is the door out).
//!
//! - `records`: `POST /1/Topic/{topic}/Records` — one record per request,
//!   or an NDJSON batch — with key, partition and headers from the request
//!   (seed 003).
//! - `log`: `POST /log`, seed 001's record, checked field by field and
//!   produced to `--log-topic`.
//! - [`forwarder`]: seed 001's forwarding of that topic to `--post-endpoint`,
//!   as a built-in subscription the delivery engine runs.
//! - [`record`]: what a request asks (body kind, key, partition, headers,
//!   acknowledgement), parsed; [`json`]: checking and compacting JSON.
//! - [`producer`]: the process's one idempotent producer (acks=all).
//! - [`metadata`]: partition counts, briefly cached, for 404s before producing.
//! - [`error`]: [`IngestError`], and its one mapping to HTTP.
//!
//! Routes are authenticated like the rest of the API (they are merged into
//! the API's router, under its token check), and a tenant may produce only
//! to the topics its ACL allows. It never creates a topic it produces to
//! (the forwarder's own topics aside, created at start-up) and never
//! imports the delivery door.

pub mod error;
pub mod forwarder;
pub mod json;
mod log;
pub mod metadata;
pub mod producer;
pub mod record;
mod records;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use futures::StreamExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::IngestError;

use crate::api::ApiError;
use crate::config::IngestSettings;
use crate::kafka::{KafkaConnection, Topics};
use metadata::PartitionCounts;
use producer::{Pending, RecordProducer, Written};
use record::Outgoing;

/// What the ingest routes share: one per process.
pub struct Ingest {
    producer: RecordProducer,
    partitions: PartitionCounts,
    settings: IngestSettings,
}

impl Ingest {
    /// The producer and the metadata lookups; nothing connects yet.
    pub fn new(
        kafka: &KafkaConnection,
        topics: Topics,
        settings: IngestSettings,
    ) -> Result<Arc<Self>, rdkafka::error::KafkaError> {
        Ok(Arc::new(Self {
            producer: RecordProducer::new(kafka, settings.produce_timeout)?,
            partitions: PartitionCounts::new(topics),
            settings,
        }))
    }

    /// The ingest routes with their entries in the OpenAPI document, for
    /// the API's router to merge (and guard).
    pub fn router<S: Clone + Send + Sync + 'static>(self: &Arc<Self>) -> OpenApiRouter<S> {
        OpenApiRouter::default()
            .routes(routes!(records::produce))
            .routes(routes!(log::accept))
            .with_state(self.clone())
    }

    /// Sends what `ack=none` requests left queued, within `within`, at shutdown.
    pub async fn flush(&self, within: Duration) {
        let producer = self.producer.clone();
        let queued = producer.in_flight();
        if queued == 0 {
            return;
        }
        let flushed = tokio::task::spawn_blocking(move || producer.flush(within)).await;
        match flushed {
            Ok(Ok(())) => {
                tracing::info!(records = queued, "Queued records written before stopping.")
            }
            _ => tracing::warn!(
                records = self.producer.in_flight(),
                "Queued records were not all written before stopping; they are lost."
            ),
        }
    }

    /// 404 unless `topic` exists and has `partition` (when one is asked for).
    async fn check_target(&self, topic: &str, partition: Option<i32>) -> Result<(), IngestError> {
        let Some(count) = self.partitions.of(topic).await? else {
            return Err(IngestError::UnknownTopic(topic.to_string()));
        };
        match partition {
            Some(p) if p as usize >= count => {
                // The cache may be behind a topic that grew: ask again once.
                self.partitions.forget(topic);
                let Some(count) = self.partitions.of(topic).await? else {
                    return Err(IngestError::UnknownTopic(topic.to_string()));
                };
                if p as usize >= count {
                    return Err(IngestError::UnknownPartition {
                        topic: topic.to_string(),
                        partition: p,
                        partitions: count,
                    });
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// When a request's records must all be queued by: while the producer's
    /// queue is full, sending waits until then, once for the whole request.
    fn queue_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.settings.produce_timeout
    }

    /// Queues one record, waiting until `deadline` while the producer's queue is full.
    async fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        headers: &[(String, Vec<u8>)],
        record: &Outgoing,
        deadline: tokio::time::Instant,
    ) -> Result<Pending, IngestError> {
        loop {
            match self.producer.send(topic, partition, headers, record) {
                Err(IngestError::Unavailable { code, .. })
                    if code == rdkafka::error::RDKafkaErrorCode::QueueFull
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                sent => return sent.map_err(|e| self.noticed(topic, e)),
            }
        }
    }

    /// The brokers' answer about `pending` (counted: the topic exists).
    async fn written(&self, topic: &str, pending: Pending) -> Result<Written, IngestError> {
        let answer = self.producer.written(pending).await;
        crate::telemetry::ingested(topic, answer.is_ok());
        answer.map_err(|e| self.noticed(topic, e))
    }

    /// Answers for `ack=none` records come later: failures are logged.
    fn watch(self: &Arc<Self>, topic: &str, pending: Vec<Pending>) {
        if pending.is_empty() {
            return;
        }
        let ingest = self.clone();
        let topic = topic.to_string();
        tokio::spawn(async move {
            let answers =
                futures::future::join_all(pending.into_iter().map(|p| ingest.written(&topic, p)))
                    .await;
            let failed: Vec<&IngestError> =
                answers.iter().filter_map(|a| a.as_ref().err()).collect();
            if let Some(first) = failed.first() {
                tracing::warn!(topic, failed = failed.len(), error = %first, "Records accepted with ack=none were not written.");
            }
        });
    }

    /// Forgets the topic's partition count when the brokers contradict it.
    fn noticed(&self, topic: &str, error: IngestError) -> IngestError {
        if matches!(
            error,
            IngestError::UnknownTopic(_) | IngestError::UnknownPartition { .. }
        ) {
            self.partitions.forget(topic);
        }
        error
    }
}

/// Reads the whole body, at most `limit` bytes (413 beyond, said before
/// reading when `content-length` tells), within the server's body timeout.
/// The router's general body limit is for the extractors; ingest reads its
/// body itself, with the limits of records.
async fn read_body(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let timeout = crate::api::json::body_timeout(&request);
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut stream = request.into_body().into_data_stream();
    let read = async {
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::BadRequest(format!("could not read the body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ApiError::BodyTimeout {
            seconds: timeout.as_secs(),
        })?
}
