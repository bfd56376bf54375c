//! `GET /metrics` on the real binary (a process of its own, so its figures
//! are only this test's): what a Prometheus scrape sees after deliveries,
//! filtered messages and an ingested record.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::delivery::{WAIT, values};
use crate::helpers::{ADMIN_TOKEN, BinaryApp, Db, System, produce, subscription};

/// The value of the sample of `metric` whose labels include all of `labels`.
fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, rest) = series.split_once('{').unwrap_or((series, ""));
            (name == metric).then_some((rest, value))
        })
        .find(|(rest, _)| {
            labels
                .iter()
                .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")))
        })
        .and_then(|(_, value)| value.parse().ok())
}

async fn scrape(address: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut request = reqwest::Client::new().get(format!("{address}/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

/// Scrapes until `ready` holds for the text.
async fn scrape_until(address: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, text) = scrape(address, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        if ready(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the metrics never showed what was expected:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_show_outcomes_attempts_latency_lag_and_ingest_per_subscription() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("metered", 2);
    // Only the binary delivers.
    sys.app.stop().await;
    let binary = BinaryApp::spawn(&sys.db.url, &sys.broker.bootstrap_servers()).await;
    let address = binary.address.clone();

    let (status, _) = scrape(&address, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a scrape needs a token");

    let mut body = subscription("metered", &sys.receiver.url, &["metered"]);
    body["source"][0]["jmes_filters"] = json!(["n < `6`"]);
    body["configuration"]["batching"] =
        json!({"max_batch_size": 3, "max_batch_interval_seconds": 1});
    let (status, created) = binary.caller().post("/1/Subscription", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();

    // Nine through Kafka, one over HTTP: n = 0..6 pass the filter, 6..10 do not.
    produce(&sys.producer, "metered", 0, &values(0..9)).await;
    let (status, written) = binary
        .caller()
        .post("/1/Topic/metered/Records", &json!({"n": 9}))
        .await;
    assert_eq!(status, StatusCode::OK, "{written}");
    sys.receiver.wait_for_delivered(6, WAIT).await;

    // One WebSocket bridge connection, opened and closed.
    let url = format!(
        "{}/1/ws?token={ADMIN_TOKEN}",
        address.replacen("http", "ws", 1)
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket.close(None).await.unwrap();

    let subscription = [("subscription", id.as_str())];
    let outcome = |name| [("subscription", id.as_str()), ("outcome", name)];
    let text = scrape_until(&address, |text| {
        sample(text, "wasmhook_messages_total", &outcome("delivered")) == Some(6.0)
            && sample(text, "wasmhook_messages_total", &outcome("filtered")) == Some(4.0)
            && sample(text, "wasmhook_consumer_lag_messages", &subscription).is_some()
            && sample(text, "wasmhook_ws_connections_closed_total", &[]) == Some(1.0)
    })
    .await;

    let successes = sample(
        &text,
        "wasmhook_delivery_attempts_total",
        &[
            ("subscription", id.as_str()),
            ("outcome", "success"),
            ("status_class", "2xx"),
        ],
    );
    assert!(
        successes.is_some_and(|n| n >= 2.0),
        "two batches at least: {text}"
    );
    let requests = sample(
        &text,
        "wasmhook_delivery_request_duration_seconds_count",
        &subscription,
    );
    assert_eq!(requests, successes, "one duration per request");
    assert_eq!(
        sample(
            &text,
            "wasmhook_delivery_latency_seconds_count",
            &subscription
        ),
        Some(6.0),
        "one latency per delivered message"
    );
    assert!(
        sample(
            &text,
            "wasmhook_delivery_latency_seconds_bucket",
            &[("subscription", id.as_str()), ("le", "+Inf")]
        ) == Some(6.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "wasmhook_ws_connections_opened_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "wasmhook_batches_in_flight", &subscription),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "wasmhook_ingest_records_total",
            &[("topic", "metered"), ("outcome", "written")]
        ),
        Some(1.0)
    );
    for described in [
        "# TYPE wasmhook_messages_total counter",
        "# TYPE wasmhook_delivery_latency_seconds histogram",
        "# TYPE wasmhook_consumer_lag_messages gauge",
        "# HELP wasmhook_delivery_attempts_total",
    ] {
        assert!(text.contains(described), "{described} missing:\n{text}");
    }
    assert!(
        sample(&text, "process_resident_memory_bytes", &[]).is_some_and(|bytes| bytes > 0.0),
        "process metrics: {text}"
    );
    binary.kill().await;
}
