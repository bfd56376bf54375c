//! The webhook channel: the alert as a JSON POST to the subscription's
//! `alert_url`, signed like its deliveries (Standard Webhooks, with the
//! subscription's secret) and sent by the delivery [`Sender`], so the SSRF
//! guard judges it the same way.

use serde_json::{Value, json};

use super::{Alert, Transition};
use crate::delivery::sender::{Outcome, Sender, Target};
use crate::domain::WebhookUrl;

/// The request body (see the README's Alerting section).
pub fn payload(alert: &Alert, folded: u32, at: chrono::DateTime<chrono::Utc>) -> Value {
    let (kind, from, to, reason) = match &alert.transition {
        Transition::Unhealthy { reason } => (
            "subscription.unhealthy",
            "healthy",
            "unhealthy",
            Some(reason.as_str()),
        ),
        Transition::Recovered => ("subscription.recovered", "unhealthy", "healthy", None),
    };
    json!({
        "type": kind,
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": {
            "subscription": {"id": alert.subscription, "name": alert.name},
            "transition": {"from": from, "to": to},
            "reason": reason,
            "folded": folded,
            "status": format!("/1/Subscription/{}/Status", alert.subscription),
        }
    })
}

/// One attempt; `id` stays the same across attempts, as receivers deduplicate by it.
pub async fn send(
    sender: &Sender,
    url: &WebhookUrl,
    alert: &Alert,
    id: &str,
    body: &Value,
) -> Result<(), String> {
    let target = Target {
        url: url.url().clone(),
        // The destination's headers are for the destination, not for this URL.
        headers: Vec::new(),
        secret: alert.secret.clone(),
        previous_secret: alert.previous_secret.clone(),
    };
    let attempt = sender
        .send(
            &target,
            id,
            "application/json",
            bytes::Bytes::from(body.to_string()),
        )
        .await;
    match attempt.outcome {
        Outcome::Delivered => Ok(()),
        Outcome::Failed(failure) => Err(failure.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Alerting;
    use crate::signing::SigningSecret;

    #[test]
    fn the_payload_names_the_subscription_the_transition_and_the_reason() {
        let alert = Alert {
            subscription: uuid::Uuid::nil(),
            name: "orders".into(),
            alerting: Alerting::Webhook {
                alert_url: WebhookUrl::parse("https://ops.example/alerts").unwrap(),
            },
            transition: Transition::Unhealthy {
                reason: "the webhook answered 500".into(),
            },
            secret: SigningSecret::generate(),
            previous_secret: None,
        };
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let body = payload(&alert, 2, at);
        assert_eq!(body["type"], "subscription.unhealthy");
        assert_eq!(body["timestamp"], "2023-11-14T22:13:20.000Z");
        assert_eq!(body["data"]["subscription"]["name"], "orders");
        assert_eq!(
            body["data"]["transition"],
            json!({"from": "healthy", "to": "unhealthy"})
        );
        assert_eq!(body["data"]["reason"], "the webhook answered 500");
        assert_eq!(body["data"]["folded"], 2);
        let recovered = Alert {
            transition: Transition::Recovered,
            ..alert
        };
        let body = payload(&recovered, 0, at);
        assert_eq!(body["type"], "subscription.recovered");
        assert_eq!(body["data"]["reason"], Value::Null);
    }
}
