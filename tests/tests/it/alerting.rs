//! Alerts operators can rely on: an unhealthy subscription is told, its
//! recovery is always told, repeats within the alert interval are folded and
//! counted in the next alert; mail goes through STARTTLS or implicit TLS with
//! authentication; the webhook channel posts a signed description of the change.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use wasmhook::config::{SmtpPassword, SmtpSettings};
use wasmhook::delivery::alert::mail::Mailer;
use wasmhook::domain::EmailAddress;
use wasmhook::secrets::HiddenText;

use crate::helpers::{Db, Receiver, SmtpSecurity, SmtpServer, System, produce, subscription};

const WAIT: Duration = Duration::from_secs(30);

/// Delivers each message on its own and dead-letters at the first failure,
/// so that each produced message is one health change when the receiver's
/// answer changes.
fn alerting_subscription(sys: &System, name: &str, topic: &str, alerting: Value) -> Value {
    let mut body = subscription(name, &sys.receiver.url, &[topic]);
    body["configuration"]["batching"] =
        json!({"max_batch_size": 1, "max_batch_interval_seconds": 1});
    body["configuration"]["retry"] = json!({"max_retries": 0, "retry_algorithm": "fixed_time"});
    body["configuration"]["alerting"] = alerting;
    body
}

fn email_to(address: &str) -> Value {
    json!({"alert_channel": "email", "alert_emails": [address]})
}

/// Makes the subscription fail one batch (it turns unhealthy) or deliver one
/// (it recovers), and waits until its status says so.
async fn turn(sys: &System, id: &str, topic: &str, healthy: bool, n: usize) {
    sys.receiver.answer(if healthy { 200 } else { 500 });
    produce(&sys.producer, topic, 0, &[json!({"n": n})]).await;
    let wanted = if healthy { "healthy" } else { "unhealthy" };
    // A failed batch is dead-lettered and counted: wait for this one's count,
    // so that the next turn starts from a settled state.
    sys.app
        .wait_for_status(id, WAIT, |s| {
            s["status"] == wanted
                && s["counts"]["delivered"].as_u64().unwrap_or(0)
                    + s["counts"]["dead_lettered"].as_u64().unwrap_or(0)
                    == n as u64 + 1
        })
        .await;
}

async fn system_with_mail(smtp: SmtpSettings, interval: Duration) -> System {
    System::start_with(Db::Sqlite, |s| {
        s.smtp = Some(smtp);
        s.delivery.alert_interval = interval;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unhealthy_subscription_is_mailed_and_its_recovery_too_within_the_alert_interval() {
    let smtp = SmtpServer::start();
    let sys = system_with_mail(smtp.settings(), Duration::from_secs(3600)).await;
    sys.topic("orders", 1);
    let id = sys
        .app
        .subscribe(&alerting_subscription(
            &sys,
            "orders-to-crm",
            "orders",
            email_to("ops@example.com"),
        ))
        .await;

    turn(&sys, &id, "orders", false, 0).await;
    let mails = smtp.wait_for_mail(1, WAIT).await;
    assert_eq!(mails[0].to, ["ops@example.com"]);
    assert!(
        mails[0].data.contains("\"orders-to-crm\" is unhealthy"),
        "{}",
        mails[0].data
    );
    assert!(
        mails[0].data.contains("500"),
        "the reason: {}",
        mails[0].data
    );

    // Well within the hour: a recovery is told whatever the interval.
    turn(&sys, &id, "orders", true, 1).await;
    let mails = smtp.wait_for_mail(2, WAIT).await;
    assert!(
        mails[1].data.contains("\"orders-to-crm\" recovered"),
        "{}",
        mails[1].data
    );
    assert!(!mails[1].data.contains("folded"), "{}", mails[1].data);
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeats_within_the_interval_are_folded_and_counted_when_the_interval_ends() {
    let smtp = SmtpServer::start();
    // Long enough for the four turns below on a busy machine; the third mail
    // is awaited, not slept for.
    let interval = Duration::from_secs(20);
    let sys = system_with_mail(smtp.settings(), interval).await;
    sys.topic("flaky", 1);
    let id = sys
        .app
        .subscribe(&alerting_subscription(
            &sys,
            "flaky-hook",
            "flaky",
            email_to("ops@example.com"),
        ))
        .await;

    let started = tokio::time::Instant::now();
    turn(&sys, &id, "flaky", false, 0).await;
    smtp.wait_for_mail(1, WAIT).await;
    turn(&sys, &id, "flaky", true, 1).await;
    smtp.wait_for_mail(2, WAIT).await;
    // Down, up, down again: folded, as the first alert is recent.
    turn(&sys, &id, "flaky", false, 2).await;
    turn(&sys, &id, "flaky", true, 3).await;
    turn(&sys, &id, "flaky", false, 4).await;
    assert!(
        started.elapsed() < interval,
        "the turns took {:?}, longer than the interval: nothing was folded",
        started.elapsed()
    );
    assert_eq!(smtp.mails().len(), 2, "the repeats are not mailed at once");

    // When the interval ends, the state operators do not know yet is told,
    // with the count of what was folded into it.
    let mails = smtp.wait_for_mail(3, interval + WAIT).await;
    assert!(
        mails[2].data.contains("\"flaky-hook\" is unhealthy"),
        "{}",
        mails[2].data
    );
    assert!(
        mails[2].data.contains("2 more health change(s)"),
        "{}",
        mails[2].data
    );
    // It was told "unhealthy": its recovery is told at once.
    turn(&sys, &id, "flaky", true, 5).await;
    let mails = smtp.wait_for_mail(4, WAIT).await;
    assert!(mails[3].data.contains("recovered"), "{}", mails[3].data);
    sys.app.stop().await;
}

/// Alerts `sys` once (unhealthy) and returns the mail the server took.
async fn one_alert_through(smtp: &SmtpServer, settings: SmtpSettings) -> crate::helpers::Mail {
    let sys = system_with_mail(settings, Duration::from_secs(3600)).await;
    sys.topic("payments", 1);
    let id = sys
        .app
        .subscribe(&alerting_subscription(
            &sys,
            "payments",
            "payments",
            email_to("oncall@example.com"),
        ))
        .await;
    turn(&sys, &id, "payments", false, 0).await;
    let mails = smtp.wait_for_mail(1, WAIT).await;
    sys.app.stop().await;
    mails[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mail_goes_through_starttls_and_authentication_with_the_password_from_a_file() {
    let smtp = SmtpServer::start_secured(SmtpSecurity::StartTls, "alerts", "s3cret pass");
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("smtp-password");
    std::fs::write(&password_file, "s3cret pass\n").unwrap();
    let settings = smtp.secured_settings("alerts", SmtpPassword::File(password_file));
    let mail = one_alert_through(&smtp, settings).await;
    assert_eq!(mail.user.as_deref(), Some("alerts"), "authenticated");
    assert_eq!(mail.to, ["oncall@example.com"]);
    assert!(
        mail.data.contains("\"payments\" is unhealthy"),
        "{}",
        mail.data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mail_goes_through_implicit_tls_and_authentication() {
    let smtp = SmtpServer::start_secured(SmtpSecurity::ImplicitTls, "alerts", "hunter2");
    let settings =
        smtp.secured_settings("alerts", SmtpPassword::Text(HiddenText("hunter2".into())));
    let mail = one_alert_through(&smtp, settings).await;
    assert_eq!(mail.user.as_deref(), Some("alerts"));
    assert!(
        mail.data.contains("\"payments\" is unhealthy"),
        "{}",
        mail.data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secured_server_refuses_mail_from_an_untrusting_or_unauthenticated_client() {
    let smtp = SmtpServer::start_secured(SmtpSecurity::StartTls, "alerts", "right");
    let to = &[EmailAddress::parse("ops@example.com".into()).unwrap()];
    let send = |settings: SmtpSettings| async move {
        Mailer::new(&settings)
            .expect("the settings are valid")
            .send(to, "test", "body".into())
            .await
    };
    let right = || SmtpPassword::Text(HiddenText("right".into()));

    // Verification stays on: the self-signed certificate is trusted only
    // through the CA file.
    let untrusted = SmtpSettings {
        ca_file: None,
        ..smtp.secured_settings("alerts", right())
    };
    let error = send(untrusted).await.unwrap_err();
    assert!(!error.is_permanent(), "{error}");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );

    let wrong = smtp.secured_settings("alerts", SmtpPassword::Text(HiddenText("wrong".into())));
    let error = send(wrong).await.unwrap_err();
    assert!(
        error.is_permanent(),
        "a refused login is not retried: {error}"
    );
    assert!(!error.to_string().contains("wrong"), "{error}");

    // Without credentials the server takes no mail either (it requires AUTH).
    let anonymous = SmtpSettings {
        credentials: None,
        ..smtp.secured_settings("alerts", right())
    };
    assert!(send(anonymous).await.is_err());
    assert!(smtp.mails().is_empty(), "{:?}", smtp.mails());

    send(smtp.secured_settings("alerts", right()))
        .await
        .unwrap();
    assert_eq!(smtp.mails()[0].user.as_deref(), Some("alerts"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_webhook_channel_posts_a_signed_alert_naming_the_subscription_the_change_and_why() {
    let sys = System::start(Db::Sqlite).await;
    let alerts = Receiver::start().await;
    sys.topic("events", 1);
    let body = alerting_subscription(
        &sys,
        "events-out",
        "events",
        json!({"alert_channel": "webhook", "alert_url": alerts.url}),
    );
    let (status, created) = sys.app.post("/1/Subscription", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        created["configuration"]["alerting"],
        json!({"alert_channel": "webhook", "alert_url": alerts.url})
    );
    let id = created["id"].as_str().unwrap().to_string();
    let verifier =
        standardwebhooks::Webhook::new(created["signing_secret"].as_str().unwrap()).unwrap();

    turn(&sys, &id, "events", false, 0).await;
    turn(&sys, &id, "events", true, 1).await;
    let posted = alerts.wait_for_requests(2, WAIT).await;
    let mut seen = Vec::new();
    for request in &posted {
        verifier
            .verify(&request.body, &request.headers)
            .expect("the alert's Standard Webhooks signature verifies");
        assert_eq!(request.headers["content-type"], "application/json");
        assert!(
            request.headers["webhook-id"]
                .to_str()
                .unwrap()
                .starts_with("alert_")
        );
        assert!(
            request.headers.get("authorization").is_none(),
            "the destination's headers stay with the destination"
        );
        let alert: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(alert["data"]["subscription"]["id"], id.as_str());
        assert_eq!(alert["data"]["subscription"]["name"], "events-out");
        assert_eq!(
            alert["data"]["status"],
            format!("/1/Subscription/{id}/Status")
        );
        seen.push(alert);
    }
    assert_eq!(seen[0]["type"], "subscription.unhealthy");
    assert_eq!(
        seen[0]["data"]["transition"],
        json!({"from": "healthy", "to": "unhealthy"})
    );
    assert!(
        seen[0]["data"]["reason"].as_str().unwrap().contains("500"),
        "{}",
        seen[0]
    );
    assert_eq!(seen[1]["type"], "subscription.recovered");
    assert_eq!(seen[1]["data"]["reason"], Value::Null);
    assert_eq!(seen[1]["data"]["folded"], 0);
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alerting_fields_are_checked_and_refusals_name_the_field() {
    let sys = System::start_with(Db::Sqlite, |s| {
        s.delivery.destinations = wasmhook::egress::DestinationPolicy::public_only();
    })
    .await;
    let cases = [
        (
            json!({"alert_channel": "webhook"}),
            "configuration.alerting.alert_url",
            "is required",
        ),
        (
            json!({"alert_channel": "webhook", "alert_url": "ftp://ops.example/alerts"}),
            "configuration.alerting.alert_url",
            "http or https",
        ),
        (
            json!({"alert_channel": "webhook", "alert_url": "http://169.254.169.254/latest"}),
            "configuration.alerting.alert_url",
            "link-local",
        ),
        (
            json!({"alert_channel": "webhook", "alert_url": "http://10.1.2.3/alerts"}),
            "configuration.alerting.alert_url",
            "--allowed-destinations",
        ),
        (
            json!({"alert_channel": "webhook", "alert_url": "https://ops.example/a", "alert_emails": ["a@b.co"]}),
            "configuration.alerting.alert_emails",
            "only for alert_channel email",
        ),
        (
            json!({"alert_channel": "email"}),
            "configuration.alerting.alert_emails",
            "at least one",
        ),
        (
            json!({"alert_channel": "email", "alert_emails": ["a@b.co"], "alert_url": "https://ops.example/a"}),
            "configuration.alerting.alert_url",
            "only for alert_channel webhook",
        ),
        (
            json!({"alert_channel": "pager"}),
            "configuration.alerting.alert_channel",
            "webhook",
        ),
    ];
    let mut body = subscription("guarded", "https://hooks.example.com/in", &["t"]);
    body["active"] = json!("no");
    for (alerting, field, why) in &cases {
        body["configuration"]["alerting"] = alerting.clone();
        let (status, answer) = sys.app.post("/1/Subscription", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{alerting}: {answer}");
        assert_eq!(answer["errors"][0]["field"], *field, "{alerting}: {answer}");
        let message = answer["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(why), "{alerting}: {message}");
    }

    // A name is accepted (it is judged when resolved, on every request); a
    // replacement with a refused address is refused as a creation is.
    body["configuration"]["alerting"] =
        json!({"alert_channel": "webhook", "alert_url": "https://ops.example/alerts"});
    let id = sys.app.subscribe(&body).await;
    body["configuration"]["alerting"]["alert_url"] = json!("http://169.254.169.254/");
    let (status, answer) = sys.app.put(&format!("/1/Subscription/{id}"), &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(
        answer["errors"][0]["field"],
        "configuration.alerting.alert_url"
    );
    let (_, stored) = sys.app.get(&format!("/1/Subscription/{id}")).await;
    assert_eq!(
        stored["configuration"]["alerting"]["alert_url"],
        "https://ops.example/alerts"
    );
    sys.app.stop().await;
}
