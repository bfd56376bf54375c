//! The registry: subscriptions, plugins, their recent activity, the admin switch,
//! tenants and their tokens,
//! kept in SQLite (the embedded default) or PostgreSQL through one sqlx `Any` pool.
//!
//! SQL here is written once for both databases (`$n` placeholders, which SQLite
//! also accepts); the two differ only in their migrations. Times are stored as
//! milliseconds since the epoch. This module knows nothing of HTTP or Kafka.
//!
//! Secrets (signing secrets, header values, secret plugin config) are sealed
//! with the platform's [`SecretKey`] as they are written and opened as they are
//! read: the rest of the crate only ever sees them in plain text, the database
//! never does.

mod access;
mod activity;
mod admin;
mod changes;
pub mod page;
mod plugins;
mod subscriptions;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};

use crate::secrets::{SealError, SecretKey};
pub use access::{CONFIGURED_ADMIN_LABEL, StoredTenant, StoredToken};

pub use activity::{ACTIVITY_RING, Activity, ActivityEntry, ApiCall, Bookkeeping, DeadLetter};
pub use admin::{AdminState, PlatformStatus};
pub use changes::Fingerprint;
pub use page::{Cursor, Listing, Page};
pub use plugins::{NewPlugin, PluginOwner, StoredPlugin};
pub use subscriptions::{Counts, Health, StoredSubscription};

/// What went wrong talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("could not open the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("could not apply the database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("a stored row is corrupt: {0}")]
    Corrupt(String),
    #[error("the subscription changed while it was being updated; send the update again")]
    Conflict,
    #[error("{0}")]
    Duplicate(String),
    #[error("the cursor does not belong to this list")]
    BadCursor,
    /// A stored secret does not open: the registry was sealed with another key.
    #[error(
        "the stored {field} of subscription {subscription} does not open with this secret key \
         ({source}); the registry was written with another key: start with that key \
         (WASMHOOK_SECRET_KEY, --secret-key-file, or the key file beside the SQLite file)"
    )]
    Unsealable {
        subscription: String,
        field: String,
        #[source]
        source: SealError,
    },
    #[error("the registry was opened without a secret key, and {0} needs one")]
    NoSecretKey(String),
}

/// Which database the registry runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

impl DatabaseKind {
    pub fn of_url(url: &str) -> Result<Self, RegistryError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            // Named in the message, so without its password.
            Err(RegistryError::UnsupportedUrl(crate::config::redact_url(
                url,
            )))
        }
    }
}

/// The registry handle; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    pool: AnyPool,
    kind: DatabaseKind,
    /// Where it is, for connections outside the pool (LISTEN). Never shown:
    /// it may hold a password.
    url: Arc<str>,
    /// Seals and opens stored secrets; `None` when opened with [`Registry::open`]
    /// (migrations, tools), which then cannot read or write them.
    key: Option<Arc<SecretKey>>,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

impl Registry {
    /// Opens the registry with the key that seals its secrets: as
    /// [`Registry::open`], then checks that the key opens every stored secret
    /// (a wrong key fails here, not later with garbage) and seals those still
    /// stored in plain text by an older version.
    pub async fn open_with(url: &str, key: SecretKey) -> Result<Self, RegistryError> {
        let mut registry = Self::open(url).await?;
        registry.key = Some(Arc::new(key));
        registry.seal_stored_secrets().await?;
        Ok(registry)
    }

    /// Opens the database (creating a SQLite file if needed) and applies
    /// migrations, without a secret key (see [`Registry::open_with`]).
    pub async fn open(url: &str) -> Result<Self, RegistryError> {
        install_default_drivers();
        let kind = DatabaseKind::of_url(url)?;
        let url = match kind {
            // Create the file on first start instead of failing.
            DatabaseKind::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        // Validate the URL early so a typo names itself instead of failing a query later.
        sqlx::any::AnyConnectOptions::from_str(&url).map_err(RegistryError::Connect)?;
        let pool = AnyPoolOptions::new()
            .max_connections(match kind {
                DatabaseKind::Sqlite => 4,
                DatabaseKind::Postgres => 10,
            })
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if kind == DatabaseKind::Sqlite {
                        // WAL lets readers proceed beside the one writer; the busy
                        // timeout makes concurrent writers queue instead of failing.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 30000; \
                             PRAGMA synchronous = NORMAL;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(RegistryError::Connect)?;
        match kind {
            DatabaseKind::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            DatabaseKind::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        let registry = Self {
            pool,
            kind,
            url: url.into(),
            key: None,
        };
        registry.ensure_admin_state().await?;
        Ok(registry)
    }

    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    /// One round trip to the database, for readiness.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

pub(crate) fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn from_millis(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
