//! Black-box tests of wasmhook: the real application on port 0, a real
//! Kafka-protocol broker (librdkafka's mock cluster; tansu, a stricter one,
//! where the broker's behaviour matters), a real webhook receiver, SQLite and
//! the machine's PostgreSQL.

mod access;
mod alerting;
mod api;
mod bridge;
mod cli;
mod delivery;
mod fuzz;
mod hardening;
mod helpers;
mod hibernation;
mod hosts;
mod ingest;
mod kafka_connection;
mod log_forwarder;
mod openapi;
mod plugin_runtime;
mod plugins;
mod replay;
mod sandbox;
mod secrets;
mod ssrf;
mod telemetry;
mod topics;
mod ui;
