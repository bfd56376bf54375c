//! Plugin rows: the uploaded component's bytes and what the API shows of it.
//!
//! A plugin is written by one `INSERT` (no half-written rows) and never
//! updated: a new build is a new version. Names are per owner: the shared
//! namespace (the admin's uploads, usable by every tenant) or one tenant's. Whether a subscription still uses
//! a plugin is the API's check, before it deletes one.

use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::page::{Cursor, Listing, Page};
use super::{Registry, RegistryError, from_millis, now_millis};
use crate::domain::PluginRole;
use crate::plugin::RequestedLimits;

/// Whose namespace a plugin lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginOwner {
    /// Uploaded by the admin; every tenant may attach it.
    Shared,
    /// Private to one tenant.
    Tenant(Uuid),
}

impl PluginOwner {
    /// The owner of what `tenant` uploads (`None`: the admin).
    pub fn of(tenant: Option<Uuid>) -> Self {
        tenant.map_or(Self::Shared, Self::Tenant)
    }

    fn key(self) -> String {
        match self {
            Self::Shared => String::new(),
            Self::Tenant(id) => id.to_string(),
        }
    }

    fn from_key(key: &str) -> Result<Self, RegistryError> {
        if key.is_empty() {
            return Ok(Self::Shared);
        }
        key.parse()
            .map(Self::Tenant)
            .map_err(|_| RegistryError::Corrupt(format!("plugin owner {key:?}")))
    }

    pub fn tenant(self) -> Option<Uuid> {
        match self {
            Self::Shared => None,
            Self::Tenant(id) => Some(id),
        }
    }
}

/// A plugin's metadata, as listed (without its bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPlugin {
    pub owner: PluginOwner,
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

const COLUMNS: &str = "owner, name, version, role, sha256, size, created_at, memory_bytes, cpu_deadline_ms, wall_deadline_ms";

fn decode(row: &AnyRow) -> Result<StoredPlugin, RegistryError> {
    let name: String = row.try_get("name")?;
    let role: String = row.try_get("role")?;
    let owner: String = row.try_get("owner")?;
    Ok(StoredPlugin {
        owner: PluginOwner::from_key(&owner)?,
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

/// A plugin to store: whose, which, and its bytes.
pub struct NewPlugin<'a> {
    pub owner: PluginOwner,
    pub name: &'a str,
    pub version: &'a str,
    pub role: PluginRole,
    /// Lowercase hex sha256 of `wasm`.
    pub sha256: &'a str,
    pub limits: RequestedLimits,
    pub wasm: &'a [u8],
}

impl Registry {
    /// Stores a plugin; [`RegistryError::Duplicate`] when its owner has that
    /// name and version already (versions are immutable).
    pub async fn insert_plugin(
        &self,
        plugin: NewPlugin<'_>,
    ) -> Result<StoredPlugin, RegistryError> {
        let NewPlugin {
            owner,
            name,
            version,
            role,
            sha256,
            limits,
            wasm,
        } = plugin;
        let now = now_millis();
        let size = i64::try_from(wasm.len()).unwrap_or(i64::MAX);
        let done = sqlx::query(
            "INSERT INTO plugins (name, version, role, sha256, size, wasm, created_at, \
             memory_bytes, cpu_deadline_ms, wall_deadline_ms, owner) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (owner, name, version) DO NOTHING",
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
        .bind(owner.key())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::Duplicate(format!(
                "plugin {name} version {version} exists already; upload a new version"
            )));
        }
        Ok(StoredPlugin {
            owner,
            name: name.to_string(),
            version: version.to_string(),
            role,
            sha256: sha256.to_string(),
            size,
            limits,
            created_at: from_millis(now),
        })
    }

    /// Every plugin (for the engine's bookkeeping), in no particular order.
    pub async fn list_plugins(&self) -> Result<Vec<StoredPlugin>, RegistryError> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM plugins"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode).collect()
    }

    /// A page of plugins by owner, name and version: all of them (`visible_to`
    /// `None`, the admin) or the shared ones and one tenant's.
    pub async fn list_plugins_page(
        &self,
        visible_to: Option<Uuid>,
        page: &Page,
    ) -> Result<Listing<StoredPlugin>, RegistryError> {
        let [owner, name, version] = page.after_strings::<3>()?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM plugins \
             WHERE ($1 = '' OR owner = '' OR owner = $1) \
             AND (owner > $2 OR (owner = $2 AND (name > $3 OR (name = $3 AND version > $4)))) \
             ORDER BY owner, name, version LIMIT $5"
        ))
        .bind(visible_to.map(|t| t.to_string()).unwrap_or_default())
        .bind(&owner)
        .bind(&name)
        .bind(&version)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await?;
        // The first page starts after ('', '', ''): names are never empty, so
        // the shared namespace (owner '') is included.
        let plugins = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok(page.listing(plugins, |p| {
            Cursor::strings(&[&p.owner.key(), &p.name, &p.version])
        }))
    }

    /// The plugin `name`@`version` of exactly this owner.
    pub async fn get_plugin(
        &self,
        owner: PluginOwner,
        name: &str,
        version: &str,
    ) -> Result<Option<StoredPlugin>, RegistryError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM plugins WHERE owner = $1 AND name = $2 AND version = $3"
        ))
        .bind(owner.key())
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    /// The plugin `name`@`version` as `tenant` sees it: its own if it has one,
    /// else the shared one (the admin, `None`, sees only the shared).
    pub async fn resolve_plugin(
        &self,
        tenant: Option<Uuid>,
        name: &str,
        version: &str,
    ) -> Result<Option<StoredPlugin>, RegistryError> {
        if let Some(tenant) = tenant
            && let Some(own) = self
                .get_plugin(PluginOwner::Tenant(tenant), name, version)
                .await?
        {
            return Ok(Some(own));
        }
        self.get_plugin(PluginOwner::Shared, name, version).await
    }

    /// A plugin with its wasm bytes, for compiling it.
    pub async fn plugin_with_wasm(
        &self,
        owner: PluginOwner,
        name: &str,
        version: &str,
    ) -> Result<Option<(StoredPlugin, Vec<u8>)>, RegistryError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS}, wasm FROM plugins WHERE owner = $1 AND name = $2 AND version = $3"
        ))
        .bind(owner.key())
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
    pub async fn delete_plugin(
        &self,
        owner: PluginOwner,
        name: &str,
        version: &str,
    ) -> Result<bool, RegistryError> {
        let done =
            sqlx::query("DELETE FROM plugins WHERE owner = $1 AND name = $2 AND version = $3")
                .bind(owner.key())
                .bind(name)
                .bind(version)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }
}
