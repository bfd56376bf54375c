//! Plugin rows: the uploaded component's bytes and what the API shows of it.
//!
//! A plugin is written by one `INSERT` (no half-written rows) and never
//! updated: a new build is a new version. Whether a subscription still uses
//! a plugin is the API's check, before it deletes one.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Registry, RegistryError, from_millis, now_millis};
use crate::domain::PluginRole;
use crate::plugin::RequestedLimits;

/// A plugin's metadata, as listed (without its bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPlugin {
    pub name: String,
    pub version: String,
    pub role: PluginRole,
    /// Lowercase hex sha256 of the wasm bytes.
    pub sha256: String,
    /// Size of the wasm bytes.
    pub size: i64,
    /// The limits the upload asked for (`None`: the host's default).
    pub limits: RequestedLimits,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

const COLUMNS: &str = "name, version, role, sha256, size, created_at, memory_bytes, cpu_deadline_ms, wall_deadline_ms";

fn decode(row: &AnyRow) -> Result<StoredPlugin, RegistryError> {
    let name: String = row.try_get("name")?;
    let role: String = row.try_get("role")?;
    Ok(StoredPlugin {
        role: role
            .parse()
            .map_err(|e| RegistryError::Corrupt(format!("plugin {name}: {e}")))?,
        version: row.try_get("version")?,
        sha256: row.try_get("sha256")?,
        size: row.try_get("size")?,
        limits: RequestedLimits {
            memory_bytes: unsigned(row.try_get("memory_bytes")?),
            cpu_deadline_ms: unsigned(row.try_get("cpu_deadline_ms")?),
            wall_deadline_ms: unsigned(row.try_get("wall_deadline_ms")?),
        },
        created_at: from_millis(row.try_get("created_at")?),
        name,
    })
}

/// A stored limit; a negative one cannot have been written, so it reads as unset.
fn unsigned(value: Option<i64>) -> Option<u64> {
    value.and_then(|v| u64::try_from(v).ok())
}

fn signed(value: Option<u64>) -> Option<i64> {
    value.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

impl Registry {
    /// Stores a plugin; [`RegistryError::Duplicate`] when that name and
    /// version exist already (versions are immutable).
    pub async fn insert_plugin(
        &self,
        name: &str,
        version: &str,
        role: PluginRole,
        sha256: &str,
        limits: RequestedLimits,
        wasm: &[u8],
    ) -> Result<StoredPlugin, RegistryError> {
        let now = now_millis();
        let size = i64::try_from(wasm.len()).unwrap_or(i64::MAX);
        let done = sqlx::query(
            "INSERT INTO plugins (name, version, role, sha256, size, wasm, created_at, \
             memory_bytes, cpu_deadline_ms, wall_deadline_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (name, version) DO NOTHING",
        )
        .bind(name)
        .bind(version)
        .bind(role.as_str())
        .bind(sha256)
        .bind(size)
        .bind(wasm.to_vec())
        .bind(now)
        .bind(signed(limits.memory_bytes))
        .bind(signed(limits.cpu_deadline_ms))
        .bind(signed(limits.wall_deadline_ms))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::Duplicate(format!(
                "plugin {name} version {version} exists already; upload a new version"
            )));
        }
        Ok(StoredPlugin {
            name: name.to_string(),
            version: version.to_string(),
            role,
            sha256: sha256.to_string(),
            size,
            limits,
            created_at: from_millis(now),
        })
    }

    pub async fn list_plugins(&self) -> Result<Vec<StoredPlugin>, RegistryError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM plugins ORDER BY name, created_at, version"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    pub async fn get_plugin(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<StoredPlugin>, RegistryError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM plugins WHERE name = $1 AND version = $2"
        ))
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    /// A plugin with its wasm bytes, for compiling it.
    pub async fn plugin_with_wasm(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<(StoredPlugin, Vec<u8>)>, RegistryError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS}, wasm FROM plugins WHERE name = $1 AND version = $2"
        ))
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Ok(None),
            Some(row) => Ok(Some((decode(&row)?, row.try_get("wasm")?))),
        }
    }

    /// Removes a plugin version; false when there was none.
    pub async fn delete_plugin(&self, name: &str, version: &str) -> Result<bool, RegistryError> {
        let done = sqlx::query("DELETE FROM plugins WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
