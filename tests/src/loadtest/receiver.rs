//! The load test's webhook receiver: stores every delivered message in SQLite
//! (as the original design's receiver does) before answering 200, and can misbehave on
//! demand (answer 5xx, hang past the timeout, or go off the network).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::report::Receipt;

/// How the receiver answers right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Normal = 0,
    /// 503 to every request.
    Failing = 1,
    /// Holds every request for `HANG` before answering 503.
    Hanging = 2,
}

/// Longer than the request timeout the load test gives wasmhook.
const HANG: Duration = Duration::from_secs(5);

struct Shared {
    store: SqlitePool,
    mode: AtomicU8,
}

pub struct LoadReceiver {
    pub url: String,
    address: SocketAddr,
    shared: Arc<Shared>,
    server: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

impl LoadReceiver {
    /// Starts on `listen` (port 0 for any), storing into the SQLite file `store`.
    pub async fn start(listen: SocketAddr, store: &std::path::Path) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(store)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let store = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS received (id INTEGER NOT NULL, topic TEXT NOT NULL, \
             partition INTEGER NOT NULL, offset INTEGER NOT NULL, published_us INTEGER NOT NULL, \
             received_us INTEGER NOT NULL)",
        )
        .execute(&store)
        .await?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let receiver = Self {
            url: format!("http://{address}/hook"),
            address,
            shared: Arc::new(Shared {
                store,
                mode: AtomicU8::new(Mode::Normal as u8),
            }),
            server: Mutex::new(None),
        };
        receiver.serve(listener).await;
        Ok(receiver)
    }

    async fn serve(&self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(self.shared.clone());
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await;
        });
        *self.server.lock().await = Some((stop, task));
    }

    /// Where it listens (its URL's host and port).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Closes the listener: connections are refused until [`Self::come_up`].
    pub async fn go_down(&self) {
        if let Some((stop, task)) = self.server.lock().await.take() {
            stop.cancel();
            // In-flight requests are abandoned: their senders see an error and retry.
            task.abort();
            let _ = task.await;
        }
    }

    pub async fn come_up(&self) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.address).await?;
        self.serve(listener).await;
        Ok(())
    }

    /// Distinct row ids stored so far.
    pub async fn distinct_received(&self) -> anyhow::Result<u64> {
        let row = sqlx::query("SELECT COUNT(DISTINCT id) AS n FROM received")
            .fetch_one(&self.shared.store)
            .await?;
        Ok(row.try_get::<i64, _>("n")? as u64)
    }

    pub async fn receipts(&self) -> anyhow::Result<Vec<Receipt>> {
        let rows = sqlx::query("SELECT id, published_us, received_us FROM received")
            .fetch_all(&self.shared.store)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Receipt {
                    id: row.try_get::<i64, _>("id")? as u64,
                    published_us: row.try_get("published_us")?,
                    received_us: row.try_get("received_us")?,
                })
            })
            .collect()
    }
}

async fn receive(State(shared): State<Arc<Shared>>, body: Bytes) -> (StatusCode, &'static str) {
    match shared.mode.load(Ordering::SeqCst) {
        m if m == Mode::Failing as u8 => {
            return (StatusCode::SERVICE_UNAVAILABLE, "failing on purpose");
        }
        m if m == Mode::Hanging as u8 => {
            tokio::time::sleep(HANG).await;
            return (StatusCode::SERVICE_UNAVAILABLE, "hung on purpose");
        }
        _ => {}
    }
    let received_us = chrono::Utc::now().timestamp_micros();
    let Ok(messages) = serde_json::from_slice::<Vec<serde_json::Value>>(&body) else {
        return (StatusCode::BAD_REQUEST, "not a JSON array");
    };
    let result: Result<(), sqlx::Error> = async {
        let mut tx = shared.store.begin().await?;
        for m in &messages {
            let value = &m["value"];
            sqlx::query(
                "INSERT INTO received (id, topic, partition, offset, published_us, received_us) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(value["id"].as_i64().unwrap_or(-1))
            .bind(m["topic"].as_str().unwrap_or(""))
            .bind(m["partition"].as_i64().unwrap_or(-1))
            .bind(m["offset"].as_i64().unwrap_or(-1))
            .bind(value["published_us"].as_i64().unwrap_or(0))
            .bind(received_us)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }
    .await;
    match result {
        // 200 only once stored: a 2xx is a promise that nothing is lost here.
        Ok(()) => (StatusCode::OK, "stored"),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "could not store"),
    }
}
