//! The plugin runtime: WebAssembly components that filter, serialise or
//! authorise batches of Kafka messages, run on wasmtime in a sandbox.
//!
//! - `engine`: [`PluginEngine`] (one wasmtime engine, the epoch ticker, the
//!   cache of compiled components by sha256) and [`PluginEngine::compile`],
//!   which validates a component against its [`PluginRole`]'s world.
//! - `instance`: [`PluginInstance`], one per pipeline and attachment:
//!   instantiates, calls `init`, runs batches under the [`RuntimeLimits`],
//!   rebuilds itself after a trap.
//! - `sandbox`: what a plugin can reach (an empty WASI context, a memory
//!   limiter) and the import allow-list.
//! - `bindings`: the `bindgen!` output for the three worlds of `wit/`;
//!   [`Message`] and friends come from there.
//! - `error`: [`PluginError`].
//!
//! It does not store plugins (`registry`), choose which plugin a
//! subscription uses (`domain`), or decide what happens to a batch whose
//! plugin failed (`delivery::pipeline`). Calls block for up to the CPU
//! deadline: async code runs them on the blocking pool.

mod bindings;
mod engine;
mod error;
mod instance;
mod sandbox;

pub use bindings::{Decision, Message, Serialised, SubscriberContext};
pub use engine::{
    CompiledPlugin, EPOCH_TICK, PluginEngine, PluginRole, RuntimeLimits, UnknownRole, sha256_hex,
};
pub use error::PluginError;
pub use instance::PluginInstance;
