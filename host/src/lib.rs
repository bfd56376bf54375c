//! wasmhook: delivers Kafka messages to webhooks — filtered, batched, signed,
//! retried — with sandboxed WebAssembly plugins.
//!
//! # Layout
//!
//! - [`config`]: flags and environment → [`config::Settings`].
//! - [`logging`]: text (coloured only on a terminal) or JSON log lines.
//! - [`startup`]: [`startup::Application`] builds everything that can fail at
//!   start-up, then runs the REST API and the delivery engine until shut down.
//! - [`api`]: the REST API (subscriptions, status, admin switch, plugins, healthz, readyz).
//! - [`ui`]: the status page at `/ui`, static files compiled in, reading the API.
//! - [`domain`]: newtypes that parse the API's input into a valid subscription spec.
//! - [`registry`]: subscriptions, plugins, activity and the admin switch in SQLite or PostgreSQL.
//! - [`ingest`]: the door into Kafka — `POST /1/Topic/{topic}/Records`
//!   (seed 003) and `POST /log` (seed 001), with seed 001's forwarder as a
//!   built-in subscription.
//! - [`bridge`]: the WebSocket door — `GET /1/ws`, seed 004's protocol:
//!   topics created and listed, subscriptions pushed to the socket (with
//!   acknowledgements and back-pressure), messages produced.
//! - [`delivery`]: one pipeline per active subscription — Kafka consumer, JMES
//!   filters, plugins, batcher, sender with retries, dead letter, alerts — under a supervisor.
//! - [`plugin`]: the WebAssembly plugin runtime (wasmtime): compile and validate
//!   components per role, load them for an attachment, run them per batch on
//!   their own threads in a sandbox with CPU, wall-clock and memory limits.
//! - [`signing`]: Standard Webhooks secrets and signatures.
//! - [`egress`]: the SSRF guard — which addresses webhooks may go to, checked
//!   on every connection after DNS resolution and at registration for IP literals.
//! - [`secrets`]: the key that seals secrets at rest, and the sealed form of a value.
//! - [`kafka`]: what every door shares about Kafka: [`kafka::KafkaConnection`]
//!   (brokers, TLS, SASL, raw options) that every client's configuration starts
//!   from, [`kafka::Topics`] creates the topics wasmhook produces to (admin API,
//!   or auto-creation where that is all there is), [`kafka::BrokerHealth`] for readiness.
//! - [`broker`]: the embedded in-memory Kafka broker used when none is configured.
//! - [`client`]: the command line's client (`wasmhook subscription|plugin|admin …`),
//!   which talks to a running server over the REST API.
//!
//! Data paths, delivery semantics and where each decision lives:
//! `docs/ARCHITECTURE.md`.

/// mimalloc instead of the system allocator, for every binary that links
/// wasmhook: the delivery path allocates and frees a few times per message,
/// and glibc's malloc and free were a tenth of its CPU time in a profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod api;
pub mod bridge;
pub mod broker;
pub mod client;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod egress;
pub mod ingest;
pub mod kafka;
pub mod logging;
pub mod plugin;
pub mod registry;
pub mod secrets;
pub mod signing;
pub mod startup;
pub mod telemetry;
pub mod ui;

pub use config::Settings;
pub use startup::Application;
