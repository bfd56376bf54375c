//! wasmhook: delivers Kafka messages to webhooks — filtered, batched, signed,
//! retried — with sandboxed WebAssembly plugins.
//!
//! # Layout
//!
//! - [`config`]: flags and environment → [`config::Settings`].
//! - [`startup`]: [`startup::Application`] builds everything that can fail at
//!   start-up, then runs the REST API and the delivery engine until shut down.
//! - [`api`]: the REST API of seed 000 (subscriptions, status, admin switch, healthz).
//! - [`domain`]: newtypes that parse the API's input into a valid subscription spec.
//! - [`registry`]: subscriptions, plugins, activity and the admin switch in SQLite or PostgreSQL.
//! - [`delivery`]: one pipeline per active subscription — Kafka consumer, JMES
//!   filters, plugins, batcher, sender with retries, dead letter, alerts — under a supervisor.
//! - [`plugin`]: the WebAssembly plugin runtime (wasmtime): compile and validate
//!   components per role, run them per batch in a sandbox with CPU and memory limits.
//! - [`signing`]: Standard Webhooks secrets and signatures.
//! - [`broker`]: the embedded in-memory Kafka broker used when none is configured.
//!
//! Data path and delivery semantics: see DESIGN.md at the repository root.

pub mod api;
pub mod broker;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod plugin;
pub mod registry;
pub mod signing;
pub mod startup;

pub use config::Settings;
pub use startup::Application;
