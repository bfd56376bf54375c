//! Write wasmhook plugins in Rust.
//!
//! A wasmhook plugin is a WebAssembly component that implements one *role*
//! of the `wasmhook:plugin@0.1.0` WIT package (the `wit/` folder of the
//! repository): a [`Filter`] decides which messages of a batch are kept, a
//! [`Serialiser`] turns a batch into one HTTP request body, and a [`Policy`]
//! allows, denies or redacts each message for a given subscriber.
//!
//! The host calls a plugin once per batch and expects one result per
//! message, in batch order. It calls `init` once per instance, with the
//! configuration the operator set on the subscription, before any batch; the
//! value `init` returns is the plugin's state for every later call.
//!
//! This crate hides the generated bindings: implement the role's trait on a
//! type and name it in the role's export macro.
//!
//! ```
//! use wasmhook_guest_sdk::{Config, Filter, Message};
//!
//! /// Keeps messages whose key is the configured one.
//! struct KeyIs(Vec<u8>);
//!
//! impl Filter for KeyIs {
//!     fn init(config: Config) -> Result<Self, String> {
//!         let key = wasmhook_guest_sdk::config::require(&config, "key")?;
//!         Ok(KeyIs(key.as_bytes().to_vec()))
//!     }
//!
//!     fn filter(&mut self, batch: &[Message]) -> Result<Vec<bool>, String> {
//!         Ok(batch.iter().map(|m| m.key.as_deref() == Some(&self.0[..])).collect())
//!     }
//! }
//!
//! wasmhook_guest_sdk::export_filter!(KeyIs);
//! # fn main() {}
//! ```
//!
//! Build the plugin crate (`crate-type = ["cdylib"]`) with
//! `cargo build --release --target wasm32-wasip2`: the `.wasm` it produces is
//! already a component. On other targets the export macros expand to nothing,
//! so a plugin's unit tests run natively by calling its trait methods.
//!
//! # Layout
//! - [`bindings`]: the code `wit-bindgen` generates for each world; plugins
//!   rarely need it.
//! - [`config`]: small helpers to read the `key=value` configuration.
//! - The role traits and export macros are at the crate root.
//!
//! The sandbox has no filesystem, network, environment or clock beyond what
//! WASI's empty context gives; a plugin should be a pure function of its
//! configuration and its batches.

// Lets the generated code name this crate the same way from inside it and
// from the plugin crates where the export macros expand.
extern crate self as wasmhook_guest_sdk;

use std::any::Any;
use std::cell::RefCell;

pub mod bindings;
pub mod config;

pub use bindings::types::{Config, Decision, Message, Serialised, SubscriberContext};

/// A plugin that decides which messages of a batch are delivered.
pub trait Filter: Sized + 'static {
    /// Builds the plugin's state from its configuration. An `Err` rejects
    /// the configuration: the host reports it and does not use the plugin.
    fn init(config: Config) -> Result<Self, String>;

    /// Returns one flag per message of `batch`, in order; `true` keeps the
    /// message. An `Err` fails the whole batch.
    fn filter(&mut self, batch: &[Message]) -> Result<Vec<bool>, String>;
}

/// A plugin that turns a whole batch into the body of one HTTP request.
pub trait Serialiser: Sized + 'static {
    /// Builds the plugin's state from its configuration; see [`Filter::init`].
    fn init(config: Config) -> Result<Self, String>;

    /// Serialises `batch` into one request body and its content type.
    fn serialise(&mut self, batch: &[Message]) -> Result<Serialised, String>;
}

/// A plugin that decides, per subscriber, what each message may become.
pub trait Policy: Sized + 'static {
    /// Builds the plugin's state from its configuration; see [`Filter::init`].
    fn init(config: Config) -> Result<Self, String>;

    /// Returns one [`Decision`] per message of `batch`, in order.
    fn authorise(
        &mut self,
        ctx: &SubscriberContext,
        batch: &[Message],
    ) -> Result<Vec<Decision>, String>;
}

thread_local! {
    // The state `init` built. A component instance is single-threaded and
    // holds exactly one plugin, so one slot is enough; `Any` lets the
    // non-generic slot hold whichever type the export macro named.
    static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

const NOT_INITIALISED: &str = "plugin called before init succeeded";

/// Runs `init` and keeps the state it built for the later calls.
fn init_state<T: 'static>(build: impl FnOnce() -> Result<T, String>) -> Result<(), String> {
    let state = build()?;
    STATE.with(|slot| *slot.borrow_mut() = Some(Box::new(state)));
    Ok(())
}

/// Runs `call` on the state `init` built, or fails if there is none.
fn with_state<T: 'static, R>(call: impl FnOnce(&mut T) -> Result<R, String>) -> Result<R, String> {
    STATE.with(|slot| {
        let mut slot = slot.borrow_mut();
        let state = slot
            .as_mut()
            .and_then(|state| state.downcast_mut::<T>())
            .ok_or_else(|| NOT_INITIALISED.to_string())?;
        call(state)
    })
}

/// Glue between the generated `Guest` traits and the role traits; used by
/// the export macros and not meant to be called directly.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use super::*;

    pub fn filter_init<T: Filter>(config: Config) -> Result<(), String> {
        init_state(|| T::init(config))
    }

    pub fn filter<T: Filter>(batch: Vec<Message>) -> Result<Vec<bool>, String> {
        with_state(|plugin: &mut T| plugin.filter(&batch))
    }

    pub fn serialiser_init<T: Serialiser>(config: Config) -> Result<(), String> {
        init_state(|| T::init(config))
    }

    pub fn serialise<T: Serialiser>(batch: Vec<Message>) -> Result<Serialised, String> {
        with_state(|plugin: &mut T| plugin.serialise(&batch))
    }

    pub fn policy_init<T: Policy>(config: Config) -> Result<(), String> {
        init_state(|| T::init(config))
    }

    pub fn authorise<T: Policy>(
        ctx: SubscriberContext,
        batch: Vec<Message>,
    ) -> Result<Vec<Decision>, String> {
        with_state(|plugin: &mut T| plugin.authorise(&ctx, &batch))
    }
}

/// Exports a [`Filter`] implementation as the component's `filter` world.
///
/// Use once per plugin crate, at module level: `export_filter!(MyFilter);`.
/// Expands to nothing when not compiling for `wasm32`, so native unit tests
/// and `cargo clippy` on the host work.
#[macro_export]
macro_rules! export_filter {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct WasmhookFilterExport;

            impl $crate::bindings::filter::Guest for WasmhookFilterExport {
                fn init(config: $crate::Config) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::filter_init::<$plugin>(config)
                }

                fn filter(
                    batch: ::std::vec::Vec<$crate::Message>,
                ) -> ::core::result::Result<::std::vec::Vec<bool>, ::std::string::String> {
                    $crate::__private::filter::<$plugin>(batch)
                }
            }

            $crate::__export_filter_impl!(WasmhookFilterExport with_types_in $crate::bindings::filter);
        };
    };
}

/// Exports a [`Serialiser`] implementation as the component's `serialiser`
/// world. See [`export_filter!`] for how to use it.
#[macro_export]
macro_rules! export_serialiser {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct WasmhookSerialiserExport;

            impl $crate::bindings::serialiser::Guest for WasmhookSerialiserExport {
                fn init(config: $crate::Config) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::serialiser_init::<$plugin>(config)
                }

                fn serialise(
                    batch: ::std::vec::Vec<$crate::Message>,
                ) -> ::core::result::Result<$crate::Serialised, ::std::string::String> {
                    $crate::__private::serialise::<$plugin>(batch)
                }
            }

            $crate::__export_serialiser_impl!(WasmhookSerialiserExport with_types_in $crate::bindings::serialiser);
        };
    };
}

/// Exports a [`Policy`] implementation as the component's `policy` world.
/// See [`export_filter!`] for how to use it.
#[macro_export]
macro_rules! export_policy {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct WasmhookPolicyExport;

            impl $crate::bindings::policy::Guest for WasmhookPolicyExport {
                fn init(config: $crate::Config) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::policy_init::<$plugin>(config)
                }

                fn authorise(
                    ctx: $crate::SubscriberContext,
                    batch: ::std::vec::Vec<$crate::Message>,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<$crate::Decision>,
                    ::std::string::String,
                > {
                    $crate::__private::authorise::<$plugin>(ctx, batch)
                }
            }

            $crate::__export_policy_impl!(WasmhookPolicyExport with_types_in $crate::bindings::policy);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter {
        step: usize,
        calls: usize,
    }

    impl Filter for Counter {
        fn init(config: Config) -> Result<Self, String> {
            let step = config::require(&config, "step")?
                .parse()
                .map_err(|e| format!("step: {e}"))?;
            Ok(Counter { step, calls: 0 })
        }

        fn filter(&mut self, batch: &[Message]) -> Result<Vec<bool>, String> {
            self.calls += 1;
            Ok(batch
                .iter()
                .map(|m| (m.offset as usize).is_multiple_of(self.step))
                .collect())
        }
    }

    fn message(offset: i64) -> Message {
        Message {
            topic: "t".into(),
            partition: 0,
            offset,
            timestamp: None,
            key: None,
            value: Vec::new(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn state_built_by_init_is_used_by_later_calls() {
        __private::filter_init::<Counter>(vec![("step".into(), "2".into())]).unwrap();
        let kept = __private::filter::<Counter>(vec![message(0), message(1), message(2)]).unwrap();
        assert_eq!(kept, vec![true, false, true]);
        __private::filter::<Counter>(vec![]).unwrap();
        let calls = with_state(|c: &mut Counter| Ok(c.calls)).unwrap();
        assert_eq!(calls, 2);
    }

    #[test]
    fn calls_before_a_successful_init_fail_instead_of_panicking() {
        let err = __private::filter::<Counter>(vec![message(0)]).unwrap_err();
        assert_eq!(err, NOT_INITIALISED);
        let err = __private::filter_init::<Counter>(vec![]).unwrap_err();
        assert!(err.contains("step"), "{err}");
        assert!(__private::filter::<Counter>(vec![]).is_err());
    }
}
