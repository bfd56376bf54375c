//! A subscription's health as one pipeline keeps it: transitions are recorded
//! once across hosts (the registry decides who records a change) and alerted
//! on; a new reason for being unhealthy is recorded without a new alert.

use std::sync::Arc;

use uuid::Uuid;

use super::alert::Transition;
use super::pipeline::Shared;
use crate::domain::SubscriptionSpec;
use crate::registry::{Health, StoredSubscription};
use crate::signing::{PreviousSecret, SigningSecret};

pub struct HealthKeeper {
    id: Uuid,
    spec: SubscriptionSpec,
    shared: Arc<Shared>,
    health: Health,
    /// Why it is unhealthy, as last recorded by this pipeline.
    reason: Option<String>,
    secret: SigningSecret,
    previous_secret: Option<PreviousSecret>,
}

impl HealthKeeper {
    pub fn new(stored: &StoredSubscription, shared: Arc<Shared>) -> Self {
        Self {
            id: stored.id,
            spec: stored.spec.clone(),
            shared,
            health: stored.health,
            reason: stored.status_reason.clone(),
            secret: stored.signing_secret.clone(),
            previous_secret: stored.previous_secret.clone(),
        }
    }

    pub async fn set(&mut self, health: Health, transition: Transition) {
        let reason = match &transition {
            Transition::Unhealthy { reason } => Some(reason.as_str()),
            Transition::Recovered => None,
        };
        if self.health == health && self.reason.as_deref() == reason {
            return;
        }
        self.health = health;
        self.reason = reason.map(str::to_string);
        match self
            .shared
            .registry
            .set_health(self.id, health, reason)
            .await
        {
            Ok(true) => {
                // Queued, never waited on: webhook alerts are signed as
                // deliveries are, with the subscription's secrets.
                self.shared.alerter.notify(
                    self.id,
                    self.spec.name.as_str(),
                    self.spec.configuration.alerting.as_ref(),
                    &transition,
                    &self.secret,
                    self.previous_secret.as_ref(),
                );
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(subscription = %self.id, error = %error, "Could not record the health change.")
            }
        }
    }
}
