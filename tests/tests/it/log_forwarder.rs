//! Seed 001, end to end: `POST /log` checks its record and produces it to the
//! log topic, and the built-in subscription `log-forwarder` posts that topic
//! to `WEBHOOK_POST_ENDPOINT` as JSON arrays of records, in batches of
//! `WEBHOOK_BATCH_SIZE` or every `WEBHOOK_BATCH_INTERVAL`, retrying 3 times
//! 2 s apart, then dead-lettering and going on. The first test drives the
//! real binary by those environment variables only.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wasmhook::broker::EmbeddedBroker;
use wasmhook::config::ForwarderSettings;
use wasmhook::domain::{BatchInterval, BatchSize, WebhookUrl};

use crate::helpers::{BinaryApp, Caller, Db, Receiver, Tansu, TestApp, TestDb, test_settings};

const WAIT: Duration = Duration::from_secs(30);
const FORWARDER: &str = "5eed0001-0000-4000-8000-000000000001";

/// Seed 001's example record, with its title numbered.
fn log_record(n: usize) -> Value {
    json!({
        "user_id": 1,
        "total": 1.65,
        "title": format!("delectus aut autem {n}"),
        "meta": {
            "logins": [{"time": "2020-08-08T01:52:50Z", "ip": "0.0.0.0"}],
            "phone_numbers": {"home": "555-1212", "mobile": "123-5555"}
        },
        "completed": false
    })
}

fn forwarding(receiver: &Receiver, batch_size: i64, interval_seconds: i64) -> ForwarderSettings {
    ForwarderSettings {
        endpoint: WebhookUrl::parse(&receiver.url).unwrap(),
        batch_size: BatchSize::parse(batch_size).unwrap(),
        batch_interval: BatchInterval::parse(interval_seconds).unwrap(),
    }
}

/// The records of each request the receiver got, in arrival order.
fn batches(receiver: &Receiver) -> Vec<Vec<Value>> {
    receiver.requests().iter().map(|r| r.messages()).collect()
}

async fn post_log(caller: &Caller, record: &Value) -> (StatusCode, Value) {
    caller.post("/log", record).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_001s_flow_is_driven_by_its_environment_variables() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let db = TestDb::create(Db::Sqlite).await;
    let receiver = Receiver::start().await;
    let app = BinaryApp::spawn_logged(
        &db.url,
        &broker.bootstrap_servers(),
        &[],
        &[
            ("WEBHOOK_POST_ENDPOINT", receiver.url.as_str()),
            ("WEBHOOK_BATCH_SIZE", "3"),
            ("WEBHOOK_BATCH_INTERVAL", "4s"),
        ],
    )
    .await;
    let caller = app.caller();
    let health = reqwest::get(format!("{}/healthz", app.address))
        .await
        .unwrap();
    assert_eq!(health.text().await.unwrap(), "OK");

    for n in 1..=3 {
        let (status, body) = post_log(&caller, &log_record(n)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["topic"], "log");
    }
    // A full batch goes at once, as an array of the records as posted.
    receiver.wait_for_requests(1, WAIT).await;
    assert_eq!(
        batches(&receiver)[0],
        (1..=3).map(log_record).collect::<Vec<_>>()
    );
    // A partial one when the interval has passed.
    let (status, body) = post_log(&caller, &log_record(4)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    receiver.wait_for_requests(2, WAIT).await;
    assert_eq!(
        batches(&receiver),
        [
            (1..=3).map(log_record).collect::<Vec<_>>(),
            vec![log_record(4)]
        ]
    );

    // A record that is not seed 001's: 400 naming the field, nothing forwarded.
    let mut wrong = log_record(5);
    wrong["meta"]["logins"][0]["time"] = json!("08/08/2020");
    let (status, body) = post_log(&caller, &wrong).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errors"][0]["field"], "meta.logins[0].time", "{body}");
    let anonymous = reqwest::Client::new()
        .post(format!("{}/log", app.address))
        .json(&log_record(6))
        .send()
        .await
        .unwrap();
    assert_eq!(
        anonymous.status(),
        StatusCode::UNAUTHORIZED,
        "/log needs a token"
    );

    // The built-in subscription is visible like any other.
    let (status, forwarder) = caller.get(&format!("/1/Subscription/{FORWARDER}")).await;
    assert_eq!(status, StatusCode::OK, "{forwarder}");
    assert_eq!(forwarder["name"], "log-forwarder");
    assert_eq!(forwarder["configuration"]["body_format"], "values");

    // Seed 001's log lines: start-up, each request, each batch with its
    // size, status code and duration.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let logs = app.logs();
        let has = |needle: &[&str]| logs.iter().any(|l| needle.iter().all(|n| l.contains(n)));
        if has(&["Seed 001's forwarder is configured.", "batch_size=3"])
            && has(&["wasmhook started"])
            && logs
                .iter()
                .filter(|l| l.contains("POST /log: record accepted."))
                .count()
                == 4
            && has(&["POST /log: record refused.", "status=400"])
            && has(&["Batch sent.", "messages=3", "status=200", "duration_ms="])
            && has(&["Batch sent.", "messages=1", "status=200", "duration_ms="])
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed 001's log lines are missing:\n{}",
            logs.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(receiver.requests().len(), 2, "nothing else was forwarded");
    app.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_endpoint_is_retried_3_times_2_seconds_apart_then_dead_lettered_and_forwarding_goes_on()
 {
    let broker = EmbeddedBroker::start(1).unwrap();
    let db = TestDb::create(Db::Sqlite).await;
    let receiver = Receiver::start().await;
    let mut settings = test_settings(&db.url, &broker.bootstrap_servers());
    settings.ingest.forwarder = Some(forwarding(&receiver, 10, 1));
    // The tests' settings cap every wait at 400 ms; seed 001's is 2 s.
    settings.delivery.retry_max_delay = Duration::from_secs(10);
    let app = TestApp::spawn(settings).await;
    let caller = app.caller(Some(crate::helpers::ADMIN_TOKEN));
    receiver.answer(500);

    let (status, body) = post_log(&caller, &log_record(1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let mut arrivals = Vec::new();
    for n in 1..=4 {
        receiver.wait_for_requests(n, WAIT).await;
        arrivals.push(tokio::time::Instant::now());
    }
    for pair in arrivals.windows(2) {
        let gap = pair[1] - pair[0];
        // 2 s with ±10 % jitter; the lower bound holds however busy the machine.
        assert!(gap >= Duration::from_millis(1700), "retries {gap:?} apart");
    }
    let status = app
        .wait_for_status(FORWARDER, WAIT, |s| s["counts"]["dead_lettered"] == 1)
        .await;
    assert_eq!(status["status"], "unhealthy", "{status}");
    assert!(
        status["dead_letters"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("after 4 attempts"),
        "{status}"
    );
    assert_eq!(receiver.requests().len(), 4, "1 attempt and 3 retries");

    // It never exits: the next record is forwarded once the endpoint is back.
    receiver.answer(200);
    let (status, body) = post_log(&caller, &log_record(2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    receiver.wait_for_requests(5, WAIT).await;
    assert_eq!(batches(&receiver)[4], [log_record(2)]);
    app.wait_for_status(FORWARDER, WAIT, |s| s["status"] == "healthy")
        .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_with_other_settings_updates_the_forwarder_and_keeps_what_the_api_added() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let db = TestDb::create(Db::Sqlite).await;
    let receiver = Receiver::start().await;
    let mut settings = test_settings(&db.url, &broker.bootstrap_servers());
    settings.ingest.forwarder = Some(forwarding(&receiver, 10, 1));
    let app = TestApp::spawn(settings.clone()).await;
    let path = format!("/1/Subscription/{FORWARDER}");
    let (_, mut stored) = app.get(&path).await;
    stored["destination"]["webhook"]["headers"] = json!(["Authorization: Bearer bin-token"]);
    let (status, body) = app.put(&path, &stored).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.stop().await;

    settings.ingest.forwarder = Some(forwarding(&receiver, 2, 5));
    let app = TestApp::spawn(settings.clone()).await;
    let (_, restarted) = app.get(&path).await;
    assert_eq!(
        restarted["configuration"]["batching"],
        json!({"max_batch_size": 2, "max_batch_interval_seconds": 5})
    );
    assert_eq!(
        restarted["destination"]["webhook"]["headers"],
        json!(["authorization: ********"]),
        "kept (and masked)"
    );
    let (_, listed) = app.get("/1/Subscription").await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "one forwarder: {listed}"
    );

    // Forwarded with the header the API added.
    let caller = app.caller(Some(crate::helpers::ADMIN_TOKEN));
    for n in 1..=2 {
        let (status, body) = post_log(&caller, &log_record(n)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let requests = receiver.wait_for_requests(1, WAIT).await;
    assert_eq!(requests[0].headers["authorization"], "Bearer bin-token");
    assert_eq!(requests[0].messages().len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_tansu_the_forwarder_creates_its_topics_and_forwards() {
    let tansu = Tansu::start().await;
    let db = TestDb::create(Db::Sqlite).await;
    let receiver = Receiver::start().await;
    let mut settings = test_settings(&db.url, &tansu.brokers);
    settings.ingest.forwarder = Some(forwarding(&receiver, 1, 1));
    let app = TestApp::spawn(settings).await;
    let topics = wasmhook::kafka::Topics::new(
        &wasmhook::kafka::KafkaConnection::new(&tansu.brokers),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(topics.partitions("log").await.unwrap(), Some(1));
    assert_eq!(
        topics
            .partitions(&format!("webhooks-{FORWARDER}-dlq"))
            .await
            .unwrap(),
        Some(1)
    );

    let caller = app.caller(Some(crate::helpers::ADMIN_TOKEN));
    let (status, body) = post_log(&caller, &log_record(1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    receiver.wait_for_requests(1, Duration::from_secs(60)).await;
    assert_eq!(batches(&receiver)[0], [log_record(1)]);
    app.stop().await;
}
