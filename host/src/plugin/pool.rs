//! Where guest code runs: a tokio runtime of its own with a fixed number of
//! threads, apart from the runtime that serves the API and drives the
//! pipelines, and the CPU meter that tells how long a guest really ran.
//!
//! Guests run as wasmtime async calls. A guest that runs yields to the pool's
//! scheduler every epoch tick, so calls share the threads in turn (many
//! looping plugins slow each other down, never the API); a guest that waits
//! in WASI (a clock, a poll) waits on a timer and holds no thread. What a call
//! may use is enforced by `instance.rs`: CPU time with the [`CpuMeter`], the
//! clock with a timeout around the call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};

use super::error::PluginError;

/// The plugin threads. Dropping the pool stops them without waiting.
pub(crate) struct Pool {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl Pool {
    /// Starts `threads` plugin threads (at least one).
    pub(crate) fn new(threads: usize) -> Result<Self, PluginError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("wasm-plugin")
            .enable_all()
            .build()
            .map_err(|e| PluginError::Runtime(format!("starting the plugin threads: {e}")))?;
        let handle = runtime.handle().clone();
        Ok(Pool {
            runtime: Some(runtime),
            handle,
        })
    }

    /// Runs `task` on the plugin threads and waits for it. If the caller
    /// stops waiting, the task still runs to its end (which its own deadline
    /// bounds), so the store it owns is never left half-used.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        task: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, PluginError> {
        self.handle
            .spawn(task)
            .await
            .map_err(|e| PluginError::Runtime(format!("the plugin task failed: {e}")))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Not `drop`: that blocks, and panics inside another runtime.
            runtime.shutdown_background();
        }
    }
}

/// CPU time a guest used during one entry, measured with the CPU clock of
/// the thread that ran it: time spent waiting for a WASI clock, or for the
/// OS to give the thread a core, does not count. Shared between the
/// [`Metered`] future (which opens and closes a slice on each poll) and the
/// store's epoch callback (which reads it every tick while the guest runs).
#[derive(Debug, Default)]
pub(crate) struct CpuMeter {
    used_ns: AtomicU64,
    slice_start_ns: AtomicU64,
}

impl CpuMeter {
    /// Starts a new entry at zero.
    pub(crate) fn reset(&self) {
        self.used_ns.store(0, Ordering::Relaxed);
        self.start_slice();
    }

    fn start_slice(&self) {
        self.slice_start_ns
            .store(thread_cpu_ns(), Ordering::Relaxed);
    }

    /// Adds the CPU time since the slice started (or since the last
    /// checkpoint) and returns the total of this entry. Called on the thread
    /// that polls the guest: the epoch callback runs inside that poll.
    pub(crate) fn checkpoint(&self) -> Duration {
        let now = thread_cpu_ns();
        let start = self.slice_start_ns.swap(now, Ordering::Relaxed);
        let used = self
            .used_ns
            .fetch_add(now.saturating_sub(start), Ordering::Relaxed)
            + now.saturating_sub(start);
        Duration::from_nanos(used)
    }

    /// The CPU time of this entry so far.
    #[cfg(test)]
    pub(crate) fn used(&self) -> Duration {
        Duration::from_nanos(self.used_ns.load(Ordering::Relaxed))
    }
}

/// A future whose polls are metered by a [`CpuMeter`].
pub(crate) struct Metered<F> {
    inner: Pin<Box<F>>,
    meter: Arc<CpuMeter>,
}

impl<F: Future> Metered<F> {
    pub(crate) fn new(inner: F, meter: Arc<CpuMeter>) -> Self {
        Metered {
            inner: Box::pin(inner),
            meter,
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.meter.start_slice();
        let polled = self.inner.as_mut().poll(cx);
        self.meter.checkpoint();
        polled
    }
}

/// The calling thread's CPU time, in nanoseconds.
#[cfg(unix)]
fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, exclusively borrowed timespec for the call to
    // write into; CLOCK_THREAD_CPUTIME_ID needs nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// Elsewhere the wall clock stands in for the thread's CPU clock.
#[cfg(not(unix))]
fn thread_cpu_ns() -> u64 {
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(cpu: Duration) {
        let start = thread_cpu_ns();
        while thread_cpu_ns() - start < cpu.as_nanos() as u64 {
            std::hint::black_box(());
        }
    }

    #[tokio::test]
    async fn the_meter_counts_cpu_spent_in_polls_not_time_spent_waiting() {
        let meter = Arc::new(CpuMeter::default());
        meter.reset();
        let work = async {
            spin(Duration::from_millis(20));
            // Waiting holds no CPU and must not count.
            tokio::time::sleep(Duration::from_millis(200)).await;
            spin(Duration::from_millis(20));
        };
        Metered::new(work, meter.clone()).await;
        let used = meter.used();
        assert!(used >= Duration::from_millis(40), "{used:?}");
        assert!(used < Duration::from_millis(150), "{used:?}");
    }

    #[tokio::test]
    async fn a_pool_task_outlives_a_caller_that_stopped_waiting() {
        let pool = Pool::new(1).unwrap();
        let (done, finished) = tokio::sync::oneshot::channel();
        let task = pool.run(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = done.send(());
        });
        // Give up on the task at once: it must still run to its end.
        assert!(
            tokio::time::timeout(Duration::from_millis(1), task)
                .await
                .is_err()
        );
        finished.await.expect("the task ran to its end");
    }
}
