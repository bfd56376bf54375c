//! Host bindings generated from the `wasmhook:plugin` WIT package, one
//! module per world, in one place (as fermyon/spin does in `crates/world`).
//!
//! The `types` interface is generated once, in [`filter`], and reused by the
//! other worlds through `with`, so [`Message`] is one Rust type for all roles.
//! `path` is relative to the host crate.

/// Bindings for the `filter` world.
pub mod filter {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmhook:plugin/filter@0.1.0",
        // For comparing decisions in the host and in tests.
        additional_derives: [PartialEq, Eq],
    });
}

/// Bindings for the `serialiser` world.
pub mod serialiser {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmhook:plugin/serialiser@0.1.0",
        with: {
            "wasmhook:plugin/types@0.1.0": crate::plugin::bindings::types,
        },
    });
}

/// Bindings for the `policy` world.
pub mod policy {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmhook:plugin/policy@0.1.0",
        with: {
            "wasmhook:plugin/types@0.1.0": crate::plugin::bindings::types,
        },
    });
}

pub use filter::wasmhook::plugin::types;
pub use types::{Decision, Message, Serialised, SubscriberContext};
