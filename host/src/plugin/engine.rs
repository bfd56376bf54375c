//! The shared part of the runtime: one wasmtime [`Engine`] configured for
//! sandboxing, the epoch ticker that enforces CPU deadlines, the linker, and
//! the cache of compiled components keyed by their sha256.
//!
//! Compilation is where a plugin is validated (it is a component, it imports
//! only what the sandbox provides, it exports its role's world), so an
//! upload can be refused with a precise reason. Running plugins is
//! `instance.rs`'s job.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Engine};

use super::bindings::{filter::FilterPre, policy::PolicyPre, serialiser::SerialiserPre};
use super::error::{PluginError, chain};
use super::sandbox::{self, HostState};

/// How often the epoch advances. A deadline is enforced to within one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Which world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginRole {
    Filter,
    Serialiser,
    Policy,
}

impl PluginRole {
    /// The name used in the API and the registry, and the WIT world's name.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginRole::Filter => "filter",
            PluginRole::Serialiser => "serialiser",
            PluginRole::Policy => "policy",
        }
    }
}

impl fmt::Display for PluginRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string was not one of `filter`, `serialiser`, `policy`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown plugin role `{0}` (expected filter, serialiser or policy)")]
pub struct UnknownRole(pub String);

impl FromStr for PluginRole {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "filter" => Ok(PluginRole::Filter),
            "serialiser" => Ok(PluginRole::Serialiser),
            "policy" => Ok(PluginRole::Policy),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

/// Per-call resource limits, the same for every plugin of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeLimits {
    /// Longest a single call (`init`, or one batch) may run. Measured in
    /// wall-clock epoch ticks while the guest runs, so a loaded host may cut
    /// a call slightly early; it is enforced to within [`EPOCH_TICK`].
    pub cpu_deadline: Duration,
    /// Most linear memory one plugin instance may have, in bytes.
    pub memory_bytes: usize,
}

impl Default for RuntimeLimits {
    fn default() -> Self {
        RuntimeLimits {
            cpu_deadline: Duration::from_millis(100),
            memory_bytes: 64 << 20,
        }
    }
}

impl RuntimeLimits {
    /// The epoch deadline, in ticks, for one call: rounded up, plus one
    /// because the current tick may be about to end.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        let tick = EPOCH_TICK.as_nanos();
        let ticks = self.cpu_deadline.as_nanos().div_ceil(tick);
        u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
    }
}

/// A validated, compiled plugin, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct CompiledPlugin {
    sha256: Arc<str>,
    role: PluginRole,
    pub(crate) pre: RolePre,
}

/// The bindgen-generated pre-instance of each world: holding one proves the
/// component's exports were type-checked against the role's world.
#[derive(Clone)]
pub(crate) enum RolePre {
    Filter(FilterPre<HostState>),
    Serialiser(SerialiserPre<HostState>),
    Policy(PolicyPre<HostState>),
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

/// The runtime shared by all plugins. Cheap to clone; the epoch ticker
/// thread stops when the last clone (and every instance made from it) is
/// dropped.
#[derive(Clone)]
pub struct PluginEngine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub(crate) engine: Engine,
    linker: Linker<HostState>,
    pub(crate) limits: RuntimeLimits,
    /// Compiled components by sha256 of their bytes. Components are
    /// role-independent, so the role check is redone (cheaply) per compile.
    cache: Mutex<HashMap<String, Component>>,
    // Held for its Drop: stops the ticker thread with the engine.
    _ticker: Ticker,
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
    /// Builds the engine and starts its epoch ticker thread.
    pub fn new(limits: RuntimeLimits) -> Result<Self, PluginError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        // Every call gets an epoch deadline; running out traps the guest.
        config.epoch_interruption(true);
        let engine = Engine::new(&config)
            .map_err(|e| PluginError::Runtime(format!("engine: {}", chain(&e))))?;
        let linker = sandbox::linker(&engine)
            .map_err(|e| PluginError::Runtime(format!("linker: {}", chain(&e))))?;
        let ticker = Ticker::start(engine.clone())?;
        Ok(PluginEngine {
            inner: Arc::new(EngineInner {
                engine,
                linker,
                limits,
                cache: Mutex::new(HashMap::new()),
                _ticker: ticker,
            }),
        })
    }

    pub fn limits(&self) -> RuntimeLimits {
        self.inner.limits
    }

    /// Validates and compiles `wasm` as a plugin of `role`.
    ///
    /// Compiling takes from milliseconds to seconds of CPU: call it from a
    /// blocking thread, or use [`PluginEngine::compile_async`]. Bytes seen
    /// before (same sha256) are not compiled again.
    pub fn compile(&self, role: PluginRole, wasm: &[u8]) -> Result<CompiledPlugin, PluginError> {
        let sha256 = sha256_hex(wasm);
        let component = self.component(&sha256, wasm)?;
        self.check_imports(&component)?;
        let pre = self.pre_instantiate(role, &component)?;
        tracing::debug!(sha256 = %sha256, role = %role, "Plugin compiled and validated.");
        Ok(CompiledPlugin {
            sha256: sha256.into(),
            role,
            pre,
        })
    }

    /// The plugin compiled from the bytes whose sha256 is `sha256`, if they
    /// are in the cache (validated against `role` again: the cache is
    /// role-independent). `None` when they must be compiled from the bytes.
    pub fn compiled(
        &self,
        role: PluginRole,
        sha256: &str,
    ) -> Option<Result<CompiledPlugin, PluginError>> {
        let component = self.cache().get(sha256).cloned()?;
        Some(
            self.check_imports(&component)
                .and_then(|()| self.pre_instantiate(role, &component))
                .map(|pre| CompiledPlugin {
                    sha256: sha256.into(),
                    role,
                    pre,
                }),
        )
    }

    /// [`PluginEngine::compile`] on tokio's blocking pool.
    pub async fn compile_async(
        &self,
        role: PluginRole,
        wasm: Vec<u8>,
    ) -> Result<CompiledPlugin, PluginError> {
        let engine = self.clone();
        tokio::task::spawn_blocking(move || engine.compile(role, &wasm))
            .await
            .map_err(|e| PluginError::Runtime(format!("compile task failed: {e}")))?
    }

    /// Drops a compiled component from the cache (e.g. when a plugin
    /// version is deleted). Existing instances keep working.
    pub fn forget(&self, sha256: &str) {
        self.cache().remove(sha256);
    }

    /// Number of compiled components in the cache.
    pub fn cached(&self) -> usize {
        self.cache().len()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Component>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (single insert/remove), so a poisoned lock is still usable.
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn component(&self, sha256: &str, wasm: &[u8]) -> Result<Component, PluginError> {
        if let Some(component) = self.cache().get(sha256) {
            return Ok(component.clone());
        }
        check_is_component(wasm)?;
        // Not under the lock: compiling can take seconds. Two threads
        // compiling the same bytes at once both succeed; one insert wins.
        let component = Component::from_binary(&self.inner.engine, wasm)
            .map_err(|e| PluginError::InvalidComponent(chain(&e)))?;
        self.cache().insert(sha256.to_string(), component.clone());
        Ok(component)
    }

    /// Names the first import outside the sandbox's allow-list. Done before
    /// wasmtime's type check so the error is about the import, not about a
    /// linker detail.
    fn check_imports(&self, component: &Component) -> Result<(), PluginError> {
        let ty = component.component_type();
        for (name, _) in ty.imports(&self.inner.engine) {
            sandbox::check_import(name).map_err(PluginError::ForbiddenImport)?;
        }
        Ok(())
    }

    fn pre_instantiate(
        &self,
        role: PluginRole,
        component: &Component,
    ) -> Result<RolePre, PluginError> {
        // Type-checks every import against the linker (allowed names with the
        // wrong types end up here).
        let instance_pre: InstancePre<HostState> = self
            .inner
            .linker
            .instantiate_pre(component)
            .map_err(|e| PluginError::ForbiddenImport(chain(&e)))?;
        let wrong_world = |e: wasmtime::Error| {
            PluginError::WrongWorld(format!(
                "expected the `{role}` world (exports {}): {}; the component exports: {}",
                expected_exports(role),
                chain(&e),
                self.export_names(component)
            ))
        };
        Ok(match role {
            PluginRole::Filter => {
                RolePre::Filter(FilterPre::new(instance_pre).map_err(wrong_world)?)
            }
            PluginRole::Serialiser => {
                RolePre::Serialiser(SerialiserPre::new(instance_pre).map_err(wrong_world)?)
            }
            PluginRole::Policy => {
                RolePre::Policy(PolicyPre::new(instance_pre).map_err(wrong_world)?)
            }
        })
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

fn expected_exports(role: PluginRole) -> &'static str {
    match role {
        PluginRole::Filter => "`init`, `filter`",
        PluginRole::Serialiser => "`init`, `serialise`",
        PluginRole::Policy => "`init`, `authorise`",
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
    fn roles_parse_from_their_names_only() {
        for role in [
            PluginRole::Filter,
            PluginRole::Serialiser,
            PluginRole::Policy,
        ] {
            assert_eq!(role.as_str().parse::<PluginRole>(), Ok(role));
        }
        assert_eq!(
            "serializer".parse::<PluginRole>(),
            Err(UnknownRole("serializer".into()))
        );
    }

    #[test]
    fn deadline_is_rounded_up_to_whole_ticks_plus_one() {
        let limits = |ms| RuntimeLimits {
            cpu_deadline: Duration::from_millis(ms),
            ..RuntimeLimits::default()
        };
        assert_eq!(limits(100).deadline_ticks(), 11);
        assert_eq!(limits(101).deadline_ticks(), 12);
        assert_eq!(limits(0).deadline_ticks(), 1);
    }

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
