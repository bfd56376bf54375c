//! The delivery engine end to end: the embedded Kafka-protocol broker, the
//! application, and a real HTTP receiver.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message};
use serde_json::{Value, json};

use crate::helpers::{
    BinaryApp, Db, SmtpServer, System, positions, produce, subscription, webhook_id_of,
};

pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) fn values(range: std::ops::Range<i64>) -> Vec<Value> {
    range.map(|n| json!({"n": n})).collect()
}

/// Asserts that, per partition, offsets arrive in increasing order once
/// repeats (redeliveries of a whole batch) are set aside.
pub(crate) fn assert_ordered_per_partition(messages: &[Value]) {
    let mut last: BTreeMap<(String, i64), i64> = BTreeMap::new();
    let mut seen = HashSet::new();
    for (topic, partition, offset) in positions(messages) {
        if !seen.insert((topic.clone(), partition, offset)) {
            continue;
        }
        if let Some(previous) = last.insert((topic.clone(), partition), offset) {
            assert!(
                offset > previous,
                "{topic}/{partition}: {offset} after {previous}"
            );
        }
    }
}

/// Asserts that every offset below `per_partition` of each partition of `topic` was delivered.
pub(crate) fn assert_none_missing(
    messages: &[Value],
    topic: &str,
    partitions: i64,
    per_partition: i64,
) {
    let (set, _) = distinct(messages);
    let missing: Vec<(i64, i64)> = (0..partitions)
        .flat_map(|p| (0..per_partition).map(move |o| (p, o)))
        .filter(|(p, o)| !set.contains(&(topic.to_string(), *p, *o)))
        .collect();
    assert!(
        missing.is_empty(),
        "nothing lost, but these (partition, offset) were: {missing:?}"
    );
}

/// The distinct (topic, partition, offset) delivered, and how many repeats.
pub(crate) fn distinct(messages: &[Value]) -> (HashSet<(String, i64, i64)>, usize) {
    let all = positions(messages);
    let set: HashSet<_> = all.iter().cloned().collect();
    let repeats = all.len() - set.len();
    (set, repeats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_is_delivered_once_in_order_and_signed() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("orders", 3);
    let (status, created) = sys
        .app
        .post(
            "/1/Subscription",
            &subscription("orders", &sys.receiver.url, &["orders"]),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["signing_secret"].as_str().unwrap().to_string();
    for partition in 0..3 {
        produce(&sys.producer, "orders", partition, &values(0..30)).await;
    }

    let delivered = sys.receiver.wait_for_delivered(90, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let delivered_after = sys.receiver.delivered();
    assert_eq!(delivered_after.len(), 90, "exactly once when nothing fails");
    assert_eq!(
        sys.receiver.most_at_once(),
        1,
        "one batch in flight at a time by default"
    );
    let (set, repeats) = distinct(&delivered);
    assert_eq!((set.len(), repeats), (90, 0));
    assert_ordered_per_partition(&delivered);
    assert_eq!(delivered[0]["value_encoding"], "json");
    assert!(delivered[0]["value"]["n"].is_i64());

    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    for request in sys.receiver.requests() {
        assert!(request.messages().len() <= 10, "max_batch_size holds");
        verifier
            .verify(&request.body, &request.headers)
            .expect("the Standard Webhooks signature verifies");
        assert_eq!(request.headers["authorization"], "Bearer test-token");
        assert_eq!(
            request.headers["webhook-id"],
            webhook_id_of(&request.messages()).as_str(),
            "the id names exactly the messages of the request"
        );
    }

    let id = created["id"].as_str().unwrap();
    let status = sys.app.status_of(id).await;
    assert_eq!(status["status"], "healthy");
    assert_eq!(status["counts"]["delivered"], 90);
    let call = status["recent_activity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "api_call")
        .expect("an api_call entry");
    assert_eq!(call["response_code"], 200);
    assert_eq!(call["request"], format!("POST {}", sys.receiver.url));
    let headers = call["request_headers"].to_string();
    assert!(
        headers.contains("authorization: ********") && !headers.contains("test-token"),
        "{headers}"
    );
    assert!(!call["response_headers"].as_array().unwrap().is_empty());
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jmes_filters_pass_only_matching_json_and_count_the_rest() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("payments", 1);
    let mut body = subscription("big-euro", &sys.receiver.url, &["payments"]);
    body["source"][0]["jmes_filters"] = json!(["amount > `10`", "currency == 'EUR'"]);
    let id = sys.app.subscribe(&body).await;
    let messages = vec![
        json!({"amount": 50, "currency": "EUR", "k": 1}),
        json!({"amount": 5, "currency": "EUR", "k": 2}),
        json!({"amount": 50, "currency": "USD", "k": 3}),
        json!("not an object"),
        json!({"amount": 11, "currency": "EUR", "k": 5}),
    ];
    produce(&sys.producer, "payments", 0, &messages).await;
    // Not JSON at all: fails any filter.
    let raw = rdkafka::producer::FutureRecord::<str, str>::to("payments")
        .partition(0)
        .payload("amount=99");
    sys.producer
        .send(raw, Duration::from_secs(5))
        .await
        .unwrap();
    produce(
        &sys.producer,
        "payments",
        0,
        &[json!({"amount": 12, "currency": "EUR", "k": 7})],
    )
    .await;

    let delivered = sys.receiver.wait_for_delivered(3, WAIT).await;
    let ks: Vec<i64> = delivered
        .iter()
        .map(|m| m["value"]["k"].as_i64().unwrap())
        .collect();
    assert_eq!(ks, [1, 5, 7]);
    // Filtered messages are a final outcome: counted and committed.
    let status = sys
        .app
        .wait_for_status(&id, WAIT, |s| s["counts"]["filtered"] == 4)
        .await;
    assert_eq!(status["counts"]["delivered"], 3);
    sys.app.stop().await;
}

/// The pipeline takes every message already fetched in one turn of its loop
/// (up to a limit), so a backlog with a filter that keeps few is where a
/// message could slip between two turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_taken_many_messages_a_turn_loses_nothing_and_counts_everything() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("backlog", 2);
    let per_partition = 2500;
    for partition in 0..2 {
        let values: Vec<Value> = (0..per_partition)
            .map(|n| json!({"n": n, "keep": n % 10 == 0}))
            .collect();
        produce(&sys.producer, "backlog", partition, &values).await;
    }
    let mut body = subscription("backlog", &sys.receiver.url, &["backlog"]);
    body["source"][0]["jmes_filters"] = json!(["keep"]);
    body["configuration"]["batching"] =
        json!({"max_batch_size": 1000, "max_batch_interval_seconds": 1});
    let id = sys.app.subscribe(&body).await;

    let kept = 2 * per_partition as usize / 10;
    let status = sys
        .app
        .wait_for_status(&id, WAIT, |s| {
            s["counts"]["delivered"].as_u64().unwrap_or(0)
                + s["counts"]["filtered"].as_u64().unwrap_or(0)
                >= 2 * per_partition as u64
        })
        .await;
    assert_eq!(status["counts"]["delivered"], kept, "{status}");
    assert_eq!(
        status["counts"]["filtered"],
        2 * per_partition - kept as i64
    );
    let delivered = sys.receiver.wait_for_delivered(kept, WAIT).await;
    let (set, repeats) = distinct(&delivered);
    assert_eq!((set.len(), repeats), (kept, 0));
    assert!(delivered.iter().all(|m| m["value"]["keep"] == true));
    assert_ordered_per_partition(&delivered);
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_flush_at_max_size_and_at_the_interval() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("by-size", 1);
    sys.topic("by-time", 1);
    let mut by_size = subscription("size", &sys.receiver.url, &["by-size"]);
    by_size["configuration"]["batching"] =
        json!({"max_batch_size": 5, "max_batch_interval_seconds": 300});
    sys.app.subscribe(&by_size).await;
    produce(&sys.producer, "by-size", 0, &values(0..20)).await;
    sys.receiver.wait_for_delivered(20, WAIT).await;
    assert_eq!(
        sys.receiver.batch_sizes(),
        [5, 5, 5, 5],
        "a 300 s interval never fires here: size alone flushed"
    );

    let mut by_time = subscription("time", &sys.receiver.url, &["by-time"]);
    by_time["configuration"]["batching"] =
        json!({"max_batch_size": 1000, "max_batch_interval_seconds": 1});
    sys.app.subscribe(&by_time).await;
    produce(&sys.producer, "by-time", 0, &values(0..3)).await;
    sys.receiver.wait_for_delivered(23, WAIT).await;
    let last = sys.receiver.requests().last().unwrap().messages();
    assert_eq!(last.len(), 3, "the interval flushed a partial batch");
    sys.app.stop().await;
}

/// A JSON value `{"n": n, "pad": "…"}` of exactly `bytes` bytes.
fn value_of_size(n: i64, bytes: usize) -> Value {
    let bare = json!({"n": n, "pad": ""}).to_string().len();
    json!({"n": n, "pad": "x".repeat(bytes - bare)})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_are_capped_in_bytes_and_a_message_above_the_cap_goes_alone() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("by-bytes", 1);
    let mut body = subscription("bytes", &sys.receiver.url, &["by-bytes"]);
    body["configuration"]["batching"] =
        json!({"max_batch_size": 1000, "max_batch_interval_seconds": 300, "max_batch_bytes": 1000});
    let (status, refused) = sys.app.post("/1/Subscription", &body).await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("configuration.batching.max_batch_bytes")
            && refused.to_string().contains("between 1024 and 67108864"),
        "the error names the field and its range: {refused}"
    );

    body["configuration"]["batching"]["max_batch_bytes"] = json!(1024);
    let id = sys.app.subscribe(&body).await;
    let (_, shown) = sys.app.get(&format!("/1/Subscription/{id}")).await;
    assert_eq!(shown["configuration"]["batching"]["max_batch_bytes"], 1024);

    // Eight of 256 bytes, one of 3000, four of 256: with a 300 s interval only
    // the byte cap can close these batches.
    let mut messages: Vec<Value> = (0..8).map(|n| value_of_size(n, 256)).collect();
    messages.push(value_of_size(8, 3000));
    messages.extend((9..13).map(|n| value_of_size(n, 256)));
    produce(&sys.producer, "by-bytes", 0, &messages).await;
    let delivered = sys.receiver.wait_for_delivered(13, WAIT).await;
    assert_none_missing(&delivered, "by-bytes", 1, 13);
    assert_eq!(
        sys.receiver.batch_sizes(),
        [4, 4, 1, 4],
        "four of 256 B fill 1024 B; 3000 B goes alone"
    );
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_delivery_is_retried_with_the_same_id_until_it_succeeds() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("retry", 1);
    sys.receiver
        .script(&[(500, None), (503, Some(1)), (429, None)]);
    let mut body = subscription("retrying", &sys.receiver.url, &["retry"]);
    body["configuration"]["retry"] = json!({"max_retries": 3, "retry_algorithm": "fixed_time"});
    let id = sys.app.subscribe(&body).await;
    produce(&sys.producer, "retry", 0, &values(0..4)).await;

    let delivered = sys.receiver.wait_for_delivered(4, WAIT).await;
    assert_eq!(delivered.len(), 4);
    let requests = sys.receiver.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 503, 429, 200]);
    let ids: HashSet<_> = requests
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    assert_eq!(ids.len(), 1, "the delivery id is stable across retries");

    // The receiver has the request before wasmhook has its answer and records it.
    let api_calls = |status: &Value| {
        status["recent_activity"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|e| e["event"] == "api_call").count())
    };
    let status = sys
        .app
        .wait_for_status(&id, WAIT, |s| api_calls(s) == 4)
        .await;
    assert_eq!(status["status"], "healthy");
    let codes: Vec<i64> = status["recent_activity"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "api_call")
        .map(|e| e["response_code"].as_i64().unwrap())
        .collect();
    assert_eq!(
        codes,
        [200, 429, 503, 500],
        "one api_call per attempt, newest first"
    );
    sys.app.stop().await;
}

/// Reads `n` messages of a topic from its beginning.
async fn consume(brokers: &str, topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let received = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("{n} messages on {topic} within {WAIT:?}, got {}", out.len())
            });
        // A new topic may answer errors before its partitions are assigned.
        if let Ok(message) = received {
            out.push(message.detach());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exhausted_retries_dead_letter_the_batch_alert_and_recover() {
    let smtp = SmtpServer::start();
    let sys = System::start_with(Db::Sqlite, |s| {
        s.smtp = Some(smtp.settings());
        s.delivery.alert_interval = Duration::ZERO;
    })
    .await;
    sys.topic("doomed", 1);
    sys.receiver.answer(500);
    let mut body = subscription("doomed-orders", &sys.receiver.url, &["doomed"]);
    body["configuration"]["retry"] =
        json!({"max_retries": 2, "retry_algorithm": "exponential_backoff"});
    body["configuration"]["alerting"] =
        json!({"alert_channel": "email", "alert_emails": ["ops@example.com"]});
    let id = sys.app.subscribe(&body).await;
    produce(&sys.producer, "doomed", 0, &values(0..3)).await;

    let mut dead = consume(
        &sys.broker.bootstrap_servers(),
        &format!("webhooks-{id}-dlq"),
        3,
    )
    .await;
    // The dead-letter topic is auto-created with 4 partitions and its messages
    // have no key: they are ordered per partition only, so compare by source offset.
    dead.sort_by_key(|m| {
        m.headers()
            .and_then(|h| h.iter().find(|h| h.key == "wasmhook-source-offset"))
            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse::<i64>().ok())
    });
    assert_eq!(sys.receiver.requests().len(), 3, "1 attempt + 2 retries");
    let header = |m: &rdkafka::message::OwnedMessage, key: &str| -> String {
        let headers = m.headers().unwrap();
        let h = headers
            .iter()
            .find(|h| h.key == key)
            .unwrap_or_else(|| panic!("header {key}"));
        String::from_utf8(h.value.unwrap().to_vec()).unwrap()
    };
    for (i, message) in dead.iter().enumerate() {
        assert_eq!(
            message.payload().unwrap(),
            json!({"n": i}).to_string().as_bytes()
        );
        assert!(
            header(message, "wasmhook-failure-reason").contains("500"),
            "{}",
            header(message, "wasmhook-failure-reason")
        );
        assert_eq!(header(message, "wasmhook-source-topic"), "doomed");
        assert_eq!(header(message, "wasmhook-source-offset"), i.to_string());
    }

    let mails = smtp.wait_for_mail(1, WAIT).await;
    assert_eq!(mails[0].to, ["ops@example.com"]);
    assert!(mails[0].data.contains("doomed-orders"), "{}", mails[0].data);
    assert!(
        mails[0].data.contains("500"),
        "the reason is in the mail: {}",
        mails[0].data
    );
    let status = sys.app.status_of(&id).await;
    assert_eq!(status["status"], "unhealthy");
    assert_eq!(status["dead_letters"][0]["messages"], 3);
    assert_eq!(status["counts"]["dead_lettered"], 3);

    // The dead-lettered batch was committed: after recovery only new messages come.
    sys.receiver.answer(200);
    produce(&sys.producer, "doomed", 0, &values(3..5)).await;
    let delivered = sys.receiver.wait_for_delivered(2, WAIT).await;
    let ns: Vec<i64> = delivered
        .iter()
        .map(|m| m["value"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, [3, 4]);
    // Recovers after a success.
    sys.app
        .wait_for_status(&id, WAIT, |s| s["status"] == "healthy")
        .await;
    let mails = smtp.wait_for_mail(2, WAIT).await;
    assert!(mails[1].data.contains("recovered"), "{}", mails[1].data);
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_that_is_down_for_a_while_loses_nothing_and_order_holds() {
    // 10 retries must outlast the 2 s outage whatever the jitter: with waits
    // capped at 1 s they take at least 3.2 s (at 400 ms they could end in 1.6 s,
    // and the batch would rightly go to the dead letter instead).
    let sys = System::start_with(Db::Sqlite, |s| {
        s.delivery.retry_max_delay = Duration::from_secs(1);
    })
    .await;
    sys.topic("outage", 2);
    let mut body = subscription("outage", &sys.receiver.url, &["outage"]);
    body["configuration"]["retry"] =
        json!({"max_retries": 10, "retry_algorithm": "exponential_backoff"});
    body["configuration"]["batching"] =
        json!({"max_batch_size": 7, "max_batch_interval_seconds": 1});
    sys.app.subscribe(&body).await;
    produce(&sys.producer, "outage", 0, &values(0..10)).await;
    sys.receiver.wait_for_delivered(10, WAIT).await;

    sys.receiver.go_down().await;
    produce(&sys.producer, "outage", 0, &values(10..40)).await;
    produce(&sys.producer, "outage", 1, &values(0..30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sys.receiver.come_up().await;

    let delivered = sys.receiver.wait_for_delivered(70, WAIT).await;
    let (set, _) = distinct(&delivered);
    assert_eq!(set.len(), 70, "nothing lost");
    assert_ordered_per_partition(&delivered);
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_restart_mid_stream_loses_and_repeats_nothing() {
    let mut sys = System::start(Db::Sqlite).await;
    sys.topic("restart", 2);
    sys.receiver.delay_answers(Some(Duration::from_millis(50)));
    let mut body = subscription("restart", &sys.receiver.url, &["restart"]);
    body["configuration"]["batching"] =
        json!({"max_batch_size": 5, "max_batch_interval_seconds": 1});
    sys.app.subscribe(&body).await;
    produce(&sys.producer, "restart", 0, &values(0..100)).await;
    produce(&sys.producer, "restart", 1, &values(0..100)).await;
    sys.receiver.wait_for_delivered(30, WAIT).await;

    sys.restart().await;
    let delivered = sys.receiver.wait_for_delivered(200, WAIT).await;
    let (_, repeats) = distinct(&delivered);
    assert_none_missing(&delivered, "restart", 2, 100);
    // A batch whose request was in flight at the stop was delivered but not
    // committed only if the grace period ran out; here it never does.
    assert!(
        repeats <= 10,
        "{repeats} repeats: at most the batches in flight (2 × 5)"
    );
    assert_ordered_per_partition(&delivered);
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_and_attempts_kept_in_memory_are_written_before_a_graceful_stop() {
    let mut sys = System::start(Db::Sqlite).await;
    sys.topic("books", 1);
    let mut body = subscription("books", &sys.receiver.url, &["books"]);
    body["configuration"]["batching"] =
        json!({"max_batch_size": 5, "max_batch_interval_seconds": 1});
    let id = sys.app.subscribe(&body).await;
    produce(&sys.producer, "books", 0, &values(0..20)).await;
    sys.receiver.wait_for_delivered(20, WAIT).await;
    // Shown at once by the host that delivered, flushed or not.
    let status = sys
        .app
        .wait_for_status(&id, WAIT, |s| s["counts"]["delivered"] == 20)
        .await;
    assert!(
        status["recent_activity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "api_call" && e["response_code"] == 200)
    );

    // The new process has nothing in memory: what it shows was written.
    sys.restart().await;
    let status = sys.app.status_of(&id).await;
    assert_eq!(status["counts"]["delivered"], 20);
    let calls = status["recent_activity"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "api_call")
        .count();
    assert_eq!(
        calls,
        sys.receiver.requests().len(),
        "every attempt recorded once"
    );
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_process_loses_nothing_and_repeats_at_most_the_batches_in_flight() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("crash", 3);
    let mut body = subscription("crash", &sys.receiver.url, &["crash"]);
    body["configuration"]["batching"] =
        json!({"max_batch_size": 10, "max_batch_interval_seconds": 1});
    // From here on the binary delivers; the in-process application only
    // registers, inactive, so that it never joins the consumer group (see
    // `hosts::registered` for why).
    body["active"] = json!("no");
    let id = sys.app.subscribe(&body).await;
    sys.app.stop().await;
    for partition in 0..3 {
        produce(&sys.producer, "crash", partition, &values(0..200)).await;
    }
    sys.receiver.delay_answers(Some(Duration::from_millis(20)));
    let brokers = sys.broker.bootstrap_servers();

    let binary = BinaryApp::spawn(&sys.db.url, &brokers).await;
    binary.caller().activate(&id).await;
    sys.receiver.wait_for_delivered(150, WAIT).await;
    binary.kill().await;
    let at_kill = sys.receiver.requests().len();

    let binary = BinaryApp::spawn(&sys.db.url, &brokers).await;
    let health = reqwest::get(format!("{}/healthz", binary.address))
        .await
        .unwrap();
    assert_eq!(health.text().await.unwrap(), "OK");
    let delivered = sys
        .receiver
        .wait_for_delivered(600, Duration::from_secs(60))
        .await;
    let (_, repeats) = distinct(&delivered);
    assert_none_missing(&delivered, "crash", 3, 200);
    assert!(
        repeats <= 30,
        "{repeats} repeats after {at_kill} requests: at most one uncommitted batch per partition"
    );
    assert_ordered_per_partition(&delivered);
    binary.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_broker_for_a_while_loses_nothing() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("flaky", 2);
    sys.receiver.delay_answers(Some(Duration::from_millis(30)));
    let mut body = subscription("flaky", &sys.receiver.url, &["flaky"]);
    body["configuration"]["batching"] =
        json!({"max_batch_size": 5, "max_batch_interval_seconds": 1});
    sys.app.subscribe(&body).await;
    produce(&sys.producer, "flaky", 0, &values(0..100)).await;
    produce(&sys.producer, "flaky", 1, &values(0..100)).await;
    sys.receiver.wait_for_delivered(20, WAIT).await;

    sys.broker.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    sys.broker.broker_up(1).unwrap();

    let delivered = sys
        .receiver
        .wait_for_delivered(200, Duration::from_secs(60))
        .await;
    let (set, _) = distinct(&delivered);
    assert_eq!(set.len(), 200, "nothing lost");
    assert_ordered_per_partition(&delivered);
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_stops_delivery_and_online_resumes_from_the_committed_position() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("switch", 1);
    let id = sys
        .app
        .subscribe(&subscription("switch", &sys.receiver.url, &["switch"]))
        .await;
    produce(&sys.producer, "switch", 0, &values(0..5)).await;
    sys.receiver.wait_for_delivered(5, WAIT).await;

    sys.app
        .set_platform("offline", "Upgrading the receivers")
        .await;
    let status = sys.app.status_of(&id).await;
    assert_eq!(status["status"], "inactive");
    assert_eq!(status["offline_message"], "Upgrading the receivers");
    tokio::time::sleep(Duration::from_millis(500)).await;
    produce(&sys.producer, "switch", 0, &values(5..10)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sys.receiver.delivered().len(),
        5,
        "nothing is delivered while offline"
    );

    sys.app.set_platform("online", "").await;
    let delivered = sys.receiver.wait_for_delivered(10, WAIT).await;
    let ns: Vec<i64> = delivered
        .iter()
        .map(|m| m["value"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, (0..10).collect::<Vec<_>>());
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_subscription_stops_its_delivery() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("gone", 1);
    let id = sys
        .app
        .subscribe(&subscription("gone", &sys.receiver.url, &["gone"]))
        .await;
    produce(&sys.producer, "gone", 0, &values(0..3)).await;
    sys.receiver.wait_for_delivered(3, WAIT).await;
    assert_eq!(sys.app.delete(&format!("/1/Subscription/{id}")).await, 204);
    tokio::time::sleep(Duration::from_millis(500)).await;
    produce(&sys.producer, "gone", 0, &values(3..6)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sys.receiver.delivered().len(), 3);
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn updating_filters_takes_effect_without_losing_position() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("kinds", 1);
    let mut body = subscription("kinds", &sys.receiver.url, &["kinds"]);
    body["source"][0]["jmes_filters"] = json!(["kind == 'a'"]);
    let id = sys.app.subscribe(&body).await;
    let mixed = |from: i64| -> Vec<Value> {
        (from..from + 6)
            .map(|n| json!({"n": n, "kind": if n % 2 == 0 { "a" } else { "b" }}))
            .collect()
    };
    produce(&sys.producer, "kinds", 0, &mixed(0)).await;
    sys.receiver.wait_for_delivered(3, WAIT).await;

    body["source"][0]["jmes_filters"] = json!(["kind == 'b'"]);
    let (status, _) = sys.app.put(&format!("/1/Subscription/{id}"), &body).await;
    assert_eq!(status, 200);
    produce(&sys.producer, "kinds", 0, &mixed(6)).await;
    let delivered = sys.receiver.wait_for_delivered(6, WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ns: Vec<i64> = sys
        .receiver
        .delivered()
        .iter()
        .map(|m| m["value"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ns,
        [0, 2, 4, 7, 9, 11],
        "old messages are not replayed; new ones use the new filter"
    );
    assert_eq!(delivered.len(), 6);
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_spaces_requests_out() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("limited", 1);
    let mut body = subscription("limited", &sys.receiver.url, &["limited"]);
    body["configuration"]["batching"] =
        json!({"max_batch_size": 1, "max_batch_interval_seconds": 1});
    body["configuration"]["rate_limit"] = json!({"max_requests_per_second": 2});
    sys.app.subscribe(&body).await;
    produce(&sys.producer, "limited", 0, &values(0..7)).await;
    sys.receiver.wait_for_requests(1, WAIT).await;
    let started = tokio::time::Instant::now();
    sys.receiver.wait_for_delivered(7, WAIT).await;
    // 2 per second with a burst of 2: the last 6 requests need at least 2 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivery_works_with_the_postgresql_registry() {
    let sys = System::start(Db::Postgres).await;
    sys.topic("pg", 2);
    let id = sys
        .app
        .subscribe(&subscription("pg", &sys.receiver.url, &["pg"]))
        .await;
    produce(&sys.producer, "pg", 0, &values(0..15)).await;
    produce(&sys.producer, "pg", 1, &values(0..15)).await;
    let delivered = sys.receiver.wait_for_delivered(30, WAIT).await;
    assert_eq!(distinct(&delivered).0.len(), 30);
    sys.app
        .wait_for_status(&id, WAIT, |s| s["counts"]["delivered"] == 30)
        .await;
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_commits_pause_fetching_until_one_succeeds_and_nothing_is_lost() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let sys = System::start(Db::Sqlite).await;
    sys.topic("commits", 1);
    let mut body = subscription("commits", &sys.receiver.url, &["commits"]);
    body["configuration"]["batching"] =
        json!({"max_batch_size": 5, "max_batch_interval_seconds": 1});
    let id = sys.app.subscribe(&body).await;
    produce(&sys.producer, "commits", 0, &values(0..5)).await;
    sys.receiver.wait_for_delivered(5, WAIT).await;

    // The broker refuses every commit (an error librdkafka does not retry).
    sys.broker.fail_requests(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 1000],
    );
    // Slow answers: the failures are noticed long before all is delivered.
    sys.receiver.delay_answers(Some(Duration::from_millis(200)));
    produce(&sys.producer, "commits", 0, &values(5..200)).await;
    let paused = sys
        .app
        .wait_for_status(&id, WAIT, |s| s["consumer"]["state"] == "paused")
        .await;
    let reason = paused["consumer"]["reason"].as_str().unwrap();
    assert!(reason.contains("commits failed in a row"), "{reason}");
    let while_paused = positions(&sys.receiver.delivered()).len();
    assert!(
        while_paused < 200,
        "fetching stopped before everything was taken on"
    );

    // Once a commit goes through, fetching resumes and everything arrives.
    sys.broker
        .stop_failing_requests(RDKafkaApiKey::OffsetCommit);
    sys.receiver.delay_answers(None);
    sys.app
        .wait_for_status(&id, WAIT, |s| s["consumer"]["state"] == "running")
        .await;
    let delivered = sys.receiver.wait_for_delivered(200, WAIT).await;
    assert_none_missing(&delivered, "commits", 1, 200);
    assert_ordered_per_partition(&delivered);
    sys.app.stop().await;
}

/// The partitions of a status's consumer, as (partition, lag, committed offset).
fn lags(status: &Value) -> Vec<(i64, i64, i64)> {
    status["consumer"]["partitions"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|p| {
                    (
                        p["partition"].as_i64().unwrap(),
                        p["lag"].as_i64().unwrap(),
                        p["committed_offset"].as_i64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_shows_this_hosts_consumer_state_and_lag_per_partition() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("lagging", 2);
    let mut body = subscription("lagging", &sys.receiver.url, &["lagging"]);
    body["configuration"]["batching"] =
        json!({"max_batch_size": 5, "max_batch_interval_seconds": 1});
    body["configuration"]["retry"] = json!({"max_retries": 10, "retry_algorithm": "fixed_time"});
    let id = sys.app.subscribe(&body).await;
    produce(&sys.producer, "lagging", 0, &values(0..10)).await;
    produce(&sys.producer, "lagging", 1, &values(0..10)).await;
    sys.receiver.wait_for_delivered(20, WAIT).await;
    let caught_up = sys
        .app
        .wait_for_status(&id, WAIT, |s| lags(s) == [(0, 0, 10), (1, 0, 10)])
        .await;
    assert_eq!(caught_up["consumer"]["state"], "running");
    assert!(
        caught_up["consumer"]["host"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );

    // The webhook fails: the consumer is retrying, and partition 0 falls behind.
    sys.receiver.answer(503);
    produce(&sys.producer, "lagging", 0, &values(10..15)).await;
    let behind = sys
        .app
        .wait_for_status(&id, WAIT, |s| {
            s["consumer"]["state"] == "retrying" && lags(s) == [(0, 5, 10), (1, 0, 10)]
        })
        .await;
    assert!(
        behind["consumer"]["reason"]
            .as_str()
            .unwrap()
            .contains("the webhook answered 503"),
        "{behind}"
    );
    sys.receiver.answer(200);
    sys.app
        .wait_for_status(&id, WAIT, |s| {
            s["consumer"]["state"] == "running" && lags(s) == [(0, 0, 15), (1, 0, 10)]
        })
        .await;
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_topic_gone_missing_turns_the_subscription_unhealthy_and_nothing_is_committed_past_it()
 {
    use rdkafka::types::RDKafkaRespErr;
    let sys = System::start(Db::Sqlite).await;
    sys.topic("doomed", 1);
    let mut body = subscription("doomed", &sys.receiver.url, &["doomed"]);
    body["configuration"]["retry"] = json!({"max_retries": 1, "retry_algorithm": "fixed_time"});
    let id = sys.app.subscribe(&body).await;
    let dead_letter_topic = format!("webhooks-{id}-dlq");
    sys.broker
        .set_topic_error(
            &dead_letter_topic,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        )
        .unwrap();
    sys.receiver.answer(500);
    produce(&sys.producer, "doomed", 0, &values(0..3)).await;

    let stuck = sys
        .app
        .wait_for_status(&id, Duration::from_secs(60), |s| {
            s["status"] == "unhealthy"
                && s["status_reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(&dead_letter_topic))
        })
        .await;
    let reason = stuck["status_reason"].as_str().unwrap();
    assert!(reason.contains("does not exist"), "{reason}");
    assert_eq!(stuck["counts"]["dead_lettered"], 0, "{stuck}");

    // The topic is back: the batch is written there, then committed.
    sys.broker
        .set_topic_error(
            &dead_letter_topic,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR,
        )
        .unwrap();
    sys.app
        .wait_for_status(&id, Duration::from_secs(60), |s| {
            s["counts"]["dead_lettered"] == 3
        })
        .await;
    let dead = consume(&sys.broker.bootstrap_servers(), &dead_letter_topic, 3).await;
    assert_eq!(dead.len(), 3);
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn static_membership_delivers_and_a_restart_takes_the_partitions_back() {
    let mut sys = System::start_with(Db::Sqlite, |settings| {
        settings.delivery.instance_id = Some("host-a".into());
    })
    .await;
    sys.topic("static", 2);
    let mut body = subscription("static", &sys.receiver.url, &["static"]);
    body["configuration"]["batching"] =
        json!({"max_batch_size": 5, "max_batch_interval_seconds": 1});
    let id = sys.app.subscribe(&body).await;
    produce(&sys.producer, "static", 0, &values(0..10)).await;
    produce(&sys.producer, "static", 1, &values(0..10)).await;
    sys.receiver.wait_for_delivered(20, WAIT).await;

    // Same instance id after the restart: the broker hands it its partitions
    // back as the same member; it goes on from the committed positions.
    sys.restart().await;
    produce(&sys.producer, "static", 0, &values(10..20)).await;
    produce(&sys.producer, "static", 1, &values(10..20)).await;
    let delivered = sys.receiver.wait_for_delivered(40, WAIT).await;
    assert_none_missing(&delivered, "static", 2, 20);
    let (_, repeats) = distinct(&delivered);
    assert_eq!(repeats, 0, "a graceful restart repeats nothing");
    let status = sys
        .app
        .wait_for_status(&id, WAIT, |s| lags(s).len() == 2)
        .await;
    assert_eq!(status["consumer"]["host"], "host-a");
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_two_batches_in_flight_a_partition_held_up_does_not_hold_up_the_others_and_with_one_it_does()
 {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("lanes", 2);
    sys.topic("strict", 2);
    let mut body = subscription("lanes", &sys.receiver.url, &["lanes"]);
    for out_of_range in [0, 65] {
        body["configuration"]["batching"]["max_in_flight_batches"] = json!(out_of_range);
        let (status, refused) = sys.app.post("/1/Subscription", &body).await;
        assert_eq!(status, 400, "{refused}");
        assert!(
            refused
                .to_string()
                .contains("configuration.batching.max_in_flight_batches")
                && refused.to_string().contains("between 1 and 64"),
            "the error names the field and its range: {refused}"
        );
    }
    body["configuration"]["batching"]["max_in_flight_batches"] = json!(2);
    let id = sys.app.subscribe(&body).await;
    let (_, shown) = sys.app.get(&format!("/1/Subscription/{id}")).await;
    assert_eq!(
        shown["configuration"]["batching"]["max_in_flight_batches"],
        2
    );

    // Two lanes: partition 1 is delivered while partition 0's request is held.
    sys.receiver.hold("lanes", 0);
    produce(&sys.producer, "lanes", 0, &values(0..5)).await;
    sys.receiver.wait_for_held(1, WAIT).await;
    let produced = tokio::time::Instant::now();
    produce(&sys.producer, "lanes", 1, &values(0..5)).await;
    let delivered = sys.receiver.wait_for_delivered(5, WAIT).await;
    let went_by = produced.elapsed();
    assert!(
        delivered.iter().all(|m| m["partition"] == 1),
        "only partition 1 went by: {delivered:?}"
    );
    sys.receiver.release();
    let delivered = sys.receiver.wait_for_delivered(10, WAIT).await;
    assert_none_missing(&delivered, "lanes", 2, 5);
    assert_ordered_per_partition(&delivered);

    // One lane (the default): partition 1 waits behind partition 0's batch,
    // for several times as long as it took to go by with two.
    let strict = subscription("strict", &sys.receiver.url, &["strict"]);
    assert!(strict["configuration"]["batching"]["max_in_flight_batches"].is_null());
    sys.app.subscribe(&strict).await;
    sys.receiver.hold("strict", 0);
    produce(&sys.producer, "strict", 0, &values(0..5)).await;
    sys.receiver.wait_for_held(1, WAIT).await;
    produce(&sys.producer, "strict", 1, &values(0..5)).await;
    tokio::time::sleep((went_by * 3).max(Duration::from_secs(3))).await;
    let strict_delivered = |sys: &System| -> Vec<Value> {
        sys.receiver
            .delivered()
            .into_iter()
            .filter(|m| m["topic"] == "strict")
            .collect()
    };
    assert!(
        strict_delivered(&sys).is_empty(),
        "nothing of partition 1 went by the held batch of partition 0"
    );
    sys.receiver.release();
    sys.receiver.wait_for_delivered(20, WAIT).await;
    let delivered = strict_delivered(&sys);
    assert_none_missing(&delivered, "strict", 2, 5);
    assert_ordered_per_partition(&delivered);
    assert_eq!(
        delivered[0]["partition"], 0,
        "the held batch first, then what waited behind it"
    );
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lanes_deliver_at_once_and_keep_every_partition_in_order() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("many", 4);
    let mut body = subscription("many", &sys.receiver.url, &["many"]);
    body["configuration"]["batching"] =
        json!({"max_batch_size": 5, "max_batch_interval_seconds": 1, "max_in_flight_batches": 4});
    let id = sys.app.subscribe(&body).await;
    // Slow answers, so that lanes overlap.
    sys.receiver.delay_answers(Some(Duration::from_millis(30)));
    for partition in 0..4 {
        produce(&sys.producer, "many", partition, &values(0..100)).await;
    }

    let delivered = sys.receiver.wait_for_delivered(400, WAIT).await;
    assert_none_missing(&delivered, "many", 4, 100);
    assert_ordered_per_partition(&delivered);
    assert_eq!(distinct(&delivered).1, 0, "nothing repeated");
    assert!(sys.receiver.batch_sizes().iter().all(|&n| n <= 5));
    let most = sys.receiver.most_at_once();
    assert!(
        (2..=4).contains(&most),
        "several batches at once, never more than 4: {most}"
    );
    sys.app
        .wait_for_status(&id, WAIT, |s| {
            s["counts"]["delivered"] == 400 && s["status"] == "healthy"
        })
        .await;
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_holds_across_lanes() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("limited-lanes", 4);
    let mut body = subscription("limited-lanes", &sys.receiver.url, &["limited-lanes"]);
    body["configuration"]["batching"] =
        json!({"max_batch_size": 1, "max_batch_interval_seconds": 1, "max_in_flight_batches": 4});
    body["configuration"]["rate_limit"] = json!({"max_requests_per_second": 2});
    sys.app.subscribe(&body).await;
    for partition in 0..4 {
        produce(&sys.producer, "limited-lanes", partition, &values(0..2)).await;
    }
    sys.receiver.wait_for_requests(1, WAIT).await;
    let started = tokio::time::Instant::now();
    sys.receiver.wait_for_delivered(8, WAIT).await;
    // One limiter for the four lanes: 2 per second with a burst of 2, so the
    // 7 requests after the first need 3 s (four limiters, about none).
    assert!(
        started.elapsed() >= Duration::from_millis(2400),
        "{:?}",
        started.elapsed()
    );
    sys.app.stop().await;
}
