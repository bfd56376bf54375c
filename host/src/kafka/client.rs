//! How every Kafka client of wasmhook connects: one [`KafkaConnection`] holds
//! the bootstrap servers (and whatever else a cluster requires of every
//! client), and each client starts its configuration from it, then adds what
//! its role needs (group, acknowledgements, timeouts).
//!
//! Keeping this in one place is what makes a setting given once reach the
//! consumers, the producers and the admin clients alike.

use rdkafka::ClientConfig;

/// Where the Kafka cluster is and how to connect to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConnection {
    brokers: String,
}

impl KafkaConnection {
    /// A connection to `brokers` (`host:port,…`).
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
        }
    }

    /// The bootstrap servers, `host:port,…`.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// A client configuration that connects as configured, named `client_id`
    /// (brokers show it in their logs and quotas); the caller adds its role's settings.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id);
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_gets_the_brokers_and_its_name() {
        let config = KafkaConnection::new("a:9092,b:9092").client_config("wasmhook-x");
        assert_eq!(config.get("bootstrap.servers"), Some("a:9092,b:9092"));
        assert_eq!(config.get("client.id"), Some("wasmhook-x"));
    }
}
