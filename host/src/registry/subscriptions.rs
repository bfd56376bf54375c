//! Subscription rows: create, read, replace, delete, rotate their signing
//! secret, and their health.
//!
//! The signing secrets and the secret values inside `spec` are sealed in the
//! row, each bound to its subscription and field; see [`Registry::open_with`].

use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::page::{Cursor, Listing, Page};
use super::{Registry, RegistryError, from_millis, now_millis};
use crate::domain::{SubscriptionSpec, map_stored_secrets};
use crate::secrets::{SealError, SecretKey, is_sealed};
use crate::signing::{PreviousSecret, SigningSecret};

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
    /// Standard Webhooks secret (`whsec_…`); shown to the client only at
    /// creation and rotation.
    pub signing_secret: SigningSecret,
    /// The secret the latest rotation replaced, while it still signs.
    pub previous_secret: Option<PreviousSecret>,
    pub health: Health,
    /// Why it is unhealthy: the failure that made it so, or the latest one.
    pub status_reason: Option<String>,
    pub status_changed_at: chrono::DateTime<chrono::Utc>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Increases on every replace; the delivery engine restarts a pipeline when it moves.
    pub revision: i64,
    /// Moves on every replay: the consumer group is
    /// [`consumer_group`](crate::kafka::consumer_group) of the id and this.
    pub consumer_generation: i64,
    pub counts: Counts,
}

/// Messages that reached each final outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Counts {
    pub delivered: i64,
    pub filtered: i64,
    pub dead_lettered: i64,
    /// Refused by a policy plugin's explicit deny.
    pub denied: i64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Self) {
        self.delivered += other.delivered;
        self.filtered += other.filtered;
        self.dead_lettered += other.dead_lettered;
        self.denied += other.denied;
    }
}

const COLUMNS: &str = "id, tenant_id, spec, signing_secret, health, status_reason, status_changed_at, created_at, \
     updated_at, revision, delivered_messages, filtered_messages, dead_lettered_messages, \
     denied_messages, previous_signing_secret, previous_secret_expires_at, consumer_generation";

const SIGNING_SECRET: &str = "signing_secret";
const PREVIOUS_SIGNING_SECRET: &str = "previous_signing_secret";

/// What a sealed value is bound to: the subscription and the field it is in.
fn context(id: Uuid, field: &str) -> String {
    format!("wasmhook:subscription:{id}:{field}")
}

/// Seals and opens one subscription's secrets, and notes whether any was
/// still in plain text (written before secrets were sealed).
struct Sealer<'a> {
    key: Option<&'a SecretKey>,
    id: Uuid,
    found_plaintext: bool,
}

impl<'a> Sealer<'a> {
    fn new(registry: &'a Registry, id: Uuid) -> Self {
        Self {
            key: registry.key.as_deref(),
            id,
            found_plaintext: false,
        }
    }

    fn seal(&self, field: &str, plaintext: &str) -> Result<String, RegistryError> {
        let key = self.key.ok_or_else(|| {
            RegistryError::NoSecretKey(format!("writing subscription {}", self.id))
        })?;
        Ok(key.seal(plaintext, &context(self.id, field)))
    }

    fn open(&mut self, field: &str, stored: &str) -> Result<String, RegistryError> {
        if !is_sealed(stored) {
            self.found_plaintext = true;
            return Ok(stored.to_string());
        }
        let key = self.key.ok_or_else(|| {
            RegistryError::NoSecretKey(format!("reading subscription {}", self.id))
        })?;
        key.open(stored, &context(self.id, field))
            .map_err(|source| self.unsealable(field, source))
    }

    fn unsealable(&self, field: &str, source: SealError) -> RegistryError {
        RegistryError::Unsealable {
            subscription: self.id.to_string(),
            field: field.to_string(),
            source,
        }
    }

    /// The spec's storage form, its secret values sealed.
    fn encode(&self, spec: &SubscriptionSpec) -> Result<String, RegistryError> {
        let mut value = serde_json::to_value(spec).expect("a spec always serialises");
        map_stored_secrets(&mut value, |field, plaintext| self.seal(field, plaintext))?;
        Ok(value.to_string())
    }

    fn decode_spec(&mut self, stored: &str) -> Result<SubscriptionSpec, RegistryError> {
        let id = self.id;
        let corrupt =
            |e: serde_json::Error| RegistryError::Corrupt(format!("subscription {id}: {e}"));
        let mut value: serde_json::Value = serde_json::from_str(stored).map_err(corrupt)?;
        map_stored_secrets(&mut value, |field, sealed| self.open(field, sealed))?;
        serde_json::from_value(value).map_err(corrupt)
    }

    fn signing_secret(
        &mut self,
        field: &str,
        stored: &str,
    ) -> Result<SigningSecret, RegistryError> {
        let text = self.open(field, stored)?;
        SigningSecret::parse(&text)
            .map_err(|e| RegistryError::Corrupt(format!("subscription {}: {field}: {e}", self.id)))
    }
}

/// A row, and whether it still held a secret in plain text.
fn decode(registry: &Registry, row: &AnyRow) -> Result<(StoredSubscription, bool), RegistryError> {
    let id: String = row.try_get("id")?;
    let id: Uuid = id
        .parse()
        .map_err(|_| RegistryError::Corrupt(format!("subscription id {id:?}")))?;
    let mut sealer = Sealer::new(registry, id);
    let spec: String = row.try_get("spec")?;
    let spec = sealer.decode_spec(&spec)?;
    let secret: String = row.try_get(SIGNING_SECRET)?;
    let signing_secret = sealer.signing_secret(SIGNING_SECRET, &secret)?;
    let previous: Option<String> = row.try_get(PREVIOUS_SIGNING_SECRET)?;
    let expires: Option<i64> = row.try_get("previous_secret_expires_at")?;
    let previous_secret = match (previous, expires) {
        (Some(previous), Some(expires)) => Some(PreviousSecret {
            secret: sealer.signing_secret(PREVIOUS_SIGNING_SECRET, &previous)?,
            expires_at: from_millis(expires),
        }),
        _ => None,
    };
    let health: String = row.try_get("health")?;
    let tenant: Option<String> = row.try_get("tenant_id")?;
    let stored = StoredSubscription {
        tenant_id: tenant
            .map(|t| {
                t.parse()
                    .map_err(|_| RegistryError::Corrupt(format!("subscription {id}: tenant {t:?}")))
            })
            .transpose()?,
        id,
        spec,
        signing_secret,
        previous_secret,
        health: match health.as_str() {
            "unhealthy" => Health::Unhealthy,
            _ => Health::Healthy,
        },
        status_reason: row.try_get("status_reason")?,
        status_changed_at: from_millis(row.try_get("status_changed_at")?),
        created_at: from_millis(row.try_get("created_at")?),
        updated_at: from_millis(row.try_get("updated_at")?),
        revision: row.try_get("revision")?,
        consumer_generation: row.try_get("consumer_generation")?,
        counts: Counts {
            delivered: row.try_get("delivered_messages")?,
            filtered: row.try_get("filtered_messages")?,
            dead_lettered: row.try_get("dead_lettered_messages")?,
            denied: row.try_get("denied_messages")?,
        },
    };
    Ok((stored, sealer.found_plaintext))
}

impl Registry {
    /// Stores a new subscription under `id`, which the caller generated
    /// (its dead-letter topic is created before the row exists).
    pub async fn create_subscription(
        &self,
        id: Uuid,
        tenant: Option<Uuid>,
        spec: &SubscriptionSpec,
        signing_secret: &SigningSecret,
    ) -> Result<StoredSubscription, RegistryError> {
        let now = now_millis();
        let sealer = Sealer::new(self, id);
        sqlx::query(
            "INSERT INTO subscriptions \
             (id, name, spec, signing_secret, health, status_changed_at, created_at, updated_at, revision, tenant_id) \
             VALUES ($1, $2, $3, $4, 'healthy', $5, $5, $5, 1, $6)",
        )
        .bind(id.to_string())
        .bind(spec.name.as_str())
        .bind(sealer.encode(spec)?)
        .bind(sealer.seal(SIGNING_SECRET, signing_secret.as_str())?)
        .bind(now)
        .bind(tenant.map(|t| t.to_string()))
        .execute(&self.pool)
        .await?;
        Ok(StoredSubscription {
            id,
            tenant_id: tenant,
            spec: spec.clone(),
            signing_secret: signing_secret.clone(),
            previous_secret: None,
            health: super::Health::Healthy,
            status_reason: None,
            status_changed_at: from_millis(now),
            created_at: from_millis(now),
            updated_at: from_millis(now),
            revision: 1,
            consumer_generation: 0,
            counts: Counts::default(),
        })
    }

    pub async fn list_subscriptions(&self) -> Result<Vec<StoredSubscription>, RegistryError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM subscriptions ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| decode(self, row).map(|(stored, _)| stored))
            .collect()
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
        let subscriptions = rows
            .iter()
            .map(|row| decode(self, row).map(|(stored, _)| stored))
            .collect::<Result<Vec<_>, _>>()?;
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
        row.as_ref()
            .map(|row| decode(self, row).map(|(stored, _)| stored))
            .transpose()
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
        .bind(Sealer::new(self, current.id).encode(spec)?)
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

    /// Replaces the signing secret of `current` (if nobody changed it since it
    /// was read) with `new`; the replaced one keeps signing until
    /// `previous_expires_at`. The revision moves, so the running pipeline
    /// restarts with both.
    pub async fn rotate_signing_secret(
        &self,
        current: &StoredSubscription,
        new: &SigningSecret,
        previous_expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<StoredSubscription, RegistryError> {
        let sealer = Sealer::new(self, current.id);
        let now = now_millis();
        let done = sqlx::query(
            "UPDATE subscriptions SET signing_secret = $1, previous_signing_secret = $2, \
             previous_secret_expires_at = $3, updated_at = $4, revision = revision + 1 \
             WHERE id = $5 AND revision = $6",
        )
        .bind(sealer.seal(SIGNING_SECRET, new.as_str())?)
        .bind(sealer.seal(PREVIOUS_SIGNING_SECRET, current.signing_secret.as_str())?)
        .bind(previous_expires_at.timestamp_millis())
        .bind(now)
        .bind(current.id.to_string())
        .bind(current.revision)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::Conflict);
        }
        Ok(StoredSubscription {
            signing_secret: new.clone(),
            previous_secret: Some(PreviousSecret {
                secret: current.signing_secret.clone(),
                expires_at: from_millis(previous_expires_at.timestamp_millis()),
            }),
            updated_at: from_millis(now),
            revision: current.revision + 1,
            ..current.clone()
        })
    }

    /// Moves `current` to its next consumer generation (if nobody changed it
    /// since it was read): a replay, whose positions were committed to that
    /// generation's group beforehand. The revision moves too, so every host
    /// restarts its pipeline, in the new group.
    pub async fn advance_consumer_generation(
        &self,
        current: &StoredSubscription,
    ) -> Result<StoredSubscription, RegistryError> {
        let now = now_millis();
        let done = sqlx::query(
            "UPDATE subscriptions SET consumer_generation = consumer_generation + 1, \
             updated_at = $1, revision = revision + 1 \
             WHERE id = $2 AND revision = $3 AND consumer_generation = $4",
        )
        .bind(now)
        .bind(current.id.to_string())
        .bind(current.revision)
        .bind(current.consumer_generation)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::Conflict);
        }
        Ok(StoredSubscription {
            updated_at: from_millis(now),
            revision: current.revision + 1,
            consumer_generation: current.consumer_generation + 1,
            ..current.clone()
        })
    }

    /// Opens every stored secret (so a wrong key fails at start-up) and seals
    /// those an older version stored in plain text. Sealing changes no
    /// content, so the revision stays and no pipeline restarts.
    pub(super) async fn seal_stored_secrets(&self) -> Result<(), RegistryError> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM subscriptions"))
            .fetch_all(&self.pool)
            .await?;
        let mut sealed = 0;
        for row in &rows {
            let (stored, found_plaintext) = decode(self, row)?;
            if !found_plaintext {
                continue;
            }
            let sealer = Sealer::new(self, stored.id);
            let previous = stored
                .previous_secret
                .as_ref()
                .map(|p| sealer.seal(PREVIOUS_SIGNING_SECRET, p.secret.as_str()))
                .transpose()?;
            // A concurrent change (another host) already wrote it sealed.
            sqlx::query(
                "UPDATE subscriptions SET spec = $1, signing_secret = $2, \
                 previous_signing_secret = $3 WHERE id = $4 AND revision = $5",
            )
            .bind(sealer.encode(&stored.spec)?)
            .bind(sealer.seal(SIGNING_SECRET, stored.signing_secret.as_str())?)
            .bind(previous)
            .bind(stored.id.to_string())
            .bind(stored.revision)
            .execute(&self.pool)
            .await?;
            sealed += 1;
        }
        if sealed > 0 {
            tracing::info!(
                subscriptions = sealed,
                "Secrets stored in plain text are now sealed."
            );
        }
        Ok(())
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
