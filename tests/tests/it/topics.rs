//! Topics: a subscription's dead-letter topic is created with it, on the mock
//! cluster and on tansu (a broker that does not auto-create topics); a
//! subscription that cannot get its topic is refused and not saved; a dead
//! letter to a missing topic is a permanent, typed error.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{ClientConfig, Message};
use reqwest::StatusCode;
use serde_json::json;
use wasmhook::broker::EmbeddedBroker;
use wasmhook::delivery::dead_letter::{DeadLetterFailure, DeadLetters};
use wasmhook::delivery::record::Record;
use wasmhook::kafka::{Ensured, TopicLayout, Topics};

use crate::helpers::{
    Db, Receiver, System, Tansu, TestApp, TestDb, produce, producer, subscription, test_settings,
};

const WAIT: Duration = Duration::from_secs(60);

/// Never creates what it looks at: the answer says what the broker has.
async fn partitions_of(brokers: &str, topic: &str) -> Option<usize> {
    Topics::new(
        &wasmhook::kafka::KafkaConnection::new(brokers),
        Duration::from_secs(10),
    )
    .unwrap()
    .partitions(topic)
    .await
    .expect("the broker answers metadata")
}

fn a_record() -> Record {
    Record {
        topic: "orders".into(),
        partition: 0,
        offset: 7,
        timestamp: None,
        key: Some(b"k".to_vec()),
        value: Some(br#"{"n":7}"#.to_vec()),
        headers: Vec::new(),
        value_is_json: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creating_a_subscription_creates_its_dead_letter_topic() {
    let sys = System::start(Db::Sqlite).await;
    let brokers = sys.broker.bootstrap_servers();
    sys.topic("orders", 1);
    let never_subscribed = "webhooks-00000000-0000-0000-0000-000000000000-dlq";
    assert_eq!(partitions_of(&brokers, never_subscribed).await, None);

    let id = sys
        .app
        .subscribe(&subscription("orders", &sys.receiver.url, &["orders"]))
        .await;

    // The mock cluster has no admin API: it auto-created the topic with its
    // default layout when asked (tansu's test checks the configured one).
    let dead_letters = format!("webhooks-{id}-dlq");
    assert_eq!(partitions_of(&brokers, &dead_letters).await, Some(4));
    assert_eq!(partitions_of(&brokers, never_subscribed).await, None);
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_is_answered_503_and_not_saved_when_the_brokers_do_not_answer() {
    let db = TestDb::create(Db::Sqlite).await;
    let mut settings = test_settings(&db.url, "127.0.0.1:1");
    settings.delivery.kafka_admin_timeout = Duration::from_secs(1);
    let app = TestApp::spawn(settings).await;

    let (status, body) = app
        .post(
            "/1/Subscription",
            &subscription("orders", "http://example.com/hook", &["orders"]),
        )
        .await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "unavailable", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("-dlq") && message.contains("did not answer"),
        "{message}"
    );
    let (status, listed) = app.get("/1/Subscription").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed, json!([]), "no subscription is left behind");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_brokers_down_a_subscription_can_be_deactivated_but_not_reactivated() {
    let db = TestDb::create(Db::Sqlite).await;
    let broker = EmbeddedBroker::start(1).unwrap();
    let app = TestApp::spawn(test_settings(&db.url, &broker.bootstrap_servers())).await;
    let body = subscription("orders", "http://example.com/hook", &["orders"]);
    let id = app.subscribe(&body).await;
    app.stop().await;
    let mut settings = test_settings(&db.url, "127.0.0.1:1");
    settings.delivery.kafka_admin_timeout = Duration::from_secs(1);
    let app = TestApp::spawn(settings).await;
    let path = format!("/1/Subscription/{id}");

    let mut off = body.clone();
    off["active"] = json!("no");
    let (status, answer) = app.put(&path, &off).await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    let (status, answer) = app.put(&path, &body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    let (_, stored) = app.get(&path).await;
    assert_eq!(
        stored["active"], "no",
        "the refused replace changed nothing: {stored}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_to_a_missing_topic_is_a_permanent_missing_topic_error() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let brokers = broker.bootstrap_servers();
    let dead_letters = DeadLetters::new(&wasmhook::kafka::KafkaConnection::new(&brokers)).unwrap();
    let topic = "webhooks-deleted-dlq";

    let error = dead_letters
        .publish(topic, &[a_record()], "delivery-1", "webhook answered 500")
        .await
        .expect_err("a missing topic cannot take a dead letter");

    assert_eq!(error.kind(), DeadLetterFailure::MissingTopic, "{error}");
    assert!(error.permanent());
    assert!(error.to_string().contains(topic), "{error}");
    assert_eq!(
        partitions_of(&brokers, topic).await,
        None,
        "not auto-created"
    );
    drop(dead_letters);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_to_an_existing_topic_is_written() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let brokers = broker.bootstrap_servers();
    let topic = "webhooks-present-dlq";
    broker.create_topic(topic, 1).unwrap();

    DeadLetters::new(&wasmhook::kafka::KafkaConnection::new(&brokers))
        .unwrap()
        .publish(topic, &[a_record()], "delivery-1", "webhook answered 500")
        .await
        .expect("written");

    let written = consume(&brokers, topic, 1).await;
    assert_eq!(written[0].payload(), Some(&br#"{"n":7}"#[..]));
}

// ---- tansu ----

/// Reads `n` messages of `topic` from its beginning.
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
        out.push(received.expect("a message").detach());
    }
    out
}

/// An application on `tansu`, with dead-letter topics of `layout`.
async fn app_on(tansu: &Tansu, db: &TestDb, layout: TopicLayout) -> TestApp {
    let mut settings = test_settings(&db.url, &tansu.brokers);
    settings.delivery.dead_letter_topic = layout;
    TestApp::spawn(settings).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_tansu_creating_a_subscription_creates_its_dead_letter_topic_with_the_configured_partitions()
 {
    let tansu = Tansu::start().await;
    let db = TestDb::create(Db::Sqlite).await;
    let app = app_on(&tansu, &db, TopicLayout::new(3, 1).unwrap()).await;
    let topics = Topics::new(
        &wasmhook::kafka::KafkaConnection::new(&tansu.brokers),
        Duration::from_secs(10),
    )
    .unwrap();
    topics
        .ensure("orders", TopicLayout::new(1, 1).unwrap())
        .await
        .unwrap();

    let id = app
        .subscribe(&subscription(
            "orders",
            "http://example.com/hook",
            &["orders"],
        ))
        .await;

    let dead_letters = format!("webhooks-{id}-dlq");
    assert_eq!(partitions_of(&tansu.brokers, &dead_letters).await, Some(3));
    // Saving it again finds the topic there.
    assert_eq!(
        topics
            .ensure(&dead_letters, TopicLayout::new(3, 1).unwrap())
            .await
            .unwrap(),
        Ensured::Existed
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_tansu_asking_for_a_missing_topic_does_not_create_it() {
    let tansu = Tansu::start().await;
    let asker: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &tansu.brokers)
        .set("allow.auto.create.topics", "true")
        .create()
        .unwrap();

    let asked = tokio::task::spawn_blocking(move || {
        asker
            .client()
            .fetch_metadata(Some("never-created"), Duration::from_secs(10))
            .map(|_| ())
    })
    .await
    .unwrap();

    // The broker these tests call strict must be: else they would not show
    // that wasmhook creates its own topics.
    assert!(asked.is_ok(), "tansu answers metadata: {asked:?}");
    assert_eq!(partitions_of(&tansu.brokers, "never-created").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_tansu_a_subscription_delivers_a_message_end_to_end() {
    let tansu = Tansu::start().await;
    let db = TestDb::create(Db::Sqlite).await;
    let receiver = Receiver::start().await;
    let app = app_on(&tansu, &db, TopicLayout::new(1, 1).unwrap()).await;
    let topics = Topics::new(
        &wasmhook::kafka::KafkaConnection::new(&tansu.brokers),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(
        topics
            .ensure("payments", TopicLayout::new(2, 1).unwrap())
            .await
            .unwrap(),
        Ensured::Created
    );
    app.subscribe(&subscription("payments", &receiver.url, &["payments"]))
        .await;

    let values: Vec<_> = (0..5).map(|n| json!({"n": n})).collect();
    produce(&producer(&tansu.brokers), "payments", 1, &values).await;

    let delivered = receiver.wait_for_delivered(5, WAIT).await;
    let numbers: Vec<i64> = delivered
        .iter()
        .map(|m| m["value"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, vec![0, 1, 2, 3, 4]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_tansu_an_exhausted_batch_reaches_the_dead_letter_topic() {
    let tansu = Tansu::start().await;
    let db = TestDb::create(Db::Sqlite).await;
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let app = app_on(&tansu, &db, TopicLayout::new(1, 1).unwrap()).await;
    Topics::new(
        &wasmhook::kafka::KafkaConnection::new(&tansu.brokers),
        Duration::from_secs(10),
    )
    .unwrap()
    .ensure("refunds", TopicLayout::new(1, 1).unwrap())
    .await
    .unwrap();
    let mut body = subscription("refunds", &receiver.url, &["refunds"]);
    body["configuration"]["retry"] =
        json!({"max_retries": 1, "retry_algorithm": "exponential_backoff"});
    let id = app.subscribe(&body).await;

    produce(&producer(&tansu.brokers), "refunds", 0, &[json!({"n": 1})]).await;

    let dead = consume(&tansu.brokers, &format!("webhooks-{id}-dlq"), 1).await;
    assert_eq!(dead[0].payload(), Some(&br#"{"n":1}"#[..]));
    let reason = dead[0]
        .headers()
        .unwrap()
        .iter()
        .find(|h| h.key == "wasmhook-failure-reason")
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).to_string());
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("500")),
        "{reason:?}"
    );
    assert_eq!(receiver.requests().len(), 2, "1 attempt + 1 retry");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_tansu_a_topic_with_the_brokers_default_replication_is_created_then_found() {
    let tansu = Tansu::start().await;
    let topics = Topics::new(
        &wasmhook::kafka::KafkaConnection::new(&tansu.brokers),
        Duration::from_secs(10),
    )
    .unwrap();
    let layout = TopicLayout::new(2, TopicLayout::BROKER_DEFAULT_REPLICATION).unwrap();

    assert_eq!(
        topics.ensure("audit", layout).await.unwrap(),
        Ensured::Created
    );
    assert_eq!(partitions_of(&tansu.brokers, "audit").await, Some(2));
    assert_eq!(
        topics.ensure("audit", layout).await.unwrap(),
        Ensured::Existed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_tansu_a_dead_letter_to_a_missing_topic_is_a_permanent_missing_topic_error() {
    let tansu = Tansu::start().await;

    let error = DeadLetters::new(&wasmhook::kafka::KafkaConnection::new(&tansu.brokers))
        .unwrap()
        .publish(
            "webhooks-gone-dlq",
            &[a_record()],
            "delivery-1",
            "webhook answered 500",
        )
        .await
        .expect_err("a missing topic cannot take a dead letter");

    assert_eq!(error.kind(), DeadLetterFailure::MissingTopic, "{error}");
    assert!(error.permanent());
    assert_eq!(
        partitions_of(&tansu.brokers, "webhooks-gone-dlq").await,
        None
    );
}
