//! Hardening of the API's edge: content types, slow and too many clients,
//! caps, and a JMESPath expression built to overflow the stack.

use std::time::Duration;

use axum::http::StatusCode;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::helpers::{Db, System, TestApp, subscription};
use crate::on_both_databases;

on_both_databases!(
    json_routes_refuse_other_content_types_with_415,
    a_jmespath_expression_nested_a_million_levels_is_refused_and_the_app_survives,
);

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let mut request = app.http.request(method, app.url(path)).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON, got {text:?}"));
    (status, body)
}

async fn json_routes_refuse_other_content_types_with_415(db: Db) {
    let sys = System::start(db).await;
    let app = &sys.app;
    let body = subscription("orders", "https://example.com/hook", &["orders"]).to_string();
    let id = app
        .subscribe(&subscription(
            "kept",
            "https://example.com/hook",
            &["orders"],
        ))
        .await;
    let admin = json!({"status": "offline", "offline_message": "x"}).to_string();
    let routes = [
        (reqwest::Method::POST, "/1/Subscription".to_string(), &body),
        (reqwest::Method::PUT, format!("/1/Subscription/{id}"), &body),
        (
            reqwest::Method::POST,
            "/1/EventNotificationAdmin".to_string(),
            &admin,
        ),
    ];
    for (method, path, body) in &routes {
        // What a web page may send cross-site without a preflight.
        for sent in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            None,
        ] {
            let (status, answer) = send(app, method.clone(), path, sent, (*body).clone()).await;
            assert_eq!(
                status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{method} {path} {sent:?}"
            );
            assert_eq!(answer["code"], "unsupported_media_type");
            let message = answer["message"].as_str().unwrap();
            assert!(message.contains("application/json"), "{message}");
            assert!(
                message.contains(sent.unwrap_or("no content type")),
                "{message}"
            );
        }
    }
    // Nothing was changed by the refused requests.
    let (_, admin_now) = app.get("/1/EventNotificationAdmin").await;
    assert_eq!(admin_now["status"], "online", "{admin_now}");
    let (_, kept) = app.get(&format!("/1/Subscription/{id}")).await;
    assert_eq!(kept["name"], "kept");

    let (status, created) = send(
        app,
        reqwest::Method::POST,
        "/1/Subscription",
        Some("Application/JSON; charset=utf-8"),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");

    for sent in [Some("application/json"), Some("text/plain"), None] {
        let (status, answer) = send(
            app,
            reqwest::Method::POST,
            "/1/Plugin?name=p&version=1.0.0&role=filter",
            sent,
            b"\0asm".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{sent:?}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("multipart/form-data or application/wasm"),
            "{answer}"
        );
    }
    // Both upload forms still reach the compiler (which refuses these bytes).
    let (status, answer) = send(
        app,
        reqwest::Method::POST,
        "/1/Plugin?name=p&version=1.0.0&role=filter",
        Some("application/wasm"),
        b"\0asm".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["code"], "not_a_component");
    let (content_type, form) = crate::helpers::plugin_form(
        &[("name", "p"), ("version", "1.0.0"), ("role", "filter")],
        Some(b"\0asm"),
    );
    let (status, answer) = app.post_form(&content_type, form).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["code"], "not_a_component");
    sys.app.stop().await;
}

async fn a_jmespath_expression_nested_a_million_levels_is_refused_and_the_app_survives(db: Db) {
    let sys = System::start_with(db, |settings| settings.max_body_bytes = 4 << 20).await;
    let app = &sys.app;
    let million = 1 << 20;
    let hostile = [
        format!("{}a", "!".repeat(million - 1)),
        format!("{}a{}", "(".repeat(million / 2), ")".repeat(million / 2)),
        format!("a{}", ".a".repeat(million / 2)),
        format!("a{}", "[*]".repeat(million / 3)),
    ];
    for expression in hostile {
        let mut body = subscription("deep", "https://example.com/hook", &["orders"]);
        body["source"][0]["jmes_filters"] = json!([expression]);
        let (status, answer) = app.post("/1/Subscription", &body).await;
        let shown: String = answer.to_string().chars().take(300).collect();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{shown}");
        assert_eq!(answer["errors"][0]["field"], "source[0].jmes_filters[0]");
        assert!(
            answer["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("at most 1024 bytes"),
            "{}",
            answer["errors"][0]
        );
    }
    // Within the length cap, the nesting cap answers.
    let mut body = subscription("deep", "https://example.com/hook", &["orders"]);
    body["source"][0]["jmes_filters"] = json!([format!("{}a", "!".repeat(1000))]);
    let (status, answer) = app.post("/1/Subscription", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("levels deep"),
        "{answer}"
    );
    // And a reasonable expression is still welcome.
    body["source"][0]["jmes_filters"] = json!(["!(amount > `10`) && currency == 'EUR'"]);
    let (status, answer) = app.post("/1/Subscription", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    wait_for_health(app).await;
    sys.app.stop().await;
}

/// Reads until the peer closes (or resets) the connection, within `bound`;
/// returns what was read and how long it took.
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let closed = tokio::time::timeout(bound, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept the connection open for {bound:?}"
    );
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

fn address(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_sends_half_a_request_head_is_disconnected_after_the_header_timeout() {
    let sys = System::start_with(Db::Sqlite, |settings| {
        settings.server.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = TcpStream::connect(address(&sys.app)).await.unwrap();
    stream
        .write_all(b"POST /1/Subscription HTTP/1.1\r\nHost: wasmhook\r\nContent-Ty")
        .await
        .unwrap();
    let (received, took) = read_until_closed(&mut stream, Duration::from_secs(20)).await;
    assert!(
        received.is_empty(),
        "no answer to half a head: {received:?}"
    );
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    // The server itself is unaffected.
    wait_for_health(&sys.app).await;
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kept_alive_connection_is_closed_after_the_idle_timeout_not_the_header_timeout() {
    let sys = System::start_with(Db::Sqlite, |settings| {
        settings.server.idle_timeout = Duration::from_secs(2);
        settings.server.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    let mut stream = TcpStream::connect(address(&sys.app)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: wasmhook\r\n\r\n")
        .await
        .unwrap();
    let (received, took) = read_until_closed(&mut stream, Duration::from_secs(20)).await;
    assert!(received.starts_with("HTTP/1.1 200"), "{received:?}");
    assert!(received.ends_with("OK"), "{received:?}");
    // Idle from the answer on: the 2 s idle timeout, not the 0.5 s header one.
    assert!(took >= Duration::from_millis(1800), "closed after {took:?}");
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_beyond_the_limit_are_answered_503_until_one_closes() {
    let sys = System::start_with(Db::Sqlite, |settings| {
        settings.server.max_connections = 1;
    })
    .await;
    // Accepted first (connections are accepted in order), so it holds the one place.
    let holder = TcpStream::connect(address(&sys.app)).await.unwrap();
    let response = reqwest::Client::new()
        .get(sys.app.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unavailable", "{body}");
    assert!(body["message"].as_str().unwrap().contains("connections"));

    drop(holder);
    wait_for_health(&sys.app).await;
    sys.app.stop().await;
}

/// A request body that sends `{` and then nothing until `release` is dropped.
fn stalled_body(release: tokio::sync::oneshot::Receiver<()>) -> reqwest::Body {
    let first = futures::stream::once(async { Ok::<_, std::io::Error>(bytes::Bytes::from("{")) });
    let stall = futures::stream::once(async move {
        let _ = release.await;
        Err(std::io::Error::other("the test gave up on this body"))
    });
    reqwest::Body::wrap_stream(first.chain(stall))
}

/// Polls `/healthz` until it answers 200, for at most 20 s.
async fn wait_for_health(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let client = reqwest::Client::new();
        if let Ok(response) = client.get(app.url("/healthz")).send().await
            && response.status() == StatusCode::OK
        {
            return;
        }
        assert!(Instant::now() < deadline, "/healthz never answered 200");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_beyond_the_concurrency_limit_are_answered_503() {
    let sys = System::start_with(Db::Sqlite, |settings| {
        settings.server.max_concurrent_requests = 1;
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let (release, slow, body) = 'attempt: loop {
        assert!(Instant::now() < deadline, "the limit never answered 503");
        let (release, stalled) = tokio::sync::oneshot::channel();
        let request = sys
            .app
            .http
            .post(sys.app.url("/1/Subscription"))
            .header("content-type", "application/json")
            .body(stalled_body(stalled))
            .send();
        let slow = tokio::spawn(request);
        // The stalled request holds the one place once it reaches the
        // handler; until then a probe may take the place first, and the
        // stalled request is the one refused: then it is sent again.
        loop {
            let response = reqwest::Client::new()
                .get(sys.app.url("/healthz"))
                .send()
                .await
                .unwrap();
            if response.status() == StatusCode::SERVICE_UNAVAILABLE {
                break 'attempt (release, slow, response.json::<Value>().await.unwrap());
            }
            if slow.is_finished() {
                // (Or the connection closed under the unsent body.)
                if let Ok(refused) = slow.await.unwrap() {
                    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
                }
                continue 'attempt;
            }
            assert!(Instant::now() < deadline, "the limit never answered 503");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(body["code"], "unavailable", "{body}");
    assert!(body["message"].as_str().unwrap().contains("requests"));

    drop(release);
    let _ = slow.await.unwrap();
    wait_for_health(&sys.app).await;
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_that_does_not_arrive_in_time_is_answered_408() {
    let sys = System::start_with(Db::Sqlite, |settings| {
        settings.server.body_read_timeout = Duration::from_secs(1);
    })
    .await;
    let (_release, stalled) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(20),
        sys.app
            .http
            .post(sys.app.url("/1/Subscription"))
            .header("content-type", "application/json")
            .body(stalled_body(stalled))
            .send(),
    )
    .await
    .expect("an answer before the client gives up")
    .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "request_timeout", "{body}");
    sys.app.stop().await;
}
