//! Alerting: an email when a subscription turns unhealthy and when it recovers,
//! at most one per subscription per configured interval.
//!
//! Without an SMTP server configured, alerts are logged only. A failure to send
//! is logged and never blocks delivery.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::time::Instant;
use uuid::Uuid;

use crate::config::SmtpSettings;
use crate::domain::{Alerting, EmailAddress};

#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Unhealthy { reason: String },
    Recovered,
}

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("the SMTP sender address {0:?} is not a valid mailbox")]
    BadFrom(String),
}

pub struct Alerter {
    smtp: Option<(AsyncSmtpTransport<Tokio1Executor>, Mailbox)>,
    interval: Duration,
    last_sent: Mutex<HashMap<Uuid, Instant>>,
}

impl Alerter {
    pub fn new(smtp: Option<&SmtpSettings>, interval: Duration) -> Result<Self, AlertError> {
        let smtp = match smtp {
            None => None,
            Some(s) => {
                let from: Mailbox = s
                    .from
                    .parse()
                    .map_err(|_| AlertError::BadFrom(s.from.clone()))?;
                let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
                    .port(s.port)
                    .timeout(Some(Duration::from_secs(10)))
                    .build();
                Some((transport, from))
            }
        };
        Ok(Self {
            smtp,
            interval,
            last_sent: Mutex::new(HashMap::new()),
        })
    }

    /// True when no alert about `subscription` went out within the interval;
    /// claims the slot when it answers true.
    fn claim(&self, subscription: Uuid) -> bool {
        let mut last = self.last_sent.lock().expect("alert map lock");
        let now = Instant::now();
        match last.get(&subscription) {
            Some(at) if now.duration_since(*at) < self.interval => false,
            _ => {
                last.insert(subscription, now);
                true
            }
        }
    }

    pub async fn notify(
        &self,
        subscription: Uuid,
        name: &str,
        alerting: Option<&Alerting>,
        transition: &Transition,
    ) {
        let (subject, text) = compose(subscription, name, transition);
        tracing::warn!(subscription = %subscription, name, alert = %subject, "Subscription health changed.");
        let Some(alerting) = alerting.filter(|a| !a.alert_emails.is_empty()) else {
            return;
        };
        let Some((transport, from)) = &self.smtp else {
            tracing::warn!(subscription = %subscription, "No SMTP server configured; alert email not sent.");
            return;
        };
        if !self.claim(subscription) {
            tracing::info!(subscription = %subscription, "Alert email suppressed: one was sent within the alert interval.");
            return;
        }
        match build(from, &alerting.alert_emails, &subject, text) {
            Ok(message) => {
                if let Err(error) = transport.send(message).await {
                    tracing::error!(subscription = %subscription, error = %error, "Alert email could not be sent.");
                }
            }
            Err(error) => {
                tracing::error!(subscription = %subscription, error = %error, "Alert email could not be built.")
            }
        }
    }
}

fn compose(subscription: Uuid, name: &str, transition: &Transition) -> (String, String) {
    match transition {
        Transition::Unhealthy { reason } => (
            format!("[wasmhook] Subscription \"{name}\" is unhealthy"),
            format!(
                "Subscription \"{name}\" ({subscription}) could not deliver a batch after all its retries.\n\n\
                 Reason: {reason}\n\n\
                 The batch went to the dead-letter topic webhooks-{subscription}-dlq and delivery goes on.\n\
                 See GET /1/Subscription/{subscription}/Status for the recent activity.\n"
            ),
        ),
        Transition::Recovered => (
            format!("[wasmhook] Subscription \"{name}\" recovered"),
            format!("Subscription \"{name}\" ({subscription}) is delivering again.\n"),
        ),
    }
}

fn build(
    from: &Mailbox,
    to: &[EmailAddress],
    subject: &str,
    text: String,
) -> Result<Message, lettre::error::Error> {
    let mut builder = Message::builder().from(from.clone()).subject(subject);
    for address in to {
        match address.as_str().parse::<Mailbox>() {
            Ok(mailbox) => builder = builder.to(mailbox),
            Err(_) => tracing::warn!(
                address = address.as_str(),
                "Skipping an alert address lettre cannot use."
            ),
        }
    }
    builder.body(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn at_most_one_alert_per_interval() {
        let alerter = Alerter::new(None, Duration::from_secs(60)).unwrap();
        let id = Uuid::new_v4();
        assert!(alerter.claim(id));
        assert!(!alerter.claim(id));
        assert!(alerter.claim(Uuid::new_v4()));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(alerter.claim(id));
    }

    #[test]
    fn the_unhealthy_mail_names_the_subscription_and_reason() {
        let (subject, text) = compose(
            Uuid::nil(),
            "orders",
            &Transition::Unhealthy {
                reason: "the webhook answered 500".into(),
            },
        );
        assert!(subject.contains("orders"));
        assert!(text.contains("the webhook answered 500"));
    }
}
