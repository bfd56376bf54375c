//! The embedded Kafka-protocol broker: librdkafka's in-memory mock cluster.
//!
//! It exists so that `cargo run` does the whole job on a machine with no Kafka:
//! it speaks the real protocol (produce with kcat or any client), supports
//! consumer groups, auto-creates topics with 4 partitions on first use, and
//! forgets everything when the process exits. It keeps only a few MiB per
//! partition (older messages vanish, as with retention). It is for trying
//! things out and for tests, never for production.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer};

/// An in-memory broker that lives as long as this value.
///
/// It is owned through a producer handle created with `test.mock.num.brokers`,
/// which (unlike `MockCluster::new`) is `Send`, so it can live in async code.
pub struct EmbeddedBroker {
    handle: BaseProducer,
}

impl EmbeddedBroker {
    pub fn start(brokers: i32) -> Result<Self, KafkaError> {
        let handle: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            .create()?;
        let broker = Self { handle };
        // The mock's default waits 3 s for more members before the first group
        // assignment; a real broker's default is the same, but here nobody else
        // is coming, and every new subscription would pay it.
        broker.set_initial_rebalance_delay(Duration::from_millis(200));
        Ok(broker)
    }

    fn cluster(&self) -> MockCluster<'_, DefaultProducerContext> {
        self.handle
            .client()
            .mock_cluster()
            .expect("a client made with test.mock.num.brokers has a mock cluster")
    }

    /// The `host:port,…` list clients connect to.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster().bootstrap_servers()
    }

    /// Creates a topic ahead of use (topics are otherwise auto-created with 4 partitions).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), KafkaError> {
        self.cluster().create_topic(name, partitions, 1)
    }

    /// Makes broker `id` (1-based) unreachable until [`Self::broker_up`].
    pub fn broker_down(&self, id: i32) -> Result<(), KafkaError> {
        self.cluster().broker_down(id)
    }

    pub fn broker_up(&self, id: i32) -> Result<(), KafkaError> {
        self.cluster().broker_up(id)
    }

    /// Fault injection: metadata answers for `topic` carry `error` (e.g.
    /// unknown topic) until set back to `RD_KAFKA_RESP_ERR_NO_ERROR`.
    pub fn set_topic_error(
        &self,
        topic: &str,
        error: rdkafka::types::RDKafkaRespErr,
    ) -> Result<(), KafkaError> {
        self.cluster().topic_error(topic, error)
    }

    /// Fault injection: the next requests of kind `api`, one per error, fail
    /// with these errors (for tests of how clients cope).
    pub fn fail_requests(
        &self,
        api: rdkafka::types::RDKafkaApiKey,
        errors: &[rdkafka::types::RDKafkaRespErr],
    ) {
        self.cluster().request_errors(api, errors)
    }

    /// Ends [`Self::fail_requests`] for `api`: its requests succeed again.
    pub fn stop_failing_requests(&self, api: rdkafka::types::RDKafkaApiKey) {
        self.cluster().clear_request_errors(api)
    }

    fn set_initial_rebalance_delay(&self, delay: Duration) {
        // SAFETY: the mock cluster pointer comes from our live client handle and
        // stays valid while `self.handle` lives; the call only sets an integer.
        unsafe {
            let cluster =
                rdkafka::bindings::rd_kafka_handle_mock_cluster(self.handle.client().native_ptr());
            if !cluster.is_null() {
                rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(
                    cluster,
                    delay.as_millis() as i32,
                );
            }
        }
    }
}
