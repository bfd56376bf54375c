//! Tenant and token rows: who may use the API, and what a tenant may read.
//!
//! Tokens are stored as their SHA-256 with a short public prefix to find the
//! row; the token itself is never stored. A token with no tenant is an admin
//! token. This module authenticates nothing: it only stores and finds.

use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::page::{Cursor, Listing, Page};
use super::{Registry, RegistryError, from_millis, now_millis};
use crate::domain::{AccessToken, TenantSpec};

/// A tenant as stored.
#[derive(Debug, Clone)]
pub struct StoredTenant {
    pub id: Uuid,
    pub spec: TenantSpec,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// A token as stored: everything but the token.
#[derive(Debug, Clone)]
pub struct StoredToken {
    pub id: Uuid,
    pub prefix: String,
    hash: String,
    /// `None`: an admin token.
    pub tenant_id: Option<Uuid>,
    pub label: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl StoredToken {
    /// The stored SHA-256 (lowercase hex) of the token.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// True when `presented` is this token and it is neither revoked nor expired.
    pub fn admits(&self, presented: &AccessToken, now: chrono::DateTime<chrono::Utc>) -> bool {
        crate::domain::hash_matches(presented, &self.hash)
            && self.revoked_at.is_none()
            && self.expires_at.is_none_or(|at| at > now)
    }
}

/// The label of the admin token set by `--admin-token`, replaced when the
/// configured value changes.
pub const CONFIGURED_ADMIN_LABEL: &str = "configured (--admin-token)";

fn parse_uuid(raw: &str, what: &str) -> Result<Uuid, RegistryError> {
    raw.parse()
        .map_err(|_| RegistryError::Corrupt(format!("{what} id {raw:?}")))
}

fn decode_tenant(row: &AnyRow) -> Result<StoredTenant, RegistryError> {
    let id: String = row.try_get("id")?;
    let name: String = row.try_get("name")?;
    let topics: String = row.try_get("topics")?;
    let policy: Option<String> = row.try_get("mandatory_policy")?;
    let corrupt = |e: serde_json::Error| RegistryError::Corrupt(format!("tenant {id}: {e}"));
    Ok(StoredTenant {
        id: parse_uuid(&id, "tenant")?,
        spec: TenantSpec {
            name: crate::domain::TenantName::parse(name).map_err(RegistryError::Corrupt)?,
            topics: serde_json::from_str(&topics).map_err(corrupt)?,
            mandatory_policy: policy
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(corrupt)?,
        },
        created_at: from_millis(row.try_get("created_at")?),
        updated_at: from_millis(row.try_get("updated_at")?),
    })
}

fn decode_token(row: &AnyRow) -> Result<StoredToken, RegistryError> {
    let id: String = row.try_get("id")?;
    let tenant: Option<String> = row.try_get("tenant_id")?;
    let at = |column: &str| -> Result<Option<chrono::DateTime<chrono::Utc>>, RegistryError> {
        Ok(row.try_get::<Option<i64>, _>(column)?.map(from_millis))
    };
    Ok(StoredToken {
        id: parse_uuid(&id, "token")?,
        prefix: row.try_get("prefix")?,
        hash: row.try_get("hash")?,
        tenant_id: tenant
            .as_deref()
            .map(|t| parse_uuid(t, "tenant"))
            .transpose()?,
        label: row.try_get("label")?,
        created_at: from_millis(row.try_get("created_at")?),
        expires_at: at("expires_at")?,
        revoked_at: at("revoked_at")?,
    })
}

const TENANT_COLUMNS: &str = "id, name, topics, mandatory_policy, created_at, updated_at";
const TOKEN_COLUMNS: &str =
    "id, prefix, hash, tenant_id, label, created_at, expires_at, revoked_at";

fn policy_json(spec: &TenantSpec) -> Option<String> {
    spec.mandatory_policy
        .as_ref()
        .map(|p| serde_json::to_string(p).expect("an attachment always serialises"))
}

impl Registry {
    /// Stores a tenant; [`RegistryError::Duplicate`] when the name is taken.
    pub async fn create_tenant(&self, spec: &TenantSpec) -> Result<StoredTenant, RegistryError> {
        let id = Uuid::new_v4();
        let now = now_millis();
        let done = sqlx::query(
            "INSERT INTO tenants (id, name, topics, mandatory_policy, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (name) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(spec.name.as_str())
        .bind(serde_json::to_string(&spec.topics).expect("topics always serialise"))
        .bind(policy_json(spec))
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::Duplicate(format!(
                "a tenant named {} exists already",
                spec.name.as_str()
            )));
        }
        Ok(StoredTenant {
            id,
            spec: spec.clone(),
            created_at: from_millis(now),
            updated_at: from_millis(now),
        })
    }

    pub async fn get_tenant(&self, id: Uuid) -> Result<Option<StoredTenant>, RegistryError> {
        let row = sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode_tenant).transpose()
    }

    pub async fn list_tenants(&self, page: &Page) -> Result<Listing<StoredTenant>, RegistryError> {
        let (after_at, after_id) = page.after_time_id()?;
        let rows = sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants \
             WHERE created_at > $1 OR (created_at = $1 AND id > $2) \
             ORDER BY created_at, id LIMIT $3"
        ))
        .bind(after_at)
        .bind(after_id)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await?;
        let tenants = rows
            .iter()
            .map(decode_tenant)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page.listing(tenants, |t| {
            Cursor::time_id(t.created_at.timestamp_millis(), &t.id.to_string())
        }))
    }

    /// Replaces a tenant's spec. Its subscriptions' revisions move, so that
    /// their pipelines restart with the new mandatory policy.
    pub async fn replace_tenant(
        &self,
        id: Uuid,
        spec: &TenantSpec,
    ) -> Result<Option<StoredTenant>, RegistryError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let taken = sqlx::query("SELECT id FROM tenants WHERE name = $1 AND id <> $2")
            .bind(spec.name.as_str())
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(RegistryError::Duplicate(format!(
                "a tenant named {} exists already",
                spec.name.as_str()
            )));
        }
        let done = sqlx::query(
            "UPDATE tenants SET name = $1, topics = $2, mandatory_policy = $3, updated_at = $4 \
             WHERE id = $5",
        )
        .bind(spec.name.as_str())
        .bind(serde_json::to_string(&spec.topics).expect("topics always serialise"))
        .bind(policy_json(spec))
        .bind(now)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        sqlx::query("UPDATE subscriptions SET revision = revision + 1 WHERE tenant_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.get_tenant(id).await
    }

    /// How many subscriptions and plugins a tenant owns.
    pub async fn tenant_holdings(&self, id: Uuid) -> Result<(i64, i64), RegistryError> {
        let subscriptions: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM subscriptions WHERE tenant_id = $1")
                .bind(id.to_string())
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
        let plugins: i64 = sqlx::query("SELECT COUNT(*) AS n FROM plugins WHERE owner = $1")
            .bind(id.to_string())
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok((subscriptions, plugins))
    }

    /// Removes a tenant and its tokens; false when there was none.
    pub async fn delete_tenant(&self, id: Uuid) -> Result<bool, RegistryError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM tenants WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM tokens WHERE tenant_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Stores a token (its hash); `tenant` `None` makes an admin token.
    pub async fn insert_token(
        &self,
        token: &AccessToken,
        tenant: Option<Uuid>,
        label: &str,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<StoredToken, RegistryError> {
        let id = Uuid::new_v4();
        let now = now_millis();
        sqlx::query(&format!(
            "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)"
        ))
        .bind(id.to_string())
        .bind(token.prefix())
        .bind(token.hash())
        .bind(tenant.map(|t| t.to_string()))
        .bind(label)
        .bind(now)
        .bind(expires_at.map(|at| at.timestamp_millis()))
        .execute(&self.pool)
        .await?;
        Ok(StoredToken {
            id,
            prefix: token.prefix().to_string(),
            hash: token.hash(),
            tenant_id: tenant,
            label: label.to_string(),
            created_at: from_millis(now),
            expires_at,
            revoked_at: None,
        })
    }

    /// The token row with this public prefix, if any.
    pub async fn find_token(&self, prefix: &str) -> Result<Option<StoredToken>, RegistryError> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE prefix = $1"
        ))
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode_token).transpose()
    }

    /// Tokens, newest last; `tenant` limits them to one tenant's.
    pub async fn list_tokens(
        &self,
        tenant: Option<Uuid>,
        page: &Page,
    ) -> Result<Listing<StoredToken>, RegistryError> {
        let (after_at, after_id) = page.after_time_id()?;
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens \
             WHERE ($1 = '' OR tenant_id = $1) \
             AND (created_at > $2 OR (created_at = $2 AND id > $3)) \
             ORDER BY created_at, id LIMIT $4"
        ))
        .bind(tenant.map(|t| t.to_string()).unwrap_or_default())
        .bind(after_at)
        .bind(after_id)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await?;
        let tokens = rows
            .iter()
            .map(decode_token)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page.listing(tokens, |t| {
            Cursor::time_id(t.created_at.timestamp_millis(), &t.id.to_string())
        }))
    }

    pub async fn get_token(&self, id: Uuid) -> Result<Option<StoredToken>, RegistryError> {
        let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_token).transpose()
    }

    /// Revokes a token; false when there was none or it was revoked already.
    pub async fn revoke_token(&self, id: Uuid) -> Result<bool, RegistryError> {
        let done =
            sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now_millis())
                .bind(id.to_string())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// True when some admin token is neither revoked nor expired.
    pub async fn has_admin_token(&self) -> Result<bool, RegistryError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM tokens WHERE tenant_id IS NULL AND revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $1)",
        )
        .bind(now_millis())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// Makes `token` the configured admin token: stored if new, replacing an
    /// earlier configured one (so changing `--admin-token` retires the old value).
    pub async fn set_configured_admin_token(
        &self,
        token: &AccessToken,
    ) -> Result<(), RegistryError> {
        if let Some(existing) = self.find_token(token.prefix()).await? {
            if existing.tenant_id.is_none() && existing.admits(token, chrono::Utc::now()) {
                return Ok(());
            }
            return Err(RegistryError::Duplicate(
                "the configured admin token clashes with a stored token (revoked, expired or a \
                 tenant's); choose another"
                    .into(),
            ));
        }
        sqlx::query("DELETE FROM tokens WHERE tenant_id IS NULL AND label = $1")
            .bind(CONFIGURED_ADMIN_LABEL)
            .execute(&self.pool)
            .await?;
        self.insert_token(token, None, CONFIGURED_ADMIN_LABEL, None)
            .await?;
        Ok(())
    }
}
