//! Secrets at rest, through the real API on both databases: what the registry
//! holds when read directly, signing-secret rotation verified with the
//! `standardwebhooks` crate, masked headers on PUT, restarts with the right
//! key and start-ups with a wrong one.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, Row};
use wasmhook::secrets::{KeySource, SecretKey};
use wasmhook::startup::Application;

use crate::helpers::{Db, Received, System, open_registry, produce, subscription};
use crate::on_both_databases;

const WAIT: Duration = Duration::from_secs(30);
const HEADER_SECRET: &str = "Bearer hdr-s3cret-4f1c";
const PLUGIN_SECRET: &str = "plg-s3cret-9d2e";

on_both_databases!(
    the_registry_holds_no_secret_in_plain_text_while_deliveries_carry_them,
    secrets_written_in_plain_text_before_are_sealed_at_start_up,
    a_rotated_secret_and_its_predecessor_both_sign_during_the_overlap,
    after_the_overlap_only_the_new_secret_signs,
    a_masked_header_is_kept_for_the_same_origin_and_refused_for_another,
    a_wrong_key_fails_start_up_and_the_right_one_reads_everything_back,
);

/// Every text value of every table, as a reader of the database sees it.
async fn stored_text(db: Db, url: &str) -> Vec<String> {
    match db {
        Db::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            let tables: Vec<String> =
                sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
            let mut out = Vec::new();
            for table in tables {
                let rows = sqlx::query(&format!("SELECT * FROM \"{table}\""))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
                out.extend(texts_of(&rows));
            }
            out
        }
        Db::Postgres => {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            let mut out = Vec::new();
            for table in tables {
                let rows = sqlx::query(&format!("SELECT * FROM \"{table}\""))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
                out.extend(texts_of(&rows));
            }
            out
        }
    }
}

/// The values of the text columns of `rows` (others do not decode as text).
fn texts_of<R: Row>(rows: &[R]) -> Vec<String>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .flat_map(|row| {
            (0..row.len()).filter_map(|i| row.try_get::<Option<String>, _>(i).ok().flatten())
        })
        .collect()
}

/// Asserts that no text stored anywhere contains any of `secrets`, and that
/// the sealed form is there instead (so the scan did read the subscription).
async fn assert_sealed_at_rest(db: Db, url: &str, secrets: &[&str]) {
    let stored = stored_text(db, url).await;
    for secret in secrets {
        let leaks: Vec<&String> = stored.iter().filter(|t| t.contains(secret)).collect();
        assert!(
            leaks.is_empty(),
            "{secret:?} is stored in plain text: {leaks:?}"
        );
    }
    assert!(
        stored.iter().any(|t| t.starts_with("enc:v1:")),
        "no sealed value found among {} stored texts",
        stored.len()
    );
}

/// The `v1,` signatures of a request.
fn signatures(request: &Received) -> Vec<String> {
    request.headers["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .map(str::to_string)
        .collect()
}

fn verifies(secret: &str, request: &Received) -> bool {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&request.body, &request.headers)
        .is_ok()
}

/// A subscription of `orders` whose header carries a secret value.
fn secret_subscription(url: &str) -> Value {
    let mut body = subscription("secret-orders", url, &["orders"]);
    body["destination"]["webhook"]["headers"] = json!([
        format!("Authorization: {HEADER_SECRET}"),
        "X-Plain: visible"
    ]);
    body
}

/// The first request that carried the message `{"n": n}`.
fn request_with(sys: &System, n: i64) -> Option<Received> {
    sys.receiver
        .requests()
        .into_iter()
        .find(|r| r.messages().iter().any(|m| m["value"]["n"] == n))
}

/// Produces `{"n": first}`, `{"n": first + 1}`, … one at a time, each after the
/// previous was delivered, until a request satisfies `done` (a restarted
/// pipeline takes over at a moment the test cannot see); returns it.
async fn produce_until(sys: &System, first: i64, done: impl Fn(&Received) -> bool) -> Received {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut n = first;
    loop {
        produce(&sys.producer, "orders", 0, &[json!({"n": n})]).await;
        let request = loop {
            // Counted before looking, so a request arriving in between is not missed.
            let already = sys.receiver.requests().len();
            if let Some(request) = request_with(sys, n) {
                break request;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "message {n} was not delivered in time"
            );
            sys.receiver.wait_for_requests(already + 1, WAIT).await;
        };
        if done(&request) {
            return request;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery satisfied the condition within {WAIT:?}"
        );
        n += 1;
    }
}

async fn rotate(sys: &System, id: &str) -> (String, chrono::DateTime<chrono::Utc>) {
    let (status, body) = sys
        .app
        .post(&format!("/1/Subscription/{id}/Secret/Rotate"), &Value::Null)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let secret = body["signing_secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{body}");
    let expires =
        chrono::DateTime::parse_from_rfc3339(body["previous_secret_expires_at"].as_str().unwrap())
            .unwrap()
            .to_utc();
    (secret, expires)
}

async fn the_registry_holds_no_secret_in_plain_text_while_deliveries_carry_them(db: Db) {
    let sys = System::start(db).await;
    sys.topic("orders", 1);
    sys.app
        .install_plugin("field_match", "field-match", "1.0.0", "filter")
        .await;
    let mut body = secret_subscription(&sys.receiver.url);
    // The plugin only keeps messages whose `kind` is the secret value: a
    // delivery shows that the secret reached its `init`.
    body["source"][0]["filter_plugin"] = json!({"name": "field-match", "version": "1.0.0",
        "config": {"field": "/kind"}, "secret_config": {"equals": PLUGIN_SECRET}});
    let (status, created) = sys.app.post("/1/Subscription", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let signing_secret = created["signing_secret"].as_str().unwrap().to_string();

    let (_, shown) = sys.app.get(&format!("/1/Subscription/{id}")).await;
    assert_eq!(
        shown["source"][0]["filter_plugin"]["secret_config"],
        json!({"equals": "********"})
    );
    assert_eq!(
        shown["source"][0]["filter_plugin"]["config"],
        json!({"field": "/kind"})
    );
    for response in [&created, &shown] {
        let text = response.to_string();
        assert!(
            !text.contains(PLUGIN_SECRET) && !text.contains(HEADER_SECRET),
            "{text}"
        );
    }

    produce(
        &sys.producer,
        "orders",
        0,
        &[
            json!({"n": 0, "kind": "other"}),
            json!({"n": 1, "kind": PLUGIN_SECRET}),
        ],
    )
    .await;
    let delivered = sys.receiver.wait_for_delivered(1, WAIT).await;
    assert_eq!(delivered[0]["value"]["n"], 1);
    let request = &sys.receiver.requests()[0];
    assert_eq!(request.headers["authorization"], HEADER_SECRET);
    assert_eq!(request.headers["x-plain"], "visible");
    assert!(verifies(&signing_secret, request));
    // The delivery is in the activity log too, which must not hold the header.
    sys.app
        .wait_for_status(&id, WAIT, |s| s["counts"]["delivered"] == 1)
        .await;

    let key_part = signing_secret.trim_start_matches("whsec_");
    assert_sealed_at_rest(
        db,
        &sys.db.url,
        &[key_part, "hdr-s3cret-4f1c", PLUGIN_SECRET],
    )
    .await;
    sys.app.stop().await;
}

async fn secrets_written_in_plain_text_before_are_sealed_at_start_up(db: Db) {
    let mut sys = System::start(db).await;
    sys.topic("orders", 1);
    let (_, created) = sys
        .app
        .post("/1/Subscription", &secret_subscription(&sys.receiver.url))
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let signing_secret = created["signing_secret"].as_str().unwrap().to_string();

    // Write the row back the way a version without sealing stored it.
    let registry = open_registry(&sys.db.url).await;
    let stored = registry
        .get_subscription(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    registry.close().await;
    let plain_spec = serde_json::to_string(&stored.spec).unwrap();
    assert!(plain_spec.contains(HEADER_SECRET));
    let update = "UPDATE subscriptions SET spec = $1, signing_secret = $2 WHERE id = $3";
    match db {
        Db::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&sys.db.url).await.unwrap();
            sqlx::query(update)
                .bind(&plain_spec)
                .bind(&signing_secret)
                .bind(&id)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        Db::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&sys.db.url).await.unwrap();
            sqlx::query(update)
                .bind(&plain_spec)
                .bind(&signing_secret)
                .bind(&id)
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
    let stored = stored_text(db, &sys.db.url).await;
    assert!(stored.iter().any(|t| t.contains("hdr-s3cret-4f1c")));

    sys.restart().await;
    let key_part = signing_secret.trim_start_matches("whsec_");
    assert_sealed_at_rest(db, &sys.db.url, &[key_part, "hdr-s3cret-4f1c"]).await;

    produce(&sys.producer, "orders", 0, &[json!({"n": 0})]).await;
    sys.receiver.wait_for_delivered(1, WAIT).await;
    let request = &sys.receiver.requests()[0];
    assert_eq!(request.headers["authorization"], HEADER_SECRET);
    assert!(verifies(&signing_secret, request));
    sys.app.stop().await;
}

async fn a_rotated_secret_and_its_predecessor_both_sign_during_the_overlap(db: Db) {
    let sys = System::start(db).await;
    sys.topic("orders", 1);
    let (_, created) = sys
        .app
        .post("/1/Subscription", &secret_subscription(&sys.receiver.url))
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let old = created["signing_secret"].as_str().unwrap().to_string();

    let before = produce_until(&sys, 0, |_| true).await;
    assert_eq!(signatures(&before).len(), 1);
    assert!(verifies(&old, &before));

    let (new, expires) = rotate(&sys, &id).await;
    assert_ne!(new, old);
    let window = expires - chrono::Utc::now();
    assert!(
        window > chrono::Duration::hours(23) && window <= chrono::Duration::hours(24),
        "the default overlap is 24 h, got {window}"
    );
    // The secret is shown once: nothing else shows it.
    for path in [
        format!("/1/Subscription/{id}"),
        "/1/Subscription".to_string(),
    ] {
        let text = sys.app.get(&path).await.1.to_string();
        assert!(!text.contains(&new) && !text.contains(&old), "{text}");
    }

    let after = produce_until(&sys, 1, |r| signatures(r).len() == 2).await;
    assert!(verifies(&new, &after), "the new secret verifies");
    assert!(verifies(&old, &after), "the old secret still verifies");
    let only_new = standardwebhooks::Webhook::new(&new).unwrap();
    let mut headers = after.headers.clone();
    let first = signatures(&after)[0].clone();
    headers.insert("webhook-signature", first.parse().unwrap());
    only_new
        .verify(&after.body, &headers)
        .expect("the first signature is the new secret's");

    sys.app.stop().await;
}

async fn after_the_overlap_only_the_new_secret_signs(db: Db) {
    let sys = System::start_with(db, |settings| {
        settings.secrets.rotation_overlap = Duration::ZERO;
    })
    .await;
    sys.topic("orders", 1);
    let (_, created) = sys
        .app
        .post("/1/Subscription", &secret_subscription(&sys.receiver.url))
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let old = created["signing_secret"].as_str().unwrap().to_string();
    produce_until(&sys, 0, |r| verifies(&old, r)).await;

    let (new, expires) = rotate(&sys, &id).await;
    assert!(expires <= chrono::Utc::now());
    let after = produce_until(&sys, 1, |r| verifies(&new, r)).await;
    assert_eq!(signatures(&after).len(), 1);
    assert!(!verifies(&old, &after), "the old secret no longer signs");
    sys.app.stop().await;
}

async fn a_masked_header_is_kept_for_the_same_origin_and_refused_for_another(db: Db) {
    let sys = System::start(db).await;
    sys.topic("orders", 1);
    let (_, created) = sys
        .app
        .post("/1/Subscription", &secret_subscription(&sys.receiver.url))
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/1/Subscription/{id}");
    let (_, fetched) = sys.app.get(&path).await;
    assert_eq!(
        fetched["destination"]["webhook"]["headers"][0],
        "authorization: ********"
    );

    // Another origin: the masked value must not follow the URL there.
    let elsewhere = sys.receiver.url.replace("127.0.0.1", "localhost");
    for url in [
        elsewhere.as_str(),
        "http://127.0.0.1:9/hook",
        &sys.receiver.url.replace("http://", "https://"),
    ] {
        let mut moved = fetched.clone();
        moved["destination"]["webhook"]["url"] = json!(url);
        let (status, body) = sys.app.put(&path, &moved).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert_eq!(
            body["errors"][0]["field"], "destination.webhook.headers[0]",
            "{body}"
        );
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("send the value again"),
            "{body}"
        );
        assert!(!body.to_string().contains("hdr-s3cret"), "{body}");
    }

    // The same origin (another path or query is fine): the stored value stays.
    let mut kept = fetched.clone();
    kept["name"] = json!("renamed");
    kept["destination"]["webhook"]["url"] = json!(format!("{}?v=2", sys.receiver.url));
    let (status, body) = sys.app.put(&path, &kept).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let request = produce_until(&sys, 0, |_| true).await;
    assert_eq!(request.headers["authorization"], HEADER_SECRET);
    sys.app.stop().await;
}

async fn a_wrong_key_fails_start_up_and_the_right_one_reads_everything_back(db: Db) {
    let mut sys = System::start(db).await;
    sys.topic("orders", 1);
    let (_, created) = sys
        .app
        .post("/1/Subscription", &secret_subscription(&sys.receiver.url))
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let signing_secret = created["signing_secret"].as_str().unwrap().to_string();

    match db {
        Db::Sqlite => {
            // Without a configured key, SQLite keeps a generated one beside its file.
            let file = sys.db.url.trim_start_matches("sqlite://").to_string();
            let key_file = format!("{file}.key");
            let metadata = std::fs::metadata(&key_file).expect("a key file beside the database");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
            }
            let _ = metadata;
        }
        Db::Postgres => {
            // PostgreSQL has no file to keep a key beside: it refuses to start.
            let mut keyless = sys.settings.clone();
            keyless.secrets.key = None;
            let error = Application::build(keyless).await.err().expect("a failure");
            assert!(
                format!("{error:#}").contains("set WASMHOOK_SECRET_KEY"),
                "{error:#}"
            );
        }
    }

    let mut wrong = sys.settings.clone();
    wrong.secrets.key = Some(KeySource::Key(SecretKey::generate()));
    let error = Application::build(wrong).await.err().expect("a failure");
    let message = format!("{error:#}");
    assert!(message.contains("another key"), "{message}");
    assert!(message.contains(&id), "{message}");
    assert!(
        !message.contains("hdr-s3cret") && !message.contains(&signing_secret),
        "{message}"
    );

    // The same key as before reads everything back.
    sys.restart().await;
    let (status, fetched) = sys.app.get(&format!("/1/Subscription/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{fetched}");
    assert_eq!(fetched["name"], "secret-orders");
    let request = produce_until(&sys, 0, |_| true).await;
    assert_eq!(request.headers["authorization"], HEADER_SECRET);
    assert!(verifies(&signing_secret, &request));
    sys.app.stop().await;
}
