//! The plugin runtime: WebAssembly components that filter, serialise or
//! authorise batches of Kafka messages, run on wasmtime in a sandbox.
//!
//! - `engine`: [`PluginEngine`] (one wasmtime engine, the epoch ticker, the
//!   plugin threads, the bounded cache of compiled components) and
//!   [`PluginEngine::compile`], which validates a component against its
//!   role's world within the compile limits.
//! - `roles/`: one home per [`PluginRole`](crate::domain::PluginRole): its
//!   world check, its exports and its batch call, lifting what the guest
//!   returns lazily and within bounds.
//! - `instance`: [`PluginInstance`], one per pipeline and attachment:
//!   instantiates, calls `init`, runs batches within the [`PluginLimits`],
//!   rebuilds after a failure, backs off a plugin that keeps failing.
//! - `loader`: from an attachment to a compiled plugin or an instance,
//!   through the registry; used by the API and the pipelines alike.
//! - `pool`: the threads guests run on, and the CPU meter.
//! - `sandbox`: what a plugin can reach (an empty WASI context) and hold
//!   (memory, tables, WASI resources, stderr), and the import allow-list.
//! - `limits`: [`HostLimits`], [`PluginLimits`], [`RequestedLimits`].
//! - `breaker`: the circuit breaker of an instance.
//! - `guest_text`: cutting and cleaning text that comes from a guest.
//! - `bindings`: the `bindgen!` output for the worlds of `wit/`;
//!   [`Message`] and friends come from there.
//! - `error`: [`PluginError`].
//!
//! It does not choose which plugin a subscription uses (`domain`), or decide
//! what happens to a batch whose plugin failed (`delivery`).

mod bindings;
pub mod breaker;
mod engine;
mod error;
pub mod guest_text;
mod instance;
pub mod limits;
pub mod loader;
mod pool;
mod roles;
mod sandbox;

pub use bindings::{Decision, Message, Serialised, SubscriberContext};
pub use engine::{
    CompiledPlugin, EPOCH_TICK, PluginEngine, RuntimeSettings, default_threads, sha256_hex,
};
pub use error::PluginError;
pub use instance::PluginInstance;
pub use limits::{HostLimits, PluginLimits, RequestedLimits};
pub use roles::{Answer, Call};
