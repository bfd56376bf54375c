//! The one error type of the plugin runtime, [`PluginError`].
//!
//! Variants are split by who is at fault and what the host should do:
//! upload-time rejections (`InvalidComponent`, `WrongWorld`,
//! `ForbiddenImport`, `CompileTimeout`) map to a 4xx for the uploader;
//! `CompilerBusy` is the host's, a 503; `Config` means the subscription's
//! plugin configuration is wrong; the per-entry variants (`Trap`,
//! `CpuDeadline`, `WallDeadline`, `MemoryLimit`, `TableLimit`, `Guest`,
//! `BadResult`, `Suspended`) fail one attempt. Every string a variant
//! carries that came from the guest was cut and cleaned
//! ([`super::guest_text`]) before it got here.

use std::time::Duration;

/// Why a plugin could not be compiled, instantiated or called.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    /// The bytes are not a WebAssembly component (garbage, a core module, too
    /// large, or a component wasmtime cannot compile).
    #[error("not a valid WebAssembly component: {0}")]
    InvalidComponent(String),

    /// The component does not export the role's world (missing export or
    /// wrong function types).
    #[error("component does not implement the expected world: {0}")]
    WrongWorld(String),

    /// The component imports something the sandbox does not provide.
    #[error("component imports something plugins may not use: {0}")]
    ForbiddenImport(String),

    /// Compiling the component took longer than the host allows.
    #[error("compiling the component took longer than {0:?}")]
    CompileTimeout(Duration),

    /// Other compilations held the compiler for longer than the timeout.
    #[error("the compiler was busy with other plugins for {0:?}; try again")]
    CompilerBusy(Duration),

    /// The plugin's `init` rejected its configuration.
    #[error("plugin rejected its configuration: {0}")]
    Config(String),

    /// The guest trapped (panic, unreachable, out-of-bounds access, stack
    /// overflow...).
    #[error("plugin trapped: {0}")]
    Trap(String),

    /// The guest ran on the CPU for longer than its deadline and was stopped.
    #[error("plugin exceeded its CPU deadline of {0:?}")]
    CpuDeadline(Duration),

    /// The entry took longer than its wall-clock deadline (the guest was
    /// waiting, e.g. sleeping, or could not get a thread) and was stopped.
    #[error("plugin did not finish within its wall-clock deadline of {0:?}")]
    WallDeadline(Duration),

    /// The guest trapped after the host refused to grow its memory past the
    /// cap.
    #[error("plugin exceeded its memory limit of {0} bytes")]
    MemoryLimit(usize),

    /// The guest trapped after the host refused to grow its tables.
    #[error("plugin exceeded its table limit")]
    TableLimit,

    /// The plugin returned an error for this batch.
    #[error("plugin failed the batch: {0}")]
    Guest(String),

    /// The plugin returned a result the host cannot use (not one entry per
    /// message, too large, not UTF-8 where text is expected...).
    #[error("plugin returned an unusable result: {0}")]
    BadResult(String),

    /// The plugin failed too often in a row; it is not run again until the
    /// back-off ends.
    #[error(
        "plugin suspended after {failures} failures in a row (next try in {retry_in:?}); last failure: {last}"
    )]
    Suspended {
        failures: u32,
        retry_in: Duration,
        last: String,
    },

    /// The host could not set up or reach the runtime; not the plugin's fault.
    #[error("plugin runtime error: {0}")]
    Runtime(String),
}

impl PluginError {
    /// Whether the instance's store may be poisoned, so it must be rebuilt
    /// before the next call: after any failure inside wasmtime (a trap, a
    /// stopped entry), not after the guest returned an error value.
    pub fn poisons_instance(&self) -> bool {
        matches!(
            self,
            PluginError::Trap(_)
                | PluginError::CpuDeadline(_)
                | PluginError::WallDeadline(_)
                | PluginError::MemoryLimit(_)
                | PluginError::TableLimit
                | PluginError::Runtime(_)
        )
    }

    /// Whether this refuses an upload (the uploader's fault), as opposed to
    /// the host failing to compile it.
    pub fn rejects_upload(&self) -> bool {
        matches!(
            self,
            PluginError::InvalidComponent(_)
                | PluginError::WrongWorld(_)
                | PluginError::ForbiddenImport(_)
                | PluginError::CompileTimeout(_)
        )
    }
}

/// Formats a wasmtime error with its whole cause chain, which is where
/// wasmtime puts the specific reason (e.g. the name of a missing export).
/// The chain may quote the component (names of its exports and imports), so
/// it is cleaned like any guest text.
pub(crate) fn chain(e: &wasmtime::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        out.push_str(": ");
        out.push_str(&cause.to_string());
    }
    super::guest_text::clean(&out)
}
