//! Alerting: tells a subscription's operators when it turns unhealthy and
//! when it recovers, by email or by a signed webhook POST.
//!
//! Alerts never hold delivery up: [`Alerter::notify`] only puts the alert on
//! a bounded queue, which one worker task drains. The worker applies the rate
//! limit ([`fold`]: repeats within the interval are folded and counted in the
//! next alert; a recovery after an alert is always told), sends through the
//! channel ([`mail`], [`hook`]) with a few attempts, and gives up after them.
//! What it sent, folded, dropped (queue full) and failed is logged and
//! counted ([`Alerter::counts`]).
//!
//! Deciding *that* a subscription changed health is not its business: the
//! pipeline asks the registry, which answers yes once across hosts.

pub mod fold;
pub mod hook;
pub mod mail;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use self::fold::{Folder, Told};
use self::mail::Mailer;
use super::sender::Sender;
use crate::config::SmtpSettings;
use crate::domain::Alerting;
use crate::signing::{PreviousSecret, SigningSecret};

/// Alerts waiting for the worker; beyond, new ones are dropped (and counted).
const QUEUE_CAPACITY: usize = 1024;
/// Attempts per alert, and the wait before the second; it doubles after.
const ATTEMPTS: u32 = 3;
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Unhealthy { reason: String },
    Recovered,
}

/// One health change of one subscription, with what it takes to tell it.
#[derive(Debug)]
pub struct Alert {
    pub subscription: Uuid,
    pub name: String,
    pub alerting: Alerting,
    pub transition: Transition,
    /// Signs the webhook channel's requests, as the subscription's deliveries.
    pub secret: SigningSecret,
    pub previous_secret: Option<PreviousSecret>,
}

/// Why the alerter could not start.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("the SMTP sender address {0:?} is not a valid mailbox")]
    BadFrom(String),
    #[error("could not read the SMTP CA file {path}: {source}")]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the SMTP CA file {path} holds no usable PEM certificate: {problem}")]
    BadCa {
        path: std::path::PathBuf,
        problem: String,
    },
    #[error("could not set up TLS for SMTP: {0}")]
    Tls(String),
    #[error("--smtp-user needs a password: set WASMHOOK_SMTP_PASSWORD or --smtp-password-file")]
    NoPassword,
    #[error("could not read the SMTP password file {path}: {source}")]
    PasswordFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the SMTP password file {0} is empty")]
    EmptyPassword(std::path::PathBuf),
}

/// What the alerter did since start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AlertCounts {
    /// Alerts a channel accepted.
    pub sent: u64,
    /// Health changes folded into a later alert by the rate limit.
    pub folded: u64,
    /// Alerts dropped because the queue was full.
    pub dropped: u64,
    /// Alerts given up after their attempts.
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    folded: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    /// Adds one and answers the new total, for the log line.
    fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn snapshot(&self) -> AlertCounts {
        AlertCounts {
            sent: self.sent.load(Ordering::Relaxed),
            folded: self.folded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

pub struct Alerter {
    queue: mpsc::Sender<Alert>,
    mail: bool,
    counters: Arc<Counters>,
}

impl Alerter {
    /// Checks the SMTP settings (reading the password and CA files) and
    /// starts the worker on the current runtime. Webhook alerts go through
    /// `webhooks`, the delivery sender (its SSRF guard included).
    pub fn new(
        smtp: Option<&SmtpSettings>,
        interval: Duration,
        webhooks: Sender,
    ) -> Result<Self, AlertError> {
        let mailer = smtp.map(Mailer::new).transpose()?;
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            channels: Channels { mailer, webhooks },
            folder: Folder::new(interval),
            interval,
            counters: counters.clone(),
        };
        let mail = worker.channels.mailer.is_some();
        tokio::spawn(worker.run(receiver));
        Ok(Self {
            queue,
            mail,
            counters,
        })
    }

    /// Logs the change and queues its alert; never waits. Without an alert
    /// channel (or without an SMTP server for email) it is only logged.
    /// Webhook alerts are signed with `secret` (and `previous_secret` during
    /// a rotation), as the subscription's deliveries are.
    pub fn notify(
        &self,
        subscription: Uuid,
        name: &str,
        alerting: Option<&Alerting>,
        transition: &Transition,
        secret: &SigningSecret,
        previous_secret: Option<&PreviousSecret>,
    ) {
        let subject = subject(name, transition);
        tracing::warn!(subscription = %subscription, name, alert = %subject, "Subscription health changed.");
        let Some(alerting) = alerting else {
            return;
        };
        if matches!(alerting, Alerting::Email { .. }) && !self.mail {
            tracing::warn!(subscription = %subscription, "No SMTP server configured; alert email not sent.");
            return;
        }
        self.enqueue(Alert {
            subscription,
            name: name.to_string(),
            alerting: alerting.clone(),
            transition: transition.clone(),
            secret: secret.clone(),
            previous_secret: previous_secret.cloned(),
        });
    }

    fn enqueue(&self, alert: Alert) {
        let id = alert.subscription;
        match self.queue.try_send(alert) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let dropped = Counters::bump(&self.counters.dropped);
                tracing::error!(subscription = %id, dropped, "Alert queue full; alert dropped.");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!(subscription = %id, "Alert worker stopped; alert dropped.");
            }
        }
    }

    /// Counts since start-up.
    pub fn counts(&self) -> AlertCounts {
        self.counters.snapshot()
    }
}

struct Channels {
    mailer: Option<Mailer>,
    webhooks: Sender,
}

struct Worker {
    channels: Channels,
    folder: Folder,
    interval: Duration,
    counters: Arc<Counters>,
}

impl Worker {
    async fn run(mut self, mut queue: mpsc::Receiver<Alert>) {
        loop {
            let due = self.folder.next_due();
            tokio::select! {
                received = queue.recv() => {
                    let Some(alert) = received else { break };
                    let id = alert.subscription;
                    match self.folder.change(alert, Instant::now()) {
                        Some(told) => self.tell(told).await,
                        None => {
                            let folded = Counters::bump(&self.counters.folded);
                            tracing::info!(subscription = %id, folded, "Alert folded: one was sent within the alert interval.");
                        }
                    }
                }
                _ = sleep_until(due) => {
                    for told in self.folder.due(Instant::now()) {
                        self.tell(told).await;
                    }
                }
            }
        }
    }

    /// Sends with a few attempts; one alert at a time, so a subscription's
    /// alerts arrive in the order of its changes.
    async fn tell(&self, told: Told) {
        let Told { alert, folded } = told;
        let id = alert.subscription;
        let channel = alert.alerting.channel();
        // One id for all attempts: webhook receivers deduplicate by it.
        let delivery_id = format!("alert_{}", Uuid::new_v4().simple());
        let mut delay = FIRST_RETRY_DELAY;
        for attempt in 1..=ATTEMPTS {
            let (error, permanent) = match self.try_once(&alert, folded, &delivery_id).await {
                Ok(()) => {
                    let sent = Counters::bump(&self.counters.sent);
                    tracing::info!(subscription = %id, channel = %channel, folded, sent, "Alert sent.");
                    return;
                }
                Err(failure) => failure,
            };
            if permanent || attempt == ATTEMPTS {
                let failed = Counters::bump(&self.counters.failed);
                tracing::error!(subscription = %id, channel = %channel, attempts = attempt, failed, error = %error, "Alert could not be sent; giving up.");
                return;
            }
            tracing::warn!(subscription = %id, channel = %channel, attempt, error = %error, "Alert not sent; trying again.");
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }

    /// One attempt: the error's text, and whether another attempt is pointless.
    async fn try_once(&self, alert: &Alert, folded: u32, id: &str) -> Result<(), (String, bool)> {
        match &alert.alerting {
            Alerting::Email { alert_emails } => {
                let Some(mailer) = &self.channels.mailer else {
                    return Err(("no SMTP server is configured".into(), true));
                };
                let (subject, text) = compose(alert, folded, self.interval);
                mailer
                    .send(alert_emails, &subject, text)
                    .await
                    .map_err(|e| (e.to_string(), e.is_permanent()))
            }
            Alerting::Webhook { alert_url } => {
                let body = hook::payload(alert, folded, chrono::Utc::now());
                hook::send(&self.channels.webhooks, alert_url, alert, id, &body)
                    .await
                    .map_err(|reason| (reason, false))
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn subject(name: &str, transition: &Transition) -> String {
    match transition {
        Transition::Unhealthy { .. } => format!("[wasmhook] Subscription \"{name}\" is unhealthy"),
        Transition::Recovered => format!("[wasmhook] Subscription \"{name}\" recovered"),
    }
}

/// The mail's subject and text.
fn compose(alert: &Alert, folded: u32, interval: Duration) -> (String, String) {
    let (name, id) = (&alert.name, alert.subscription);
    let mut text = match &alert.transition {
        Transition::Unhealthy { reason } => format!(
            "Subscription \"{name}\" ({id}) could not deliver a batch after all its retries.\n\n\
             Reason: {reason}\n\n\
             The batch went to the dead-letter topic webhooks-{id}-dlq and delivery goes on.\n\
             See GET /1/Subscription/{id}/Status for the recent activity.\n"
        ),
        Transition::Recovered => {
            format!("Subscription \"{name}\" ({id}) is delivering again.\n")
        }
    };
    if folded > 0 {
        text.push_str(&format!(
            "\n{folded} more health change(s) since the previous alert were folded into this one \
             (at most one \"unhealthy\" alert per {}).\n",
            humantime::format_duration(interval)
        ));
    }
    (subject(name, &alert.transition), text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EmailAddress, WebhookUrl};

    fn alert(alerting: Alerting, transition: Transition) -> Alert {
        Alert {
            subscription: Uuid::nil(),
            name: "orders".into(),
            alerting,
            transition,
            secret: SigningSecret::generate(),
            previous_secret: None,
        }
    }

    fn email() -> Alerting {
        Alerting::Email {
            alert_emails: vec![EmailAddress::parse("ops@example.com".into()).unwrap()],
        }
    }

    fn webhook_sender() -> Sender {
        Sender::new(
            Duration::from_secs(1),
            4,
            crate::egress::DestinationPolicy::public_only(),
        )
        .unwrap()
    }

    #[test]
    fn the_unhealthy_mail_names_the_subscription_the_reason_and_what_was_folded() {
        let down = alert(
            email(),
            Transition::Unhealthy {
                reason: "the webhook answered 500".into(),
            },
        );
        let (subject, text) = compose(&down, 0, Duration::from_secs(900));
        assert!(subject.contains("orders") && subject.contains("unhealthy"));
        assert!(text.contains("the webhook answered 500"));
        assert!(!text.contains("folded"));
        let (_, text) = compose(&down, 3, Duration::from_secs(900));
        assert!(text.contains("3 more health change(s)"), "{text}");
        assert!(text.contains("per 15m"), "{text}");
    }

    #[tokio::test]
    async fn email_without_smtp_is_logged_only_and_a_refused_webhook_fails_after_its_attempts() {
        tokio::time::pause();
        let alerter = Alerter::new(None, Duration::ZERO, webhook_sender()).unwrap();
        let secret = SigningSecret::generate();
        alerter.notify(
            Uuid::nil(),
            "orders",
            Some(&email()),
            &Transition::Recovered,
            &secret,
            None,
        );
        // A loopback URL is refused by the guard without a request: the
        // attempts run against the paused clock.
        let hook = Alerting::Webhook {
            alert_url: WebhookUrl::parse("http://127.0.0.1:9/alerts").unwrap(),
        };
        alerter.notify(
            Uuid::nil(),
            "orders",
            Some(&hook),
            &Transition::Recovered,
            &secret,
            None,
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while alerter.counts().failed == 0 {
            assert!(Instant::now() < deadline, "{:?}", alerter.counts());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            alerter.counts(),
            AlertCounts {
                failed: 1,
                ..AlertCounts::default()
            }
        );
    }

    #[tokio::test]
    async fn notify_never_waits_and_counts_what_it_drops() {
        tokio::time::pause();
        let alerter = Alerter::new(None, Duration::ZERO, webhook_sender()).unwrap();
        let hook = Alerting::Webhook {
            alert_url: WebhookUrl::parse("http://127.0.0.1:9/alerts").unwrap(),
        };
        // The worker does not run between these calls (one thread, no await):
        // the queue fills and the rest are dropped, without blocking.
        for _ in 0..QUEUE_CAPACITY + 5 {
            alerter.enqueue(alert(hook.clone(), Transition::Recovered));
        }
        assert_eq!(alerter.counts().dropped, 5);
    }
}
