//! The OpenAPI document (`GET /openapi.json`) and Swagger UI (`/docs`): both
//! served without a token and offline; every documented route served, and no
//! route served that is not documented (a scan of the sources) nor listed in
//! the README but missing; real requests and answers valid against the
//! documented schemas.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    Db, TestApp, TestDb, open_registry, plugin_wasm, subscription, test_settings,
};

/// An application on a fresh SQLite database, with an embedded broker.
async fn spawn() -> (TestApp, TestDb, wasmhook::broker::EmbeddedBroker) {
    let broker = wasmhook::broker::EmbeddedBroker::start(1).unwrap();
    let db = TestDb::create(Db::Sqlite).await;
    let app = TestApp::spawn(test_settings(&db.url, &broker.bootstrap_servers())).await;
    (app, db, broker)
}

/// The document, fetched without a token.
async fn document(app: &TestApp) -> Value {
    let response = reqwest::get(app.url("/openapi.json")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// Every documented `(method, path)`, the method in upper case.
fn operations(document: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                found.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    found
}

/// The statuses documented for an operation.
fn documented_statuses(document: &Value, method: &str, path: &str) -> Vec<String> {
    document["paths"][path][method.to_lowercase()]["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path} documents no responses"))
        .keys()
        .cloned()
        .collect()
}

/// A validator of the schema at `pointer` in the document (its `$ref`s
/// resolved against the document's components).
fn validator(document: &Value, pointer: &str) -> jsonschema::Validator {
    let schema = document
        .pointer(pointer)
        .unwrap_or_else(|| panic!("no schema at {pointer}"));
    let root = json!({
        "components": document["components"],
        "allOf": [schema],
    });
    jsonschema::draft202012::new(&root)
        .unwrap_or_else(|e| panic!("the schema at {pointer} compiles: {e}"))
}

/// Panics unless `instance` is valid against the schema at `pointer`.
fn assert_valid(document: &Value, pointer: &str, instance: &Value) {
    let errors: Vec<String> = validator(document, pointer)
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{instance} is not valid against {pointer}: {errors:?}"
    );
}

/// Panics unless `body` is valid against the documented JSON answer of
/// `method path` with `status`.
fn assert_answer(document: &Value, method: &str, path: &str, status: StatusCode, body: &Value) {
    let pointer = format!(
        "/paths/{}/{}/responses/{}/content/application~1json/schema",
        path.replace('~', "~0").replace('/', "~1"),
        method.to_lowercase(),
        status.as_u16()
    );
    assert_valid(document, &pointer, body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_document_and_the_docs_need_no_token_and_load_nothing_from_elsewhere() {
    let (app, _db, _broker) = spawn().await;
    let document = document(&app).await;
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        document["openapi"]
    );
    assert_eq!(document["info"]["title"], "wasmhook");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"],
        json!({"type": "http", "scheme": "bearer"})
    );
    // Every route but the public ones says it needs the bearer token.
    for (method, path) in operations(&document) {
        let security = &document["paths"][&path][method.to_lowercase()]["security"];
        let public = matches!(
            path.as_str(),
            "/healthz" | "/readyz" | "/openapi.json" | "/ui" | "/ui/{asset}"
        );
        if public {
            assert!(security.is_null(), "{method} {path}: {security}");
        } else {
            assert_eq!(security, &json!([{"bearer": []}]), "{method} {path}");
        }
    }

    // Swagger UI, without a token; `/docs` redirects to `/docs/`.
    let anonymous = reqwest::Client::new();
    let page = anonymous.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.url().path(), "/docs/");
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    let initializer = anonymous
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(initializer.status(), StatusCode::OK);
    let initializer = initializer.text().await.unwrap();
    assert!(initializer.contains("/openapi.json"), "{initializer}");
    // Offline: the page and its set-up name no other site (the validator is off).
    for (what, text) in [("the page", &html), ("its initializer", &initializer)] {
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{what} loads from elsewhere: {text}"
        );
    }
    // Each file the page loads is served from /docs/.
    for file in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
    ] {
        assert!(html.contains(file), "{file} not in {html}");
        let response = anonymous
            .get(app.url(&format!("/docs/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{file}");
    }
    app.stop().await;
}

/// A sample value for a path parameter: ids that name nothing, names that
/// exist nowhere; each is a well-formed value, so the route is reached.
fn sample(parameter: &str) -> &'static str {
    match parameter {
        "id" => "0b8a6f4e-3d5c-4a7b-9e1f-2c3d4e5f6a7b",
        "name" => "no-such-plugin",
        "version" => "1.0.0",
        "topic" => "no-such-topic",
        "asset" => "app.js",
        other => panic!("no sample for the path parameter {other}: add one"),
    }
}

fn substitute(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment.strip_prefix('{') {
            Some(parameter) => sample(parameter.trim_end_matches('}')).to_string(),
            None => segment.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_documented_route_is_served_and_answers_a_documented_status() {
    let (app, _db, _broker) = spawn().await;
    let document = document(&app).await;
    let operations = operations(&document);
    assert!(operations.len() >= 30, "{operations:?}");
    for (method, path) in &operations {
        let url = app.url(&substitute(path));
        let mut request = app.http.request(method.parse().unwrap(), url);
        if method == "POST" || method == "PUT" {
            request = request.json(&json!({}));
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {body}"
        );
        assert!(
            !(status == StatusCode::NOT_FOUND && body.contains("no route for")),
            "{method} {path} is documented but not served: {body}"
        );
        let documented = documented_statuses(&document, method, path);
        assert!(
            documented.contains(&status.as_u16().to_string()),
            "{method} {path} answered {status}, documented: {documented:?}: {body}"
        );
        // Error answers are ErrorAnswers.
        if status.is_client_error() || status.is_server_error() {
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_answer(&document, method, path, status, &body);
        }
    }
    app.stop().await;
}

/// What a route is registered with if not through the document's router.
const UNDOCUMENTED_ROUTING: [&str; 6] = [
    ".route(",
    ".route_service(",
    ".nest(",
    ".nest_service(",
    "Router::new(",
    "axum::routing",
];

/// Every `.rs` file under `dir`.
fn sources(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn no_route_is_registered_outside_the_document() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(files.len() > 20, "{files:?}");
    let mut offending = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            if UNDOCUMENTED_ROUTING.iter().any(|p| line.contains(p)) {
                offending.push(format!(
                    "{}:{}: {}",
                    file.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        offending.is_empty(),
        "routes must be registered with OpenApiRouter::routes(routes!(…)) and a \
         #[utoipa::path], so that they are in the document: {offending:#?}"
    );
}

/// The `(method, path)` pairs of the README's API table: a first cell such
/// as `` `GET`, `PUT`, `DELETE /1/Subscription/{id}` `` or
/// `` `POST /1/Token`, `GET /1/Token` ``.
fn readme_routes() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let section = readme
        .split("\n## The API\n")
        .nth(1)
        .expect("a section ## The API")
        .split("\n## ")
        .next()
        .unwrap();
    let mut routes = Vec::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cell = row.split('|').nth(1).unwrap();
        let mut methods = Vec::new();
        for quoted in cell.split('`').skip(1).step_by(2) {
            let mut words = quoted.split_whitespace();
            methods.push(words.next().unwrap().to_string());
            if let Some(path) = words.next() {
                routes.extend(methods.drain(..).map(|m| (m, path.to_string())));
            }
        }
        assert!(methods.is_empty(), "a method without a path in {row}");
    }
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_in_the_readme_is_documented() {
    let (app, _db, _broker) = spawn().await;
    let documented = operations(&document(&app).await);
    let listed = readme_routes();
    assert!(listed.len() >= 30, "{listed:?}");
    let missing: Vec<_> = listed
        .iter()
        .filter(|route| !documented.contains(route))
        .collect();
    assert!(
        missing.is_empty(),
        "in the README, not in the document: {missing:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_and_real_answers_match_the_documented_schemas() {
    let (app, _db, _broker) = spawn().await;
    let document = document(&app).await;
    let ok = StatusCode::OK;

    // A subscription body as the tests send it, with the optional parts.
    let mut body = subscription("orders", "https://example.com/hook", &["orders"]);
    body["source"][0]["jmes_filters"] = json!(["amount > `10`"]);
    body["configuration"]["alerting"] =
        json!({"alert_channel": "email", "alert_emails": ["ops@example.com"]});
    body["configuration"]["rate_limit"] = json!({"max_requests_per_second": 5});
    assert_valid(
        &document,
        "/paths/~11~1Subscription/post/requestBody/content/application~1json/schema",
        &body,
    );
    let (status, created) = app.post("/1/Subscription", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_answer(&document, "post", "/1/Subscription", status, &created);
    let id = created["id"].as_str().unwrap();
    // What GET answers may be PUT back: it is a valid request too.
    let path = format!("/1/Subscription/{id}");
    let (status, fetched) = app.get(&path).await;
    assert_answer(&document, "get", "/1/Subscription/{id}", status, &fetched);
    assert_valid(
        &document,
        "/paths/~11~1Subscription~1{id}/put/requestBody/content/application~1json/schema",
        &fetched,
    );
    let (status, replaced) = app.put(&path, &fetched).await;
    assert_answer(&document, "put", "/1/Subscription/{id}", status, &replaced);
    let (status, list) = app.get("/1/Subscription").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_answer(&document, "get", "/1/Subscription", status, &list);
    let (status, state) = app.get(&format!("{path}/Status")).await;
    assert_answer(
        &document,
        "get",
        "/1/Subscription/{id}/Status",
        status,
        &state,
    );
    let (status, series) = app.get(&format!("{path}/Series")).await;
    assert_eq!(series["points"].as_array().unwrap().len(), 90, "{series}");
    assert_answer(
        &document,
        "get",
        "/1/Subscription/{id}/Series",
        status,
        &series,
    );
    let (status, rotated) = app.post(&format!("{path}/Secret/Rotate"), &json!({})).await;
    assert_eq!(status, ok, "{rotated}");
    assert_answer(
        &document,
        "post",
        "/1/Subscription/{id}/Secret/Rotate",
        status,
        &rotated,
    );

    // The admin switch, offline (with its message) and back.
    let switch = json!({"status": "offline", "offline_message": "maintenance"});
    assert_valid(
        &document,
        "/paths/~11~1EventNotificationAdmin/post/requestBody/content/application~1json/schema",
        &switch,
    );
    let (status, overview) = app.post("/1/EventNotificationAdmin", &switch).await;
    assert_answer(
        &document,
        "post",
        "/1/EventNotificationAdmin",
        status,
        &overview,
    );
    let (status, state) = app.get(&format!("{path}/Status")).await;
    assert!(state.get("offline_message").is_some(), "{state}");
    assert_answer(
        &document,
        "get",
        "/1/Subscription/{id}/Status",
        status,
        &state,
    );
    app.set_platform("online", "").await;
    let (status, overview) = app.get("/1/EventNotificationAdmin").await;
    assert_eq!(overview["webhooks"].as_array().unwrap().len(), 1);
    assert_answer(
        &document,
        "get",
        "/1/EventNotificationAdmin",
        status,
        &overview,
    );

    // Plugins.
    let (status, uploaded) = app
        .upload_plugin(
            "field-match",
            "1.0.0",
            "filter",
            &plugin_wasm("field_match"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    assert_answer(&document, "post", "/1/Plugin", status, &uploaded);
    let (status, plugins) = app.get("/1/Plugin").await;
    assert_answer(&document, "get", "/1/Plugin", status, &plugins);
    let (status, plugin) = app.get("/1/Plugin/field-match/1.0.0").await;
    assert_answer(
        &document,
        "get",
        "/1/Plugin/{name}/{version}",
        status,
        &plugin,
    );

    // Tenants and tokens.
    let tenant = json!({"name": "acme", "topics": ["orders", "acme.*"]});
    assert_valid(
        &document,
        "/paths/~11~1Tenant/post/requestBody/content/application~1json/schema",
        &tenant,
    );
    let (status, created) = app.post("/1/Tenant", &tenant).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_answer(&document, "post", "/1/Tenant", status, &created);
    let tenant_path = format!("/1/Tenant/{}", created["id"].as_str().unwrap());
    let (status, fetched) = app.get(&tenant_path).await;
    assert_answer(&document, "get", "/1/Tenant/{id}", status, &fetched);
    let (status, tenants) = app.get("/1/Tenant").await;
    assert_answer(&document, "get", "/1/Tenant", status, &tenants);
    let (status, minted) = app
        .post(&format!("{tenant_path}/Token"), &json!({"label": "ci"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{minted}");
    assert_answer(&document, "post", "/1/Tenant/{id}/Token", status, &minted);
    let (status, tokens) = app.get("/1/Token").await;
    assert_answer(&document, "get", "/1/Token", status, &tokens);

    // Readiness, and errors: validation, not found, no token.
    let (status, ready) = app.get("/readyz").await;
    assert_answer(&document, "get", "/readyz", status, &ready);
    let (status, invalid) = app.post("/1/Subscription", &json!({"name": ""})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        !invalid["errors"].as_array().unwrap().is_empty(),
        "{invalid}"
    );
    assert_answer(&document, "post", "/1/Subscription", status, &invalid);
    let (status, missing) = app.get(&format!("/1/Subscription/{}", sample("id"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_answer(&document, "get", "/1/Subscription/{id}", status, &missing);
    let anonymous = reqwest::Client::new()
        .get(app.url("/1/Subscription"))
        .send()
        .await
        .unwrap();
    let status = anonymous.status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let unauthorized: Value = anonymous.json().await.unwrap();
    assert_answer(&document, "get", "/1/Subscription", status, &unauthorized);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_answers_mask_the_mandatory_policy_secrets() {
    let (app, db, _broker) = spawn().await;
    // The API refuses a mandatory policy's secret_config; one stored before
    // that rule is still never shown.
    let spec: wasmhook::domain::TenantSpec = serde_json::from_value(json!({
        "name": "acme",
        "topics": ["orders"],
        "mandatory_policy": {
            "name": "policy",
            "version": "1.0.0",
            "config": {"mode": "strict"},
            "secret_config": {"api_key": "hunter2-secret"}
        }
    }))
    .unwrap();
    let stored = open_registry(&db.url)
        .await
        .create_tenant(&spec)
        .await
        .unwrap();
    let (status, tenant) = app.get(&format!("/1/Tenant/{}", stored.id)).await;
    assert_eq!(status, StatusCode::OK, "{tenant}");
    assert_eq!(
        tenant["mandatory_policy"]["secret_config"]["api_key"],
        wasmhook::domain::MASK
    );
    assert_eq!(tenant["mandatory_policy"]["config"]["mode"], "strict");
    let (status, tenants) = app.get("/1/Tenant").await;
    assert_eq!(status, StatusCode::OK);
    for answer in [&tenant, &tenants] {
        assert!(!answer.to_string().contains("hunter2"), "{answer}");
    }
    app.stop().await;
}
