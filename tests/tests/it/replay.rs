//! Delivering again, across a running pipeline: a replay moves the
//! subscription's consumer group back (to offsets, or to a time on a broker
//! that looks times up), and a redrive delivers what its dead-letter topic holds.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::delivery::{WAIT, values};
use crate::helpers::{Db, Receiver, System, positions, produce, subscription};

/// Waits until `n` messages were delivered with a 2xx, repeats counted.
pub(crate) async fn wait_for_deliveries(receiver: &Receiver, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let delivered = receiver.delivered();
        if delivered.len() >= n {
            return delivered;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} deliveries within {WAIT:?}, got {}: {:?}",
            delivered.len(),
            positions(&delivered)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the subscription's group has committed `n` messages in all
/// (as its consumer's statistics report it).
pub(crate) async fn wait_for_committed(app: &crate::helpers::TestApp, id: &str, n: i64) {
    app.wait_for_status(id, WAIT, |s| {
        s["consumer"]["partitions"].as_array().is_some_and(|p| {
            p.iter()
                .map(|p| p["committed_offset"].as_i64().unwrap_or(0).max(0))
                .sum::<i64>()
                == n
        })
    })
    .await;
}

pub(crate) fn at(topic: &str, partition: i64, offset: i64) -> (String, i64, i64) {
    (topic.to_string(), partition, offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_to_offsets_delivers_those_partitions_again_and_goes_on_in_the_new_group() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("replayed", 2);
    let id = sys
        .app
        .subscribe(&subscription("replayed", &sys.receiver.url, &["replayed"]))
        .await;
    produce(&sys.producer, "replayed", 0, &values(0..3)).await;
    produce(&sys.producer, "replayed", 1, &values(3..5)).await;
    sys.receiver.wait_for_delivered(5, WAIT).await;
    // Committed after delivery: the replay reads the positions the group has.
    wait_for_committed(&sys.app, &id, 5).await;

    let (code, body) = sys
        .app
        .post(
            &format!("/1/Subscription/{id}/Replay"),
            &json!({"offsets": [{"topic": "replayed", "partition": 0, "offset": 1}]}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["consumer_group"], format!("webhooks-{id}.r1"));
    let mut moved: Vec<(i64, i64)> = body["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap(),
                p["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    moved.sort();
    // Partition 1 stays where its group had committed it.
    assert_eq!(moved, [(0, 1), (1, 2)]);

    let delivered = wait_for_deliveries(&sys.receiver, 7).await;
    let mut again = positions(&delivered[5..]);
    again.sort();
    assert_eq!(again, [at("replayed", 0, 1), at("replayed", 0, 2)]);

    // The pipeline goes on in the new group: new messages, once.
    produce(&sys.producer, "replayed", 1, &values(5..6)).await;
    let delivered = wait_for_deliveries(&sys.receiver, 8).await;
    assert_eq!(positions(&delivered[7..]), [at("replayed", 1, 2)]);
    let status = sys.app.status_of(&id).await;
    assert_eq!(status["consumer_group"], format!("webhooks-{id}.r1"));
    // Nothing else came: no repeat of partition 1, nothing twice more.
    assert_eq!(sys.receiver.delivered().len(), 8);
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_that_names_no_valid_position_is_refused_and_moves_nothing() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("strict-replay", 1);
    sys.topic("elsewhere", 1);
    let id = sys
        .app
        .subscribe(&subscription(
            "strict-replay",
            &sys.receiver.url,
            &["strict-replay"],
        ))
        .await;
    produce(&sys.producer, "strict-replay", 0, &values(0..2)).await;
    sys.receiver.wait_for_delivered(2, WAIT).await;
    let path = format!("/1/Subscription/{id}/Replay");
    let offsets = |topic: &str, partition: i64, offset: i64| json!({"offsets": [{"topic": topic, "partition": partition, "offset": offset}]});
    let refused = [
        (json!({}), "say where to replay from"),
        (
            json!({"from": "2026-01-01T00:00:00Z", "offsets": []}),
            "not both",
        ),
        (json!({"from": "yesterday"}), "not an RFC 3339 time"),
        (json!({"offsets": []}), "name at least one partition"),
        (
            offsets("strict-replay", 0, 3),
            "outside what the partition holds (0 to 2",
        ),
        (offsets("strict-replay", 4, 0), "has no partition 4"),
        (
            offsets("elsewhere", 0, 0),
            "not one of the subscription's topics",
        ),
        (
            json!({"offsets": [{"topic": "strict-replay"}]}),
            "partition",
        ),
    ];
    for (body, expected) in refused {
        let (code, answer) = sys.app.post(&path, &body).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body} → {answer}");
        assert!(
            answer.to_string().contains(expected),
            "{body} → {answer}, expected it to say {expected:?}"
        );
    }
    let (code, _) = sys
        .app
        .post(
            "/1/Subscription/5eed0001-0000-4000-8000-0000000000ff/Replay",
            &offsets("strict-replay", 0, 0),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let status = sys.app.status_of(&id).await;
    assert_eq!(status["consumer_group"], format!("webhooks-{id}"));
    assert_eq!(sys.receiver.delivered().len(), 2);
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redrive_delivers_again_what_the_dead_letter_topic_holds_as_it_first_came() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("redriven", 2);
    sys.receiver.answer(500);
    let mut body = subscription("redriven", &sys.receiver.url, &["redriven"]);
    body["configuration"]["retry"] = json!({"max_retries": 1, "retry_algorithm": "fixed_time"});
    let id = sys.app.subscribe(&body).await;
    produce(&sys.producer, "redriven", 0, &values(0..3)).await;
    produce(&sys.producer, "redriven", 1, &values(3..5)).await;
    sys.app
        .wait_for_status(&id, WAIT, |s| s["counts"]["dead_lettered"] == 5)
        .await;
    assert!(sys.receiver.delivered().is_empty());

    sys.receiver.answer(200);
    let path = format!("/1/Subscription/{id}/DeadLetter/Redrive");
    let (code, plan) = sys.app.post(&path, &json!({})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{plan}");
    assert_eq!(plan["messages"], 5, "{plan}");
    assert_eq!(plan["topic"], format!("webhooks-{id}-dlq"));

    let delivered = wait_for_deliveries(&sys.receiver, 5).await;
    let mut came = positions(&delivered);
    came.sort();
    // Their source positions, not the dead-letter topic's.
    assert_eq!(
        came,
        [
            at("redriven", 0, 0),
            at("redriven", 0, 1),
            at("redriven", 0, 2),
            at("redriven", 1, 0),
            at("redriven", 1, 1),
        ]
    );
    assert!(
        delivered.iter().all(|m| m["headers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| !h["key"].as_str().unwrap().starts_with("wasmhook-"))),
        "the dead letter's own headers are not delivered: {delivered:?}"
    );
    let status = sys
        .app
        .wait_for_status(&id, WAIT, |s| s["redrive"]["state"] == "done")
        .await;
    assert_eq!(status["redrive"]["delivered"], 5, "{status}");
    assert_eq!(status["redrive"]["done"], 5, "{status}");
    assert_eq!(status["counts"]["delivered"], 5, "{status}");

    // What was redriven is not redriven again.
    let (code, again) = sys.app.post(&path, &json!({})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["messages"], 0, "{again}");
    // The pipeline delivers on as before.
    produce(&sys.producer, "redriven", 0, &values(5..6)).await;
    let delivered = wait_for_deliveries(&sys.receiver, 6).await;
    assert_eq!(positions(&delivered[5..]), [at("redriven", 0, 3)]);
    sys.app.stop().await;
}

/// The mock cluster does not look offsets up by time (it answers "none"), so
/// a replay from a time is shown on tansu, which does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_tansu_a_replay_from_a_time_delivers_again_what_came_after_it() {
    use wasmhook::kafka::{TopicLayout, Topics};

    use crate::helpers::{Tansu, TestApp, TestDb, producer, test_settings};

    let tansu = Tansu::start().await;
    let db = TestDb::create(Db::Sqlite).await;
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(test_settings(&db.url, &tansu.brokers)).await;
    Topics::new(
        &wasmhook::kafka::KafkaConnection::new(&tansu.brokers),
        Duration::from_secs(10),
    )
    .unwrap()
    .ensure("timed", TopicLayout::new(1, 1).unwrap())
    .await
    .unwrap();
    let id = app
        .subscribe(&subscription("timed", &receiver.url, &["timed"]))
        .await;
    let producer = producer(&tansu.brokers);
    produce(&producer, "timed", 0, &values(0..3)).await;
    receiver.wait_for_delivered(3, WAIT).await;
    // Every message so far has an earlier timestamp (set by the producer).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    produce(&producer, "timed", 0, &values(3..5)).await;
    receiver.wait_for_delivered(5, WAIT).await;
    wait_for_committed(&app, &id, 5).await;

    let (code, body) = app
        .post(
            &format!("/1/Subscription/{id}/Replay"),
            &json!({"from": since.to_rfc3339()}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["partitions"][0]["offset"], 3, "{body}");
    let delivered = wait_for_deliveries(&receiver, 7).await;
    assert_eq!(
        positions(&delivered[5..]),
        [at("timed", 0, 3), at("timed", 0, 4)]
    );
    app.stop().await;
}
