//! The code `wit-bindgen` generates from `wit/`, one module per world.
//!
//! The `types` interface is generated once, in [`filter`], and the other
//! worlds reuse it, so a [`Message`](types::Message) is the same Rust type
//! whatever the role. Each world's `export!` macro is public
//! (`pub_export_macro`) so the crate-root export macros can expand it in the
//! plugin crate: that is also what keeps a filter plugin from claiming the
//! serialiser's or policy's exports, because a world's component-type section
//! is only linked in where its macro expands.

// The generated lowering code for `authorise` takes one argument per flattened
// field; that is the canonical ABI, not a design choice we can change.
#![allow(clippy::too_many_arguments)]

/// The `filter` world.
pub mod filter {
    wit_bindgen::generate!({
        path: "../wit",
        world: "wasmhook:plugin/filter@0.1.0",
        pub_export_macro: true,
        default_bindings_module: "wasmhook_guest_sdk::bindings::filter",
        runtime_path: "wasmhook_guest_sdk::__private::wit_bindgen::rt",
        additional_derives: [PartialEq, Eq],
    });
}

/// The `serialiser` world.
pub mod serialiser {
    wit_bindgen::generate!({
        path: "../wit",
        world: "wasmhook:plugin/serialiser@0.1.0",
        pub_export_macro: true,
        default_bindings_module: "wasmhook_guest_sdk::bindings::serialiser",
        runtime_path: "wasmhook_guest_sdk::__private::wit_bindgen::rt",
        with: {
            "wasmhook:plugin/types@0.1.0": crate::bindings::types,
        },
    });
}

/// The `policy` world.
pub mod policy {
    wit_bindgen::generate!({
        path: "../wit",
        world: "wasmhook:plugin/policy@0.1.0",
        pub_export_macro: true,
        default_bindings_module: "wasmhook_guest_sdk::bindings::policy",
        runtime_path: "wasmhook_guest_sdk::__private::wit_bindgen::rt",
        with: {
            "wasmhook:plugin/types@0.1.0": crate::bindings::types,
        },
    });
}

/// The `wasmhook:plugin/types` interface shared by all worlds.
pub use filter::wasmhook::plugin::types;
