//! Hibernation: a subscription with nothing to deliver closes its consumer,
//! and the next message wakes it, on the mock cluster and on tansu, without
//! losing or repeating a message.

use std::time::Duration;

use rdkafka::producer::FutureProducer;
use serde_json::{Value, json};
use wasmhook::config::{Settings, StartFrom};
use wasmhook::kafka::{KafkaConnection, TopicLayout, Topics};

use crate::delivery::{WAIT, values};
use crate::helpers::{
    Db, Receiver, System, Tansu, TestApp, TestDb, positions, produce, producer, subscription,
    test_settings,
};

/// Quick to sleep, and starting from `latest`: a woken consumer without a
/// committed position would skip the message that woke it. (The mock
/// cluster keeps a group its last member left in a rebalance for the
/// session timeout less a second before a newcomer may join: a shorter
/// session makes a wake right after a sleep quicker there.)
fn sleepy(settings: &mut Settings) {
    settings.delivery.hibernate_after = Some(Duration::from_secs(2));
    settings.delivery.start_from = StartFrom::Latest;
    settings.delivery.session_timeout = Duration::from_secs(6);
}

/// How long a wake may take: the watcher's look (1 s) and a group join. On
/// the mock cluster a join soon after the group's only member left waits
/// out the rebalance the leave started (session timeout less a second), and
/// has been seen to wait a whole JoinGroup timeout (about a minute) now and
/// then (tests/tests/it/hosts.rs says the same of hosts).
const WAKE: Duration = Duration::from_secs(90);

fn state(status: &Value) -> &str {
    status["consumer"]["state"].as_str().unwrap_or("none")
}

async fn wait_for_state(app: &TestApp, id: &str, wanted: &str) -> Value {
    app.wait_for_status(id, WAIT, |s| state(s) == wanted).await
}

/// Asserts every message was delivered exactly once.
fn assert_each_once(messages: &[Value], expected: usize) {
    let all = positions(messages);
    let distinct: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), expected, "{all:?}");
    assert_eq!(all.len(), expected, "repeats: {all:?}");
}

/// Sleeps, wakes for two partitions' messages, sleeps again and wakes again.
async fn sleeps_and_wakes(app: &TestApp, receiver: &Receiver, producer: &FutureProducer) {
    let id = app
        .subscribe(&subscription("quiet", &receiver.url, &["quiet"]))
        .await;

    let asleep = wait_for_state(app, &id, "hibernating").await;
    assert_eq!(
        asleep["consumer"]["partitions"],
        json!([]),
        "a hibernating subscription holds no partition: {asleep}"
    );

    // Nothing was ever delivered, and the consumer started from `latest`:
    // only the committed ends of the empty partitions make these count.
    produce(producer, "quiet", 0, &values(0..3)).await;
    produce(producer, "quiet", 1, &values(3..5)).await;
    let delivered = receiver.wait_for_delivered(5, WAKE).await;
    assert_each_once(&delivered, 5);

    // It sleeps again once caught up, and wakes again from where it was.
    wait_for_state(app, &id, "hibernating").await;
    produce(producer, "quiet", 1, &values(5..9)).await;
    let delivered = receiver.wait_for_delivered(9, WAKE).await;
    assert_each_once(&delivered, 9);
    let status = app.status_of(&id).await;
    assert_eq!(status["counts"]["delivered"], 9, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_subscription_sleeps_without_its_consumer_and_the_next_message_wakes_it() {
    let sys = System::start_with(Db::Sqlite, sleepy).await;
    sys.topic("quiet", 2);
    sleeps_and_wakes(&sys.app, &sys.receiver, &sys.producer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_tansu_a_quiet_subscription_sleeps_and_wakes_without_losing_a_message() {
    let tansu = Tansu::start().await;
    let db = TestDb::create(Db::Sqlite).await;
    let receiver = Receiver::start().await;
    let mut settings = test_settings(&db.url, &tansu.brokers);
    sleepy(&mut settings);
    Topics::new(
        &KafkaConnection::new(&tansu.brokers),
        Duration::from_secs(10),
    )
    .unwrap()
    .ensure("quiet", TopicLayout::new(2, 1).unwrap())
    .await
    .unwrap();
    let app = TestApp::spawn(settings).await;
    let producer = producer(&tansu.brokers);
    sleeps_and_wakes(&app, &receiver, &producer).await;
    // Before tansu goes: a consumer left behind a vanished broker takes
    // long to close.
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_with_a_batch_being_retried_stays_awake() {
    let sys = System::start_with(Db::Sqlite, |settings| {
        settings.delivery.hibernate_after = Some(Duration::from_millis(500));
    })
    .await;
    sys.topic("quiet", 1);
    sys.receiver.answer(503);
    let mut body = subscription("quiet", &sys.receiver.url, &["quiet"]);
    body["configuration"]["retry"]["max_retries"] = json!(10);
    let id = sys.app.subscribe(&body).await;
    // Asleep first (nothing to do), woken by the message.
    wait_for_state(&sys.app, &id, "hibernating").await;
    produce(&sys.producer, "quiet", 0, &values(0..2)).await;

    // Retries back off from 50 ms to 400 ms here: eight attempts span
    // more than twice the quiet time, all with the batch in hand.
    sys.receiver.wait_for_requests(8, WAKE).await;
    let status = sys.app.status_of(&id).await;
    assert_eq!(state(&status), "retrying", "{status}");

    sys.receiver.answer(200);
    let delivered = sys.receiver.wait_for_delivered(2, WAIT).await;
    assert_eq!(positions(&delivered).len(), 2);
    wait_for_state(&sys.app, &id, "hibernating").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hibernating_subscription_stops_with_the_platform_and_starts_again_with_it() {
    let sys = System::start_with(Db::Sqlite, sleepy).await;
    sys.topic("quiet", 1);
    let id = sys
        .app
        .subscribe(&subscription("quiet", &sys.receiver.url, &["quiet"]))
        .await;
    wait_for_state(&sys.app, &id, "hibernating").await;

    sys.app.set_platform("offline", "maintenance").await;
    wait_for_state(&sys.app, &id, "none").await;
    sys.app.set_platform("online", "").await;
    // Back on, it starts (and soon sleeps again); a message is delivered.
    produce(&sys.producer, "quiet", 0, &values(0..1)).await;
    sys.receiver.wait_for_delivered(1, WAKE).await;
    wait_for_state(&sys.app, &id, "hibernating").await;

    assert_eq!(sys.app.delete(&format!("/1/Subscription/{id}")).await, 204);
    let (status, _) = sys.app.get(&format!("/1/Subscription/{id}/Status")).await;
    assert_eq!(status, 404);
}
