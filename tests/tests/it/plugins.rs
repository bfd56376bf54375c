//! WebAssembly plugins end to end: uploaded over REST, attached to
//! subscriptions, run on messages from the embedded Kafka-protocol broker,
//! with what the real receiver got; every failure outcome, and hostile
//! plugins against the sandbox.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Db, Receiver, System, plugin_form, plugin_wasm, produce, subscription};

const WAIT: Duration = Duration::from_secs(30);

/// A subscription of `topic` to `url` whose batches flush after 1 s.
fn subscribed(name: &str, url: &str, topic: &str) -> Value {
    subscription(name, url, &[topic])
}

fn attach(name: &str, version: &str, config: Value) -> Value {
    json!({"name": name, "version": version, "config": config})
}

/// Stops the application before the broker goes: a pipeline's commit in
/// flight would otherwise wait forever for the vanished broker.
async fn shut_down(sys: System) {
    sys.app.stop().await;
}

fn values_of(delivered: &[Value]) -> Vec<Value> {
    delivered.iter().map(|m| m["value"].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_field_match_filter_plugin_delivers_only_matching_messages() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("orders", 1);
    sys.app
        .install_plugin("field_match", "field-match", "1.0.0", "filter")
        .await;
    let mut body = subscribed("fr-orders", &sys.receiver.url, "orders");
    body["source"][0]["filter_plugin"] = attach(
        "field-match",
        "1.0.0",
        json!({"field": "/country", "equals": "FR"}),
    );
    let id = sys.app.subscribe(&body).await;

    let produced = [
        json!({"n": 0, "country": "FR"}),
        json!({"n": 1, "country": "DE"}),
        json!({"n": 2, "country": "FR"}),
        json!({"n": 3, "country": "BE"}),
    ];
    produce(&sys.producer, "orders", 0, &produced).await;
    let delivered = sys.receiver.wait_for_delivered(2, WAIT).await;
    assert_eq!(
        values_of(&delivered),
        [produced[0].clone(), produced[2].clone()]
    );
    let status = sys
        .app
        .wait_for_status(&id, WAIT, |s| s["counts"]["filtered"] == 2)
        .await;
    assert_eq!(status["counts"]["delivered"], 2);
    assert_eq!(status["status"], "healthy");
    shut_down(sys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cloudevents_serialiser_plugin_makes_the_body_and_its_content_type() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("orders", 1);
    sys.app
        .install_plugin("cloudevents", "cloudevents", "0.1.0", "serialiser")
        .await;
    let mut body = subscribed("events", &sys.receiver.url, "orders");
    body["configuration"]["serialiser_plugin"] = attach(
        "cloudevents",
        "0.1.0",
        json!({"source": "urn:wasmhook:test", "type": "order.created"}),
    );
    sys.app.subscribe(&body).await;

    produce(
        &sys.producer,
        "orders",
        0,
        &[json!({"n": 0}), json!({"n": 1})],
    )
    .await;
    let mut events: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while events.len() < 2 {
        let requests = sys.receiver.wait_for_requests(1, WAIT).await;
        events = requests
            .iter()
            .flat_map(|r| {
                assert_eq!(
                    r.headers["content-type"],
                    "application/cloudevents-batch+json"
                );
                assert!(r.headers.contains_key("webhook-signature"));
                serde_json::from_slice::<Vec<Value>>(&r.body).expect("a JSON array of events")
            })
            .collect();
        assert!(tokio::time::Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(events[0]["id"], "orders/0/0");
    assert_eq!(events[0]["source"], "urn:wasmhook:test");
    assert_eq!(events[0]["type"], "order.created");
    assert_eq!(events[0]["data"], json!({"n": 0}));
    assert_eq!(events[1]["data"], json!({"n": 1}));
    shut_down(sys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_policy_plugin_denies_other_tenants_and_redacts_fields() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("payments", 1);
    sys.app
        .install_plugin("tenant_policy", "tenant-policy", "1.0.0", "policy")
        .await;
    let mut body = subscribed("acme", &sys.receiver.url, "payments");
    body["source"][0]["policy_plugin"] = attach(
        "tenant-policy",
        "1.0.0",
        json!({"tenant": "acme", "redact": "card"}),
    );
    let id = sys.app.subscribe(&body).await;

    produce(
        &sys.producer,
        "payments",
        0,
        &[
            json!({"tenant": "acme", "card": "4111", "n": 0}),
            json!({"tenant": "globex", "n": 1}),
            json!({"tenant": "acme", "n": 2}),
        ],
    )
    .await;
    let delivered = sys.receiver.wait_for_delivered(2, WAIT).await;
    assert_eq!(
        values_of(&delivered),
        [
            json!({"tenant": "acme", "n": 0}),
            json!({"tenant": "acme", "n": 2})
        ]
    );
    let status = sys
        .app
        .wait_for_status(&id, WAIT, |s| s["counts"]["denied"] == 1)
        .await;
    assert_eq!(status["counts"]["delivered"], 2);
    shut_down(sys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_that_are_not_valid_plugins_are_refused_with_what_is_wrong() {
    let sys = System::start_with(Db::Sqlite, |s| {
        // Smaller than the sandbox probe (~150 KB), larger than the others.
        s.delivery.plugins.max_component_bytes = 140 * 1024;
    })
    .await;
    let app = &sys.app;
    let expect = |(status, body): (StatusCode, Value), code: &str, needle: &str| {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["code"], code, "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    };

    let core_module = b"\0asm\x01\0\0\0";
    expect(
        app.upload_plugin("core", "1.0.0", "filter", core_module)
            .await,
        "not_a_component",
        "core WebAssembly module",
    );
    expect(
        app.upload_plugin("zip", "1.0.0", "filter", b"PK\x03\x04garbage")
            .await,
        "not_a_component",
        "not WebAssembly",
    );
    expect(
        app.upload_plugin("ce", "1.0.0", "filter", &plugin_wasm("cloudevents"))
            .await,
        "wrong_world",
        "`filter`",
    );
    expect(
        app.upload_plugin(
            "sig",
            "1.0.0",
            "filter",
            &plugin_wasm("guest_wrong_signature"),
        )
        .await,
        "wrong_world",
        "filter",
    );
    expect(
        app.upload_plugin(
            "evil",
            "1.0.0",
            "filter",
            &plugin_wasm("guest_forbidden_import"),
        )
        .await,
        "forbidden_import",
        "evil:exfil/network",
    );

    // Field problems are all reported at once, each with its field.
    let (content_type, form) = plugin_form(
        &[
            ("name", "Bad Name"),
            ("version", "1.0"),
            ("role", "serializer"),
        ],
        None,
    );
    let (status, body) = app.post_form(&content_type, form).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "validation_failed");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "version", "role", "wasm"], "{body}");

    let (status, body) = app
        .upload_plugin(
            "probe",
            "1.0.0",
            "serialiser",
            &plugin_wasm("guest_sandbox_probe"),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["code"], "payload_too_large");

    // A valid one is accepted once; the same name and version again is a conflict.
    app.install_plugin("field_match", "field-match", "1.0.0", "filter")
        .await;
    let (status, body) = app
        .upload_plugin(
            "field-match",
            "1.0.0",
            "filter",
            &plugin_wasm("field_match"),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "conflict");

    // The raw-body form of the upload.
    let response = app
        .http
        .post(app.url("/1/Plugin?name=field-match&version=1.1.0&role=filter"))
        .header("content-type", "application/wasm")
        .body(plugin_wasm("field_match"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    shut_down(sys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plugins_are_listed_shown_and_deleted_only_when_unused() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("orders", 1);
    let app = &sys.app;
    let wasm = plugin_wasm("field_match");
    let (status, uploaded) = app
        .upload_plugin("field-match", "1.0.0", "filter", &wasm)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    app.install_plugin("tenant_policy", "tenant-policy", "2.0.0-rc.1", "policy")
        .await;

    let (status, list) = app.get("/1/Plugin").await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "field-match");
    assert_eq!(list[1]["version"], "2.0.0-rc.1");
    assert!(list.iter().all(|p| p.get("wasm").is_none()), "{list:?}");

    let (status, shown) = app.get("/1/Plugin/field-match/1.0.0").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown, uploaded);
    assert_eq!(shown["role"], "filter");
    assert_eq!(shown["size"], wasm.len());
    let sha256 = shown["sha256"].as_str().unwrap();
    assert_eq!(sha256.len(), 64);
    assert!(
        sha256
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert!(shown["created_at"].is_string());
    let (status, _) = app.get("/1/Plugin/field-match/9.9.9").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let mut body = subscribed("uses-it", &sys.receiver.url, "orders");
    body["source"][0]["filter_plugin"] = attach(
        "field-match",
        "1.0.0",
        json!({"field": "/a", "equals": "1"}),
    );
    let id = app.subscribe(&body).await;
    let response = app
        .http
        .delete(app.url("/1/Plugin/field-match/1.0.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let refusal: Value = response.json().await.unwrap();
    assert!(
        refusal["message"].as_str().unwrap().contains(&id),
        "names the subscription: {refusal}"
    );

    assert_eq!(
        app.delete(&format!("/1/Subscription/{id}")).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.delete("/1/Plugin/field-match/1.0.0").await,
        StatusCode::NO_CONTENT
    );
    let (status, _) = app.get("/1/Plugin/field-match/1.0.0").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.delete("/1/Plugin/field-match/1.0.0").await,
        StatusCode::NOT_FOUND
    );
    shut_down(sys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attaching_a_missing_mistyped_or_misconfigured_plugin_names_the_field() {
    let sys = System::start(Db::Sqlite).await;
    let app = &sys.app;
    app.install_plugin("field_match", "field-match", "1.0.0", "filter")
        .await;
    app.install_plugin("tenant_policy", "tenant-policy", "1.0.0", "policy")
        .await;
    let mut body = subscription("bad", &sys.receiver.url, &["a", "b"]);
    body["source"][0]["filter_plugin"] = attach("nope", "1.0.0", json!({}));
    body["source"][0]["policy_plugin"] = attach("field-match", "1.0.0", json!({}));
    // field-match requires `equals` or `in`: its init refuses this config.
    body["source"][1]["filter_plugin"] = attach("field-match", "1.0.0", json!({"field": "/x"}));
    body["configuration"]["serialiser_plugin"] =
        attach("tenant-policy", "1.0.0", json!({"tenant": "acme"}));
    let (status, refusal) = app.post("/1/Subscription", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refusal}");
    let errors: Vec<(String, String)> = refusal["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "source[0].filter_plugin",
            "source[0].policy_plugin",
            "source[1].filter_plugin.config",
            "configuration.serialiser_plugin"
        ],
        "{refusal}"
    );
    assert!(errors[0].1.contains("no plugin nope@1.0.0"), "{errors:?}");
    assert!(
        errors[1].1.contains("is a filter plugin, not a policy"),
        "{errors:?}"
    );
    assert!(errors[2].1.contains("equals"), "{errors:?}");
    assert!(errors[3].1.contains("not a serialiser"), "{errors:?}");
    shut_down(sys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_plugin_version_is_swapped_in_live_without_losing_the_position() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("orders", 1);
    sys.app
        .install_plugin("field_match", "field-match", "1.0.0", "filter")
        .await;
    sys.app
        .install_plugin("field_match", "field-match", "1.1.0", "filter")
        .await;
    let mut body = subscribed("swap", &sys.receiver.url, "orders");
    body["source"][0]["filter_plugin"] = attach(
        "field-match",
        "1.0.0",
        json!({"field": "/c", "equals": "FR"}),
    );
    let id = sys.app.subscribe(&body).await;

    produce(
        &sys.producer,
        "orders",
        0,
        &[json!({"n": 0, "c": "FR"}), json!({"n": 1, "c": "DE"})],
    )
    .await;
    sys.receiver.wait_for_delivered(1, WAIT).await;
    // Both messages reached a final outcome (one filtered) before the swap.
    sys.app
        .wait_for_status(&id, WAIT, |s| s["counts"]["filtered"] == 1)
        .await;

    body["source"][0]["filter_plugin"] = attach(
        "field-match",
        "1.1.0",
        json!({"field": "/c", "equals": "DE"}),
    );
    let (status, replaced) = sys.app.put(&format!("/1/Subscription/{id}"), &body).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["source"][0]["filter_plugin"]["version"], "1.1.0");

    produce(
        &sys.producer,
        "orders",
        0,
        &[json!({"n": 2, "c": "FR"}), json!({"n": 3, "c": "DE"})],
    )
    .await;
    let delivered = sys.receiver.wait_for_delivered(2, WAIT).await;
    // n=1 (DE, before the swap) is not delivered again: the position held;
    // n=3 (DE, after it) is: the new version runs.
    assert_eq!(
        values_of(&delivered),
        [json!({"n": 0, "c": "FR"}), json!({"n": 3, "c": "DE"})]
    );
    let (status, _) = sys.app.get("/1/Plugin/field-match/1.0.0").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        sys.app.delete("/1/Plugin/field-match/1.0.0").await,
        StatusCode::NO_CONTENT,
        "the old version is no longer in use"
    );
    shut_down(sys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_looping_filter_fails_its_attempts_then_dead_letters_the_batch() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("orders", 1);
    sys.app
        .install_plugin("guest_loop", "looper", "1.0.0", "filter")
        .await;
    let mut body = subscribed("looping", &sys.receiver.url, "orders");
    body["source"][0]["filter_plugin"] = attach("looper", "1.0.0", json!({}));
    body["configuration"]["retry"] = json!({"max_retries": 1, "retry_algorithm": "fixed_time"});
    let id = sys.app.subscribe(&body).await;
    let healthy = sys
        .app
        .subscribe(&subscribed("plain", &sys.receiver.url, "orders"))
        .await;

    produce(
        &sys.producer,
        "orders",
        0,
        &[json!({"n": 0}), json!({"n": 1})],
    )
    .await;
    let status = sys
        .app
        .wait_for_status(&id, WAIT, |s| s["counts"]["dead_lettered"] == 2)
        .await;
    assert_eq!(status["status"], "unhealthy");
    assert_eq!(status["counts"]["filtered"], 0, "a failure is not a filter");
    let reason = status["dead_letters"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("filter plugin looper@1.0.0 (source[0].filter_plugin) failed")
            && reason.contains("CPU deadline")
            && reason.contains("after 2 attempts"),
        "{reason}"
    );
    assert!(
        status["status_reason"]
            .as_str()
            .unwrap()
            .contains("looper@1.0.0"),
        "{status}"
    );
    // The other subscription of the topic delivered everything meanwhile.
    let delivered = sys.receiver.wait_for_delivered(2, WAIT).await;
    assert_eq!(delivered.len(), 2, "only the plain subscription delivers");
    assert_eq!(sys.app.status_of(&healthy).await["status"], "healthy");
    shut_down(sys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trapping_policy_is_retried_then_dead_lettered_never_silently_denied() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("orders", 1);
    sys.app
        .install_plugin("guest_trap_policy", "trapper", "1.0.0", "policy")
        .await;
    let mut body = subscribed("guarded", &sys.receiver.url, "orders");
    body["source"][0]["policy_plugin"] = attach("trapper", "1.0.0", json!({}));
    body["configuration"]["retry"] = json!({"max_retries": 2, "retry_algorithm": "fixed_time"});
    let id = sys.app.subscribe(&body).await;
    let other = Receiver::start().await;
    sys.app
        .subscribe(&subscribed("plain", &other.url, "orders"))
        .await;

    let produced: Vec<Value> = (0..5).map(|n| json!({"n": n})).collect();
    produce(&sys.producer, "orders", 0, &produced).await;
    let status = sys
        .app
        .wait_for_status(&id, WAIT, |s| s["counts"]["dead_lettered"] == 5)
        .await;
    assert_eq!(
        status["counts"]["denied"], 0,
        "only an explicit deny denies"
    );
    assert_eq!(status["counts"]["delivered"], 0);
    let reason = status["dead_letters"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("policy plugin trapper@1.0.0 (source[0].policy_plugin) failed")
            && reason.contains("always traps"),
        "{reason}"
    );
    assert_eq!(other.wait_for_delivered(5, WAIT).await.len(), 5);
    assert!(
        sys.receiver.requests().is_empty(),
        "nothing unauthorised was sent"
    );
    shut_down(sys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_serialiser_is_retried_then_dead_lettered() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("orders", 1);
    sys.app
        .install_plugin("guest_failing_serialiser", "failing", "1.0.0", "serialiser")
        .await;
    let mut ids = Vec::new();
    for mode in ["error", "trap"] {
        let mut body = subscribed(mode, &sys.receiver.url, "orders");
        body["configuration"]["retry"] = json!({"max_retries": 2, "retry_algorithm": "fixed_time"});
        body["configuration"]["serialiser_plugin"] =
            attach("failing", "1.0.0", json!({"mode": mode}));
        ids.push(sys.app.subscribe(&body).await);
    }

    produce(
        &sys.producer,
        "orders",
        0,
        &[json!({"n": 0}), json!({"n": 1})],
    )
    .await;
    for (id, needle) in ids.iter().zip(["refuses", "trapped"]) {
        let status = sys
            .app
            .wait_for_status(id, WAIT, |s| s["counts"]["dead_lettered"] == 2)
            .await;
        assert_eq!(status["status"], "unhealthy");
        let reason = status["dead_letters"][0]["reason"].as_str().unwrap();
        assert!(
            reason.contains("serialiser plugin failing@1.0.0")
                && reason.contains(needle)
                && reason.contains("after 3 attempts"),
            "{reason}"
        );
    }
    assert!(sys.receiver.requests().is_empty(), "no body, no request");
    shut_down(sys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_memory_hungry_filter_hits_its_cap_and_the_host_carries_on() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("orders", 1);
    // Its own cap, asked for at upload.
    let (content_type, form) = plugin_form(
        &[
            ("name", "hog"),
            ("version", "1.0.0"),
            ("role", "filter"),
            ("memory_bytes", "16777216"),
        ],
        Some(&plugin_wasm("guest_memory_hog")),
    );
    let (status, uploaded) = sys.app.post_form(&content_type, form).await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    assert_eq!(uploaded["limits"]["memory_bytes"], 16 << 20);
    let mut body = subscribed("hungry", &sys.receiver.url, "orders");
    body["source"][0]["filter_plugin"] = attach("hog", "1.0.0", json!({}));
    body["configuration"]["retry"] = json!({"max_retries": 0, "retry_algorithm": "fixed_time"});
    let id = sys.app.subscribe(&body).await;
    sys.app
        .subscribe(&subscribed("plain", &sys.receiver.url, "orders"))
        .await;

    produce(&sys.producer, "orders", 0, &[json!({"n": 0})]).await;
    let status = sys
        .app
        .wait_for_status(&id, WAIT, |s| s["counts"]["dead_lettered"] == 1)
        .await;
    assert_eq!(status["status"], "unhealthy");
    let reason = status["dead_letters"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("memory limit of 16777216 bytes"),
        "{reason}"
    );
    assert_eq!(sys.receiver.wait_for_delivered(1, WAIT).await.len(), 1);
    let (status, _) = sys.app.get("/1/Plugin").await;
    assert_eq!(status, StatusCode::OK, "the API still answers");
    shut_down(sys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plugins_are_stored_on_postgresql_too() {
    let sys = System::start(Db::Postgres).await;
    sys.topic("orders", 1);
    let wasm = plugin_wasm("cloudevents");
    let (status, uploaded) = sys
        .app
        .upload_plugin("cloudevents", "0.1.0", "serialiser", &wasm)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    assert_eq!(uploaded["size"], wasm.len());
    let (_, shown) = sys.app.get("/1/Plugin/cloudevents/0.1.0").await;
    assert_eq!(shown, uploaded);
    let (status, _) = sys
        .app
        .upload_plugin("cloudevents", "0.1.0", "serialiser", &wasm)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // The stored bytes round-trip: a subscription can instantiate them.
    let mut body = subscribed("pg", &sys.receiver.url, "orders");
    body["configuration"]["serialiser_plugin"] = attach(
        "cloudevents",
        "0.1.0",
        json!({"source": "urn:pg", "type": "t"}),
    );
    sys.app.subscribe(&body).await;
    shut_down(sys).await;
}

// ---- Plugins written in other languages (opt-in: slow toolchains) ----

/// Builds (if needed) and returns an example's component, or `None` when
/// these tests are not enabled.
fn example_component(dir: &str) -> Option<Vec<u8>> {
    if std::env::var("WASMHOOK_TEST_GUEST_LANGUAGES").as_deref() != Ok("1") {
        eprintln!("SKIPPED: the {dir} example test runs only with WASMHOOK_TEST_GUEST_LANGUAGES=1");
        return None;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(dir);
    let wasm = root.join("filter.wasm");
    if !wasm.exists() {
        let status = std::process::Command::new(root.join("build.sh"))
            .status()
            .expect("running the example's build.sh");
        assert!(status.success(), "examples/{dir}/build.sh failed: {status}");
    }
    Some(std::fs::read(&wasm).expect("the example's filter.wasm"))
}

/// Both examples keep messages whose JSON value has `"keep": true`.
async fn example_filter_runs_in_the_host(dir: &str) {
    let Some(wasm) = example_component(dir) else {
        return;
    };
    // Interpreters in a component need more than Rust guests: the upload
    // asks for it, the host runs with its defaults.
    let sys = System::start(Db::Sqlite).await;
    sys.topic("orders", 1);
    let (content_type, form) = plugin_form(
        &[
            ("name", dir),
            ("version", "1.0.0"),
            ("role", "filter"),
            ("memory_bytes", "536870912"),
            ("cpu_deadline_ms", "5000"),
        ],
        Some(&wasm),
    );
    let (status, body) = sys.app.post_form(&content_type, form).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["limits"]["cpu_deadline_ms"], 5000);
    assert_eq!(body["limits"]["wall_deadline_ms"], 10000);
    let mut body = subscribed(dir, &sys.receiver.url, "orders");
    body["source"][0]["filter_plugin"] = attach(dir, "1.0.0", json!({}));
    sys.app.subscribe(&body).await;
    produce(
        &sys.producer,
        "orders",
        0,
        &[
            json!({"n": 0, "keep": true}),
            json!({"n": 1, "keep": false}),
            json!({"n": 2, "keep": true}),
        ],
    )
    .await;
    let delivered = sys
        .receiver
        .wait_for_delivered(2, Duration::from_secs(180))
        .await;
    assert_eq!(
        values_of(&delivered),
        [json!({"n": 0, "keep": true}), json!({"n": 2, "keep": true})]
    );
    shut_down(sys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_python_example_filter_runs_in_the_host() {
    example_filter_runs_in_the_host("python-filter").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_js_example_filter_runs_in_the_host() {
    example_filter_runs_in_the_host("js-filter").await;
}
