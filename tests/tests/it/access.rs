//! Who may do what: bearer tokens, tenants, topic ACLs, private and shared
//! plugins, a tenant's mandatory policy and pagination. (The token
//! bootstrap of the binary itself is tested in host/tests/cli.rs.)

use std::time::Duration;

use axum::http::StatusCode;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_TOKEN, Db, System, TestApp, TestDb, plugin_wasm, produce, subscription, test_settings,
};
use crate::on_both_databases;

const WAIT: Duration = Duration::from_secs(30);

fn assert_error(answer: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["code"], code, "{}", answer.1);
    assert!(answer.1["message"].as_str().is_some_and(|m| !m.is_empty()));
}

async fn every_route_but_the_probes_needs_a_bearer_token(db: Db) {
    let db = TestDb::create(db).await;
    let app = TestApp::spawn(test_settings(&db.url, "127.0.0.1:1")).await;
    let anonymous = app.caller(None);
    let forged = app.caller(Some("whk_testadmin0000_0123456789abcdefghijklmnoX"));
    let id = uuid::Uuid::new_v4();
    let routes = [
        (Method::GET, "/1/Subscription".to_string()),
        (Method::POST, "/1/Subscription".to_string()),
        (Method::GET, format!("/1/Subscription/{id}")),
        (Method::PUT, format!("/1/Subscription/{id}")),
        (Method::DELETE, format!("/1/Subscription/{id}")),
        (Method::GET, format!("/1/Subscription/{id}/Status")),
        (Method::GET, "/1/EventNotificationAdmin".to_string()),
        (Method::POST, "/1/EventNotificationAdmin".to_string()),
        (Method::GET, "/1/Plugin".to_string()),
        (Method::POST, "/1/Plugin".to_string()),
        (Method::GET, "/1/Plugin/p/1.0.0".to_string()),
        (Method::DELETE, "/1/Plugin/p/1.0.0".to_string()),
        (Method::GET, "/1/Tenant".to_string()),
        (Method::POST, "/1/Tenant".to_string()),
        (Method::GET, format!("/1/Tenant/{id}")),
        (Method::POST, format!("/1/Tenant/{id}/Token")),
        (Method::GET, "/1/Token".to_string()),
        (Method::DELETE, format!("/1/Token/{id}")),
        (Method::GET, "/no/such/route".to_string()),
    ];
    for (method, path) in &routes {
        let answer = anonymous.call(method.clone(), path, Some(&json!({}))).await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
        let answer = forged.call(method.clone(), path, Some(&json!({}))).await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let response = anonymous.get_response("/1/Subscription").await;
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let malformed = app.caller(Some("not-a-token"));
    assert_error(
        &malformed.get("/1/Subscription").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_eq!(
        anonymous.get_response("/healthz").await.status(),
        StatusCode::OK
    );
    // Open too; not ready here, as no broker listens on 127.0.0.1:1.
    let (status, body) = anonymous.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["registry"], "ok", "{body}");
    let (status, body) = app.caller(Some(ADMIN_TOKEN)).get("/1/Subscription").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.stop().await;
}

async fn tenants_see_and_change_only_their_own_subscriptions(db: Db) {
    let sys = System::start(db).await;
    let admin = sys.app.caller(Some(ADMIN_TOKEN));
    let acme = admin.tenant("acme", &["payments", "acme.*"]).await;
    let globex = admin.tenant("globex", &["globex.*"]).await;
    let (as_acme, as_globex) = (
        sys.app.caller(Some(&acme.token)),
        sys.app.caller(Some(&globex.token)),
    );
    let url = &sys.receiver.url;

    // The ACL: exact names and prefixes allow, anything else is a 403 naming the topic.
    let (status, created) = as_acme
        .post(
            "/1/Subscription",
            &subscription("orders", url, &["acme.orders"]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["tenant_id"], acme.id.as_str());
    let mine = created["id"].as_str().unwrap().to_string();
    let (status, body) = as_acme
        .post("/1/Subscription", &subscription("pay", url, &["payments"]))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let refused = as_acme
        .post(
            "/1/Subscription",
            &subscription("theirs", url, &["acme.ok", "globex.orders"]),
        )
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        refused.1["message"]
            .as_str()
            .unwrap()
            .contains("globex.orders")
    );
    let refused = as_acme
        .post(
            "/1/Subscription",
            &subscription("pay2", url, &["payments2"]),
        )
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");

    // Another tenant's subscription does not exist for globex.
    let path = format!("/1/Subscription/{mine}");
    assert_error(
        &as_globex.get(&path).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &as_globex.get(&format!("{path}/Status")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &as_globex
            .put(&path, &subscription("stolen", url, &["globex.x"]))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &as_globex.delete(&path).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (_, listed) = as_globex.get("/1/Subscription").await;
    assert_eq!(listed, json!([]));
    let (_, overview) = as_globex.get("/1/EventNotificationAdmin").await;
    assert_eq!(overview["webhooks"], json!([]));

    // Its owner reads and changes it, within its ACL.
    let (status, body) = as_acme.get(&path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, listed) = as_acme.get("/1/Subscription").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let mut moved = body.clone();
    moved["source"] = json!([{"topic": "globex.orders"}]);
    assert_error(
        &as_acme.put(&path, &moved).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    moved["source"] = json!([{"topic": "acme.invoices"}]);
    let (status, body) = as_acme.put(&path, &moved).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The admin sees everything.
    let (_, all) = admin.get("/1/Subscription").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (status, _) = admin.get(&format!("{path}/Status")).await;
    assert_eq!(status, StatusCode::OK);

    // Admin-only routes.
    let tenant_routes = [
        (
            Method::POST,
            "/1/EventNotificationAdmin".to_string(),
            json!({"status": "offline"}),
        ),
        (
            Method::POST,
            "/1/Tenant".to_string(),
            json!({"name": "x", "topics": ["*"]}),
        ),
        (Method::GET, "/1/Tenant".to_string(), json!({})),
        (Method::GET, format!("/1/Tenant/{}", acme.id), json!({})),
        (
            Method::PUT,
            format!("/1/Tenant/{}", acme.id),
            json!({"name": "acme", "topics": ["*"]}),
        ),
        (
            Method::DELETE,
            format!("/1/Tenant/{}", globex.id),
            json!({}),
        ),
        (
            Method::POST,
            format!("/1/Tenant/{}/Token", acme.id),
            json!({}),
        ),
    ];
    for (method, path, body) in &tenant_routes {
        let answer = as_acme.call(method.clone(), path, Some(body)).await;
        assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    }
    let (_, platform) = admin.get("/1/EventNotificationAdmin").await;
    assert_eq!(platform["status"], "online");

    // A tenant with subscriptions cannot be deleted; its owner deletes them first.
    let busy = admin.delete(&format!("/1/Tenant/{}", acme.id)).await;
    assert_error(&busy, StatusCode::CONFLICT, "conflict");
    let (status, _) = as_acme.delete(&path).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    sys.app.stop().await;
}

async fn tokens_can_expire_and_be_revoked(db: Db) {
    let db = TestDb::create(db).await;
    let app = TestApp::spawn(test_settings(&db.url, "127.0.0.1:1")).await;
    let admin = app.caller(Some(ADMIN_TOKEN));
    let acme = admin.tenant("acme", &["acme.*"]).await;
    let as_acme = app.caller(Some(&acme.token));
    assert_eq!(as_acme.get("/1/Subscription").await.0, StatusCode::OK);

    // A tenant lists only its own tokens and mints another for itself.
    let (status, tokens) = as_acme.get("/1/Token").await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens.as_array().unwrap().len(), 1);
    assert!(
        tokens[0].get("token").is_none(),
        "a listed token is never shown: {tokens}"
    );
    let (status, second) = as_acme.post("/1/Token", &json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_eq!(second["tenant_id"], acme.id.as_str());

    // Revoked: 401 from then on.
    let first_id = tokens[0]["id"].as_str().unwrap();
    let (status, _) = as_acme.delete(&format!("/1/Token/{first_id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let answer = as_acme.get("/1/Subscription").await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(answer.1["message"].as_str().unwrap().contains("revoked"));
    let as_acme = app.caller(Some(second["token"].as_str().unwrap()));
    assert_eq!(as_acme.get("/1/Subscription").await.0, StatusCode::OK);

    // Another tenant's token is not found; the admin's listing shows all.
    let globex = admin.tenant("globex", &["globex.*"]).await;
    let second_id = second["id"].as_str().unwrap();
    let as_globex = app.caller(Some(&globex.token));
    assert_error(
        &as_globex.delete(&format!("/1/Token/{second_id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (_, all) = admin.get("/1/Token").await;
    assert!(all.as_array().unwrap().len() >= 4, "{all}");

    // Expiry: in the past is refused; a token that expires stops working.
    let past = admin
        .post(
            &format!("/1/Tenant/{}/Token", acme.id),
            &json!({"expires_at": "2000-01-01T00:00:00Z"}),
        )
        .await;
    assert_error(&past, StatusCode::BAD_REQUEST, "validation_failed");
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let (status, short) = admin
        .post(
            &format!("/1/Tenant/{}/Token", acme.id),
            &json!({"expires_at": soon}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{short}");
    let short_lived = app.caller(Some(short["token"].as_str().unwrap()));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = short_lived.get("/1/Subscription").await;
        if answer.0 == StatusCode::UNAUTHORIZED {
            assert!(
                answer.1["message"].as_str().unwrap().contains("expired"),
                "{}",
                answer.1
            );
            break;
        }
        assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the token never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Deleting a tenant retires its tokens.
    let (status, _) = admin.delete(&format!("/1/Tenant/{}", globex.id)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_error(
        &as_globex.get("/1/Subscription").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    app.stop().await;
}

on_both_databases!(
    every_route_but_the_probes_needs_a_bearer_token,
    tenants_see_and_change_only_their_own_subscriptions,
    tokens_can_expire_and_be_revoked,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plugins_are_private_to_their_tenant_unless_the_admin_shares_them() {
    let sys = System::start(Db::Sqlite).await;
    let admin = sys.app.caller(Some(ADMIN_TOKEN));
    let acme = admin.tenant("acme", &["acme.*"]).await;
    let globex = admin.tenant("globex", &["globex.*"]).await;
    let (as_acme, as_globex) = (
        sys.app.caller(Some(&acme.token)),
        sys.app.caller(Some(&globex.token)),
    );
    let filter = plugin_wasm("field_match");

    // The same name and version in two private namespaces and the shared one.
    for caller in [&as_acme, &as_globex, &admin] {
        let (status, body) = caller
            .upload_plugin("matcher", "1.0.0", "filter", &filter)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = admin
        .upload_plugin("shared-only", "1.0.0", "filter", &filter)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["shared"], true);
    let (status, body) = as_acme
        .upload_plugin("acme-only", "1.0.0", "filter", &filter)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["shared"], false);
    assert_eq!(body["tenant_id"], acme.id.as_str());

    // globex sees its own and the shared ones, never acme's.
    let (_, listed) = as_globex.get("/1/Plugin").await;
    let names: Vec<(String, bool)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["shared"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("matcher".to_string(), true),
            ("shared-only".to_string(), true),
            ("matcher".to_string(), false)
        ]
    );
    assert_error(
        &as_globex.get("/1/Plugin/acme-only/1.0.0").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (_, all) = admin.get("/1/Plugin").await;
    assert_eq!(all.as_array().unwrap().len(), 5, "{all}");

    // Attaching: its own and shared plugins, not another tenant's.
    let attach = |name: &str| {
        let mut body = subscription("s", &sys.receiver.url, &["globex.orders"]);
        body["source"][0]["filter_plugin"] =
            json!({"name": name, "version": "1.0.0", "config": {"field": "a", "equals": "b"}});
        body
    };
    let (status, body) = as_globex
        .post("/1/Subscription", &attach("acme-only"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["errors"][0]["field"], "source[0].filter_plugin",
        "{body}"
    );
    let (status, body) = as_globex
        .post("/1/Subscription", &attach("shared-only"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Deleting: a tenant may not delete a shared plugin, nor one in use.
    assert_error(
        &as_globex.delete("/1/Plugin/shared-only/1.0.0").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        &admin.delete("/1/Plugin/shared-only/1.0.0").await,
        StatusCode::CONFLICT,
        "conflict",
    );
    let (status, _) = as_acme.delete("/1/Plugin/acme-only/1.0.0").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = as_globex.get("/1/Plugin/matcher/1.0.0").await;
    assert_eq!(status, StatusCode::OK, "globex's own copy is still there");
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mandatory_policy_applies_to_every_subscription_of_the_tenant() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("acme.payments", 1);
    let admin = sys.app.caller(Some(ADMIN_TOKEN));
    let (status, body) = admin
        .upload_plugin(
            "tenant-policy",
            "1.0.0",
            "policy",
            &plugin_wasm("tenant_policy"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let acme = admin.tenant("acme", &["acme.*"]).await;
    let policy = json!({"name": "tenant-policy", "version": "1.0.0",
                        "config": {"tenant": "acme", "redact": "card"}});
    let (status, body) = admin
        .put(
            &format!("/1/Tenant/{}", acme.id),
            &json!({"name": "acme", "topics": ["acme.*"], "mandatory_policy": policy}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["mandatory_policy"]["name"], "tenant-policy");

    // The tenant's subscription attaches no policy; the mandatory one runs anyway.
    let as_acme = sys.app.caller(Some(&acme.token));
    let (status, created) = as_acme
        .post(
            "/1/Subscription",
            &subscription("pay", &sys.receiver.url, &["acme.payments"]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    produce(
        &sys.producer,
        "acme.payments",
        0,
        &[
            json!({"tenant": "acme", "card": "4111", "n": 0}),
            json!({"tenant": "globex", "n": 1}),
            json!({"tenant": "acme", "n": 2}),
        ],
    )
    .await;
    let delivered = sys.receiver.wait_for_delivered(2, WAIT).await;
    let values: Vec<Value> = delivered.iter().map(|m| m["value"].clone()).collect();
    assert_eq!(
        values,
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

    // The tenant cannot remove it, and the shared plugin cannot be deleted under it.
    let answer = as_acme
        .put(
            &format!("/1/Tenant/{}", acme.id),
            &json!({"name": "acme", "topics": ["acme.*"]}),
        )
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    let answer = admin.delete("/1/Plugin/tenant-policy/1.0.0").await;
    assert_error(&answer, StatusCode::CONFLICT, "conflict");
    assert!(
        answer.1["message"]
            .as_str()
            .unwrap()
            .contains("mandatory policy")
    );

    // A mandatory policy must be a shared policy plugin.
    let answer = admin
        .put(
            &format!("/1/Tenant/{}", acme.id),
            &json!({"name": "acme", "topics": ["acme.*"],
                    "mandatory_policy": {"name": "nope", "version": "1.0.0"}}),
        )
        .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "validation_failed");
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lists_page_with_a_limit_and_the_next_link() {
    let db = TestDb::create(Db::Sqlite).await;
    // A broker that answers: each subscription's dead-letter topic is created with it.
    let broker = wasmhook::broker::EmbeddedBroker::start(1).unwrap();
    let app = TestApp::spawn(test_settings(&db.url, &broker.bootstrap_servers())).await;
    let admin = app.caller(Some(ADMIN_TOKEN));
    let mut created = Vec::new();
    for i in 0..5 {
        let (status, body) = admin
            .post(
                "/1/Subscription",
                &subscription(&format!("s{i}"), "http://example.com/hook", &["t"]),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        created.push(body["id"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut next = Some("/1/Subscription?limit=2".to_string());
    let mut pages = 0;
    while let Some(path) = next.take() {
        let response = admin.get_response(&path).await;
        assert_eq!(response.status(), StatusCode::OK);
        next = response.headers().get("link").map(|link| {
            let link = link.to_str().unwrap();
            link.trim_start_matches('<')
                .split('>')
                .next()
                .unwrap()
                .to_string()
        });
        let page: Value = response.json().await.unwrap();
        assert!(page.as_array().unwrap().len() <= 2);
        seen.extend(
            page.as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_string()),
        );
        pages += 1;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created, "every subscription once, in creation order");
    for bad in ["/1/Subscription?limit=0", "/1/Subscription?cursor=nonsense"] {
        let (status, body) = admin.get(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    app.stop().await;
}
