//! The management API (subscriptions, status, admin switch), on SQLite and on PostgreSQL.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_TOKEN, Db, TestApp, TestDb, authed_client, subscription, test_settings,
};
use crate::on_both_databases;

/// An application on a fresh database, with an embedded broker it never needs.
async fn spawn(db: Db) -> (TestApp, TestDb, wasmhook::broker::EmbeddedBroker) {
    let broker = wasmhook::broker::EmbeddedBroker::start(1).unwrap();
    let db = TestDb::create(db).await;
    let app = TestApp::spawn(test_settings(&db.url, &broker.bootstrap_servers())).await;
    (app, db, broker)
}

fn valid() -> Value {
    let mut body = subscription("orders", "https://example.com/hook", &["orders"]);
    body["source"][0]["jmes_filters"] = json!(["amount > `10`", "currency == 'EUR'"]);
    body["configuration"]["alerting"] =
        json!({"alert_channel": "email", "alert_emails": ["ops@example.com"]});
    body
}

/// The fields of a validation error response.
fn fields(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("an errors list in {body}"))
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_string())
        .collect()
}

on_both_databases!(
    subscribe_returns_201_with_id_kind_and_the_stored_fields,
    subscriptions_can_be_listed_fetched_replaced_and_deleted,
    an_unknown_or_malformed_id_is_a_json_404,
    header_values_are_never_echoed_and_a_masked_value_keeps_the_secret,
    status_reports_health_and_recent_activity_newest_first,
    the_admin_switch_lists_webhooks_and_persists_across_restarts,
    healthz_answers_ok,
    batching_bounds_are_enforced_at_their_edges,
    retry_bounds_and_enums_are_enforced,
    every_violation_is_listed_together,
    destination_source_and_alerting_rules_are_enforced,
    bad_bodies_get_a_4xx_json_error,
    subscriptions_survive_a_restart,
    two_hundred_concurrent_creates_are_all_stored,
);

async fn subscribe_returns_201_with_id_kind_and_the_stored_fields(db: Db) {
    let (app, _db, _broker) = spawn(db).await;
    let (status, body) = app.post("/1/Subscription", &valid()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(uuid::Uuid::parse_str(body["id"].as_str().unwrap()).is_ok());
    assert_eq!(body["kind"], "Webhook");
    assert_eq!(body["name"], "orders");
    assert_eq!(body["active"], "yes");
    assert_eq!(body["destination"]["kind"], "webhook");
    assert_eq!(
        body["destination"]["webhook"]["url"],
        "https://example.com/hook"
    );
    assert_eq!(body["source"], valid()["source"]);
    assert_eq!(
        body["configuration"]["batching"],
        valid()["configuration"]["batching"]
    );
    assert_eq!(
        body["configuration"]["retry"],
        valid()["configuration"]["retry"]
    );
    assert_eq!(
        body["configuration"]["alerting"],
        valid()["configuration"]["alerting"]
    );
    let secret = body["signing_secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "{secret}");
}

async fn subscriptions_can_be_listed_fetched_replaced_and_deleted(db: Db) {
    let (app, _db, _broker) = spawn(db).await;
    let a = app.subscribe(&valid()).await;
    let b = app
        .subscribe(&subscription("second", "http://127.0.0.1:1/x", &["t2"]))
        .await;

    let (status, list) = app.get("/1/Subscription").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a.as_str(), b.as_str()]);
    assert!(
        list[0].get("signing_secret").is_none(),
        "the secret is shown once only"
    );

    let (status, one) = app.get(&format!("/1/Subscription/{a}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["name"], "orders");

    let mut replacement = subscription("renamed", "https://example.org/new", &["other"]);
    replacement["configuration"]["batching"]["max_batch_size"] = json!(500);
    let (status, replaced) = app.put(&format!("/1/Subscription/{a}"), &replacement).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["id"], a.as_str());
    assert_eq!(replaced["name"], "renamed");
    assert_eq!(
        replaced["source"],
        json!([{"topic": "other", "jmes_filters": []}])
    );
    assert!(
        replaced["configuration"].get("alerting").is_none(),
        "PUT replaces the whole subscription"
    );
    let (_, fetched) = app.get(&format!("/1/Subscription/{a}")).await;
    assert_eq!(fetched["configuration"]["batching"]["max_batch_size"], 500);

    let (status, body) = app
        .put(&format!("/1/Subscription/{a}"), &json!({"name": ""}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(fields(&body).contains(&"name".to_string()));

    assert_eq!(
        app.delete(&format!("/1/Subscription/{a}")).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get(&format!("/1/Subscription/{a}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete(&format!("/1/Subscription/{a}")).await,
        StatusCode::NOT_FOUND
    );
    let (_, list) = app.get("/1/Subscription").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

async fn an_unknown_or_malformed_id_is_a_json_404(db: Db) {
    let (app, _db, _broker) = spawn(db).await;
    let unknown = uuid::Uuid::new_v4();
    for path in [
        format!("/1/Subscription/{unknown}"),
        format!("/1/Subscription/{unknown}/Status"),
        "/1/Subscription/not-a-uuid".to_string(),
        "/no/such/route".to_string(),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["code"], "not_found", "{path}");
        assert!(body["message"].as_str().unwrap().len() > 5);
    }
    let (status, _) = app
        .put(&format!("/1/Subscription/{unknown}"), &valid())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn header_values_are_never_echoed_and_a_masked_value_keeps_the_secret(db: Db) {
    let (app, db, _broker) = spawn(db).await;
    let mut body = valid();
    body["destination"]["webhook"]["headers"] =
        json!(["Authorization: Bearer s3cr3t-v4lue", "X-Tenant: acme"]);
    let (_, created) = app.post("/1/Subscription", &body).await;
    let id = created["id"].as_str().unwrap().to_string();
    for response in [
        created.clone(),
        app.get(&format!("/1/Subscription/{id}")).await.1,
        app.get("/1/Subscription").await.1,
    ] {
        let text = response.to_string();
        assert!(
            !text.contains("s3cr3t-v4lue") && !text.contains("acme"),
            "{text}"
        );
    }
    assert_eq!(
        created["destination"]["webhook"]["headers"],
        json!(["authorization: ********", "x-tenant: ********"])
    );

    // Sending back what GET showed keeps the stored values.
    let (_, mut fetched) = app.get(&format!("/1/Subscription/{id}")).await;
    fetched["name"] = json!("renamed");
    let (status, replaced) = app.put(&format!("/1/Subscription/{id}"), &fetched).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    let registry = crate::helpers::open_registry(&db.url).await;
    let stored = registry
        .get_subscription(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let lines: Vec<String> = stored
        .spec
        .destination
        .webhook
        .headers
        .iter()
        .map(|h| String::from(h.clone()))
        .collect();
    assert_eq!(
        lines,
        ["authorization: Bearer s3cr3t-v4lue", "x-tenant: acme"]
    );

    // A mask for a header that has no stored value is refused.
    let mut unknown = valid();
    unknown["destination"]["webhook"]["headers"] = json!(["X-New: ********"]);
    let (status, body) = app.put(&format!("/1/Subscription/{id}"), &unknown).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&body), ["destination.webhook.headers[0]"]);
}

async fn status_reports_health_and_recent_activity_newest_first(db: Db) {
    let (app, _db, _broker) = spawn(db).await;
    let id = app.subscribe(&valid()).await;
    let status = app.status_of(&id).await;
    assert_eq!(status["kind"], "WebhookStatus");
    assert_eq!(status["id"], id.as_str());
    assert_eq!(status["name"], "orders");
    assert_eq!(status["active"], "yes");
    assert_eq!(status["payload_url"], "https://example.com/hook");
    assert_eq!(status["status"], "healthy");
    assert!(chrono::DateTime::parse_from_rfc3339(status["timestamp"].as_str().unwrap()).is_ok());
    assert_eq!(status["recent_activity"][0]["event"], "active");

    let mut off = valid();
    off["active"] = json!("no");
    app.put(&format!("/1/Subscription/{id}"), &off).await;
    let status = app.status_of(&id).await;
    assert_eq!(status["status"], "inactive");
    assert_eq!(status["active"], "no");
    let events: Vec<&str> = status["recent_activity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["inactive", "active"]);
}

async fn the_admin_switch_lists_webhooks_and_persists_across_restarts(db: Db) {
    let broker = wasmhook::broker::EmbeddedBroker::start(1).unwrap();
    let db = TestDb::create(db).await;
    let settings = test_settings(&db.url, &broker.bootstrap_servers());
    let app = TestApp::spawn(settings.clone()).await;
    let id = app.subscribe(&valid()).await;

    let (status, admin) = app.get("/1/EventNotificationAdmin").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(admin["kind"], "WebhookAdmin");
    assert_eq!(admin["status"], "online");
    assert!(uuid::Uuid::parse_str(admin["id"].as_str().unwrap()).is_ok());
    assert_eq!(admin["webhooks"][0]["id"], id.as_str());
    assert_eq!(admin["webhooks"][0]["name"], "orders");
    assert_eq!(admin["webhooks"][0]["status"], "healthy");
    assert_eq!(admin["webhooks"][0]["topics"], json!(["orders"]));
    assert!(admin["webhooks"][0]["timestamp"].is_string());

    let (status, body) = app
        .post("/1/EventNotificationAdmin", &json!({"status": "sleeping"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&body), ["status"]);
    let (status, body) = app
        .post(
            "/1/EventNotificationAdmin",
            &json!({"status": "offline", "extra": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    app.set_platform("offline", "Maintenance until 14:00").await;
    let (_, admin) = app.get("/1/EventNotificationAdmin").await;
    assert_eq!(admin["status"], "offline");
    assert_eq!(admin["offline_message"], "Maintenance until 14:00");
    assert_eq!(admin["webhooks"][0]["status"], "inactive");
    let status = app.status_of(&id).await;
    assert_eq!(status["status"], "inactive");
    assert_eq!(status["offline_message"], "Maintenance until 14:00");
    assert_eq!(status["recent_activity"][0]["event"], "inactive");

    let admin_id = admin["id"].clone();
    app.stop().await;
    let app = TestApp::spawn(settings).await;
    let (_, admin) = app.get("/1/EventNotificationAdmin").await;
    assert_eq!(admin["status"], "offline", "the switch survives a restart");
    assert_eq!(admin["offline_message"], "Maintenance until 14:00");
    assert_eq!(admin["id"], admin_id);

    app.set_platform("online", "").await;
    let status = app.status_of(&id).await;
    assert_eq!(status["status"], "healthy");
    assert_eq!(status["recent_activity"][0]["event"], "active");
    app.stop().await;
}

async fn healthz_answers_ok(db: Db) {
    let (app, _db, _broker) = spawn(db).await;
    let response = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "OK");
}

/// Creates `body` and returns the status and the offending fields (if any).
async fn try_create(app: &TestApp, body: &Value) -> (StatusCode, Vec<String>) {
    let (status, response) = app.post("/1/Subscription", body).await;
    let fields = if status == StatusCode::BAD_REQUEST {
        fields(&response)
    } else {
        vec![]
    };
    (status, fields)
}

async fn batching_bounds_are_enforced_at_their_edges(db: Db) {
    let (app, _db, _broker) = spawn(db).await;
    for (size, accepted) in [
        (0, false),
        (1, true),
        (1000, true),
        (1001, false),
        (-5, false),
    ] {
        let mut body = valid();
        body["configuration"]["batching"]["max_batch_size"] = json!(size);
        let (status, fields) = try_create(&app, &body).await;
        if accepted {
            assert_eq!(status, StatusCode::CREATED, "max_batch_size {size}");
        } else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "max_batch_size {size}");
            assert_eq!(fields, ["configuration.batching.max_batch_size"]);
        }
    }
    for (seconds, accepted) in [(0, false), (1, true), (300, true), (301, false)] {
        let mut body = valid();
        body["configuration"]["batching"]["max_batch_interval_seconds"] = json!(seconds);
        let (status, fields) = try_create(&app, &body).await;
        if accepted {
            assert_eq!(status, StatusCode::CREATED, "interval {seconds}");
        } else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "interval {seconds}");
            assert_eq!(
                fields,
                ["configuration.batching.max_batch_interval_seconds"]
            );
        }
    }
}

async fn retry_bounds_and_enums_are_enforced(db: Db) {
    let (app, _db, _broker) = spawn(db).await;
    for (retries, accepted) in [(-1, false), (0, true), (10, true), (11, false)] {
        let mut body = valid();
        body["configuration"]["retry"]["max_retries"] = json!(retries);
        let (status, fields) = try_create(&app, &body).await;
        if accepted {
            assert_eq!(status, StatusCode::CREATED, "max_retries {retries}");
        } else {
            assert_eq!(
                fields,
                ["configuration.retry.max_retries"],
                "max_retries {retries}"
            );
        }
    }
    for algorithm in ["exponential_backoff", "fixed_time"] {
        let mut body = valid();
        body["configuration"]["retry"]["retry_algorithm"] = json!(algorithm);
        assert_eq!(try_create(&app, &body).await.0, StatusCode::CREATED);
    }
    let mut body = valid();
    body["configuration"]["retry"]["retry_algorithm"] = json!("linear");
    assert_eq!(
        try_create(&app, &body).await.1,
        ["configuration.retry.retry_algorithm"]
    );
    for active in ["yes", "no"] {
        let mut body = valid();
        body["active"] = json!(active);
        assert_eq!(try_create(&app, &body).await.0, StatusCode::CREATED);
    }
    let mut body = valid();
    body["active"] = json!("true");
    assert_eq!(try_create(&app, &body).await.1, ["active"]);
}

async fn every_violation_is_listed_together(db: Db) {
    let (app, _db, _broker) = spawn(db).await;
    let body = json!({
        "active": "maybe",
        "destination": {"kind": "queue", "webhook": {"url": "ftp://x"}},
        "source": [{"topic": "bad topic!", "jmes_filters": ["amount >"]}],
        "configuration": {
            "batching": {"max_batch_size": 0, "max_batch_interval_seconds": 301},
            "retry": {"max_retries": 11, "retry_algorithm": "linear"},
            "alerting": {"alert_channel": "email", "alert_emails": ["nope"]}
        }
    });
    let (status, response) = app.post("/1/Subscription", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(response["code"], "validation_failed");
    assert_eq!(
        fields(&response),
        [
            "name",
            "active",
            "destination.kind",
            "destination.webhook.url",
            "source[0].topic",
            "source[0].jmes_filters[0]",
            "configuration.batching.max_batch_size",
            "configuration.batching.max_batch_interval_seconds",
            "configuration.retry.max_retries",
            "configuration.retry.retry_algorithm",
            "configuration.alerting.alert_emails[0]",
        ]
    );
    for error in response["errors"].as_array().unwrap() {
        assert!(error["message"].as_str().unwrap().len() > 5, "{error}");
    }
    let (_, list) = app.get("/1/Subscription").await;
    assert_eq!(list, json!([]), "nothing half-written");
}

async fn destination_source_and_alerting_rules_are_enforced(db: Db) {
    let (app, _db, _broker) = spawn(db).await;
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "destination.webhook.url",
            Box::new(|b| b["destination"]["webhook"]["url"] = json!("/relative")),
        ),
        (
            "destination.webhook.url",
            Box::new(|b| b["destination"]["webhook"]["url"] = json!("mailto:a@b.c")),
        ),
        (
            "destination.webhook.headers[0]",
            Box::new(|b| b["destination"]["webhook"]["headers"] = json!(["no colon"])),
        ),
        (
            "destination.webhook.headers[0]",
            Box::new(|b| b["destination"]["webhook"]["headers"] = json!(["Content-Length: 1"])),
        ),
        (
            "destination.kind",
            Box::new(|b| b["destination"]["kind"] = json!("Webhook")),
        ),
        (
            "destination",
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("destination");
            }),
        ),
        ("source", Box::new(|b| b["source"] = json!([]))),
        (
            "source",
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("source");
            }),
        ),
        (
            "source[0].topic",
            Box::new(|b| b["source"] = json!([{"topic": ""}])),
        ),
        (
            "source[0].topic",
            Box::new(|b| b["source"] = json!([{"topic": "x".repeat(250)}])),
        ),
        (
            "source[1].topic",
            Box::new(|b| b["source"] = json!([{"topic": "a"}, {"topic": "a"}])),
        ),
        (
            "source[0].jmes_filters[1]",
            Box::new(|b| b["source"][0]["jmes_filters"] = json!(["a", "[[["])),
        ),
        (
            "configuration.alerting.alert_emails",
            Box::new(|b| b["configuration"]["alerting"]["alert_emails"] = json!([])),
        ),
        (
            "configuration.alerting.alert_emails[1]",
            Box::new(|b| {
                b["configuration"]["alerting"]["alert_emails"] = json!(["a@b.co", "@nope"])
            }),
        ),
        (
            "configuration.alerting.alert_channel",
            Box::new(|b| b["configuration"]["alerting"]["alert_channel"] = json!("sms")),
        ),
        ("name", Box::new(|b| b["name"] = json!("   "))),
    ];
    for (field, mutate) in cases {
        let mut body = valid();
        mutate(&mut body);
        let (status, fields) = try_create(&app, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {body}");
        assert_eq!(fields, [field], "{body}");
    }
    let mut body = valid();
    body["source"][0]["topic"] = json!("x".repeat(249));
    assert_eq!(try_create(&app, &body).await.0, StatusCode::CREATED);
}

async fn bad_bodies_get_a_4xx_json_error(db: Db) {
    let (app, _db, _broker) = spawn(db).await;
    let (status, body) = app.post_raw("/1/Subscription", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "malformed_json");

    let (status, body) = app.post_raw("/1/Subscription", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "malformed_json");

    let mut wrong_type = valid();
    wrong_type["configuration"]["batching"]["max_batch_size"] = json!("ten");
    let (status, body) = app.post("/1/Subscription", &wrong_type).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "invalid_field");
    assert_eq!(fields(&body), ["configuration.batching.max_batch_size"]);

    let mut unknown = valid();
    unknown["configuration"]["batching"]["max_batch_bytes"] = json!(1);
    let (status, body) = app.post("/1/Subscription", &unknown).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("max_batch_bytes"),
        "{body}"
    );

    let (status, body) = app.post_raw("/1/Subscription", "[1, 2]").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(200 * 1024));
    let (status, body) = app.post_raw("/1/Subscription", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["code"], "payload_too_large");

    // A fresh client: the server may close the connection it answered 413 on.
    let response = authed_client(ADMIN_TOKEN)
        .patch(app.url("/1/Subscription"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");

    let (_, list) = app.get("/1/Subscription").await;
    assert_eq!(list, json!([]));
}

async fn subscriptions_survive_a_restart(db: Db) {
    let broker = wasmhook::broker::EmbeddedBroker::start(1).unwrap();
    let db = TestDb::create(db).await;
    let settings = test_settings(&db.url, &broker.bootstrap_servers());
    let app = TestApp::spawn(settings.clone()).await;
    let id = app.subscribe(&valid()).await;
    let (_, before) = app.get(&format!("/1/Subscription/{id}")).await;
    app.stop().await;

    let app = TestApp::spawn(settings).await;
    let (status, after) = app.get(&format!("/1/Subscription/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(before, after);
    assert_eq!(
        app.status_of(&id).await["recent_activity"][0]["event"],
        "active"
    );
    app.stop().await;
}

async fn two_hundred_concurrent_creates_are_all_stored(db: Db) {
    let (app, _db, _broker) = spawn(db).await;
    let app = std::sync::Arc::new(app);
    let creates = (0..200).map(|i| {
        let app = app.clone();
        tokio::spawn(async move {
            let mut body = valid();
            body["name"] = json!(format!("sub-{i}"));
            // Inactive: 200 consumers would only slow the test down.
            body["active"] = json!("no");
            app.post("/1/Subscription", &body).await
        })
    });
    let results = futures::future::join_all(creates).await;
    for result in &results {
        let (status, body) = result.as_ref().unwrap();
        assert_eq!(*status, StatusCode::CREATED, "{body}");
    }
    // One page: the default page holds 100.
    let (_, list) = app.get("/1/Subscription?limit=1000").await;
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    let mut expected: Vec<String> = (0..200).map(|i| format!("sub-{i}")).collect();
    expected.sort();
    assert_eq!(names, expected);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
