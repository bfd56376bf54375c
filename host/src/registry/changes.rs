//! How a host learns that the registry changed elsewhere.
//!
//! On PostgreSQL every host LISTENs on `wasmhook_changes`, which triggers
//! notify on every change a pipeline depends on (migration 0006), so a
//! subscription created, changed or deleted, or the admin switch flipped,
//! through one host reaches the others within a round trip. Polling stays as
//! the fallback (a notification lost while the listener reconnects), and reads
//! only ids and revisions: the full rows are read when those differ.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{DatabaseKind, Registry, RegistryError};

/// The channel the triggers notify.
pub const CHANNEL: &str = "wasmhook_changes";

/// What the running set of pipelines depends on, cheap to read and compare:
/// the admin switch and every subscription's id and revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    admin_updated_at: i64,
    admin_status: String,
    revisions: Vec<(Uuid, i64)>,
}

impl Registry {
    /// The admin switch and the subscriptions' revisions, in two small queries.
    pub async fn fingerprint(&self) -> Result<Fingerprint, RegistryError> {
        let admin = sqlx::query("SELECT status, updated_at FROM admin_state WHERE singleton = 1")
            .fetch_one(&self.pool)
            .await?;
        let rows = sqlx::query("SELECT id, revision FROM subscriptions ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        let mut revisions = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let id = Uuid::parse_str(&id)
                .map_err(|e| RegistryError::Corrupt(format!("subscription id {id:?}: {e}")))?;
            revisions.push((id, row.try_get("revision")?));
        }
        Ok(Fingerprint {
            admin_status: admin.try_get("status")?,
            admin_updated_at: admin.try_get("updated_at")?,
            revisions,
        })
    }

    /// On PostgreSQL, wakes `changes` at every notification until `stop`;
    /// the listener reconnects by itself (and wakes `changes` then, since it
    /// may have missed some). On SQLite, one process owns the file: nothing
    /// to listen to, and this returns at once.
    pub fn listen_for_changes(&self, changes: Arc<Notify>, stop: CancellationToken) {
        if self.kind != DatabaseKind::Postgres {
            return;
        }
        let url = self.url.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(200);
            loop {
                let listened = tokio::select! {
                    _ = stop.cancelled() => return,
                    result = listen(&url, &changes, &stop) => result,
                };
                match listened {
                    Ok(()) => return,
                    Err(error) => {
                        tracing::warn!(error = %error, "Lost the registry's change notifications; polling until they are back.");
                    }
                }
                changes.notify_one();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        });
    }
}

/// Listens until `stop` (Ok) or until the connection fails (Err).
async fn listen(url: &str, changes: &Notify, stop: &CancellationToken) -> Result<(), sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    // Anything changed while we were not listening is picked up now.
    changes.notify_one();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            notification = listener.recv() => {
                let notification = notification?;
                tracing::debug!(table = notification.payload(), "Registry changed.");
                changes.notify_one();
            }
        }
    }
}
