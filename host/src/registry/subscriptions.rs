//! Subscription rows: create, read, replace, delete, and their health.

use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::page::{Cursor, Listing, Page};
use super::{Registry, RegistryError, from_millis, now_millis};
use crate::domain::SubscriptionSpec;

/// Whether deliveries have been succeeding (set by the delivery engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// A subscription as stored, with what the registry adds to the spec.
#[derive(Debug, Clone)]
pub struct StoredSubscription {
    pub id: Uuid,
    /// The tenant that owns it (`None`: the admin's).
    pub tenant_id: Option<Uuid>,
    pub spec: SubscriptionSpec,
    /// Standard Webhooks secret (`whsec_…`); shown to the client only at creation.
    pub signing_secret: String,
    pub health: Health,
    /// Why it is unhealthy: the failure that made it so, or the latest one.
    pub status_reason: Option<String>,
    pub status_changed_at: chrono::DateTime<chrono::Utc>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Increases on every replace; the delivery engine restarts a pipeline when it moves.
    pub revision: i64,
    pub counts: Counts,
}

/// Messages that reached each final outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub delivered: i64,
    pub filtered: i64,
    pub dead_lettered: i64,
    /// Refused by a policy plugin's explicit deny.
    pub denied: i64,
}

const COLUMNS: &str = "id, tenant_id, spec, signing_secret, health, status_reason, status_changed_at, created_at, \
     updated_at, revision, delivered_messages, filtered_messages, dead_lettered_messages, \
     denied_messages";

fn decode(row: &AnyRow) -> Result<StoredSubscription, RegistryError> {
    let id: String = row.try_get("id")?;
    let spec: String = row.try_get("spec")?;
    let health: String = row.try_get("health")?;
    let tenant: Option<String> = row.try_get("tenant_id")?;
    Ok(StoredSubscription {
        tenant_id: tenant
            .map(|t| {
                t.parse()
                    .map_err(|_| RegistryError::Corrupt(format!("subscription {id}: tenant {t:?}")))
            })
            .transpose()?,
        id: id
            .parse()
            .map_err(|_| RegistryError::Corrupt(format!("subscription id {id:?}")))?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| RegistryError::Corrupt(format!("subscription {id}: {e}")))?,
        signing_secret: row.try_get("signing_secret")?,
        health: match health.as_str() {
            "unhealthy" => Health::Unhealthy,
            _ => Health::Healthy,
        },
        status_reason: row.try_get("status_reason")?,
        status_changed_at: from_millis(row.try_get("status_changed_at")?),
        created_at: from_millis(row.try_get("created_at")?),
        updated_at: from_millis(row.try_get("updated_at")?),
        revision: row.try_get("revision")?,
        counts: Counts {
            delivered: row.try_get("delivered_messages")?,
            filtered: row.try_get("filtered_messages")?,
            dead_lettered: row.try_get("dead_lettered_messages")?,
            denied: row.try_get("denied_messages")?,
        },
    })
}

fn encode(spec: &SubscriptionSpec) -> String {
    serde_json::to_string(spec).expect("a spec always serialises")
}

impl Registry {
    pub async fn create_subscription(
        &self,
        tenant: Option<Uuid>,
        spec: &SubscriptionSpec,
        signing_secret: &str,
    ) -> Result<StoredSubscription, RegistryError> {
        let id = Uuid::new_v4();
        let now = now_millis();
        sqlx::query(
            "INSERT INTO subscriptions \
             (id, name, spec, signing_secret, health, status_changed_at, created_at, updated_at, revision, tenant_id) \
             VALUES ($1, $2, $3, $4, 'healthy', $5, $5, $5, 1, $6)",
        )
        .bind(id.to_string())
        .bind(spec.name.as_str())
        .bind(encode(spec))
        .bind(signing_secret)
        .bind(now)
        .bind(tenant.map(|t| t.to_string()))
        .execute(&self.pool)
        .await?;
        Ok(StoredSubscription {
            id,
            tenant_id: tenant,
            spec: spec.clone(),
            signing_secret: signing_secret.to_string(),
            health: super::Health::Healthy,
            status_reason: None,
            status_changed_at: from_millis(now),
            created_at: from_millis(now),
            updated_at: from_millis(now),
            revision: 1,
            counts: Counts::default(),
        })
    }

    pub async fn list_subscriptions(&self) -> Result<Vec<StoredSubscription>, RegistryError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM subscriptions ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// A page of subscriptions in creation order: all of them (`tenant`
    /// `None`, the admin) or one tenant's.
    pub async fn list_subscriptions_page(
        &self,
        tenant: Option<Uuid>,
        page: &Page,
    ) -> Result<Listing<StoredSubscription>, RegistryError> {
        let (after_at, after_id) = page.after_time_id()?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM subscriptions \
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
        let subscriptions = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok(page.listing(subscriptions, |s| {
            Cursor::time_id(s.created_at.timestamp_millis(), &s.id.to_string())
        }))
    }

    pub async fn get_subscription(
        &self,
        id: Uuid,
    ) -> Result<Option<StoredSubscription>, RegistryError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM subscriptions WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Replaces the spec of `current` if nobody changed it since it was read.
    pub async fn replace_subscription(
        &self,
        current: &StoredSubscription,
        spec: &SubscriptionSpec,
    ) -> Result<StoredSubscription, RegistryError> {
        let now = now_millis();
        let done = sqlx::query(
            "UPDATE subscriptions SET name = $1, spec = $2, updated_at = $3, revision = revision + 1 \
             WHERE id = $4 AND revision = $5",
        )
        .bind(spec.name.as_str())
        .bind(encode(spec))
        .bind(now)
        .bind(current.id.to_string())
        .bind(current.revision)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::Conflict);
        }
        Ok(StoredSubscription {
            spec: spec.clone(),
            updated_at: from_millis(now),
            revision: current.revision + 1,
            ..current.clone()
        })
    }

    /// Removes a subscription and its activity; false when there was none.
    pub async fn delete_subscription(&self, id: Uuid) -> Result<bool, RegistryError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM subscriptions WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        for table in ["activity", "dead_letters"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE subscription_id = $1"))
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records a subscription's health and why (the reason is kept only
    /// while unhealthy). Returns true when the health actually changed, so
    /// that of several hosts only one alerts on a transition; a new reason
    /// for the same health is recorded without being a transition.
    pub async fn set_health(
        &self,
        id: Uuid,
        health: Health,
        reason: Option<&str>,
    ) -> Result<bool, RegistryError> {
        let reason = match health {
            Health::Unhealthy => reason,
            Health::Healthy => None,
        };
        let done = sqlx::query(
            "UPDATE subscriptions SET health = $1, status_reason = $2, status_changed_at = $3 \
             WHERE id = $4 AND health <> $1",
        )
        .bind(health.as_str())
        .bind(reason)
        .bind(now_millis())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            return Ok(true);
        }
        sqlx::query("UPDATE subscriptions SET status_reason = $1 WHERE id = $2 AND health = $3")
            .bind(reason)
            .bind(id.to_string())
            .bind(health.as_str())
            .execute(&self.pool)
            .await?;
        Ok(false)
    }

    /// Adds to the outcome counters (one write per batch).
    pub async fn add_counts(&self, id: Uuid, counts: Counts) -> Result<(), RegistryError> {
        if counts == Counts::default() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE subscriptions SET delivered_messages = delivered_messages + $1, \
             filtered_messages = filtered_messages + $2, \
             dead_lettered_messages = dead_lettered_messages + $3, \
             denied_messages = denied_messages + $4 WHERE id = $5",
        )
        .bind(counts.delivered)
        .bind(counts.filtered)
        .bind(counts.dead_lettered)
        .bind(counts.denied)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks the moment a subscription's shown status changed for another reason
    /// (turned active or inactive).
    pub async fn touch_status(&self, id: Uuid) -> Result<(), RegistryError> {
        sqlx::query("UPDATE subscriptions SET status_changed_at = $1 WHERE id = $2")
            .bind(now_millis())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
