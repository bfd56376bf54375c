//! Into Kafka over HTTP, end to end: `POST /1/Topic/{topic}/Records` → the
//! broker → a subscription → a real receiver, with key, partition and headers
//! honoured; JSON compacted or refused; `ack=none`; NDJSON batches with a
//! failing line; unknown topics on the mock cluster and on tansu (a broker
//! that does not auto-create topics); limits, ACLs and brokers that are down.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    Db, Receiver, System, Tansu, TestApp, TestDb, authed_client, subscription, test_settings,
};

const WAIT: Duration = Duration::from_secs(30);

/// POSTs `body` to `path` as the admin with these headers; the status and the body's text.
async fn post(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (StatusCode, String) {
    let mut request = app.http.post(app.url(path)).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| panic!("a JSON body, got {text:?}"))
}

/// The NDJSON results of a batch, one per line.
fn results(text: &str) -> Vec<Value> {
    text.lines().map(json_of).collect()
}

const JSON: (&str, &str) = ("content-type", "application/json");
const NDJSON: (&str, &str) = ("content-type", "application/x-ndjson");

/// A system with topic `orders` (3 partitions) delivered to the receiver.
async fn orders_system() -> System {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("orders", 3);
    sys.app
        .subscribe(&subscription("orders", &sys.receiver.url, &["orders"]))
        .await;
    sys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_reaches_a_subscriber_with_its_key_partition_headers_and_compacted_json() {
    let sys = orders_system().await;

    let (status, text) = post(
        &sys.app,
        "/1/Topic/orders/Records",
        &[
            JSON,
            ("wasmhook-key", "customer-7"),
            ("wasmhook-partition", "2"),
            ("wasmhook-header-trace-id", "abc123"),
            ("wasmhook-header-source", "shop"),
        ],
        "{\n  \"id\" : \"o-1\",\n  \"items\" : [ 1, 2 ],\n  \"note\": \"two  spaces\"\n}\n",
    )
    .await;

    assert_eq!(status, StatusCode::OK, "{text}");
    let answer = json_of(&text);
    assert_eq!(answer["topic"], "orders");
    assert_eq!(answer["partition"], 2);
    assert_eq!(answer["offset"], 0);
    assert!(
        answer["timestamp"].as_i64().unwrap() > 1_700_000_000_000,
        "{answer}"
    );
    let delivered = sys.receiver.wait_for_delivered(1, WAIT).await;
    let message = &delivered[0];
    assert_eq!(message["key"], "customer-7");
    assert_eq!(message["partition"], 2);
    assert_eq!(message["offset"], 0);
    assert_eq!(message["timestamp"], answer["timestamp"]);
    assert_eq!(
        message["headers"],
        json!([{"key": "trace-id", "value": "abc123"}, {"key": "source", "value": "shop"}])
    );
    // The value is embedded as sent to Kafka: compacted, strings untouched.
    let body = String::from_utf8(sys.receiver.requests()[0].body.to_vec()).unwrap();
    assert!(
        body.contains(r#""value":{"id":"o-1","items":[1,2],"note":"two  spaces"}"#),
        "{body}"
    );
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_key_can_come_from_a_json_path_and_a_raw_body_is_kept_as_sent() {
    let sys = orders_system().await;

    let (status, text) = post(
        &sys.app,
        "/1/Topic/orders/Records?key_path=customer.id",
        &[JSON],
        r#"{"customer": {"id": "c-42"}, "total": 3}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (status, text) = post(
        &sys.app,
        "/1/Topic/orders/Records",
        &[("content-type", "text/plain"), ("wasmhook-partition", "-1")],
        "not json {  at all",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");

    let delivered = sys.receiver.wait_for_delivered(2, WAIT).await;
    let by_key = delivered
        .iter()
        .find(|m| m["key"] == "c-42")
        .expect("keyed");
    assert_eq!(
        by_key["value"],
        json!({"customer": {"id": "c-42"}, "total": 3})
    );
    let raw = delivered.iter().find(|m| m["key"].is_null()).expect("raw");
    assert_eq!(raw["value"], "not json {  at all");
    assert_eq!(raw["value_encoding"], "string");
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_json_is_a_400_naming_the_error_and_its_position_and_nothing_is_produced() {
    let sys = orders_system().await;

    let (status, text) = post(
        &sys.app,
        "/1/Topic/orders/Records",
        &[JSON, ("wasmhook-partition", "0")],
        "{\"id\": 1,\n \"total\": }",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let body = json_of(&text);
    assert_eq!(body["code"], "malformed_json");
    assert!(
        body["message"].as_str().unwrap().contains("line 2 column"),
        "{body}"
    );
    let (status, text) = post(
        &sys.app,
        "/1/Topic/orders/Records?key_path=customer.id",
        &[JSON, ("wasmhook-partition", "0")],
        r#"{"customer": {}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let body = json_of(&text);
    assert_eq!(body["errors"][0]["field"], "key_path");
    assert!(
        body["message"].as_str().unwrap().contains("customer.id"),
        "{body}"
    );

    // The next good record is the first one on the partition.
    let (status, text) = post(
        &sys.app,
        "/1/Topic/orders/Records",
        &[JSON, ("wasmhook-partition", "0")],
        r#"{"good": true}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        json_of(&text)["offset"],
        0,
        "nothing was produced before it"
    );
    let delivered = sys.receiver.wait_for_delivered(1, WAIT).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["value"], json!({"good": true}));
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ack_none_answers_202_at_once_and_the_record_still_arrives() {
    let sys = orders_system().await;

    let (status, text) = post(
        &sys.app,
        "/1/Topic/orders/Records?ack=none",
        &[JSON, ("wasmhook-key", "k")],
        r#"{"fire": "and forget"}"#,
    )
    .await;

    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    assert_eq!(json_of(&text), json!({"topic": "orders", "records": 1}));
    let delivered = sys.receiver.wait_for_delivered(1, WAIT).await;
    assert_eq!(delivered[0]["value"], json!({"fire": "and forget"}));
    assert_eq!(delivered[0]["key"], "k");
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ndjson_batch_with_a_failing_line_is_a_207_and_the_other_lines_are_delivered_in_order() {
    let sys = orders_system().await;
    let batch = "{\"n\": 1}\n{\"n\": \n{\"n\": 3}\r\n\n{\"n\": 5}\n";

    let (status, text) = post(
        &sys.app,
        "/1/Topic/orders/Records",
        &[NDJSON, ("wasmhook-partition", "1")],
        batch,
    )
    .await;

    assert_eq!(status, StatusCode::MULTI_STATUS, "{text}");
    let answers = results(&text);
    let lines: Vec<i64> = answers
        .iter()
        .map(|r| r["line"].as_i64().unwrap())
        .collect();
    assert_eq!(
        lines,
        [1, 2, 3, 5],
        "one result per non-blank line, in order"
    );
    let statuses: Vec<i64> = answers
        .iter()
        .map(|r| r["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 400, 200, 200]);
    assert_eq!(answers[1]["code"], "malformed_json");
    assert!(
        answers[1]["message"].as_str().unwrap().contains("column"),
        "{text}"
    );
    let offsets: Vec<i64> = [0, 2, 3]
        .iter()
        .map(|&i| answers[i]["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, [0, 1, 2]);
    let delivered = sys.receiver.wait_for_delivered(3, WAIT).await;
    let values: Vec<&Value> = delivered.iter().map(|m| &m["value"]).collect();
    assert_eq!(
        values,
        [&json!({"n": 1}), &json!({"n": 3}), &json!({"n": 5})]
    );

    // All lines fine: 200.
    let (status, text) = post(&sys.app, "/1/Topic/orders/Records", &[NDJSON], "1\n2\n").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(results(&text).len(), 2);
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_topic_or_partition_is_a_404_and_the_topic_is_not_created() {
    let sys = orders_system().await;
    let brokers = sys.broker.bootstrap_servers();

    for (path, headers) in [
        ("/1/Topic/nowhere/Records", vec![JSON]),
        ("/1/Topic/nowhere/Records?ack=none", vec![JSON]),
        ("/1/Topic/nowhere/Records", vec![NDJSON]),
    ] {
        let (status, text) = post(&sys.app, path, &headers, "{}").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {text}");
        assert!(
            json_of(&text)["message"]
                .as_str()
                .unwrap()
                .contains("no topic nowhere")
        );
    }
    let lookup = wasmhook::kafka::Topics::new(
        &wasmhook::kafka::KafkaConnection::new(&brokers),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(
        lookup.partitions("nowhere").await.unwrap(),
        None,
        "not auto-created"
    );

    let (status, text) = post(
        &sys.app,
        "/1/Topic/orders/Records",
        &[JSON, ("wasmhook-partition", "3")],
        "{}",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
    assert!(text.contains("has no partition 3: it has 3,"), "{text}");
    for bad in ["two", "-5"] {
        let (status, text) = post(
            &sys.app,
            "/1/Topic/orders/Records",
            &[JSON, ("wasmhook-partition", bad)],
            "{}",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert_eq!(json_of(&text)["errors"][0]["field"], "wasmhook-partition");
    }
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_and_batches_over_their_limits_are_413s() {
    let sys = System::start_with(Db::Sqlite, |settings| {
        settings.ingest.max_record_bytes = 100;
        settings.ingest.max_request_bytes = 1000;
        settings.ingest.max_records = 5;
    })
    .await;
    sys.topic("orders", 1);
    let big = format!("\"{}\"", "x".repeat(200));

    let (status, text) = post(&sys.app, "/1/Topic/orders/Records", &[JSON], big.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    let (status, text) = post(
        &sys.app,
        "/1/Topic/orders/Records",
        &[NDJSON],
        "1\n".repeat(600),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    let (status, text) = post(
        &sys.app,
        "/1/Topic/orders/Records",
        &[NDJSON],
        "1\n".repeat(6),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    assert!(text.contains("more than 5 records"), "{text}");
    // A line over the record limit fails alone.
    let (status, text) = post(
        &sys.app,
        "/1/Topic/orders/Records",
        &[NDJSON],
        format!("1\n{big}\n3\n"),
    )
    .await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{text}");
    let statuses: Vec<i64> = results(&text)
        .iter()
        .map(|r| r["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 413, 200]);
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_may_produce_only_to_the_topics_its_acl_allows_and_a_token_is_needed() {
    let sys = orders_system().await;
    sys.topic("payments", 1);
    let admin = sys.app.caller(Some(crate::helpers::ADMIN_TOKEN));
    let acme = authed_client(&admin.tenant("acme", &["orders"]).await.token);

    let allowed = acme
        .post(sys.app.url("/1/Topic/orders/Records"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
    let refused = acme
        .post(sys.app.url("/1/Topic/payments/Records"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let text = refused.text().await.unwrap();
    assert!(text.contains("may not produce to topic payments"), "{text}");
    let anonymous = reqwest::Client::new()
        .post(sys.app.url("/1/Topic/orders/Records"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    // Only the allowed record arrives.
    let delivered = sys.receiver.wait_for_delivered(1, WAIT).await;
    assert_eq!(delivered.len(), 1);
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_brokers_down_a_record_is_a_503() {
    let db = TestDb::create(Db::Sqlite).await;
    let mut settings = test_settings(&db.url, "127.0.0.1:1");
    settings.delivery.kafka_admin_timeout = Duration::from_secs(1);
    let app = TestApp::spawn(settings).await;

    let (status, text) = post(&app, "/1/Topic/orders/Records", &[JSON], "{}").await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(json_of(&text)["code"], "unavailable");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_tansu_an_unknown_topic_is_a_404_and_a_created_topic_takes_records_to_a_subscriber() {
    let tansu = Tansu::start().await;
    let db = TestDb::create(Db::Sqlite).await;
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(test_settings(&db.url, &tansu.brokers)).await;
    let topics = wasmhook::kafka::Topics::new(
        &wasmhook::kafka::KafkaConnection::new(&tansu.brokers),
        Duration::from_secs(10),
    )
    .unwrap();

    let (status, text) = post(&app, "/1/Topic/events/Records", &[JSON], "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
    assert_eq!(topics.partitions("events").await.unwrap(), None);

    topics
        .ensure("events", wasmhook::kafka::TopicLayout::new(2, -1).unwrap())
        .await
        .unwrap();
    app.subscribe(&subscription("events", &receiver.url, &["events"]))
        .await;
    // The missing answer is remembered for a second at most.
    let deadline = tokio::time::Instant::now() + WAIT;
    let written = loop {
        let (status, text) = post(
            &app,
            "/1/Topic/events/Records",
            &[JSON, ("wasmhook-partition", "1"), ("wasmhook-key", "e1")],
            r#"{"event": 1}"#,
        )
        .await;
        if status == StatusCode::OK {
            break json_of(&text);
        }
        assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
        assert!(tokio::time::Instant::now() < deadline, "still 404: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(written["partition"], 1);
    let delivered = receiver
        .wait_for_delivered(1, Duration::from_secs(60))
        .await;
    assert_eq!(delivered[0]["value"], json!({"event": 1}));
    assert_eq!(delivered[0]["key"], "e1");
    assert_eq!(delivered[0]["partition"], 1);
    app.stop().await;
}
