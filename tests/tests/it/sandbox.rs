//! Hostile plugins through the real API, a broker and a receiver: whatever
//! a plugin does, the API answers within the plugin's deadline, the host
//! keeps delivering for everyone else, nothing is lost (what a plugin breaks
//! is dead-lettered with a bounded reason), and a plugin that keeps failing
//! turns its subscription unhealthy and alerts.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_TOKEN, BinaryApp, Db, Receiver, SmtpServer, System, TestDb, authed_client, plugin_form,
    plugin_wasm, produce, producer, subscription, wat_component,
};

const WAIT: Duration = Duration::from_secs(60);

fn attach(name: &str, config: Value) -> Value {
    json!({"name": name, "version": "1.0.0", "config": config})
}

/// A subscription of `orders` whose filter plugin is `plugin` with `config`,
/// retried once, 200 ms apart, so that failures reach the dead letter soon.
fn filtered_by(name: &str, url: &str, plugin: &str, config: Value) -> Value {
    let mut body = subscription(name, url, &["orders"]);
    body["source"][0]["filter_plugin"] = attach(plugin, config);
    body["configuration"]["retry"] = json!({"max_retries": 1, "retry_algorithm": "fixed_time"});
    body
}

/// Uploads `guest_hostile` as `name`@1.0.0 with the given limit fields.
async fn upload_hostile(sys: &System, name: &str, limits: &[(&str, &str)]) -> Value {
    let mut fields = vec![("name", name), ("version", "1.0.0"), ("role", "filter")];
    fields.extend_from_slice(limits);
    let (content_type, form) = plugin_form(&fields, Some(&plugin_wasm("guest_hostile")));
    let (status, uploaded) = sys.app.post_form(&content_type, form).await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    uploaded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attaching_a_plugin_whose_init_loops_or_sleeps_answers_400_within_its_deadline() {
    let sys = System::start(Db::Sqlite).await;
    // The looper gets a long wall-clock deadline, so that on a busy machine
    // its CPU deadline (the host's default, 100 ms) is what stops it; the
    // sleeper runs with the host's defaults (a 1 s wall-clock deadline).
    upload_hostile(&sys, "looper", &[("wall_deadline_ms", "20000")]).await;
    upload_hostile(&sys, "sleeper", &[]).await;
    for (plugin, mode, needle, wall) in [
        (
            "looper",
            "loop-init",
            "CPU deadline of 100ms",
            Duration::from_secs(20),
        ),
        (
            "sleeper",
            "sleep-init",
            "wall-clock deadline of 1s",
            Duration::from_secs(1),
        ),
    ] {
        let body = filtered_by(mode, &sys.receiver.url, plugin, json!({"mode": mode}));
        let started = Instant::now();
        let (status, refusal) = sys.app.post("/1/Subscription", &body).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{mode}: {refusal}");
        assert_eq!(refusal["errors"][0]["field"], "source[0].filter_plugin");
        let message = refusal["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{mode}: {message}");
        assert!(
            took < wall + Duration::from_secs(1),
            "{mode}: answered after {took:?}"
        );
    }
    let (status, list) = sys.app.get("/1/Subscription").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([]), "no half-registered subscription");
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attaching_a_plugin_that_grabs_memories_or_tables_answers_400_naming_the_limit() {
    let sys = System::start(Db::Sqlite).await;
    for (file, needle) in [
        ("memories", "memory limit of 67108864 bytes"),
        ("many-memories", "memor"),
        ("table-growth", "table limit"),
    ] {
        let (status, body) = sys
            .app
            .upload_plugin(file, "1.0.0", "filter", &wat_component(file, "filter"))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{file}: {body}");
        let body = filtered_by(file, &sys.receiver.url, file, json!({}));
        let (status, refusal) = sys.app.post("/1/Subscription", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{file}: {refusal}");
        assert_eq!(refusal["errors"][0]["field"], "source[0].filter_plugin");
        let message = refusal["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{file}: {message}");
    }
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plugin_may_ask_for_its_own_limits_within_the_hosts_maxima() {
    let sys = System::start(Db::Sqlite).await;
    let wasm = plugin_wasm("guest_hostile");
    let upload = |fields: &[(&str, &str)]| {
        let mut all = vec![("name", "hostile"), ("role", "filter")];
        all.extend_from_slice(fields);
        plugin_form(&all, Some(&wasm))
    };

    let (content_type, form) = upload(&[
        ("version", "1.0.0"),
        ("memory_bytes", "2147483648"),
        ("cpu_deadline_ms", "soon"),
        ("wall_deadline_ms", "0"),
    ]);
    let (status, refusal) = sys.app.post_form(&content_type, form).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refusal}");
    let fields: Vec<&str> = refusal["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["memory_bytes", "cpu_deadline_ms", "wall_deadline_ms"],
        "{refusal}"
    );

    let (content_type, form) = upload(&[("version", "1.0.0"), ("cpu_deadline_ms", "300")]);
    let (status, uploaded) = sys.app.post_form(&content_type, form).await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    let (_, shown) = sys.app.get("/1/Plugin/hostile/1.0.0").await;
    assert_eq!(
        shown["limits"],
        json!({"memory_bytes": 64 << 20, "cpu_deadline_ms": 300, "wall_deadline_ms": 1000})
    );
    // With room on the clock, so that a busy machine cannot make the
    // wall-clock deadline the one that stops the loop.
    let (content_type, form) = upload(&[
        ("version", "2.0.0"),
        ("cpu_deadline_ms", "300"),
        ("wall_deadline_ms", "20000"),
        ("memory_bytes", "1048576"),
    ]);
    let (status, uploaded) = sys.app.post_form(&content_type, form).await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    assert_eq!(
        uploaded["limits"],
        json!({"memory_bytes": 1 << 20, "cpu_deadline_ms": 300, "wall_deadline_ms": 20000})
    );

    // The plugin's own deadline is the one that stops it.
    let body = filtered_by(
        "loop",
        &sys.receiver.url,
        "hostile",
        json!({"mode": "loop-init"}),
    );
    let (status, refusal) = sys.app.post("/1/Subscription", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refusal}");
    let message = refusal["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("CPU deadline of 300ms"), "{message}");
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_error_reaches_the_dead_letter_and_the_status_cut_and_clean() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("orders", 1);
    sys.app
        .install_plugin("guest_hostile", "hostile", "1.0.0", "filter")
        .await;
    let body = filtered_by(
        "loud",
        &sys.receiver.url,
        "hostile",
        json!({"mode": "huge-error"}),
    );
    let id = sys.app.subscribe(&body).await;
    produce(
        &sys.producer,
        "orders",
        0,
        &[json!({"n": 0}), json!({"n": 1})],
    )
    .await;
    let status = sys
        .app
        // The count is kept in memory at once; the health follows it.
        .wait_for_status(&id, WAIT, |s| {
            s["counts"]["dead_lettered"] == 2 && s["status"] == "unhealthy"
        })
        .await;
    for reason in [
        status["dead_letters"][0]["reason"].as_str().unwrap(),
        status["status_reason"].as_str().unwrap(),
    ] {
        assert!(reason.len() < 1500, "{} bytes", reason.len());
        assert!(!reason.chars().any(char::is_control), "{reason:?}");
        assert!(reason.contains("hostile@1.0.0"), "{reason}");
    }
    assert_eq!(status["status"], "unhealthy");
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plugin_that_keeps_failing_is_suspended_alerts_and_recovers() {
    let smtp = SmtpServer::start();
    let sys = System::start_with(Db::Sqlite, |s| {
        s.smtp = Some(smtp.settings());
        s.delivery.alert_interval = Duration::ZERO;
    })
    .await;
    sys.topic("orders", 1);
    sys.app
        .install_plugin("guest_hostile", "flaky", "1.0.0", "filter")
        .await;
    let mut body = filtered_by(
        "flaky",
        &sys.receiver.url,
        "flaky",
        json!({"mode": "fail-until"}),
    );
    body["configuration"]["retry"] = json!({"max_retries": 3, "retry_algorithm": "fixed_time"});
    body["configuration"]["alerting"] =
        json!({"alert_channel": "email", "alert_emails": ["ops@example.com"]});
    let id = sys.app.subscribe(&body).await;

    produce(&sys.producer, "orders", 0, &[json!({"n": 0})]).await;
    let status = sys
        .app
        .wait_for_status(&id, WAIT, |s| s["status"] == "unhealthy")
        .await;
    // The first word may be the suspension or the dead letter; both name
    // the plugin and what it said.
    let reason = status["status_reason"].as_str().unwrap();
    assert!(
        reason.contains("filter plugin flaky@1.0.0 (source[0].filter_plugin)")
            && reason.contains("not yet"),
        "{reason}"
    );
    let mails = smtp.wait_for_mail(1, WAIT).await;
    assert!(mails[0].data.contains("flaky@1.0.0"), "{}", mails[0].data);
    let status = sys
        .app
        .wait_for_status(&id, WAIT, |s| {
            s["counts"]["dead_lettered"].as_i64() >= Some(1)
        })
        .await;
    assert!(
        status["dead_letters"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("not yet"),
        "{status}"
    );

    // The plugin would work again, but it is suspended: batches fail at once
    // until its back-off ends and a try goes through. Keep offering work.
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    while sys.receiver.delivered().is_empty() {
        assert!(
            Instant::now() < deadline,
            "nothing was delivered after the recovery"
        );
        produce(&sys.producer, "orders", 0, &[json!({"ok": true, "try": n})]).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let delivered = sys.receiver.delivered();
    assert_eq!(delivered[0]["value"]["ok"], true);
    let status = sys
        .app
        .wait_for_status(&id, WAIT, |s| s["status"] == "healthy")
        .await;
    assert_eq!(status["status_reason"], Value::Null);
    let mails = smtp.wait_for_mail(2, WAIT).await;
    assert!(mails[1].data.contains("recovered"), "{}", mails[1].data);
    sys.app.stop().await;
}

/// Sends a request and reads its JSON answer.
async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// The hostile guests of the crowd test: (plugin, crate or WAT file, role,
/// configuration). Each misbehaves on every batch, except the flooder, which
/// is loud but works.
const CROWD: &[(&str, &str, &str, &str)] = &[
    ("sleeper", "guest_hostile", "filter", "sleep"),
    ("shouter", "guest_hostile", "filter", "huge-error"),
    ("bellower", "guest_hostile", "filter", "enormous-error"),
    ("recurser", "guest_hostile", "filter", "stack-overflow"),
    ("miscounter", "guest_hostile", "filter", "wrong-length"),
    ("flooder", "guest_hostile", "filter", "flood"),
    ("leaker", "guest_hostile", "filter", "resources"),
    ("looper", "guest_loop", "filter", ""),
    ("hog", "guest_memory_hog", "filter", ""),
    ("trapper", "guest_trap_policy", "policy", ""),
    ("amplifier", "wat:amplifying-policy", "policy", ""),
    ("crasher", "guest_failing_serialiser", "serialiser", "trap"),
];

/// How many subscriptions per hostile guest.
const EACH: usize = 2;
const MESSAGES: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crowd_of_hostile_plugins_cannot_starve_a_healthy_subscription_or_the_api() {
    let broker = wasmhook::broker::EmbeddedBroker::start(1).unwrap();
    broker.create_topic("orders", 4).unwrap();
    let brokers = broker.bootstrap_servers();
    let db = TestDb::create(Db::Sqlite).await;
    let app = BinaryApp::spawn(&db.url, &brokers).await;
    let http = authed_client(ADMIN_TOKEN);
    let api = |path: &str| format!("{}{path}", app.address);
    let receiver = Receiver::start().await;
    let hostile_receiver = Receiver::start().await;

    for (name, guest, role, _) in CROWD {
        let wasm = match guest.strip_prefix("wat:") {
            Some(file) => wat_component(file, role),
            None => plugin_wasm(guest),
        };
        let mut fields = vec![("name", *name), ("version", "1.0.0"), ("role", *role)];
        if *name == "flooder" {
            // It works, given time: on a busy machine it must not be cut
            // short by the defaults the hostile ones are stopped by.
            fields.extend([("cpu_deadline_ms", "5000"), ("wall_deadline_ms", "30000")]);
        }
        let (content_type, form) = plugin_form(&fields, Some(&wasm));
        let response = http
            .post(api("/1/Plugin"))
            .header("content-type", content_type)
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{name}");
    }
    let mut hostile = Vec::new();
    for (name, _, role, mode) in CROWD {
        for copy in 0..EACH {
            let mut body = subscription(
                &format!("{name}-{copy}"),
                &hostile_receiver.url,
                &["orders"],
            );
            body["configuration"]["batching"] =
                json!({"max_batch_size": 50, "max_batch_interval_seconds": 1});
            body["configuration"]["retry"] =
                json!({"max_retries": 1, "retry_algorithm": "fixed_time"});
            let plugin = attach(name, json!({"mode": mode}));
            match *role {
                "filter" => body["source"][0]["filter_plugin"] = plugin,
                "policy" => body["source"][0]["policy_plugin"] = plugin,
                _ => body["configuration"]["serialiser_plugin"] = plugin,
            }
            let created = json_of(http.post(api("/1/Subscription")).json(&body)).await;
            let id = created["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{created}"));
            hostile.push((name.to_string(), id.to_string()));
        }
    }
    let mut healthy = subscription("healthy", &receiver.url, &["orders"]);
    healthy["configuration"]["batching"] =
        json!({"max_batch_size": 50, "max_batch_interval_seconds": 1});
    let created = json_of(http.post(api("/1/Subscription")).json(&healthy)).await;
    let healthy_id = created["id"].as_str().unwrap().to_string();

    // Produce while the API is polled: it must answer every time.
    let producer = producer(&brokers);
    let values: Vec<Value> = (0..MESSAGES).map(|n| json!({"n": n})).collect();
    let produced = async {
        for (partition, chunk) in values.chunks(MESSAGES / 4).enumerate() {
            produce(&producer, "orders", partition as i32, chunk).await;
        }
    };
    let polling = async {
        let mut latencies = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let started = Instant::now();
            let response = http.get(api("/1/Subscription")).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            latencies.push(started.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        latencies
    };
    let ((), mut latencies) = tokio::join!(produced, polling);

    // The healthy subscription gets every message, once.
    let delivered = receiver
        .wait_for_delivered(MESSAGES, Duration::from_secs(120))
        .await;
    let mut seen: Vec<i64> = delivered
        .iter()
        .map(|m| m["value"]["n"].as_i64().unwrap())
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen.len(),
        MESSAGES,
        "every message reached the healthy receiver"
    );

    // Every hostile subscription accounts for every message: delivered
    // (the flooder is loud but works), or dead-lettered with a reason.
    let deadline = Instant::now() + Duration::from_secs(180);
    for (name, id) in &hostile {
        loop {
            let status = json_of(http.get(api(&format!("/1/Subscription/{id}/Status")))).await;
            let counts = &status["counts"];
            let total: i64 = ["delivered", "filtered", "denied", "dead_lettered"]
                .iter()
                .map(|k| counts[k].as_i64().unwrap())
                .sum();
            if total == MESSAGES as i64 {
                if *name == "flooder" {
                    assert_eq!(counts["delivered"], MESSAGES as i64, "{status}");
                } else {
                    assert_eq!(counts["dead_lettered"], MESSAGES as i64, "{name}: {status}");
                    assert_eq!(status["status"], "unhealthy", "{name}: {status}");
                    let reason = status["status_reason"].as_str().unwrap_or_default();
                    assert!(
                        reason.contains(&format!("{name}@1.0.0")),
                        "{name}: {reason}"
                    );
                    assert!(reason.len() < 1500, "{name}: {} bytes", reason.len());
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not account for every message: {status}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let status = json_of(http.get(api(&format!("/1/Subscription/{healthy_id}/Status")))).await;
    assert_eq!(status["status"], "healthy", "{status}");

    latencies.sort_unstable();
    let p99 = latencies[latencies.len() * 99 / 100];
    let max = latencies[latencies.len() - 1];
    let peak_rss_kib = app.peak_rss_kib();
    eprintln!(
        "crowd of {} hostile subscriptions ({} guests) + 1 healthy, {MESSAGES} messages: \
         API p99 {p99:?}, max {max:?} over {} requests; host peak RSS {} MiB (VmHWM)",
        hostile.len(),
        CROWD.len(),
        latencies.len(),
        peak_rss_kib / 1024
    );
    assert!(peak_rss_kib > 0, "the peak RSS was read");
    app.kill().await;
}
