//! Running a plugin: one [`PluginInstance`] per pipeline, holding a wasmtime
//! store with the sandbox's limits, calling the role's batch function, and
//! checking what comes back.
//!
//! A trap (including a deadline or memory overrun) may leave the guest's
//! state half-updated and wasmtime refuses to re-enter such an instance, so
//! the instance is dropped and rebuilt, `init` included, at the next call.
//! Calls block the calling thread for up to the CPU deadline: call them
//! from `tokio::task::spawn_blocking` or a dedicated thread.

use wasmtime::{Store, Trap};

use super::bindings::{
    Decision, Message, Serialised, SubscriberContext, filter::Filter, policy::Policy,
    serialiser::Serialiser,
};
use super::engine::{CompiledPlugin, PluginEngine, PluginRole, RolePre};
use super::error::{PluginError, chain};
use super::sandbox::HostState;

/// A plugin instantiated for one pipeline, with its configuration.
pub struct PluginInstance {
    engine: PluginEngine,
    compiled: CompiledPlugin,
    config: Vec<(String, String)>,
    /// `None` after a trap, until the next call rebuilds it.
    live: Option<Live>,
    instantiations: u64,
}

struct Live {
    store: Store<HostState>,
    exports: RoleExports,
}

enum RoleExports {
    Filter(Filter),
    Serialiser(Serialiser),
    Policy(Policy),
}

impl PluginInstance {
    /// Instantiates `compiled` and calls its `init` with `config`, so a bad
    /// configuration is reported now ([`PluginError::Config`]) rather than
    /// on the first batch.
    pub fn new(
        engine: &PluginEngine,
        compiled: &CompiledPlugin,
        config: Vec<(String, String)>,
    ) -> Result<Self, PluginError> {
        let mut instance = PluginInstance {
            engine: engine.clone(),
            compiled: compiled.clone(),
            config,
            live: None,
            instantiations: 0,
        };
        instance.live()?;
        Ok(instance)
    }

    pub fn compiled(&self) -> &CompiledPlugin {
        &self.compiled
    }

    /// How many times the plugin was instantiated: 1, plus one per rebuild
    /// after a trap.
    pub fn instantiations(&self) -> u64 {
        self.instantiations
    }

    /// Runs a filter plugin: one flag per message, `true` keeps it.
    pub fn filter(&mut self, batch: &[Message]) -> Result<Vec<bool>, PluginError> {
        let keep = self.call(PluginRole::Filter, |exports, store| match exports {
            RoleExports::Filter(f) => Some(f.call_filter(store, batch)),
            _ => None,
        })?;
        check_len("flags", keep.len(), batch.len())?;
        Ok(keep)
    }

    /// Runs a serialiser plugin: one request body for the whole batch.
    pub fn serialise(&mut self, batch: &[Message]) -> Result<Serialised, PluginError> {
        let out = self.call(PluginRole::Serialiser, |exports, store| match exports {
            RoleExports::Serialiser(s) => Some(s.call_serialise(store, batch)),
            _ => None,
        })?;
        check_content_type(&out.content_type)?;
        Ok(out)
    }

    /// Runs a policy plugin: one decision per message.
    pub fn authorise(
        &mut self,
        ctx: &SubscriberContext,
        batch: &[Message],
    ) -> Result<Vec<Decision>, PluginError> {
        let decisions = self.call(PluginRole::Policy, |exports, store| match exports {
            RoleExports::Policy(p) => Some(p.call_authorise(store, ctx, batch)),
            _ => None,
        })?;
        check_len("decisions", decisions.len(), batch.len())?;
        Ok(decisions)
    }

    /// The live instance, rebuilding it (instantiate + `init`) if needed.
    fn live(&mut self) -> Result<&mut Live, PluginError> {
        if self.live.is_none() {
            self.live = Some(self.instantiate()?);
        }
        // Just set above if it was empty.
        self.live
            .as_mut()
            .ok_or_else(|| PluginError::Runtime("instance missing after instantiation".into()))
    }

    fn instantiate(&mut self) -> Result<Live, PluginError> {
        let inner = &self.engine.inner;
        let mut store = Store::new(&inner.engine, HostState::new(inner.limits.memory_bytes));
        store.limiter(|state| state.limiter());
        // Instantiation can run guest code (start functions, constructors):
        // it is bounded like any call.
        store.set_epoch_deadline(inner.limits.deadline_ticks());
        store.epoch_deadline_trap();
        self.instantiations += 1;
        let instantiated = match &self.compiled.pre {
            RolePre::Filter(pre) => pre.instantiate(&mut store).map(RoleExports::Filter),
            RolePre::Serialiser(pre) => pre.instantiate(&mut store).map(RoleExports::Serialiser),
            RolePre::Policy(pre) => pre.instantiate(&mut store).map(RoleExports::Policy),
        };
        let exports = instantiated.map_err(|e| self.classify(&e, &store))?;
        store.set_epoch_deadline(inner.limits.deadline_ticks());
        let init = match &exports {
            RoleExports::Filter(f) => f.call_init(&mut store, &self.config),
            RoleExports::Serialiser(s) => s.call_init(&mut store, &self.config),
            RoleExports::Policy(p) => p.call_init(&mut store, &self.config),
        };
        match init {
            Ok(Ok(())) => Ok(Live { store, exports }),
            Ok(Err(reason)) => Err(PluginError::Config(reason)),
            Err(e) => Err(self.classify(&e, &store)),
        }
    }

    /// Calls the role's batch function with a fresh deadline, turning every
    /// failure into a [`PluginError`] and dropping the instance after a trap.
    fn call<R>(
        &mut self,
        role: PluginRole,
        f: impl FnOnce(
            &RoleExports,
            &mut Store<HostState>,
        ) -> Option<wasmtime::Result<Result<R, String>>>,
    ) -> Result<R, PluginError> {
        if self.compiled.role() != role {
            return Err(PluginError::Runtime(format!(
                "called as a {role}, but this plugin is a {}",
                self.compiled.role()
            )));
        }
        let ticks = self.engine.inner.limits.deadline_ticks();
        let live = self.live()?;
        live.store.set_epoch_deadline(ticks);
        live.store.data_mut().limiter().memory_refused = false;
        let outcome = f(&live.exports, &mut live.store)
            .ok_or_else(|| PluginError::Runtime(format!("instance is not a {role}")))?;
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(reason)) => Err(PluginError::Guest(reason)),
            Err(e) => {
                // Whatever failed, wasmtime may refuse to re-enter this
                // instance: drop it; the next call rebuilds it.
                let error = match self.live.take() {
                    Some(live) => self.classify(&e, &live.store),
                    None => PluginError::Trap(chain(&e)),
                };
                tracing::warn!(
                    sha256 = %self.compiled.sha256(),
                    role = %role,
                    error = %error,
                    "Plugin call failed; the instance will be rebuilt."
                );
                Err(error)
            }
        }
    }

    fn classify(&self, e: &wasmtime::Error, store: &Store<HostState>) -> PluginError {
        let limits = self.engine.inner.limits;
        if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return PluginError::Deadline(limits.cpu_deadline);
        }
        let state = store.data();
        if state.memory_refused() {
            return PluginError::MemoryLimit(limits.memory_bytes);
        }
        let what = match e.downcast_ref::<Trap>() {
            Some(trap) => trap.to_string(),
            None => chain(e),
        };
        let stderr = state.stderr();
        if stderr.is_empty() {
            PluginError::Trap(what)
        } else {
            PluginError::Trap(format!("{what}; guest stderr: {stderr}"))
        }
    }
}

fn check_len(what: &str, got: usize, expected: usize) -> Result<(), PluginError> {
    if got == expected {
        Ok(())
    } else {
        Err(PluginError::BadResult(format!(
            "{got} {what} for a batch of {expected} messages"
        )))
    }
}

/// The content type becomes an HTTP header: refuse anything that could
/// break or inject into the request (control characters, CR/LF, non-ASCII).
fn check_content_type(content_type: &str) -> Result<(), PluginError> {
    let printable = content_type.bytes().all(|b| (0x20..0x7f).contains(&b));
    if content_type.trim().is_empty() || !printable || content_type.len() > 256 {
        return Err(PluginError::BadResult(format!(
            "content type {content_type:?} is not a usable header value"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_that_could_inject_headers_are_refused() {
        assert!(check_content_type("application/cloudevents-batch+json").is_ok());
        assert!(check_content_type("text/plain; charset=utf-8").is_ok());
        for bad in ["", "  ", "a\r\nX-Evil: 1", "caf\u{e9}", &"a".repeat(300)] {
            assert!(
                matches!(check_content_type(bad), Err(PluginError::BadResult(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn length_mismatch_is_a_bad_result() {
        assert!(check_len("flags", 2, 2).is_ok());
        let err = check_len("flags", 1, 3).unwrap_err().to_string();
        assert!(err.contains("1 flags for a batch of 3"), "{err}");
    }
}
