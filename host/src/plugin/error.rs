//! The one error type of the plugin runtime, [`PluginError`].
//!
//! Variants are split by who is at fault and what the host should do:
//! upload-time rejections (`InvalidComponent`, `WrongWorld`,
//! `ForbiddenImport`) map to a 4xx for the uploader; `Config` means the
//! subscription's plugin configuration is wrong; the per-call variants
//! (`Trap`, `Deadline`, `MemoryLimit`, `Guest`, `BadResult`) fail one batch,
//! and the instance is rebuilt where the store may be poisoned.

/// Why a plugin could not be compiled, instantiated or called.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The bytes are not a WebAssembly component (garbage, a core module, or
    /// a component wasmtime cannot compile).
    #[error("not a valid WebAssembly component: {0}")]
    InvalidComponent(String),

    /// The component does not export the role's world (missing export or
    /// wrong function types).
    #[error("component does not implement the expected world: {0}")]
    WrongWorld(String),

    /// The component imports something the sandbox does not provide.
    #[error("component imports something plugins may not use: {0}")]
    ForbiddenImport(String),

    /// The plugin's `init` rejected its configuration.
    #[error("plugin rejected its configuration: {0}")]
    Config(String),

    /// The guest trapped (panic, unreachable, out-of-bounds access, stack
    /// overflow...). The instance is rebuilt before the next call.
    #[error("plugin trapped: {0}")]
    Trap(String),

    /// The call ran past the CPU deadline and was interrupted. The instance
    /// is rebuilt before the next call.
    #[error("plugin exceeded its CPU deadline of {0:?}")]
    Deadline(std::time::Duration),

    /// The guest trapped after the host refused to grow its memory past the
    /// cap. The instance is rebuilt before the next call.
    #[error("plugin exceeded its memory limit of {0} bytes")]
    MemoryLimit(usize),

    /// The plugin returned an error for this batch.
    #[error("plugin failed the batch: {0}")]
    Guest(String),

    /// The plugin returned a result the host cannot use (e.g. not one entry
    /// per message).
    #[error("plugin returned an unusable result: {0}")]
    BadResult(String),

    /// The host could not set up the runtime (engine configuration,
    /// linker); not the plugin's fault.
    #[error("plugin runtime error: {0}")]
    Runtime(String),
}

impl PluginError {
    /// Whether the instance's store may be poisoned by this error, so the
    /// instance must be rebuilt before its next call.
    pub fn poisons_instance(&self) -> bool {
        matches!(
            self,
            PluginError::Trap(_) | PluginError::Deadline(_) | PluginError::MemoryLimit(_)
        )
    }
}

/// Formats a wasmtime error with its whole cause chain, which is where
/// wasmtime puts the specific reason (e.g. the name of a missing export).
pub(crate) fn chain(e: &wasmtime::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        out.push_str(": ");
        out.push_str(&cause.to_string());
    }
    out
}
