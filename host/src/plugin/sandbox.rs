//! What a plugin can reach and how much of the host it may hold: the
//! per-store host state (an empty WASI context, a capped resource table, the
//! memory and table limiter, the captured end of stderr, the CPU meter), the
//! linker holding the only imports a plugin may use, and the allow-list that
//! names a forbidden import before wasmtime's own type check runs.
//!
//! It does not run plugins; `instance.rs` does.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime::ResourceLimiter;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::limits::PluginLimits;
use super::pool::CpuMeter;

/// How much of the end of a guest's stderr is kept to explain a trap (a Rust
/// panic message is written there just before the trap). The rest is
/// dropped; writing never fails, however much a guest writes.
const STDERR_TAIL_BYTES: usize = 4096;

/// Most WASI resources (streams, pollables, ...) a guest may hold at once.
/// A guest that creates them without dropping them hits this, not the
/// host's memory.
const MAX_WASI_RESOURCES: usize = 10_000;

/// Component-model resource handles a store may hold at once (wasmtime's
/// default is 100 000; a plugin needs a handful).
pub(crate) const MAX_COMPONENT_HANDLES: usize = 10_000;

/// A plugin is one component: a handful of core instances and tables. These
/// stop a guest from making more.
const MAX_CORE_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
/// Linear memories per instance. Components built by wasm32-wasip2 Rust,
/// componentize-py and componentize-js keep everything in one memory; a
/// little room is left for adapters. All of them together stay within the
/// memory cap.
const MAX_MEMORIES: usize = 4;
/// Table elements per instance, all tables together (a few MiB of host
/// memory at most). Interpreters compiled to Wasm have tens of thousands.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// Data of one plugin store.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    stderr: StderrTail,
    /// CPU time of the current entry into the guest, read by the epoch callback.
    pub(crate) meter: Arc<CpuMeter>,
}

impl HostState {
    /// A state whose WASI context grants nothing: no preopened directories,
    /// no environment, no arguments, stdin closed, stdout discarded, the end
    /// of stderr kept, and no network (wasmtime-wasi's default socket check
    /// denies every address; name lookup is off).
    pub(crate) fn new(limits: &PluginLimits) -> Self {
        let stderr = StderrTail::default();
        let mut wasi = WasiCtx::builder();
        wasi.stderr(stderr.clone());
        // Explicit although already the default: the sandbox must not
        // depend on a default that a future wasmtime-wasi might change.
        wasi.allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false);
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_WASI_RESOURCES);
        HostState {
            wasi: wasi.build(),
            table,
            limiter: Limiter::new(limits.memory_bytes),
            stderr,
            meter: Arc::new(CpuMeter::default()),
        }
    }

    pub(crate) fn limiter(&mut self) -> &mut Limiter {
        &mut self.limiter
    }

    /// What the limiter refused since the flags were last reset.
    pub(crate) fn refused(&self) -> Refused {
        self.limiter.refused
    }

    /// The end of the guest's stderr so far, lossily decoded and trimmed.
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

/// What the limiter refused a guest, so that the trap a guest raises when an
/// allocation fails (Rust aborts with `unreachable`) can be reported as the
/// limit it hit, not as a bare trap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) memory: bool,
    pub(crate) table: bool,
}

/// Caps an instance's linear memory and table elements as totals over all
/// its memories and tables (a per-memory cap would let an instance with many
/// memories hold many times the cap), and the number of each.
pub(crate) struct Limiter {
    memory_cap: usize,
    memory_used: usize,
    table_elements_used: usize,
    pub(crate) refused: Refused,
}

impl Limiter {
    fn new(memory_cap: usize) -> Self {
        Limiter {
            memory_cap,
            memory_used: 0,
            table_elements_used: 0,
            refused: Refused::default(),
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = (self.memory_used - current.min(self.memory_used)).saturating_add(desired);
        if total > self.memory_cap {
            self.refused.memory = true;
            return Ok(false);
        }
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = (self.table_elements_used - current.min(self.table_elements_used))
            .saturating_add(desired);
        if total > MAX_TABLE_ELEMENTS {
            self.refused.table = true;
            return Ok(false);
        }
        self.table_elements_used = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// A guest's stderr: keeps the last [`STDERR_TAIL_BYTES`], accepts any
/// amount without failing (a guest that logs a lot must not trap for it) and
/// without growing.
#[derive(Clone, Default)]
struct StderrTail {
    tail: Arc<Mutex<VecDeque<u8>>>,
}

impl StderrTail {
    fn push(&self, bytes: &[u8]) {
        // A panic while holding this lock cannot leave the buffer unusable.
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = &bytes[bytes.len().saturating_sub(STDERR_TAIL_BYTES)..];
        let overflow = (tail.len() + bytes.len()).saturating_sub(STDERR_TAIL_BYTES);
        tail.drain(..overflow);
        tail.extend(bytes);
    }

    fn contents(&self) -> Vec<u8> {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().copied().collect()
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StderrTail {
    async fn ready(&mut self) {}
}

impl OutputStream for StderrTail {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for StderrTail {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for StderrTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrTail {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// The linker every plugin is instantiated with: WASI 0.2 (asynchronous
/// bindings, so a guest waiting on a clock or a poll holds no thread) and
/// nothing else.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
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
    use super::*;

    #[test]
    fn memory_is_capped_over_all_memories_together() {
        let mut limiter = Limiter::new(10 << 20);
        assert!(limiter.memory_growing(0, 6 << 20, None).unwrap());
        // A second memory may not take the instance past the cap...
        assert!(!limiter.memory_growing(0, 6 << 20, None).unwrap());
        assert!(limiter.refused.memory);
        // ...but may use what is left.
        assert!(limiter.memory_growing(0, 4 << 20, None).unwrap());
        assert!(!limiter.memory_growing(4 << 20, 5 << 20, None).unwrap());
    }

    #[test]
    fn table_elements_are_capped_over_all_tables_together() {
        let mut limiter = Limiter::new(10 << 20);
        assert!(
            limiter
                .table_growing(0, MAX_TABLE_ELEMENTS - 10, None)
                .unwrap()
        );
        assert!(!limiter.table_growing(0, 11, None).unwrap());
        assert!(limiter.refused.table);
        assert!(limiter.table_growing(0, 10, None).unwrap());
    }

    #[test]
    fn stderr_keeps_only_its_end_however_much_is_written() {
        let tail = StderrTail::default();
        for _ in 0..10_000 {
            tail.push(b"noise noise noise\n");
        }
        tail.push(b"panicked: boom");
        let kept = tail.contents();
        assert_eq!(kept.len(), STDERR_TAIL_BYTES);
        assert!(kept.ends_with(b"panicked: boom"));
        tail.push(&vec![b'x'; 3 * STDERR_TAIL_BYTES]);
        assert_eq!(tail.contents(), vec![b'x'; STDERR_TAIL_BYTES]);
    }

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
