//! Why a record was not produced, typed from where it failed until it becomes
//! an HTTP answer in [`From<IngestError> for ApiError`] — the one place that
//! decides the status, for a whole request and for each line of a batch.

use std::time::Duration;

use rdkafka::error::RDKafkaErrorCode;

use crate::api::ApiError;
use crate::kafka::TopicError;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The value was declared JSON and is not: the parser's words and position.
    #[error("not valid JSON: {0}")]
    InvalidJson(String),
    #[error("key_path {path:?} is not a valid JMESPath expression: {reason}")]
    BadKeyPath { path: String, reason: String },
    #[error("key_path {path:?} yields nothing (null) for this record, so it has no key")]
    KeyNotFound { path: String },
    #[error(
        "key_path reads the key from a JSON value: send content-type application/json or \
         application/x-ndjson, or the key in the wasmhook-key header"
    )]
    KeyPathWithoutJson,
    /// A request header wasmhook reads is unusable.
    #[error("{message}")]
    BadHeader {
        header: &'static str,
        message: String,
    },
    #[error("{0}")]
    BadQuery(String),
    #[error("no topic {0}: create it first (wasmhook never creates the topics it produces to)")]
    UnknownTopic(String),
    #[error("topic {topic} has no partition {partition}: it has {partitions}, numbered from 0")]
    UnknownPartition {
        topic: String,
        partition: i32,
        partitions: usize,
    },
    #[error("the record is {size} bytes, more than the limit of {limit} bytes")]
    RecordTooLarge { size: usize, limit: usize },
    #[error("the batch has more than {limit} records; send at most {limit} per request")]
    TooManyRecords { limit: usize },
    /// The brokers did not say within the produce timeout: the record may
    /// still be written.
    #[error(
        "the brokers did not acknowledge the record within {0:?}; it may still be written, \
         so a retry may store it twice"
    )]
    Timeout(Duration),
    /// No broker answered, or the producer's queue is full: later may work.
    #[error("the record could not be produced to topic {topic} now: {code}; try again")]
    Unavailable {
        topic: String,
        code: RDKafkaErrorCode,
    },
    /// The brokers answered no (authorisation, a record they consider too large, …).
    #[error("the brokers refused the record for topic {topic}: {code}")]
    Refused {
        topic: String,
        code: RDKafkaErrorCode,
    },
    /// The brokers refused the record as larger than the topic accepts.
    #[error("the brokers refused the record as too large for topic {topic} ({code})")]
    TooLargeForBroker {
        topic: String,
        code: RDKafkaErrorCode,
    },
    /// Looking up the topic failed.
    #[error(transparent)]
    Topic(#[from] TopicError),
}

impl IngestError {
    /// What a failed produce means: pure, so it is tested alone.
    pub fn from_produce(topic: &str, code: RDKafkaErrorCode) -> Self {
        use RDKafkaErrorCode as C;
        let topic = topic.to_string();
        match code {
            C::UnknownTopic | C::UnknownTopicOrPartition => IngestError::UnknownTopic(topic),
            C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessageSize => {
                IngestError::TooLargeForBroker { topic, code }
            }
            C::QueueFull
            | C::MessageTimedOut
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::NotLeaderForPartition
            | C::PurgeQueue
            | C::PurgeInflight => IngestError::Unavailable { topic, code },
            c if crate::kafka::topics::is_unreachable(c) => {
                IngestError::Unavailable { topic, code }
            }
            _ => IngestError::Refused { topic, code },
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(error: IngestError) -> Self {
        let message = error.to_string();
        match error {
            IngestError::InvalidJson(detail) => ApiError::MalformedJson(detail),
            IngestError::BadKeyPath { .. }
            | IngestError::KeyNotFound { .. }
            | IngestError::KeyPathWithoutJson => ApiError::InvalidField {
                field: "key_path".into(),
                message,
            },
            IngestError::BadHeader { header, .. } => ApiError::InvalidField {
                field: header.into(),
                message,
            },
            IngestError::BadQuery(_) => ApiError::BadRequest(message),
            IngestError::UnknownTopic(_) | IngestError::UnknownPartition { .. } => {
                ApiError::NotFound(message)
            }
            IngestError::RecordTooLarge { .. }
            | IngestError::TooManyRecords { .. }
            | IngestError::TooLargeForBroker { .. } => ApiError::TooLarge(message),
            IngestError::Timeout(_) | IngestError::Unavailable { .. } => {
                ApiError::Unavailable(message)
            }
            IngestError::Refused { .. } => ApiError::BrokerRefused(message),
            IngestError::Topic(error) => {
                if error.is_unreachable() {
                    ApiError::Unavailable(message)
                } else {
                    ApiError::BrokerRefused(message)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn status(error: IngestError) -> StatusCode {
        ApiError::from(error).status_and_code().0
    }

    #[test]
    fn a_missing_topic_or_partition_is_a_404() {
        assert_eq!(
            status(IngestError::from_produce(
                "t",
                RDKafkaErrorCode::UnknownTopicOrPartition
            )),
            StatusCode::NOT_FOUND
        );
        let error = IngestError::UnknownPartition {
            topic: "t".into(),
            partition: 4,
            partitions: 4,
        };
        assert_eq!(
            error.to_string(),
            "topic t has no partition 4: it has 4, numbered from 0"
        );
        assert_eq!(status(error), StatusCode::NOT_FOUND);
    }

    #[test]
    fn brokers_down_timeouts_and_a_full_queue_are_503s() {
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::NotEnoughReplicas,
        ] {
            assert_eq!(
                status(IngestError::from_produce("t", code)),
                StatusCode::SERVICE_UNAVAILABLE,
                "{code:?}"
            );
        }
        assert_eq!(
            status(IngestError::Timeout(Duration::from_secs(1))),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn a_refusal_is_a_502_and_too_large_a_413() {
        assert_eq!(
            status(IngestError::from_produce(
                "t",
                RDKafkaErrorCode::TopicAuthorizationFailed
            )),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            status(IngestError::from_produce(
                "t",
                RDKafkaErrorCode::MessageSizeTooLarge
            )),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn bad_input_is_a_400_naming_what_is_wrong() {
        let error = ApiError::from(IngestError::KeyNotFound {
            path: "order.id".into(),
        });
        assert_eq!(error.status_and_code().0, StatusCode::BAD_REQUEST);
        assert!(error.to_string().contains("order.id"), "{error}");
        let error = ApiError::from(IngestError::InvalidJson(
            "expected value at line 1 column 2".into(),
        ));
        assert_eq!(
            error.status_and_code(),
            (StatusCode::BAD_REQUEST, "malformed_json")
        );
        assert!(error.to_string().contains("line 1 column 2"), "{error}");
    }
}
