//! Several hosts: real wasmhook processes on one PostgreSQL registry and one
//! broker, sharing subscriptions through Kafka consumer groups.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::delivery::{WAIT, assert_none_missing, assert_ordered_per_partition, distinct, values};
use crate::helpers::{BinaryApp, Caller, Db, System, produce, subscription, webhook_id_of};

/// Flags every host of these tests runs with: lag refreshed often (the tests
/// read the partitions each host owns from it), a short session so a killed
/// host's partitions move on soon, and no polling of the registry to speak
/// of, so changes must travel by LISTEN/NOTIFY.
const HOST_FLAGS: &[&str] = &[
    "--lag-interval",
    "300ms",
    "--session-timeout",
    "6s",
    "--reconcile-interval",
    "60s",
];

/// Broker, registry and receiver, with no wasmhook running: the tests start
/// the hosts.
struct Cluster {
    broker: wasmhook::broker::EmbeddedBroker,
    db: crate::helpers::TestDb,
    receiver: crate::helpers::Receiver,
    producer: rdkafka::producer::FutureProducer,
}

/// Starts the system on PostgreSQL with `topic` of `partitions`, registers a
/// subscription to it (its body adjusted by `configure`) through the
/// in-process app and stops that app: from then on only the hosts the test
/// starts deliver, once the test activates it through one of them
/// ([`Caller::activate`]).
/// Returns the subscription's id.
///
/// It is registered inactive so that the in-process app never joins its
/// consumer group: on the mock cluster, a host joining a group shortly after
/// its only member left sometimes waited a whole JoinGroup timeout (about a
/// minute) for an answer, which failed these tests now and then.
async fn registered(
    topic: &str,
    partitions: i32,
    configure: impl FnOnce(&mut Value),
) -> (Cluster, String) {
    let sys = System::start(Db::Postgres).await;
    sys.topic(topic, partitions);
    let mut body = subscription(topic, &sys.receiver.url, &[topic]);
    configure(&mut body);
    body["active"] = json!("no");
    let id = sys.app.subscribe(&body).await;
    sys.app.stop().await;
    let cluster = Cluster {
        broker: sys.broker,
        db: sys.db,
        receiver: sys.receiver,
        producer: sys.producer,
    };
    (cluster, id)
}

fn batches_of(size: u64) -> impl FnOnce(&mut Value) {
    move |body| {
        body["configuration"]["batching"] =
            json!({"max_batch_size": size, "max_batch_interval_seconds": 1});
    }
}

async fn host(sys: &Cluster) -> BinaryApp {
    BinaryApp::spawn_with(&sys.db.url, &sys.broker.bootstrap_servers(), HOST_FLAGS).await
}

/// Waits until `check` holds for the partitions each host owns.
async fn wait_for_partitions(
    hosts: &[&Caller],
    id: &str,
    within: Duration,
    check: impl Fn(&[Vec<i64>]) -> bool,
) -> Vec<Vec<i64>> {
    let deadline = Instant::now() + within;
    loop {
        let mut owned = Vec::new();
        for host in hosts {
            owned.push(host.partitions(id).await);
        }
        if check(&owned) {
            return owned;
        }
        assert!(
            Instant::now() < deadline,
            "the partitions never settled as expected: {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every partition owned by exactly one host, and each host owning some.
fn split_between_all(owned: &[Vec<i64>], partitions: i64) -> bool {
    let all: Vec<i64> = owned.iter().flatten().copied().collect();
    let distinct: HashSet<i64> = all.iter().copied().collect();
    owned.iter().all(|o| !o.is_empty())
        && all.len() == distinct.len()
        && distinct == (0..partitions).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_split_a_subscriptions_partitions_and_both_deliver() {
    let (sys, id) = registered("shared", 4, batches_of(10)).await;
    let (a, b) = (host(&sys).await, host(&sys).await);
    a.caller().activate(&id).await;
    let owned = wait_for_partitions(&[&a.caller(), &b.caller()], &id, WAIT, |owned| {
        split_between_all(owned, 4)
    })
    .await;

    for partition in 0..4 {
        produce(&sys.producer, "shared", partition, &values(0..50)).await;
    }
    let delivered = sys.receiver.wait_for_delivered(200, WAIT).await;
    assert_none_missing(&delivered, "shared", 4, 50);
    assert_ordered_per_partition(&delivered);
    // Each host delivered its own share: the partitions did not move.
    let now = wait_for_partitions(&[&a.caller(), &b.caller()], &id, WAIT, |o| {
        split_between_all(o, 4)
    })
    .await;
    assert_eq!(owned, now, "the split held while both delivered");
    for (host, partitions) in ["a", "b"].iter().zip(&now) {
        let status = if *host == "a" { &a } else { &b }
            .caller()
            .consumer(&id)
            .await;
        assert_eq!(status["state"], "running", "host {host}: {status}");
        for p in &status["partitions"].as_array().unwrap().clone() {
            assert!(partitions.contains(&p["partition"].as_i64().unwrap()));
        }
    }
    a.kill().await;
    b.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_killed_mid_stream_is_taken_over_with_nothing_missing_and_order_kept() {
    let (sys, id) = registered("takeover", 4, batches_of(5)).await;
    sys.receiver.delay_answers(Some(Duration::from_millis(20)));
    let (a, b) = (host(&sys).await, host(&sys).await);
    a.caller().activate(&id).await;
    wait_for_partitions(&[&a.caller(), &b.caller()], &id, WAIT, |o| {
        split_between_all(o, 4)
    })
    .await;
    for partition in 0..4 {
        produce(&sys.producer, "takeover", partition, &values(0..100)).await;
    }
    sys.receiver.wait_for_delivered(80, WAIT).await;
    a.kill().await;
    // The survivor takes every partition once the dead member's session ends.
    let b_caller = b.caller();
    wait_for_partitions(&[&b_caller], &id, Duration::from_secs(60), |o| {
        o[0].len() == 4
    })
    .await;
    for partition in 0..4 {
        produce(&sys.producer, "takeover", partition, &values(100..150)).await;
    }
    let delivered = sys
        .receiver
        .wait_for_delivered(600, Duration::from_secs(60))
        .await;
    assert_none_missing(&delivered, "takeover", 4, 150);
    assert_ordered_per_partition(&delivered);
    b.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_two_hosts_loses_nothing() {
    let (sys, id) = registered("rolling", 4, batches_of(5)).await;
    sys.receiver.delay_answers(Some(Duration::from_millis(10)));
    let (a, b) = (host(&sys).await, host(&sys).await);
    a.caller().activate(&id).await;
    wait_for_partitions(&[&a.caller(), &b.caller()], &id, WAIT, |o| {
        split_between_all(o, 4)
    })
    .await;
    let producer = sys.producer.clone();
    let producing = tokio::spawn(async move {
        for round in 0..10 {
            for partition in 0..4 {
                produce(
                    &producer,
                    "rolling",
                    partition,
                    &values(round * 20..(round + 1) * 20),
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // Restart one host, then the other, while messages keep coming.
    a.terminate().await;
    let a = host(&sys).await;
    wait_for_partitions(&[&a.caller(), &b.caller()], &id, WAIT, |o| {
        split_between_all(o, 4)
    })
    .await;
    b.terminate().await;
    let b = host(&sys).await;
    producing.await.unwrap();
    let delivered = sys
        .receiver
        .wait_for_delivered(800, Duration::from_secs(60))
        .await;
    assert_none_missing(&delivered, "rolling", 4, 200);
    assert_ordered_per_partition(&delivered);
    a.kill().await;
    b.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_switch_through_one_host_stops_the_other_within_two_seconds() {
    let (sys, id) = registered("switch", 2, batches_of(5)).await;
    let (a, b) = (host(&sys).await, host(&sys).await);
    let (a_caller, b_caller) = (a.caller(), b.caller());
    a_caller.activate(&id).await;
    wait_for_partitions(&[&a_caller, &b_caller], &id, WAIT, |o| {
        split_between_all(o, 2)
    })
    .await;

    let switched = Instant::now();
    a_caller.set_platform("offline", "maintenance").await;
    // The other host polls the registry only every minute: only the
    // notification can stop it this soon.
    loop {
        // Stopped (delivering nothing, its consumer closing) or gone.
        let consumer = b_caller.consumer(&id).await;
        if consumer.is_null() || consumer["state"] == "stopped" {
            break;
        }
        assert!(
            switched.elapsed() < Duration::from_secs(2),
            "host b still delivers {:?} after the switch",
            switched.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The host that took the switch stops too (it is told at once; its own
    // stop may still be closing its consumer when the other is done).
    let deadline = Instant::now() + WAIT;
    while !a_caller.consumer(&id).await.is_null() {
        assert!(
            Instant::now() < deadline,
            "host a never stopped its consumer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Held, not lost: back online through the other host, it is all delivered.
    produce(&sys.producer, "switch", 0, &values(0..10)).await;
    produce(&sys.producer, "switch", 1, &values(0..10)).await;
    b_caller.set_platform("online", "").await;
    let delivered = sys.receiver.wait_for_delivered(20, WAIT).await;
    assert_none_missing(&delivered, "switch", 2, 10);
    a.kill().await;
    b.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retrying_webhook_on_one_host_does_not_hold_up_the_other_hosts_share() {
    // Ten retries 5 s apart: the batch is retried for about 50 s. The old
    // loop stopped polling for all that time, and the group's rebalance
    // waited for it.
    let (sys, id) = registered("patient", 4, |body| {
        batches_of(5)(body);
        body["configuration"]["retry"] =
            json!({"max_retries": 10, "retry_algorithm": "fixed_time"});
    })
    .await;
    let patient: Vec<&str> = HOST_FLAGS
        .iter()
        .copied()
        .chain(["--retry-fixed-delay", "5s", "--retry-max-delay", "5s"])
        .collect();
    let brokers = sys.broker.bootstrap_servers();
    let spawn = |sys: &Cluster| {
        let (url, brokers, flags) = (sys.db.url.clone(), brokers.clone(), patient.clone());
        async move { BinaryApp::spawn_with(&url, &brokers, &flags).await }
    };
    sys.receiver.answer(503);
    let a = spawn(&sys).await;
    let a_caller = a.caller();
    a_caller.activate(&id).await;
    for partition in 0..4 {
        produce(&sys.producer, "patient", partition, &values(0..5)).await;
    }
    sys.receiver.wait_for_requests(2, WAIT).await;
    assert_eq!(a_caller.consumer(&id).await["state"], "retrying");

    // A second host joins while the first is retrying: it gets its share.
    let b = spawn(&sys).await;
    wait_for_partitions(&[&a_caller, &b.caller()], &id, WAIT, |o| {
        split_between_all(o, 4)
    })
    .await;
    let (_, status) = a_caller.get(&format!("/1/Subscription/{id}/Status")).await;
    assert_eq!(
        status["counts"]["dead_lettered"], 0,
        "the rebalance completed before the retries ran out: {status}"
    );

    sys.receiver.answer(200);
    let delivered = sys.receiver.wait_for_delivered(20, WAIT).await;
    assert_none_missing(&delivered, "patient", 4, 5);
    a.kill().await;
    b.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_deduplicating_on_webhook_id_loses_nothing_across_a_crash_and_a_batch_size_change()
 {
    let (sys, id) = registered("dedupe", 2, batches_of(10)).await;
    sys.receiver.delay_answers(Some(Duration::from_millis(30)));
    for partition in 0..2 {
        produce(&sys.producer, "dedupe", partition, &values(0..150)).await;
    }
    let a = host(&sys).await;
    a.caller().activate(&id).await;
    sys.receiver.wait_for_delivered(60, WAIT).await;
    a.kill().await;

    // Larger batches from now on: after the crash, a batch may start at the
    // same message as one already received, and hold more.
    let b = host(&sys).await;
    let b_caller = b.caller();
    let (status, mut spec) = b_caller.get(&format!("/1/Subscription/{id}")).await;
    assert_eq!(status, 200, "{spec}");
    spec["configuration"]["batching"] =
        json!({"max_batch_size": 25, "max_batch_interval_seconds": 1});
    let (status, body) = b_caller.put(&format!("/1/Subscription/{id}"), &spec).await;
    assert!(status.is_success(), "{status} {body}");
    let delivered = sys
        .receiver
        .wait_for_delivered(300, Duration::from_secs(60))
        .await;
    assert_none_missing(&delivered, "dedupe", 2, 150);

    // What a receiver that drops every request whose webhook-id it has seen
    // keeps: still everything.
    let mut seen_ids = HashSet::new();
    let mut kept = Vec::new();
    for request in sys.receiver.requests() {
        if request.status != 200 {
            continue;
        }
        let messages = request.messages();
        let id = request.headers["webhook-id"].to_str().unwrap().to_string();
        assert_eq!(id, webhook_id_of(&messages));
        if seen_ids.insert(id) {
            kept.extend(messages);
        }
    }
    assert_none_missing(&kept, "dedupe", 2, 150);
    let (_, repeats) = distinct(&delivered);
    println!("{repeats} messages delivered more than once across the crash");
    b.kill().await;
}
