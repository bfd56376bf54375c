//! The benchmark's webhook receiver: counts the messages of each request (a
//! JSON array, wasmhook's default body) and, for values that carry their
//! publish time (`published_us`), the publish → receipt latency. It keeps
//! no copy of what it receives, so it costs the machine little beside the
//! process being measured.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Shared {
    messages: AtomicU64,
    requests: AtomicU64,
    /// When the first and the last request arrived.
    window: Mutex<Option<(Instant, Instant)>>,
    latencies_ms: Mutex<Vec<f64>>,
}

pub struct CountingReceiver {
    pub url: String,
    pub address: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

#[derive(Deserialize)]
struct Element {
    #[serde(default)]
    value: Option<Value>,
}

#[derive(Deserialize)]
struct Value {
    #[serde(default)]
    published_us: Option<i64>,
}

impl CountingReceiver {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route("/", axum::routing::post(receive))
            .with_state(shared.clone());
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopping.cancelled().await })
                .await;
        });
        Ok(Self {
            url: format!("http://{address}/"),
            address,
            shared,
            stop,
        })
    }

    pub fn messages(&self) -> u64 {
        self.shared.messages.load(Ordering::SeqCst)
    }

    /// Waits until `count` messages have arrived, or `deadline` passed;
    /// returns whether they arrived.
    pub async fn wait_for(&self, count: u64, deadline: Instant) -> bool {
        while self.messages() < count {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// When the first and the last request arrived (none yet: `None`).
    pub fn window(&self) -> Option<(Instant, Instant)> {
        *self.shared.window.lock().expect("window lock")
    }

    /// Forgets everything received, for the next scenario.
    pub fn reset(&self) {
        self.shared.messages.store(0, Ordering::SeqCst);
        self.shared.requests.store(0, Ordering::SeqCst);
        *self.shared.window.lock().expect("window lock") = None;
        self.shared
            .latencies_ms
            .lock()
            .expect("latency lock")
            .clear();
    }

    /// The latencies recorded so far, sorted.
    pub fn latencies_ms(&self) -> Vec<f64> {
        let mut latencies = self
            .shared
            .latencies_ms
            .lock()
            .expect("latency lock")
            .clone();
        latencies.sort_by(f64::total_cmp);
        latencies
    }
}

impl Drop for CountingReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn receive(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let now = Instant::now();
    let now_us = chrono::Utc::now().timestamp_micros();
    let Ok(elements) = serde_json::from_slice::<Vec<Element>>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let published: Vec<f64> = elements
        .iter()
        .filter_map(|e| e.value.as_ref()?.published_us)
        .map(|at| (now_us - at) as f64 / 1000.0)
        .collect();
    if !published.is_empty() {
        shared
            .latencies_ms
            .lock()
            .expect("latency lock")
            .extend(published);
    }
    {
        let mut window = shared.window.lock().expect("window lock");
        let first = window.map_or(now, |(first, _)| first);
        *window = Some((first, now));
    }
    shared.requests.fetch_add(1, Ordering::SeqCst);
    shared
        .messages
        .fetch_add(elements.len() as u64, Ordering::SeqCst);
    StatusCode::OK
}
