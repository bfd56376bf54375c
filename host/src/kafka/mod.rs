//! Kafka, as every door uses it: what is shared between the consumers and
//! producers of the delivery engine, the API and the tools.
//!
//! - [`client`]: [`KafkaConnection`], where the cluster is and how every
//!   client connects to it; each client's configuration starts there.
//! - [`topics`]: [`Topics`], which makes sure a topic exists before anything
//!   produces to it (the admin API, with a fallback for brokers without it),
//!   and [`TopicLayout`], the partitions and replication a created topic gets.
//!
//! It does not consume or produce messages: each door owns its clients.

pub mod client;
pub mod topics;

pub use client::KafkaConnection;

pub use topics::{Ensured, TopicError, TopicLayout, Topics, dead_letter_topic};
