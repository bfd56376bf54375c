//! Topics: making sure a topic exists before anything produces to it.
//!
//! Real clusters usually refuse to auto-create topics, and a producer writing
//! to a missing topic only fails once its metadata wait runs out, again and
//! again. So a topic is created when what will write to it is registered (a
//! subscription's dead-letter topic, when the subscription is created or
//! replaced): a topic that is there is left as it is; one that is not is
//! created through the admin API (CreateTopics), where "already exists" (a
//! race with another host) is success.
//!
//! librdkafka's mock cluster (the embedded broker and the tests) has no
//! CreateTopics. When the broker does not support it, [`Topics::ensure`] falls
//! back to a metadata request that allows auto-creation: the mock then creates
//! the topic with its own default layout; a broker that refuses auto-creation
//! answers "unknown topic", which becomes [`TopicError::NotCreatable`].
//!
//! It neither produces nor consumes: each door owns its clients.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseProducer, Producer};

use super::KafkaConnection;

/// The dead-letter topic of subscription `id`: the delivery engine writes
/// it, and whoever saves a subscription (the API, the built-in /log
/// forwarder) creates it first.
pub fn dead_letter_topic(subscription: uuid::Uuid) -> String {
    format!("webhooks-{subscription}-dlq")
}

/// How many partitions and replicas a topic wasmhook creates gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLayout {
    partitions: i32,
    replication: i32,
}

/// A partition or replica count outside what Kafka accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("partitions must be between 1 and 100000, got {0}")]
    Partitions(i32),
    #[error("replication must be -1 (the broker's default) or between 1 and 32767, got {0}")]
    Replication(i32),
}

impl TopicLayout {
    /// The replication factor that means "the broker's `default.replication.factor`".
    pub const BROKER_DEFAULT_REPLICATION: i32 = -1;

    pub fn new(partitions: i32, replication: i32) -> Result<Self, LayoutError> {
        if !(1..=100_000).contains(&partitions) {
            return Err(LayoutError::Partitions(partitions));
        }
        if replication != Self::BROKER_DEFAULT_REPLICATION && !(1..=32_767).contains(&replication) {
            return Err(LayoutError::Replication(replication));
        }
        Ok(Self {
            partitions,
            replication,
        })
    }

    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// -1: the broker's default.
    pub fn replication(&self) -> i32 {
        self.replication
    }
}

impl Default for TopicLayout {
    /// One partition, the broker's default replication.
    fn default() -> Self {
        Self {
            partitions: 1,
            replication: Self::BROKER_DEFAULT_REPLICATION,
        }
    }
}

/// What [`Topics::ensure`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// Created now, with the layout asked for.
    Created,
    /// It was there already (its layout is left as it is).
    Existed,
    /// The broker has no admin API and created it on a metadata request,
    /// with its own default layout (the mock cluster: 4 partitions).
    AutoCreated,
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// No broker answered in time: trying again later may work.
    #[error(
        "the Kafka brokers did not answer in time (within {timeout:?}) while making sure topic \
         {topic} exists: {code}; check that they are reachable, then try again"
    )]
    Unreachable {
        topic: String,
        timeout: Duration,
        code: RDKafkaErrorCode,
    },
    /// The broker answered no: its settings or ACLs must change, or the topic
    /// be created by hand.
    #[error(
        "the Kafka brokers refused to create topic {topic}: {code}; create it by hand or fix \
         the brokers' settings (replication factor, ACLs, topic policies)"
    )]
    Refused {
        topic: String,
        code: RDKafkaErrorCode,
    },
    /// Neither the admin API nor auto-creation is available.
    #[error(
        "topic {topic} does not exist and the Kafka brokers support neither the admin API \
         (CreateTopics) nor auto-creation: create the topic, or allow CreateTopics"
    )]
    NotCreatable { topic: String },
}

impl TopicError {
    /// True when the brokers could not be reached: a later try may work.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, TopicError::Unreachable { .. })
    }

    pub fn topic(&self) -> &str {
        match self {
            TopicError::Unreachable { topic, .. }
            | TopicError::Refused { topic, .. }
            | TopicError::NotCreatable { topic } => topic,
        }
    }
}

/// What one error code from CreateTopics means for [`Topics::ensure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Existed,
    /// The broker has no CreateTopics: fall back to auto-creation.
    Unsupported,
    Unreachable,
    Refused,
}

/// Pure, so that it is tested alone.
fn creation_answer(code: RDKafkaErrorCode) -> Answer {
    use RDKafkaErrorCode as C;
    match code {
        C::TopicAlreadyExists => Answer::Existed,
        C::UnsupportedFeature | C::UnsupportedVersion => Answer::Unsupported,
        c if is_unreachable(c) => Answer::Unreachable,
        _ => Answer::Refused,
    }
}

/// Codes that say "no broker answered (in time)", not "the broker said no".
pub(crate) fn is_unreachable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::OperationTimedOut
            | C::RequestTimedOut
            | C::TimedOutQueue
            | C::MessageTimedOut
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::Resolve
            | C::BrokerNotAvailable
            | C::NetworkException
            | C::LeaderNotAvailable
            | C::NotController
            | C::BrokerDestroy
    )
}

/// Creates topics and reads their partition count; cheap to clone.
#[derive(Clone)]
pub struct Topics {
    inner: Arc<Inner>,
}

struct Inner {
    /// Also answers metadata requests that must not auto-create.
    admin: AdminClient<DefaultClientContext>,
    /// Metadata requests that may auto-create (the fallback).
    creator: BaseProducer,
    timeout: Duration,
}

impl Topics {
    /// Clients for `brokers`; every operation gives up after `timeout`.
    /// Nothing connects until the first operation.
    pub fn new(kafka: &KafkaConnection, timeout: Duration) -> Result<Self, KafkaError> {
        let admin = kafka
            .client_config("wasmhook-topics")
            .set("allow.auto.create.topics", "false")
            .create()?;
        let creator = kafka
            .client_config("wasmhook-topics")
            .set("allow.auto.create.topics", "true")
            .create()?;
        Ok(Self {
            inner: Arc::new(Inner {
                admin,
                creator,
                timeout,
            }),
        })
    }

    /// Makes sure topic `name` exists: created with `layout` if it did not.
    pub async fn ensure(&self, name: &str, layout: TopicLayout) -> Result<Ensured, TopicError> {
        // Looking first: a topic made by hand needs no admin rights, and
        // saving a subscription again costs one metadata request.
        let look = self.look(name).await?;
        if look.partitions.is_some() {
            return Ok(Ensured::Existed);
        }
        // Asked of the broker that answered, not of the controller: the mock
        // cluster names no controller (an admin request would wait for one
        // until it times out) and says "unsupported" only when asked directly;
        // KRaft brokers forward to the controller. A ZooKeeper-era broker that
        // is not the controller says so, and then the controller is asked.
        let mut code = self.create(name, layout, look.answered_by).await?;
        if look.answered_by.is_some() && code == Some(RDKafkaErrorCode::NotController) {
            code = self.create(name, layout, None).await?;
        }
        let Some(code) = code else {
            return Ok(Ensured::Created);
        };
        match creation_answer(code) {
            Answer::Existed => Ok(Ensured::Existed),
            Answer::Unreachable => Err(self.unreachable(name, code)),
            Answer::Refused => Err(TopicError::Refused {
                topic: name.to_string(),
                code,
            }),
            Answer::Unsupported => {
                tracing::debug!(
                    topic = name,
                    "The brokers have no CreateTopics; asking for auto-creation."
                );
                self.blocking(name, |inner, name| inner.auto_create(name))
                    .await
            }
        }
    }

    /// How many partitions topic `name` has; `None` when it does not exist.
    /// Never creates it.
    pub async fn partitions(&self, name: &str) -> Result<Option<usize>, TopicError> {
        Ok(self.look(name).await?.partitions)
    }

    /// Every topic and its partition count, internal ones (`__…`) left
    /// out; in name order. Never creates one.
    pub async fn list(&self) -> Result<Vec<(String, usize)>, TopicError> {
        self.blocking("(all topics)", |inner, name| {
            let metadata = inner.metadata(
                inner.admin.inner().fetch_metadata(None, inner.timeout),
                name,
            )?;
            let mut topics: Vec<(String, usize)> = metadata
                .topics()
                .iter()
                .filter(|t| t.error().is_none() && !t.name().starts_with("__"))
                .map(|t| (t.name().to_string(), t.partitions().len()))
                .collect();
            topics.sort();
            Ok(topics)
        })
        .await
    }

    async fn look(&self, name: &str) -> Result<Look, TopicError> {
        self.blocking(name, |inner, name| inner.look(name)).await
    }

    /// One CreateTopics request, to `broker` or the controller; `None` when
    /// the topic was created, else the error code of the answer.
    async fn create(
        &self,
        name: &str,
        layout: TopicLayout,
        broker: Option<i32>,
    ) -> Result<Option<RDKafkaErrorCode>, TopicError> {
        let timeout = self.inner.timeout;
        let topic = NewTopic::new(
            name,
            layout.partitions,
            TopicReplication::Fixed(layout.replication),
        );
        let options = AdminOptions::new()
            .request_timeout(Some(timeout))
            .operation_timeout(Some(timeout))
            .broker_id(broker);
        // librdkafka bounds the request; this also bounds the wait for a
        // connection, with a little slack for librdkafka's own timer.
        let created = tokio::time::timeout(
            timeout + Duration::from_secs(1),
            self.inner.admin.create_topics([&topic], &options),
        )
        .await
        .map_err(|_| self.unreachable(name, RDKafkaErrorCode::OperationTimedOut))?;
        Ok(match created {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(_)) => None,
                Some(Err((_, code))) => Some(code),
                // One topic asked, no answer for it: not something a broker does.
                None => Some(RDKafkaErrorCode::Fail),
            },
            Err(KafkaError::AdminOp(code)) => Some(code),
            Err(other) => Some(other.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail)),
        })
    }

    /// Runs a metadata call (which blocks on librdkafka) off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        name: &str,
        call: impl FnOnce(&Inner, &str) -> Result<T, TopicError> + Send + 'static,
    ) -> Result<T, TopicError> {
        let inner = self.inner.clone();
        let owned = name.to_string();
        tokio::task::spawn_blocking(move || call(&inner, &owned))
            .await
            .unwrap_or_else(|_| Err(self.unreachable(name, RDKafkaErrorCode::Fail)))
    }

    fn unreachable(&self, name: &str, code: RDKafkaErrorCode) -> TopicError {
        TopicError::Unreachable {
            topic: name.to_string(),
            timeout: self.inner.timeout,
            code,
        }
    }
}

/// What a metadata request said about one topic.
struct Look {
    /// `None`: the topic does not exist.
    partitions: Option<usize>,
    /// The broker that answered (else one it named; `None`: none known).
    answered_by: Option<i32>,
}

impl Inner {
    /// Blocking. Never creates the topic.
    fn look(&self, name: &str) -> Result<Look, TopicError> {
        let metadata = self.metadata(
            self.admin.inner().fetch_metadata(Some(name), self.timeout),
            name,
        )?;
        // A bootstrap connection answers as -1 until its id is known.
        let answered_by = Some(metadata.orig_broker_id())
            .filter(|id| *id >= 0)
            .or_else(|| metadata.brokers().first().map(|b| b.id()));
        Ok(Look {
            partitions: topic_state(&metadata, name).ok(),
            answered_by,
        })
    }

    /// Blocking: a metadata request that allows auto-creation.
    fn auto_create(&self, name: &str) -> Result<Ensured, TopicError> {
        let asked = self.metadata(
            self.creator
                .client()
                .fetch_metadata(Some(name), self.timeout),
            name,
        )?;
        match topic_state(&asked, name) {
            // A real broker answers "leader not available" while it creates one.
            Ok(_) | Err(RDKafkaErrorCode::LeaderNotAvailable) => Ok(Ensured::AutoCreated),
            Err(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                Err(TopicError::NotCreatable {
                    topic: name.to_string(),
                })
            }
            Err(code) if is_unreachable(code) => Err(TopicError::Unreachable {
                topic: name.to_string(),
                timeout: self.timeout,
                code,
            }),
            Err(code) => Err(TopicError::Refused {
                topic: name.to_string(),
                code,
            }),
        }
    }

    fn metadata(
        &self,
        fetched: Result<Metadata, KafkaError>,
        name: &str,
    ) -> Result<Metadata, TopicError> {
        fetched.map_err(|error| {
            let code = error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
            if is_unreachable(code) || code == RDKafkaErrorCode::Fail {
                TopicError::Unreachable {
                    topic: name.to_string(),
                    timeout: self.timeout,
                    code,
                }
            } else {
                TopicError::Refused {
                    topic: name.to_string(),
                    code,
                }
            }
        })
    }
}

/// The topic's partition count, or the error the broker gave for it.
fn topic_state(metadata: &Metadata, name: &str) -> Result<usize, RDKafkaErrorCode> {
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == name)
        .ok_or(RDKafkaErrorCode::UnknownTopicOrPartition)?;
    match topic.error() {
        Some(error) => Err(error.into()),
        None if topic.partitions().is_empty() => Err(RDKafkaErrorCode::UnknownTopicOrPartition),
        None => Ok(topic.partitions().len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_topic_is_success() {
        assert_eq!(
            creation_answer(RDKafkaErrorCode::TopicAlreadyExists),
            Answer::Existed
        );
    }

    #[test]
    fn a_broker_without_create_topics_falls_back_to_auto_creation() {
        assert_eq!(
            creation_answer(RDKafkaErrorCode::UnsupportedFeature),
            Answer::Unsupported
        );
    }

    #[test]
    fn timeouts_and_transport_failures_are_unreachable_not_refused() {
        for code in [
            RDKafkaErrorCode::OperationTimedOut,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
        ] {
            assert_eq!(creation_answer(code), Answer::Unreachable, "{code:?}");
        }
    }

    #[test]
    fn policy_and_authorisation_answers_are_refusals() {
        for code in [
            RDKafkaErrorCode::InvalidReplicationFactor,
            RDKafkaErrorCode::PolicyViolation,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::ClusterAuthorizationFailed,
        ] {
            assert_eq!(creation_answer(code), Answer::Refused, "{code:?}");
        }
    }

    #[test]
    fn a_layout_takes_minus_one_as_the_broker_default_and_refuses_zero() {
        assert_eq!(TopicLayout::new(3, -1).unwrap().replication(), -1);
        assert_eq!(TopicLayout::new(0, 1), Err(LayoutError::Partitions(0)));
        assert_eq!(TopicLayout::new(1, 0), Err(LayoutError::Replication(0)));
        assert_eq!(TopicLayout::new(1, -2), Err(LayoutError::Replication(-2)));
    }

    #[test]
    fn a_refusal_names_the_topic_and_says_what_to_do() {
        let error = TopicError::NotCreatable {
            topic: "webhooks-x-dlq".into(),
        };
        let text = error.to_string();
        assert!(text.contains("webhooks-x-dlq"), "{text}");
        assert!(text.contains("create the topic"), "{text}");
    }
}
