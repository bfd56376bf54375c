//! The platform-wide admin switch (online | offline), persisted so it survives restarts.

use sqlx::Row;
use uuid::Uuid;

use super::{Registry, RegistryError, from_millis, now_millis};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformStatus {
    Online,
    Offline,
}

impl PlatformStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PlatformStatus::Online => "online",
            PlatformStatus::Offline => "offline",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminState {
    /// Identifies this platform installation; fixed at first start.
    pub id: Uuid,
    pub status: PlatformStatus,
    pub offline_message: String,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl Registry {
    pub(super) async fn ensure_admin_state(&self) -> Result<(), RegistryError> {
        // Several hosts may start at once on one PostgreSQL: the insert is idempotent.
        sqlx::query(
            "INSERT INTO admin_state (singleton, id, status, offline_message, updated_at) \
             VALUES (1, $1, 'online', '', $2) ON CONFLICT (singleton) DO NOTHING",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn admin_state(&self) -> Result<AdminState, RegistryError> {
        let row = sqlx::query(
            "SELECT id, status, offline_message, updated_at FROM admin_state WHERE singleton = 1",
        )
        .fetch_one(&self.pool)
        .await?;
        let id: String = row.try_get("id")?;
        let status: String = row.try_get("status")?;
        Ok(AdminState {
            id: id
                .parse()
                .map_err(|_| RegistryError::Corrupt(format!("admin id {id:?}")))?,
            status: if status == "offline" {
                PlatformStatus::Offline
            } else {
                PlatformStatus::Online
            },
            offline_message: row.try_get("offline_message")?,
            updated_at: from_millis(row.try_get("updated_at")?),
        })
    }

    /// Sets the switch; returns the previous state.
    pub async fn set_admin_state(
        &self,
        status: PlatformStatus,
        offline_message: &str,
    ) -> Result<AdminState, RegistryError> {
        let previous = self.admin_state().await?;
        sqlx::query(
            "UPDATE admin_state SET status = $1, offline_message = $2, updated_at = $3 \
             WHERE singleton = 1",
        )
        .bind(status.as_str())
        .bind(offline_message)
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        Ok(previous)
    }
}
