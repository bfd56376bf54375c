//! Kafka, as every door uses it: what is shared between the consumers and
//! producers of the delivery engine, the API and the tools.
//!
//! - [`client`]: [`KafkaConnection`], where the cluster is and how every
//!   client connects to it (security protocol, TLS, SASL, raw librdkafka
//!   options); each client's configuration starts there.
//! - [`health`]: [`BrokerHealth`], whether the brokers answer now (readiness).
//! - [`producer`]: [`AckingProducer`], the producer every door that writes
//!   messages uses (dead letters, ingest, the WebSocket bridge): each message's
//!   acknowledgement is a future.
//! - [`topics`]: [`Topics`], which makes sure a topic exists before anything
//!   produces to it (the admin API, with a fallback for brokers without it),
//!   and [`TopicLayout`], the partitions and replication a created topic gets.
//!
//! It does not consume or produce messages: each door owns its clients.

pub mod client;
pub mod health;
pub mod producer;
pub mod topics;

pub use client::{
    ClientIdentity, ConnectionError, KafkaConnection, KafkaOption, PemFile, PemKind, SaslMechanism,
    SaslSettings, SecurityProtocol, TlsSettings,
};
pub use health::{BrokerDown, BrokerHealth};
pub use producer::{Acked, AckingProducer};

pub use topics::{Ensured, TopicError, TopicLayout, Topics, dead_letter_topic};
