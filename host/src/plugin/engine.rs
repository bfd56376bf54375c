//! The shared part of the runtime: one wasmtime [`Engine`] configured for
//! sandboxing, the epoch ticker that paces guests, the plugin threads, the
//! linker, compilation, and the bounded cache of compiled components.
//!
//! Compilation is where a plugin is validated (it is a component, it imports
//! only what the sandbox provides, it exports its role's world), so an
//! upload can be refused with a precise reason. Compiles are limited in
//! input size, in number at once and in time. The cache holds only
//! components that were validated and are stored in the registry (callers
//! [`PluginEngine::remember`] them once stored), up to a size in bytes of
//! machine code. Running plugins is `instance.rs`'s job.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use lru::LruCache;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Engine};

use super::error::{PluginError, chain};
use super::guest_text;
use super::limits::HostLimits;
use super::pool::Pool;
use super::roles;
use super::sandbox::{self, HostState};
use crate::domain::PluginRole;

/// How often the epoch advances. A running guest yields its thread to the
/// other calls and has its CPU time checked once per tick, so a CPU deadline
/// is enforced to within about one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Everything the runtime is configured with.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeSettings {
    /// Limits of instances: defaults and what uploads may ask for.
    pub limits: HostLimits,
    /// Threads that run guest code.
    pub threads: usize,
    /// Most machine code the compile cache keeps, in bytes.
    pub cache_bytes: usize,
    /// Longest one compilation may take (and the longest wait for a turn).
    pub compile_timeout: Duration,
    /// Largest component accepted, in bytes (also the upload limit).
    pub max_component_bytes: usize,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            limits: HostLimits::default(),
            threads: default_threads(),
            cache_bytes: 512 << 20,
            compile_timeout: Duration::from_secs(120),
            max_component_bytes: 32 << 20,
        }
    }
}

/// One plugin thread per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, NonZeroUsize::get)
}

/// Compilations at once. Cranelift already spreads one compilation over the
/// cores; more at once would only make each slower and hold more memory.
const COMPILES_AT_ONCE: usize = 1;

/// A validated, compiled plugin, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct CompiledPlugin {
    sha256: Arc<str>,
    role: PluginRole,
    /// The machine code, so [`PluginEngine::remember`] can cache it.
    component: Component,
    /// Imports resolved and type-checked against the linker.
    pub(crate) pre: InstancePre<HostState>,
}

impl CompiledPlugin {
    /// Lowercase hex sha256 of the uploaded bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn role(&self) -> PluginRole {
        self.role
    }
}

impl fmt::Debug for CompiledPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledPlugin")
            .field("sha256", &self.sha256)
            .field("role", &self.role)
            .finish()
    }
}

/// The runtime shared by all plugins. Cheap to clone; the epoch ticker and
/// the plugin threads stop when the last clone (and every instance made
/// from it) is dropped.
#[derive(Clone)]
pub struct PluginEngine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub(crate) engine: Engine,
    linker: Linker<HostState>,
    pub(crate) settings: RuntimeSettings,
    pub(crate) pool: Pool,
    cache: Mutex<Cache>,
    compiles: Arc<Semaphore>,
    // Held for its Drop: stops the ticker thread with the engine.
    _ticker: Ticker,
}

/// Compiled components by sha256 of their bytes, least recently used first
/// out. Components are role-independent, so the role check is redone
/// (cheaply) when one is taken out.
struct Cache {
    entries: LruCache<String, (Component, usize)>,
    bytes: usize,
    capacity: usize,
}

impl Cache {
    fn get(&mut self, sha256: &str) -> Option<Component> {
        self.entries.get(sha256).map(|(c, _)| c.clone())
    }

    fn insert(&mut self, sha256: &str, component: Component) {
        let range = component.image_range();
        let size = (range.end as usize).saturating_sub(range.start as usize);
        if size > self.capacity {
            return;
        }
        if let Some((_, old)) = self.entries.put(sha256.to_string(), (component, size)) {
            self.bytes -= old;
        }
        self.bytes += size;
        while self.bytes > self.capacity {
            match self.entries.pop_lru() {
                Some((_, (_, evicted))) => self.bytes -= evicted,
                None => break,
            }
        }
    }

    fn remove(&mut self, sha256: &str) {
        if let Some((_, size)) = self.entries.pop(sha256) {
            self.bytes -= size;
        }
    }
}

/// The thread that advances the engine's epoch every [`EPOCH_TICK`].
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> Result<Self, PluginError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("wasm-epoch-ticker".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Runtime(format!("starting the epoch ticker: {e}")))?;
        Ok(Ticker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // At most one tick; the thread does nothing that can block longer.
            let _ = thread.join();
        }
    }
}

impl PluginEngine {
    /// Builds the engine, and starts its epoch ticker and plugin threads.
    pub fn new(settings: RuntimeSettings) -> Result<Self, PluginError> {
        settings.limits.check().map_err(PluginError::Runtime)?;
        let mut config = Config::new();
        config.wasm_component_model(true);
        // Guests are paced by epochs: each tick a running guest yields and
        // its CPU time is checked (instance.rs installs the callback).
        config.epoch_interruption(true);
        // Guest-named frames in trap messages are guest text of unbounded
        // size; the host needs the trap's kind, not the guest's backtrace.
        config.wasm_backtrace_max_frames(None);
        let engine = Engine::new(&config)
            .map_err(|e| PluginError::Runtime(format!("engine: {}", chain(&e))))?;
        let linker = sandbox::linker(&engine)
            .map_err(|e| PluginError::Runtime(format!("linker: {}", chain(&e))))?;
        let ticker = Ticker::start(engine.clone())?;
        let capacity = NonZeroUsize::new(settings.cache_bytes).map_or(0, NonZeroUsize::get);
        Ok(PluginEngine {
            inner: Arc::new(EngineInner {
                engine,
                linker,
                settings,
                pool: Pool::new(settings.threads)?,
                cache: Mutex::new(Cache {
                    entries: LruCache::unbounded(),
                    bytes: 0,
                    capacity,
                }),
                compiles: Arc::new(Semaphore::new(COMPILES_AT_ONCE)),
                _ticker: ticker,
            }),
        })
    }

    pub fn settings(&self) -> &RuntimeSettings {
        &self.inner.settings
    }

    pub fn limits(&self) -> &HostLimits {
        &self.inner.settings.limits
    }

    /// Validates and compiles `wasm` as a plugin of `role`, on a thread of
    /// its own, one compilation at a time, within the compile timeout. The
    /// result is not cached: [`PluginEngine::remember`] it once it is stored.
    pub async fn compile(
        &self,
        role: PluginRole,
        wasm: Vec<u8>,
    ) -> Result<CompiledPlugin, PluginError> {
        let settings = &self.inner.settings;
        if wasm.len() > settings.max_component_bytes {
            return Err(PluginError::InvalidComponent(format!(
                "{} bytes is more than the largest component this host accepts ({} bytes)",
                wasm.len(),
                settings.max_component_bytes
            )));
        }
        check_is_component(&wasm)?;
        let timeout = settings.compile_timeout;
        let permit = tokio::time::timeout(timeout, self.inner.compiles.clone().acquire_owned())
            .await
            .map_err(|_| PluginError::CompilerBusy(timeout))?
            .map_err(|_| PluginError::Runtime("the compiler is shut down".into()))?;
        let engine = self.clone();
        let (done, compiled) = tokio::sync::oneshot::channel();
        // A thread of its own rather than the blocking pool: a compilation
        // that overruns is abandoned by the caller but runs to its end here,
        // still holding the permit, so overruns cannot pile up.
        std::thread::Builder::new()
            .name("wasm-compile".into())
            .spawn(move || {
                let result = engine.compile_now(role, &wasm);
                drop(permit);
                let _ = done.send(result);
            })
            .map_err(|e| PluginError::Runtime(format!("starting a compile thread: {e}")))?;
        match tokio::time::timeout(timeout, compiled).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(PluginError::Runtime("the compile thread died".into())),
            Err(_) => Err(PluginError::CompileTimeout(timeout)),
        }
    }

    fn compile_now(&self, role: PluginRole, wasm: &[u8]) -> Result<CompiledPlugin, PluginError> {
        let sha256 = sha256_hex(wasm);
        let component = match self.cache().get(&sha256) {
            Some(component) => component,
            None => Component::from_binary(&self.inner.engine, wasm)
                .map_err(|e| PluginError::InvalidComponent(chain(&e)))?,
        };
        let compiled = self.validate(role, &sha256, component)?;
        tracing::debug!(sha256 = %sha256, role = %role, "Plugin compiled and validated.");
        Ok(compiled)
    }

    /// Keeps a compiled plugin in the cache, for instances made later. Only
    /// for plugins whose bytes are stored in the registry.
    pub fn remember(&self, compiled: &CompiledPlugin) {
        self.cache()
            .insert(&compiled.sha256, compiled.component.clone());
    }

    /// The plugin compiled from the bytes whose sha256 is `sha256`, if they
    /// are in the cache (validated against `role` again: the cache is
    /// role-independent). `None` when they must be compiled from the bytes.
    pub fn compiled(
        &self,
        role: PluginRole,
        sha256: &str,
    ) -> Option<Result<CompiledPlugin, PluginError>> {
        let component = self.cache().get(sha256)?;
        Some(self.validate(role, sha256, component))
    }

    /// Drops a compiled component from the cache (e.g. when a plugin
    /// version is deleted). Existing instances keep working.
    pub fn forget(&self, sha256: &str) {
        self.cache().remove(sha256);
    }

    /// Number of compiled components in the cache.
    pub fn cached(&self) -> usize {
        self.cache().entries.len()
    }

    /// Bytes of machine code in the cache.
    pub fn cached_bytes(&self) -> usize {
        self.cache().bytes
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock cannot leave the map half-updated
        // (each change is one insert or remove plus its byte count), so a
        // poisoned lock is still usable.
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn validate(
        &self,
        role: PluginRole,
        sha256: &str,
        component: Component,
    ) -> Result<CompiledPlugin, PluginError> {
        self.check_imports(&component)?;
        // Type-checks every import against the linker (allowed names with the
        // wrong types end up here).
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::ForbiddenImport(chain(&e)))?;
        roles::check_world(role, &pre).map_err(|e| {
            // Export names are the component's text: cleaned like any guest text.
            PluginError::WrongWorld(guest_text::clean(&format!(
                "expected the `{role}` world (exports {}): {}; the component exports: {}",
                roles::expected_exports(role),
                chain(&e),
                self.export_names(&component)
            )))
        })?;
        Ok(CompiledPlugin {
            sha256: sha256.into(),
            role,
            component,
            pre,
        })
    }

    /// Names the first import outside the sandbox's allow-list. Done before
    /// wasmtime's type check so the error is about the import, not about a
    /// linker detail.
    fn check_imports(&self, component: &Component) -> Result<(), PluginError> {
        let ty = component.component_type();
        for (name, _) in ty.imports(&self.inner.engine) {
            sandbox::check_import(name)
                .map_err(|e| PluginError::ForbiddenImport(guest_text::clean(&e)))?;
        }
        Ok(())
    }

    fn export_names(&self, component: &Component) -> String {
        let ty = component.component_type();
        let names: Vec<String> = ty
            .exports(&self.inner.engine)
            .map(|(name, _)| format!("`{name}`"))
            .collect();
        if names.is_empty() {
            "nothing".into()
        } else {
            names.join(", ")
        }
    }
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Rejects core modules and non-Wasm bytes with a message saying which,
/// before wasmtime's more generic parse error.
fn check_is_component(wasm: &[u8]) -> Result<(), PluginError> {
    const MAGIC: &[u8; 4] = b"\0asm";
    // The 4 bytes after the magic are version (2, little-endian) and layer
    // (2): layer 0 is a core module, layer 1 a component.
    match wasm.get(..8) {
        Some(header) if &header[..4] == MAGIC => match header[6..8] {
            [1, 0] => Ok(()),
            [0, 0] => Err(PluginError::InvalidComponent(
                "this is a core WebAssembly module, not a component; build for wasm32-wasip2 \
                 (or wrap the module with `wasm-tools component new`)"
                    .into(),
            )),
            _ => Err(PluginError::InvalidComponent(format!(
                "unknown WebAssembly layer/version {:02x?}",
                &header[4..8]
            ))),
        },
        _ => Err(PluginError::InvalidComponent(
            "not WebAssembly (missing the \\0asm header)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_tell_core_modules_from_components_and_garbage() {
        assert!(check_is_component(b"\0asm\x0d\0\x01\0").is_ok());
        let core = check_is_component(b"\0asm\x01\0\0\0")
            .unwrap_err()
            .to_string();
        assert!(core.contains("core WebAssembly module"), "{core}");
        let garbage = check_is_component(b"PK\x03\x04zip")
            .unwrap_err()
            .to_string();
        assert!(garbage.contains("not WebAssembly"), "{garbage}");
        assert!(check_is_component(b"").is_err());
    }

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
