//! The SSRF guard through the real API: webhook URLs at loopback, link-local,
//! private or IPv4-mapped addresses are refused at registration when they are
//! IP literals, and at delivery, after resolution, when they are names.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wasmhook::egress::DestinationPolicy;

use crate::helpers::{Db, System, produce, subscription};

const WAIT: Duration = Duration::from_secs(30);

/// A system whose settings allow no destination but public addresses, as
/// with real brokers and no `--allowed-destinations`.
async fn guarded(policy: DestinationPolicy) -> System {
    System::start_with(Db::Sqlite, |settings| {
        settings.delivery.destinations = policy;
    })
    .await
}

/// A subscription that gives up after one attempt, so the reason reaches the status at once.
fn one_attempt(name: &str, url: &str, topic: &str) -> Value {
    let mut body = subscription(name, url, &[topic]);
    body["configuration"]["retry"]["max_retries"] = json!(0);
    body
}

fn port_of(url: &str) -> u16 {
    url::Url::parse(url).unwrap().port().unwrap()
}

/// Waits until the subscription is unhealthy with a reason, and returns its status.
async fn wait_for_reason(sys: &System, id: &str) -> Value {
    sys.app
        .wait_for_status(id, WAIT, |status| status["status_reason"].is_string())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registering_a_webhook_at_a_refused_ip_literal_answers_400_naming_the_field_and_why() {
    let sys = guarded(DestinationPolicy::public_only()).await;
    let port = port_of(&sys.receiver.url);
    let cases = [
        (format!("http://127.0.0.1:{port}/"), "127.0.0.1 (loopback)"),
        (
            "http://169.254.169.254/latest/meta-data".to_string(),
            "169.254.169.254 (link-local)",
        ),
        ("http://10.0.0.1/".to_string(), "10.0.0.1 (private"),
        (format!("http://[::1]:{port}/"), "::1 (loopback)"),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            "::ffff:127.0.0.1 (IPv4-mapped 127.0.0.1: loopback)",
        ),
        // 127.0.0.1 spelt as one decimal number is still 127.0.0.1.
        (format!("http://2130706433:{port}/"), "127.0.0.1 (loopback)"),
    ];
    for (url, why) in cases {
        let (status, body) = sys
            .app
            .post("/1/Subscription", &subscription("inside", &url, &["t"]))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert_eq!(
            body["errors"][0]["field"], "destination.webhook.url",
            "{url}: {body}"
        );
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(why), "{url}: {message}");
        assert!(
            message.contains("--allowed-destinations"),
            "{url}: {message}"
        );
    }
    let (status, listed) = sys.app.get("/1/Subscription").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed, json!([]), "nothing was registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replacing_a_webhook_with_a_refused_ip_literal_answers_400_and_keeps_the_old_url() {
    let sys = guarded(DestinationPolicy::public_only()).await;
    let mut body = subscription("outside", "https://hooks.example.com/in", &["t"]);
    body["active"] = json!("no");
    let id = sys.app.subscribe(&body).await;

    body["destination"]["webhook"]["url"] = json!("http://169.254.169.254/latest/meta-data");
    let (status, answer) = sys.app.put(&format!("/1/Subscription/{id}"), &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["errors"][0]["field"], "destination.webhook.url");
    assert!(
        answer["message"].as_str().unwrap().contains("link-local"),
        "{answer}"
    );
    let (_, stored) = sys.app.get(&format!("/1/Subscription/{id}")).await;
    assert_eq!(
        stored["destination"]["webhook"]["url"],
        "https://hooks.example.com/in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_resolving_to_loopback_is_accepted_but_nothing_is_sent_and_the_status_says_why() {
    let sys = guarded(DestinationPolicy::public_only()).await;
    sys.topic("inside", 1);
    let url = format!("http://localhost:{}/hook", port_of(&sys.receiver.url));
    let id = sys
        .app
        .subscribe(&one_attempt("inside", &url, "inside"))
        .await;
    produce(&sys.producer, "inside", 0, &[json!({"n": 1})]).await;

    let status = wait_for_reason(&sys, &id).await;
    assert_eq!(status["status"], "unhealthy", "{status}");
    let reason = status["status_reason"].as_str().unwrap();
    assert!(
        reason.contains("the webhook host localhost resolved to"),
        "{reason}"
    );
    assert!(reason.contains("(loopback)"), "{reason}");
    assert!(reason.contains("--allowed-destinations"), "{reason}");
    assert!(!reason.contains("error sending request"), "{reason}");
    let call = status["recent_activity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["event"] == "api_call")
        .unwrap_or_else(|| panic!("an api_call entry: {status}"));
    assert_eq!(call["response_code"], 0, "{call}");
    assert!(
        call["response_body"]
            .as_str()
            .unwrap()
            .contains("(loopback)"),
        "{call}"
    );
    assert_eq!(status["counts"]["dead_lettered"], 1, "{status}");
    // The attempt is recorded only after it ended: a request would be here by now.
    assert!(
        sys.receiver.requests().is_empty(),
        "the receiver got {} requests",
        sys.receiver.requests().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_name_is_delivered_to_when_its_address_is_allowed() {
    // Only 127.0.0.1, where the receiver listens: if localhost also resolves
    // to ::1, that address is dropped and the allowed one is used.
    let sys = guarded("127.0.0.1/32".parse().unwrap()).await;
    sys.topic("allowed", 1);
    let url = format!("http://localhost:{}/hook", port_of(&sys.receiver.url));
    let id = sys
        .app
        .subscribe(&one_attempt("allowed", &url, "allowed"))
        .await;
    produce(&sys.producer, "allowed", 0, &[json!({"n": 1})]).await;

    let delivered = sys.receiver.wait_for_delivered(1, WAIT).await;
    assert_eq!(delivered[0]["value"], json!({"n": 1}));
    let status = sys
        .app
        .wait_for_status(&id, WAIT, |status| status["counts"]["delivered"] == 1)
        .await;
    assert_eq!(status["status"], "healthy", "{status}");
    assert_eq!(status["status_reason"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ip_literal_registered_while_allowed_is_not_sent_to_once_the_guard_refuses_it() {
    // Registered while loopback is allowed (the test default)…
    let mut sys = System::start(Db::Sqlite).await;
    sys.topic("literal", 1);
    let id = sys
        .app
        .subscribe(&one_attempt("literal", &sys.receiver.url, "literal"))
        .await;
    // …then the host restarts with public addresses only.
    sys.settings.delivery.destinations = DestinationPolicy::public_only();
    sys.restart().await;
    produce(&sys.producer, "literal", 0, &[json!({"n": 1})]).await;

    let status = wait_for_reason(&sys, &id).await;
    let reason = status["status_reason"].as_str().unwrap();
    assert!(
        reason.contains("the address 127.0.0.1 (loopback) is refused"),
        "{reason}"
    );
    assert!(
        sys.receiver.requests().is_empty(),
        "the receiver got {} requests",
        sys.receiver.requests().len()
    );
}
