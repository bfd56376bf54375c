//! Recent activity: a bounded ring of events per subscription, newest first.

use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use super::{Registry, RegistryError, from_millis, now_millis};

/// How many entries each subscription keeps; older ones are removed on insert.
pub const ACTIVITY_RING: i64 = 50;

/// Keeps a subscription's ring bounded: drops everything older than its
/// newest `ACTIVITY_RING` entries ($1: the subscription, $2: the ring size).
const TRIM_RING: &str = "DELETE FROM activity WHERE subscription_id = $1 AND id <= \
     (SELECT id FROM activity WHERE subscription_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)";

/// One delivery attempt as the status API shows it (secrets already masked).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ApiCall {
    pub request: String,
    pub request_headers: Vec<String>,
    pub response_code: u16,
    pub response_body: String,
    pub response_headers: Vec<String>,
}

/// Something that happened to a subscription.
#[derive(Debug, Clone, PartialEq)]
pub enum Activity {
    Active,
    Inactive,
    ApiCall(ApiCall),
}

impl Activity {
    /// What is stored beside the event: the attempt, as JSON.
    fn detail(&self) -> Option<String> {
        match self {
            Activity::ApiCall(call) => Some(serde_json::to_string(call).expect("serialises")),
            _ => None,
        }
    }

    fn event(&self) -> &'static str {
        match self {
            Activity::Active => "active",
            Activity::Inactive => "inactive",
            Activity::ApiCall(_) => "api_call",
        }
    }
}

/// A stored activity entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityEntry {
    pub timestamp: chrono::DateTime<chrono::Utc>,
    pub activity: Activity,
}

impl Registry {
    pub async fn record_activity(
        &self,
        subscription: Uuid,
        activity: &Activity,
    ) -> Result<(), RegistryError> {
        let detail = activity.detail();
        let id = subscription.to_string();
        sqlx::query(
            "INSERT INTO activity (subscription_id, at, event, detail) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(now_millis())
        .bind(activity.event())
        .bind(detail)
        .execute(&self.pool)
        .await?;
        // Keep the ring bounded: drop everything older than the newest ACTIVITY_RING.
        sqlx::query(TRIM_RING)
            .bind(&id)
            .bind(ACTIVITY_RING)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The most recent entries, newest first.
    pub async fn recent_activity(
        &self,
        subscription: Uuid,
    ) -> Result<Vec<ActivityEntry>, RegistryError> {
        let rows = sqlx::query(
            "SELECT at, event, detail FROM activity WHERE subscription_id = $1 \
             ORDER BY id DESC LIMIT $2",
        )
        .bind(subscription.to_string())
        .bind(ACTIVITY_RING)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let event: String = row.try_get("event")?;
                let detail: Option<String> = row.try_get("detail")?;
                let activity = match event.as_str() {
                    "active" => Activity::Active,
                    "inactive" => Activity::Inactive,
                    "api_call" => Activity::ApiCall(
                        serde_json::from_str(detail.as_deref().unwrap_or("null"))
                            .map_err(|e| RegistryError::Corrupt(format!("api_call detail: {e}")))?,
                    ),
                    other => return Err(RegistryError::Corrupt(format!("event {other:?}"))),
                };
                Ok(ActivityEntry {
                    timestamp: from_millis(row.try_get("at")?),
                    activity,
                })
            })
            .collect()
    }
}

/// A batch that went to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub timestamp: chrono::DateTime<chrono::Utc>,
    pub delivery_id: String,
    pub topic: String,
    pub messages: i64,
    pub reason: String,
}

/// How many dead-letter records the status shows.
pub const DEAD_LETTERS_SHOWN: i64 = 20;

impl Registry {
    pub async fn record_dead_letter(
        &self,
        subscription: Uuid,
        dead_letter: &DeadLetter,
    ) -> Result<(), RegistryError> {
        sqlx::query(
            "INSERT INTO dead_letters (subscription_id, at, delivery_id, topic, messages, reason) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(subscription.to_string())
        .bind(dead_letter.timestamp.timestamp_millis())
        .bind(&dead_letter.delivery_id)
        .bind(&dead_letter.topic)
        .bind(dead_letter.messages)
        .bind(&dead_letter.reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest dead letters, newest first.
    pub async fn recent_dead_letters(
        &self,
        subscription: Uuid,
    ) -> Result<Vec<DeadLetter>, RegistryError> {
        let rows = sqlx::query(
            "SELECT at, delivery_id, topic, messages, reason FROM dead_letters \
             WHERE subscription_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(subscription.to_string())
        .bind(DEAD_LETTERS_SHOWN)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    timestamp: from_millis(row.try_get("at")?),
                    delivery_id: row.try_get("delivery_id")?,
                    topic: row.try_get("topic")?,
                    messages: row.try_get("messages")?,
                    reason: row.try_get("reason")?,
                })
            })
            .collect()
    }
}

/// What a host's delivery engine has to write for one subscription since its
/// last flush: outcome counters to add and delivery attempts to record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bookkeeping {
    pub counts: super::Counts,
    /// Oldest first.
    pub activity: Vec<ActivityEntry>,
}

impl Registry {
    /// Writes the bookkeeping of many subscriptions in one transaction:
    /// counters added, activity inserted with the time it happened, each ring
    /// trimmed once. Subscriptions deleted meanwhile are skipped.
    pub async fn write_bookkeeping(
        &self,
        entries: &[(Uuid, Bookkeeping)],
    ) -> Result<(), RegistryError> {
        let mut tx = self.pool.begin().await?;
        for (subscription, book) in entries {
            let id = subscription.to_string();
            let counts = book.counts;
            if counts != super::Counts::default() {
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
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            }
            if book.activity.is_empty() {
                continue;
            }
            for entry in &book.activity {
                let detail = entry.activity.detail();
                sqlx::query(
                    "INSERT INTO activity (subscription_id, at, event, detail) \
                     SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM subscriptions WHERE id = $1)",
                )
                .bind(&id)
                .bind(entry.timestamp.timestamp_millis())
                .bind(entry.activity.event())
                .bind(detail)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(TRIM_RING)
                .bind(&id)
                .bind(ACTIVITY_RING)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
