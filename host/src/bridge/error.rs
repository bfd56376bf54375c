//! Why a request on the bridge failed, typed from where it failed until it
//! becomes the `p` of an `s: 1` answer (its `Display`, the one place that
//! words it for the client). A failed request never closes the connection.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::api::ApiError;
use crate::kafka::TopicError;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The caller's token may not touch this topic (a tenant's ACL).
    #[error("{0}")]
    Forbidden(String),
    #[error("no topic {0}: create it first (t: \"topic\", a: \"create\")")]
    UnknownTopic(String),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("listing the topics failed: {0}")]
    Metadata(String),
    #[error("the message could not be produced to topic {topic}: {code}")]
    Produce {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("the brokers did not acknowledge the message within {0:?}; it may still be written")]
    ProduceTimeout(Duration),
    #[error("the consumer could not be created: {0}")]
    Consumer(KafkaError),
    #[error("already subscribed to [{}]: unsubscribe first", .0.join(", "))]
    AlreadySubscribed(Vec<String>),
    #[error("not subscribed: subscribe with \"ack\": true to acknowledge messages")]
    NotSubscribed,
    #[error(
        "this subscription commits automatically: acknowledgements are for subscriptions made \
         with \"ack\": true"
    )]
    NotAcknowledged,
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl From<ApiError> for BridgeError {
    /// The API's checks (a tenant's ACL) answer 403s; here they are refusals.
    fn from(error: ApiError) -> Self {
        BridgeError::Forbidden(error.to_string())
    }
}

impl BridgeError {
    /// What a failed produce means.
    pub fn from_produce(topic: &str, error: &KafkaError) -> Self {
        let code = error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
        match code {
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                BridgeError::UnknownTopic(topic.to_string())
            }
            code => BridgeError::Produce {
                topic: topic.to_string(),
                code,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_topic_tells_how_to_create_it() {
        let error = BridgeError::from_produce(
            "t1",
            &KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition),
        );
        let text = error.to_string();
        assert!(text.contains("no topic t1"), "{text}");
        assert!(text.contains("create"), "{text}");
    }

    #[test]
    fn a_second_subscription_names_the_first() {
        let text = BridgeError::AlreadySubscribed(vec!["a".into(), "b".into()]).to_string();
        assert!(text.contains("[a, b]"), "{text}");
    }
}
