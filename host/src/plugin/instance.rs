//! Running a plugin: one [`PluginInstance`] per pipeline and attachment,
//! holding a wasmtime store with the sandbox's limits, entering the guest
//! only on the plugin threads and only within its deadlines, and rebuilding
//! the store after a failure — unless its circuit breaker says the plugin
//! keeps failing, in which case calls fail at once until the back-off ends.
//!
//! Every entry into the guest (instantiation with its start functions,
//! `init`, each batch) runs as an async call on the plugin pool: the store's
//! epoch callback yields the thread every tick and stops the guest when its
//! CPU time passes the CPU deadline; a timeout around the entry stops it when
//! the wall-clock deadline passes, whatever the guest is waiting for.

use std::future::Future;
use std::sync::Arc;

use tokio::time::Instant;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::{Decision, Message, Serialised, SubscriberContext};
use super::breaker::Breaker;
use super::engine::{CompiledPlugin, PluginEngine};
use super::error::{PluginError, chain};
use super::guest_text;
use super::limits::PluginLimits;
use super::pool::{CpuMeter, Metered};
use super::roles::{Answer, Call, Exports};
use super::sandbox::{HostState, MAX_COMPONENT_HANDLES, Refused};

/// A plugin instantiated (or to be instantiated) for one pipeline, with its
/// configuration and limits.
pub struct PluginInstance {
    engine: PluginEngine,
    compiled: CompiledPlugin,
    config: Arc<Vec<(String, String)>>,
    limits: PluginLimits,
    /// `None` before the first entry, after a failure that may have poisoned
    /// the store, or while a call has it on a plugin thread.
    live: Option<Live>,
    breaker: Breaker,
    instantiations: u64,
}

struct Live {
    store: Store<HostState>,
    exports: Exports,
}

impl PluginInstance {
    /// Instantiates `compiled` and calls its `init` with `config`, so a bad
    /// configuration ([`PluginError::Config`]) or a plugin that cannot start
    /// is reported now rather than on the first batch.
    pub async fn new(
        engine: &PluginEngine,
        compiled: &CompiledPlugin,
        config: Vec<(String, String)>,
        limits: PluginLimits,
    ) -> Result<Self, PluginError> {
        let mut instance = Self::deferred(engine, compiled, config, limits);
        instance.live = Some(instance.instantiate().await?);
        Ok(instance)
    }

    /// An instance that is made on its first call (and whose failures to
    /// start count like failed calls).
    pub fn deferred(
        engine: &PluginEngine,
        compiled: &CompiledPlugin,
        config: Vec<(String, String)>,
        limits: PluginLimits,
    ) -> Self {
        PluginInstance {
            engine: engine.clone(),
            compiled: compiled.clone(),
            config: Arc::new(config),
            limits,
            live: None,
            breaker: Breaker::default(),
            instantiations: 0,
        }
    }

    pub fn compiled(&self) -> &CompiledPlugin {
        &self.compiled
    }

    pub fn limits(&self) -> PluginLimits {
        self.limits
    }

    /// How many times the plugin was instantiated: 1, plus one per rebuild.
    pub fn instantiations(&self) -> u64 {
        self.instantiations
    }

    /// Why the plugin is suspended (its breaker is open, or its last try
    /// after a suspension failed), or `None` while it works.
    pub fn suspension(&self) -> Option<String> {
        self.breaker.tripped().then(|| {
            format!(
                "failed {} times in a row; last failure: {}",
                self.breaker.failures(),
                self.breaker.last_failure()
            )
        })
    }

    /// Instantiates now if there is no live store, so that the first batch
    /// does not wait for it. A failure counts with the breaker like a failed
    /// call; a suspended plugin is not tried.
    pub async fn warm(&mut self) -> Result<(), PluginError> {
        if self.live.is_some() {
            return Ok(());
        }
        self.check_breaker()?;
        match self.instantiate().await {
            Ok(live) => {
                self.live = Some(live);
                Ok(())
            }
            Err(error) => {
                self.failed(&error);
                Err(error)
            }
        }
    }

    /// Runs a filter plugin: one flag per message, `true` keeps it.
    pub async fn filter(&mut self, batch: Vec<Message>) -> Result<Vec<bool>, PluginError> {
        match self.call(Call::Filter(batch)).await? {
            Answer::Keep(keep) => Ok(keep),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs a serialiser plugin: one request body for the whole batch.
    pub async fn serialise(&mut self, batch: Vec<Message>) -> Result<Serialised, PluginError> {
        match self.call(Call::Serialise(batch)).await? {
            Answer::Body(body) => Ok(body),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs a policy plugin: one decision per message.
    pub async fn authorise(
        &mut self,
        ctx: SubscriberContext,
        batch: Vec<Message>,
    ) -> Result<Vec<Decision>, PluginError> {
        match self.call(Call::Authorise(ctx, batch)).await? {
            Answer::Decisions(decisions) => Ok(decisions),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs one batch call, instantiating first if needed, and keeps the
    /// breaker's account.
    pub async fn call(&mut self, call: Call) -> Result<Answer, PluginError> {
        if call.role() != self.compiled.role() {
            return Err(PluginError::Runtime(format!(
                "called as a {}, but this plugin is a {}",
                call.role(),
                self.compiled.role()
            )));
        }
        self.check_breaker()?;
        let result = self.call_live(call).await;
        match &result {
            Ok(_) => self.breaker.succeeded(),
            Err(error) => self.failed(error),
        }
        result
    }

    /// `Err` while the breaker keeps the plugin suspended.
    fn check_breaker(&self) -> Result<(), PluginError> {
        let now = Instant::now();
        self.breaker
            .check(now)
            .map_err(|open| PluginError::Suspended {
                failures: open.failures,
                retry_in: open.until - now,
                last: open.last_failure,
            })
    }

    /// Counts a failed entry with the breaker, and says so when it suspends
    /// the plugin.
    fn failed(&mut self, error: &PluginError) {
        if let Some(back_off) = self.breaker.failed(Instant::now(), &error.to_string()) {
            tracing::warn!(
                sha256 = %self.compiled.sha256(),
                role = %self.compiled.role(),
                failures = self.breaker.failures(),
                back_off_ms = back_off.as_millis() as u64,
                error = %error,
                "Plugin keeps failing; suspended."
            );
        }
    }

    async fn call_live(&mut self, call: Call) -> Result<Answer, PluginError> {
        let live = match self.live.take() {
            Some(live) => live,
            None => self.instantiate().await?,
        };
        let limits = self.limits;
        let pool = &self.engine.inner.pool;
        let (live, result) = pool
            .run(async move {
                let mut live = live;
                let Live { store, exports } = &mut live;
                let meter = prepare(store);
                let entry = enter(meter, &limits, exports.call(store, &call)).await;
                let result = match entry {
                    Ok(Ok(answer)) => Ok(answer),
                    Ok(Err(error)) => Err(error),
                    Err(stopped) => Err(stopped.into_error(&live.store, &limits)),
                };
                // A failure inside wasmtime may leave the guest half-way:
                // never enter this store again.
                let keep = !result.as_ref().is_err_and(PluginError::poisons_instance);
                (keep.then_some(live), result)
            })
            .await?;
        self.live = live;
        if let Err(error) = &result
            && error.poisons_instance()
        {
            tracing::warn!(
                sha256 = %self.compiled.sha256(),
                role = %self.compiled.role(),
                error = %error,
                "Plugin call failed; the instance will be rebuilt."
            );
        }
        result
    }

    /// A new store: instantiation (start functions included), then `init`,
    /// each as an entry of its own, on the plugin threads.
    async fn instantiate(&mut self) -> Result<Live, PluginError> {
        self.instantiations += 1;
        let (engine, compiled) = (self.engine.clone(), self.compiled.clone());
        let (config, limits) = (self.config.clone(), self.limits);
        self.engine
            .inner
            .pool
            .run(async move {
                let mut store = new_store(&engine, &limits);
                let meter = prepare(&mut store);
                let instantiated =
                    enter(meter, &limits, compiled.pre.instantiate_async(&mut store)).await;
                let instance = match instantiated {
                    Ok(instance) => instance,
                    Err(stopped) => return Err(stopped.into_error(&store, &limits)),
                };
                let exports = Exports::bind(compiled.role(), &instance, &mut store)
                    .map_err(|e| PluginError::Runtime(chain(&e)))?;
                let meter = prepare(&mut store);
                let init = enter(meter, &limits, exports.init(&mut store, &config)).await;
                match init {
                    Ok(Ok(())) => Ok(Live { store, exports }),
                    Ok(Err(reason)) => Err(PluginError::Config(reason)),
                    Err(stopped) => Err(stopped.into_error(&store, &limits)),
                }
            })
            .await?
    }
}

fn unexpected(answer: &Answer) -> PluginError {
    PluginError::Runtime(format!(
        "the plugin answered the wrong kind of result: {answer:?}"
    ))
}

/// A store for one instance: the sandbox's host state, its limiter, and the
/// epoch callback that paces the guest and enforces its CPU deadline.
fn new_store(engine: &PluginEngine, limits: &PluginLimits) -> Store<HostState> {
    let mut store = Store::new(&engine.inner.engine, HostState::new(limits));
    store.limiter(|state| state.limiter());
    store.set_max_component_handles(MAX_COMPONENT_HANDLES);
    let cpu_deadline = limits.cpu_deadline;
    store.epoch_deadline_callback(move |ctx| {
        if ctx.data().meter.checkpoint() > cpu_deadline {
            return Ok(UpdateDeadline::Interrupt);
        }
        // Let the other calls on this thread run, then go on for a tick.
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
    store
}

/// How an entry that did not return was stopped.
enum Stopped {
    /// Trapped or failed inside wasmtime.
    Failed(wasmtime::Error),
    /// Ran past its wall-clock deadline.
    TimedOut,
}

impl Stopped {
    fn into_error(self, store: &Store<HostState>, limits: &PluginLimits) -> PluginError {
        match self {
            Stopped::Failed(e) => classify(&e, store, limits),
            Stopped::TimedOut => PluginError::WallDeadline(limits.wall_deadline),
        }
    }
}

/// Readies a store for an entry: nothing refused yet, the epoch deadline one
/// tick ahead, the CPU meter at zero. Returns the meter for [`enter`].
fn prepare(store: &mut Store<HostState>) -> Arc<CpuMeter> {
    store.data_mut().limiter().refused = Refused::default();
    store.set_epoch_deadline(1);
    let meter = store.data().meter.clone();
    meter.reset();
    meter
}

/// One entry into the guest (a future using a [`prepare`]d store) under the
/// limits: metered for the epoch callback's CPU check, and bounded as a
/// whole, waiting included, by the wall-clock deadline.
async fn enter<T>(
    meter: Arc<CpuMeter>,
    limits: &PluginLimits,
    entry: impl Future<Output = wasmtime::Result<T>>,
) -> Result<T, Stopped> {
    match tokio::time::timeout(limits.wall_deadline, Metered::new(entry, meter)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Stopped::Failed(e)),
        Err(_) => Err(Stopped::TimedOut),
    }
}

/// Names what stopped a guest: its CPU deadline, a limit it hit, or the trap.
fn classify(e: &wasmtime::Error, store: &Store<HostState>, limits: &PluginLimits) -> PluginError {
    let trap = e.downcast_ref::<Trap>();
    if trap == Some(&Trap::Interrupt) {
        return PluginError::CpuDeadline(limits.cpu_deadline);
    }
    let state = store.data();
    let refused = state.refused();
    if refused.memory {
        return PluginError::MemoryLimit(limits.memory_bytes);
    }
    if refused.table {
        return PluginError::TableLimit;
    }
    let what = match trap {
        Some(trap) => trap.to_string(),
        None => chain(e),
    };
    let stderr = state.stderr();
    if stderr.is_empty() {
        PluginError::Trap(guest_text::clean(&what))
    } else {
        PluginError::Trap(format!(
            "{}; guest stderr: {}",
            guest_text::clean(&what),
            guest_text::clean_tail(&stderr)
        ))
    }
}
