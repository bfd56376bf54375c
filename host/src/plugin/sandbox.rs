//! What a plugin can reach: the per-store host state (an empty WASI context
//! and the memory limiter), the linker holding the only imports a plugin may
//! use, and the allow-list that names a forbidden import before wasmtime's
//! own type check runs.
//!
//! It does not run plugins; `instance.rs` does.

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// How much of a guest's stderr is kept to explain a trap (a Rust panic
/// message is written there just before the trap).
const STDERR_CAPTURE_BYTES: usize = 4096;

/// Data of one plugin store.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    stderr: MemoryOutputPipe,
}

impl HostState {
    /// A state whose WASI context grants nothing: no preopened directories,
    /// no environment, no arguments, stdin closed, stdout discarded, stderr
    /// captured in a small buffer, and no network (wasmtime-wasi's default
    /// socket check denies every address; name lookup is off by default).
    pub(crate) fn new(memory_bytes: usize) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE_BYTES);
        let mut wasi = WasiCtx::builder();
        wasi.stderr(stderr.clone());
        // Explicit although already the default: the sandbox must not
        // depend on a default that a future wasmtime-wasi might change.
        wasi.allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false);
        HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: Limiter::new(memory_bytes),
            stderr,
        }
    }

    pub(crate) fn limiter(&mut self) -> &mut Limiter {
        &mut self.limiter
    }

    /// Whether the limiter refused a memory growth since the flag was reset.
    pub(crate) fn memory_refused(&self) -> bool {
        self.limiter.memory_refused
    }

    /// The guest's stderr so far, lossily decoded and trimmed.
    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_string()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// `StoreLimits` plus a record of whether it refused to grow memory, so that
/// the trap a guest raises when allocation fails (Rust aborts with
/// `unreachable`) can be reported as a memory overrun, not a bare trap.
pub(crate) struct Limiter {
    limits: StoreLimits,
    pub(crate) memory_refused: bool,
}

impl Limiter {
    fn new(memory_bytes: usize) -> Self {
        Limiter {
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                // A plugin is one component: a handful of core instances,
                // memories and tables. These stop a guest from making more.
                .instances(64)
                .memories(16)
                .tables(64)
                .build(),
            memory_refused: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if !allowed {
            self.memory_refused = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// The linker every plugin is instantiated with: WASI 0.2 (synchronous
/// bindings) and nothing else.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    Ok(linker)
}

/// WASI 0.2 interfaces a plugin may import. All are linked against the empty
/// context above, so importing one grants nothing by itself; they are
/// allowed because language toolchains import them whether or not the
/// plugin uses them (Rust's std: cli, clocks, filesystem, io, random;
/// componentize-py and componentize-js add sockets). `wasi:http` and
/// anything non-WASI are not allowed.
const ALLOWED_WASI_INTERFACES: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

/// The plugin package's own interface, which holds only types: importing it
/// brings in no functions.
const TYPES_INTERFACE: &str = "wasmhook:plugin/types";

/// Checks one import name (`ns:pkg/iface@version`) against the allow-list;
/// `Err` explains why it is not allowed.
pub(crate) fn check_import(name: &str) -> Result<(), String> {
    let (interface, version) = name.split_once('@').unwrap_or((name, ""));
    if interface == TYPES_INTERFACE {
        return if version.starts_with("0.1.") {
            Ok(())
        } else {
            Err(format!(
                "`{name}`: this host speaks wasmhook:plugin@0.1.x, not version `{version}`"
            ))
        };
    }
    if ALLOWED_WASI_INTERFACES.contains(&interface) {
        return if version.starts_with("0.2.") {
            Ok(())
        } else {
            Err(format!(
                "`{name}`: only WASI 0.2.x is provided, not version `{version}`"
            ))
        };
    }
    Err(format!(
        "`{name}` is not provided to plugins (allowed: WASI 0.2 cli, clocks, filesystem, io, random, sockets, all without access to the host)"
    ))
}

#[cfg(test)]
mod tests {
    use super::check_import;

    #[test]
    fn wasi_02_and_the_types_interface_are_allowed() {
        for ok in [
            "wasi:cli/environment@0.2.0",
            "wasi:io/streams@0.2.6",
            "wasi:filesystem/preopens@0.2.3",
            "wasmhook:plugin/types@0.1.0",
        ] {
            assert_eq!(check_import(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn everything_else_is_refused_with_its_name() {
        for bad in [
            "wasi:http/outgoing-handler@0.2.0",
            "evil:exfil/network",
            "wasi:cli/environment@0.3.0",
            "wasmhook:plugin/types@0.2.0",
            "wasi:keyvalue/store@0.2.0-draft",
        ] {
            let err = check_import(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}
