//! A property test over the API's inputs: bodies shaped like subscription
//! requests and unlike them (random types, unicode, huge numbers, deep
//! nesting, JMESPath-like strings, header lines, URLs), arbitrary bytes and
//! multipart forms, sent to every route of one running application. Whatever
//! arrives, no answer is a 5xx, and the application still answers `/healthz`.
//!
//! [`CASES`] cases from a fixed seed, so a failure reproduces; proptest
//! shrinks it to a small input before reporting.

use axum::http::StatusCode;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::helpers::{Db, System, TestApp, subscription};
use crate::on_both_databases;

const CASES: u32 = 300;
const SEED: [u8; 32] = *b"wasmhook-api-fuzz-seed-000000001";

/// Stands for a number JSON can write but `serde_json::Value` cannot hold;
/// replaced by [`huge_number`] text when the body is written.
const HUGE: &str = "__huge_number__";

on_both_databases!(no_input_to_any_route_gets_a_5xx_or_stops_the_app);

#[derive(Debug, Clone)]
enum Body {
    Json { value: Value, huge: String },
    Text(String),
    Bytes(Vec<u8>),
}

impl Body {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Json { value, huge } => value
                .to_string()
                .replace(&format!("\"{HUGE}\""), huge)
                .into_bytes(),
            Body::Text(text) => text.clone().into_bytes(),
            Body::Bytes(bytes) => bytes.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    method: Method,
    path: String,
    content_type: Option<String>,
    body: Body,
}

/// Strings a client might send: plain, unicode, controls, empty and long.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => ".{0,40}",
        2 => "[a-z0-9._-]{1,30}",
        1 => Just(String::new()),
        1 => Just("\u{0}nul\u{7}bell\r\nline".to_string()),
        1 => Just("\u{202e}\u{feff}🦀 ﷽ \u{10ffff}".to_string()),
        1 => (0usize..3000).prop_map(|n| "é".repeat(n)),
    ]
}

fn huge_number() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?[1-9][0-9]{19,400}",
        "-?[0-9]{1,30}\\.[0-9]{1,60}[eE][+-]?[0-9]{3,6}",
        Just("1e999999999".to_string()),
        Just("-0".to_string()),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (-5i64..2000).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| json!(f)),
        1 => Just(json!(HUGE)),
        1 => text().prop_map(Value::from),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// Mostly the API's own field names, so random values land where they matter.
fn key() -> impl Strategy<Value = String> {
    const KEYS: &[&str] = &[
        "id",
        "kind",
        "name",
        "active",
        "destination",
        "webhook",
        "url",
        "headers",
        "source",
        "topic",
        "jmes_filters",
        "filter_plugin",
        "policy_plugin",
        "configuration",
        "batching",
        "max_batch_size",
        "max_batch_interval_seconds",
        "retry",
        "max_retries",
        "retry_algorithm",
        "alerting",
        "alert_channel",
        "alert_emails",
        "alert_url",
        "rate_limit",
        "max_requests_per_second",
        "serialiser_plugin",
        "config",
        "version",
        "status",
        "offline_message",
        "created_at",
    ];
    prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(str::to_string),
        1 => text(),
    ]
}

/// `value` most of the time; otherwise anything at all, or nothing (`None`).
fn field(value: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        6 => value.prop_map(Some),
        1 => any_json().prop_map(Some),
        1 => Just(None),
    ]
    .boxed()
}

fn object(fields: Vec<(&'static str, Option<Value>)>) -> Value {
    let map: Map<String, Value> = fields
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name.to_string(), v)))
        .collect();
    Value::Object(map)
}

fn url() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => "(https?|ftp|file|javascript|data)://[a-zA-Z0-9.:@%\\[\\]-]{0,30}(/[ -~]{0,30})?",
        1 => text(),
        1 => prop::sample::select(vec![
            "http://127.0.0.1:1/hook",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://user:pw@example.com/",
            "https://example.com/hook",
        ])
        .prop_map(str::to_string),
    ]
    .prop_map(Value::from)
}

fn header_line() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => "[A-Za-z0-9!#$%&'*+.^_`|~-]{0,20}: ?.{0,40}",
        1 => text(),
        1 => (0usize..6000).prop_map(|n| format!("X-Long: {}", "v".repeat(n))),
        1 => prop::sample::select(vec![
            "Authorization: ********",
            "Content-Type: text/plain",
            "Host: evil",
            ": nameless",
        ])
        .prop_map(str::to_string),
    ]
    .prop_map(Value::from)
}

/// JMESPath-like text: random symbols, known expressions, and nesting of
/// every kind the parser recurses on, from shallow to far past the caps.
fn jmes() -> impl Strategy<Value = Value> {
    let nest = (
        prop::sample::select(vec![
            ("(", ")"),
            ("[", "]"),
            ("{a: ", "}"),
            ("!", ""),
            ("&", ""),
            ("a.", ""),
            ("a[*].", ""),
            ("*.", ""),
            ("a || ", ""),
            ("a[?", "]"),
            ("max_by(@, &", ")"),
            ("`[", "]`"),
        ]),
        prop_oneof![0usize..40, 0usize..3000],
    )
        .prop_map(|((open, close), n)| format!("{}a{}", open.repeat(n), close.repeat(n)));
    prop_oneof![
        3 => "[a-z@*.\\[\\](){}!&|=<>?`'\", 0-9:-]{0,60}",
        2 => nest,
        1 => prop::sample::select(vec![
            "amount > `10`",
            "currency == 'EUR' && !refunded",
            "items[?price > `5`].name | length(@) > `0`",
            "sort_by(items, &price)[0]",
        ])
        .prop_map(str::to_string),
        1 => text(),
    ]
    .prop_map(Value::from)
}

fn attachment() -> impl Strategy<Value = Value> {
    (
        field(prop_oneof!["[a-z][a-z0-9-]{0,20}", text()].prop_map(Value::from)),
        field("[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}".prop_map(Value::from)),
        field(any_json()),
    )
        .prop_map(|(name, version, config)| {
            object(vec![
                ("name", name),
                ("version", version),
                ("config", config),
            ])
        })
}

fn source() -> impl Strategy<Value = Value> {
    (
        field(prop_oneof!["[a-zA-Z0-9._-]{1,30}", text()].prop_map(Value::from)),
        field(
            prop_oneof![
                prop::collection::vec(jmes(), 0..4),
                prop::collection::vec(jmes(), 15..20),
            ]
            .prop_map(Value::Array),
        ),
        field(attachment()),
        field(attachment()),
    )
        .prop_map(|(topic, filters, filter_plugin, policy_plugin)| {
            object(vec![
                ("topic", topic),
                ("jmes_filters", filters),
                ("filter_plugin", filter_plugin),
                ("policy_plugin", policy_plugin),
            ])
        })
}

fn choice(values: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::sample::select(values).prop_map(Value::from),
        1 => text().prop_map(Value::from),
    ]
}

fn configuration() -> impl Strategy<Value = Value> {
    let batching = (field(number()), field(number())).prop_map(|(size, interval)| {
        object(vec![
            ("max_batch_size", size),
            ("max_batch_interval_seconds", interval),
        ])
    });
    let retry = (
        field(number()),
        field(choice(&["exponential_backoff", "fixed_time"])),
    )
        .prop_map(|(retries, algorithm)| {
            object(vec![
                ("max_retries", retries),
                ("retry_algorithm", algorithm),
            ])
        });
    let email = prop_oneof![
        "[a-z]{1,10}@[a-z]{1,10}\\.[a-z]{2,3}",
        text(),
        Just("Name <a@b.c>".to_string()),
    ]
    .prop_map(Value::from);
    let alerting = (
        field(choice(&["email", "webhook"])),
        field(
            prop_oneof![
                prop::collection::vec(email.clone(), 0..3),
                prop::collection::vec(email, 19..23),
            ]
            .prop_map(Value::Array),
        ),
        field(url()),
    )
        .prop_map(|(channel, emails, url)| {
            object(vec![
                ("alert_channel", channel),
                ("alert_emails", emails),
                ("alert_url", url),
            ])
        });
    let rate_limit = field(number()).prop_map(|n| object(vec![("max_requests_per_second", n)]));
    (
        field(batching),
        field(retry),
        field(alerting),
        field(rate_limit),
        field(attachment()),
    )
        .prop_map(|(batching, retry, alerting, rate_limit, serialiser)| {
            object(vec![
                ("batching", batching),
                ("retry", retry),
                ("alerting", alerting),
                ("rate_limit", rate_limit),
                ("serialiser_plugin", serialiser),
            ])
        })
}

fn subscription_like() -> impl Strategy<Value = Value> {
    let webhook = (
        field(url()),
        field(
            prop_oneof![
                prop::collection::vec(header_line(), 0..4),
                prop::collection::vec(header_line(), 31..35),
            ]
            .prop_map(Value::Array),
        ),
    )
        .prop_map(|(url, headers)| object(vec![("url", url), ("headers", headers)]));
    let destination = (field(choice(&["webhook"])), field(webhook))
        .prop_map(|(kind, webhook)| object(vec![("kind", kind), ("webhook", webhook)]));
    (
        field(text().prop_map(Value::from)),
        field(choice(&["yes", "no"])),
        field(destination),
        field(
            prop_oneof![
                prop::collection::vec(source(), 0..4),
                prop::collection::vec(source(), 63..66),
            ]
            .prop_map(Value::Array),
        ),
        field(configuration()),
    )
        .prop_map(|(name, active, destination, source, configuration)| {
            object(vec![
                ("name", name),
                ("active", active),
                ("destination", destination),
                ("source", source),
                ("configuration", configuration),
            ])
        })
}

fn admin_like() -> impl Strategy<Value = Value> {
    (
        field(choice(&["online", "offline"])),
        field(
            prop_oneof![text(), (900usize..1100).prop_map(|n| "m".repeat(n))].prop_map(Value::from),
        ),
    )
        .prop_map(|(status, message)| {
            object(vec![("status", status), ("offline_message", message)])
        })
}

fn json_body(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Body> {
    (value, huge_number()).prop_map(|(value, huge)| Body::Json { value, huge })
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        5 => json_body(subscription_like()),
        2 => json_body(any_json()),
        1 => json_body(admin_like()),
        1 => (1usize..5000, prop::sample::select(vec![("[", "]"), ("{\"a\":", "}")]))
            .prop_map(|(n, (open, close))| Body::Text(format!("{}1{}", open.repeat(n), close.repeat(n)))),
        1 => text().prop_map(Body::Text),
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(Body::Bytes),
    ]
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        8 => Just(Some("application/json".to_string())),
        1 => Just(Some("application/json; charset=utf-8".to_string())),
        1 => Just(None),
        1 => Just(Some("application/x-ndjson".to_string())),
        1 => "[ -~]{0,40}".prop_map(Some),
    ]
}

/// A path segment: a real id, a random one, or junk, percent-encoded.
fn id(known: String) -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just(known),
        1 => any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
        1 => text().prop_map(|t| url::form_urlencoded::byte_serialize(t.as_bytes()).collect()),
    ]
}

/// A multipart form with random fields (the upload's own names mostly) and
/// random values, or a `application/wasm` body with a random query.
fn upload() -> impl Strategy<Value = Case> {
    let name = prop_oneof![
        3 => prop::sample::select(vec![
            "name", "version", "role", "wasm", "memory_bytes", "cpu_deadline_ms",
            "wall_deadline_ms",
        ])
        .prop_map(str::to_string),
        1 => "[ -~]{0,20}",
    ];
    let value = prop_oneof![
        2 => "[a-z0-9.-]{0,20}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => Just(b"\0asm\x0d\0\x01\0".to_vec()),
        1 => huge_number().prop_map(String::into_bytes),
    ];
    let form = prop::collection::vec((name, value), 0..8).prop_map(|fields| {
        let boundary = "wasmhook-fuzz-boundary";
        let mut body = Vec::new();
        for (name, value) in fields {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                    .as_bytes(),
            );
            body.extend_from_slice(&value);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        Case {
            method: Method::POST,
            path: "/1/Plugin".into(),
            content_type: Some(format!("multipart/form-data; boundary={boundary}")),
            body: Body::Bytes(body),
        }
    });
    let raw = (
        "[a-z0-9=&%._-]{0,60}",
        prop::collection::vec(any::<u8>(), 0..512),
    )
        .prop_map(|(query, wasm)| Case {
            method: Method::POST,
            path: format!("/1/Plugin?{query}"),
            content_type: Some("application/wasm".into()),
            body: Body::Bytes(wasm),
        });
    prop_oneof![form, raw]
}

fn case(known: String) -> impl Strategy<Value = Case> {
    let target = prop_oneof![
        4 => Just((Method::POST, "/1/Subscription".to_string())),
        3 => id(known.clone()).prop_map(|id| (Method::PUT, format!("/1/Subscription/{id}"))),
        2 => Just((Method::POST, "/1/EventNotificationAdmin".to_string())),
        1 => (prop::sample::select(vec![Method::GET, Method::DELETE, Method::PATCH]), id(known.clone()))
            .prop_map(|(method, id)| (method, format!("/1/Subscription/{id}"))),
        1 => id(known).prop_map(|id| (Method::GET, format!("/1/Subscription/{id}/Status"))),
        1 => (id(String::new()), id(String::new()))
            .prop_map(|(name, version)| (Method::GET, format!("/1/Plugin/{name}/{version}"))),
        2 => Just((Method::POST, "/1/Tenant".to_string())),
        1 => (prop::sample::select(vec![Method::PUT, Method::GET]), id(String::new()))
            .prop_map(|(method, id)| (method, format!("/1/Tenant/{id}"))),
        1 => (prop::sample::select(vec!["/1/Token", "/1/Subscription", "/1/Plugin", "/1/Tenant"]), id(String::new()))
            .prop_map(|(route, cursor)| (Method::GET, format!("{route}?limit=2&cursor={cursor}"))),
        2 => prop::sample::select(vec!["", "?ack=none", "?key_path=a.b", "?key_path=%5B", "?x=1"])
            .prop_map(|query| (Method::POST, format!("/1/Topic/orders/Records{query}"))),
        1 => id(String::new()).prop_map(|topic| (Method::POST, format!("/1/Topic/{topic}/Records"))),
        1 => Just((Method::POST, "/log".to_string())),
    ];
    let sent =
        (target, content_type(), body()).prop_map(|((method, path), content_type, body)| Case {
            method,
            path,
            content_type,
            body,
        });
    prop_oneof![4 => sent, 1 => upload()]
}

async fn send(app: &TestApp, case: &Case) -> (StatusCode, String) {
    let mut request = app
        .http
        .request(case.method.clone(), app.url(&case.path))
        .body(case.body.bytes());
    if let Some(content_type) = &case.content_type {
        request = request.header("content-type", content_type);
    }
    let response = match request.send().await {
        Ok(response) => response,
        // A server that answers before reading a body (a 4xx from an
        // extractor) may close while the client still writes it; the client
        // then loses the answer. Not a crash, as long as the app is still up.
        Err(error) => {
            let health = app.http.get(app.url("/healthz")).send().await;
            assert!(
                health.is_ok_and(|h| h.status() == StatusCode::OK),
                "the app stopped answering after {error}"
            );
            return (StatusCode::BAD_REQUEST, format!("no answer: {error}"));
        }
    };
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    (status, text)
}

async fn no_input_to_any_route_gets_a_5xx_or_stops_the_app(db: Db) {
    let sys = System::start(db).await;
    // Ingest routes produce to it.
    sys.topic("orders", 2);
    let app = &sys.app;
    let known = app
        .subscribe(&subscription(
            "fuzzed",
            "https://example.com/hook",
            &["orders"],
        ))
        .await;
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 500,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &SEED));
    let runtime = tokio::runtime::Handle::current();
    // proptest's runner is synchronous: each case is sent from this worker
    // thread, handed over to blocking so the runtime's other workers serve.
    let outcome = tokio::task::block_in_place(|| {
        runner
            .run(&case(known), |case| {
                let (status, answer) = runtime.block_on(send(app, &case));
                let shown: String = answer.chars().take(500).collect();
                prop_assert!(
                    !status.is_server_error(),
                    "{} {} ({:?}) answered {status}: {shown}",
                    case.method,
                    case.path,
                    case.content_type
                );
                Ok(())
            })
            // The runner's error is large; only its text is shown.
            .map_err(|failure| failure.to_string())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    sys.app.stop().await;
}
