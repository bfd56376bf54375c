//! Test harness: a fresh database, the real application on port 0, the embedded
//! Kafka-protocol broker, a recording webhook receiver and an SMTP server.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wasmhook::broker::EmbeddedBroker;
use wasmhook::config::{DeliverySettings, SecretSettings, ServerSettings, Settings, SmtpSettings};
use wasmhook::egress::DestinationPolicy;
use wasmhook::secrets::{KeySource, SecretKey};
use wasmhook::startup::Application;

/// Which registry database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Runs an `async fn(Db)` test once per database, as `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::helpers::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name($crate::helpers::Db::Postgres).await
            }
        }
    )*};
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("WASMHOOK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of its own for one test.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn create(db: Db) -> Self {
        match db {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let url = format!("sqlite://{}", dir.path().join("wasmhook.db").display());
                Self {
                    url,
                    _dir: Some(dir),
                }
            }
            Db::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL is not reachable at {admin} ({e}). Start it, or point \
                         WASMHOOK_TEST_POSTGRES_URL at a server where this user may CREATE DATABASE."
                    )
                });
                let name = format!("wasmhook_test_{}", uuid::Uuid::new_v4().simple());
                sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("CREATE DATABASE");
                let mut url = url::Url::parse(&admin).expect("a valid PostgreSQL URL");
                url.set_path(&name);
                Self {
                    url: url.to_string(),
                    _dir: None,
                }
            }
        }
    }
}

/// The admin token every test app is configured with.
pub const ADMIN_TOKEN: &str = "whk_testadmin0000_0123456789abcdefghijklmnop";

/// An HTTP client that sends `token` as its bearer token on every request.
pub fn authed_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// Settings tuned for tests: port 0, fast retries and reconciles, the admin
/// token set, loopback destinations allowed (the receivers listen on 127.0.0.1).
/// SQLite keeps its generated secret key beside the database file, as by
/// default; PostgreSQL gets a random key per test (kept in the settings for restarts).
pub fn test_settings(database_url: &str, brokers: &str) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: database_url.to_string(),
        kafka_brokers: brokers.to_string(),
        max_body_bytes: 64 * 1024,
        delivery: DeliverySettings {
            request_timeout: Duration::from_secs(2),
            retry_base_delay: Duration::from_millis(50),
            retry_max_delay: Duration::from_millis(400),
            retry_fixed_delay: Duration::from_millis(100),
            reconcile_interval: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(5),
            destinations: DestinationPolicy::allowing_loopback(),
            ..DeliverySettings::default()
        },
        smtp: None,
        admin_token: Some(wasmhook::domain::AccessToken::parse(ADMIN_TOKEN).unwrap()),
        server: ServerSettings::default(),
        secrets: SecretSettings {
            key: postgres_secret_key(database_url).map(KeySource::Key),
            ..SecretSettings::default()
        },
    }
}

/// A PostgreSQL test database's secret key: random, one per database,
/// remembered so that restarts and direct reads of the registry use it too.
/// `None` for SQLite, whose key is generated beside its file (the default).
fn postgres_secret_key(database_url: &str) -> Option<SecretKey> {
    static KEYS: Mutex<Option<std::collections::HashMap<String, SecretKey>>> = Mutex::new(None);
    if !database_url.starts_with("postgres") {
        return None;
    }
    let mut keys = KEYS.lock().unwrap();
    let key = keys
        .get_or_insert_with(Default::default)
        .entry(database_url.to_string())
        .or_insert_with(SecretKey::generate);
    Some(key.clone())
}

/// The test database's registry as the application opens it, with its
/// secret key, to read what is stored.
pub async fn open_registry(database_url: &str) -> wasmhook::registry::Registry {
    let (key, _) = wasmhook::secrets::resolve_key(
        postgres_secret_key(database_url)
            .map(KeySource::Key)
            .as_ref(),
        database_url,
    )
    .expect("the test database's secret key");
    wasmhook::registry::Registry::open_with(database_url, key)
        .await
        .expect("the registry opens with its key")
}

/// The application, running in this process on a free port.
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    pub async fn spawn(settings: Settings) -> Self {
        let http = match &settings.admin_token {
            Some(token) => authed_client(token.reveal()),
            None => reqwest::Client::new(),
        };
        let app = Application::build(settings)
            .await
            .expect("the application builds");
        let address = format!("http://{}", app.local_addr());
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(app.run_until_stopped(async move { token.cancelled().await }));
        Self {
            address,
            http,
            stop,
            task,
        }
    }

    /// Stops the application as SIGTERM would, and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task
            .await
            .expect("the application task")
            .expect("the application stops cleanly");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        read(response).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .http
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        read(response).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        read(self.http.get(self.url(path)).send().await.unwrap()).await
    }

    pub async fn delete(&self, path: &str) -> StatusCode {
        self.http
            .delete(self.url(path))
            .send()
            .await
            .unwrap()
            .status()
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        read(response).await
    }

    /// Creates a subscription and returns its id.
    pub async fn subscribe(&self, body: &Value) -> String {
        let (status, created) = self.post("/1/Subscription", body).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created["id"].as_str().unwrap().to_string()
    }

    pub async fn status_of(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/1/Subscription/{id}/Status")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    pub async fn set_platform(&self, status: &str, message: &str) {
        let (code, body) = self
            .post(
                "/1/EventNotificationAdmin",
                &json!({"status": status, "offline_message": message}),
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }
}

async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("a JSON body, got {text:?}"))
    };
    (status, body)
}

/// A valid subscription body delivering `topics` to `url`.
pub fn subscription(name: &str, url: &str, topics: &[&str]) -> Value {
    json!({
        "name": name,
        "active": "yes",
        "destination": {"kind": "webhook", "webhook": {"url": url, "headers": ["Authorization: Bearer test-token"]}},
        "source": topics.iter().map(|t| json!({"topic": t})).collect::<Vec<_>>(),
        "configuration": {
            "batching": {"max_batch_size": 10, "max_batch_interval_seconds": 1},
            "retry": {"max_retries": 3, "retry_algorithm": "exponential_backoff"}
        }
    })
}

// ---- Kafka ----

pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("a producer")
}

/// Produces JSON values to one partition of a topic, in order, waiting for each ack.
pub async fn produce(producer: &FutureProducer, topic: &str, partition: i32, values: &[Value]) {
    let payloads: Vec<String> = values.iter().map(Value::to_string).collect();
    let sends: Vec<_> = payloads
        .iter()
        .map(|payload| {
            let record = FutureRecord::<str, str>::to(topic)
                .partition(partition)
                .payload(payload);
            producer.send(record, Duration::from_secs(10))
        })
        .collect();
    for send in sends {
        send.await.expect("the broker acknowledged the message");
    }
}

// ---- The webhook receiver ----

/// One request the receiver got, and how it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub status: u16,
}

impl Received {
    pub fn messages(&self) -> Vec<Value> {
        serde_json::from_slice::<Vec<Value>>(&self.body).expect("a JSON array body")
    }
}

#[derive(Default)]
struct ReceiverState {
    requests: Mutex<Vec<Received>>,
    /// Replies for the next requests, then `default` (200 when unset).
    script: Mutex<VecDeque<(u16, Option<u64>)>>,
    default: Mutex<Option<u16>>,
    delay: Mutex<Option<Duration>>,
    arrived: Notify,
}

/// A real HTTP server that records every webhook request.
pub struct Receiver {
    pub url: String,
    address: SocketAddr,
    state: Arc<ReceiverState>,
    server: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let delay = *state.delay.lock().unwrap();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let (status, retry_after) = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or((state.default.lock().unwrap().unwrap_or(200), None));
    state.requests.lock().unwrap().push(Received {
        headers,
        body,
        status,
    });
    state.arrived.notify_waiters();
    let mut response_headers = HeaderMap::new();
    if let Some(seconds) = retry_after {
        response_headers.insert("retry-after", seconds.into());
    }
    (
        StatusCode::from_u16(status).unwrap(),
        response_headers,
        format!("receiver answered {status}"),
    )
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let receiver = Self {
            url: format!("http://{address}/hook"),
            address,
            state: Arc::new(ReceiverState::default()),
            server: Mutex::new(None),
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(self.state.clone());
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .unwrap();
        });
        *self.server.lock().unwrap() = Some((stop, task));
    }

    /// Takes the receiver off the network: connections are refused.
    pub async fn go_down(&self) {
        let server = self.server.lock().unwrap().take();
        if let Some((stop, task)) = server {
            stop.cancel();
            let _ = task.await;
        }
    }

    /// Brings it back on the same address.
    pub async fn come_up(&self) {
        let listener = tokio::net::TcpListener::bind(self.address).await.unwrap();
        self.serve(listener);
    }

    /// Answers `status` from now on.
    pub fn answer(&self, status: u16) {
        *self.state.default.lock().unwrap() = Some(status);
    }

    /// Answers these statuses (with optional Retry-After seconds) to the next requests.
    pub fn script(&self, replies: &[(u16, Option<u64>)]) {
        self.state
            .script
            .lock()
            .unwrap()
            .extend(replies.iter().copied());
    }

    pub fn delay_answers(&self, delay: Option<Duration>) {
        *self.state.delay.lock().unwrap() = delay;
    }

    pub fn requests(&self) -> Vec<Received> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Messages of the requests answered with 2xx, in arrival order.
    pub fn delivered(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .flat_map(Received::messages)
            .collect()
    }

    /// Waits until at least `n` distinct messages (by topic, partition and
    /// offset) were delivered with a 2xx, or panics after `within`. Returns
    /// every delivered message, repeats included.
    pub async fn wait_for_delivered(&self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.state.arrived.notified();
            let delivered = self.delivered();
            let distinct: std::collections::HashSet<_> =
                positions(&delivered).into_iter().collect();
            if distinct.len() >= n {
                return delivered;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "expected {n} distinct delivered messages within {within:?}, got {} ({} with repeats) in {} requests",
                    distinct.len(),
                    delivered.len(),
                    self.requests().len()
                );
            }
        }
    }

    /// Waits until at least `n` requests arrived, whatever the answer.
    pub async fn wait_for_requests(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.state.arrived.notified();
            if self.requests().len() >= n {
                return self.requests();
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "expected {n} requests within {within:?}, got {}",
                    self.requests().len()
                );
            }
        }
    }
}

/// The (topic, partition, offset) of delivered messages, to compare with what was produced.
pub fn positions(messages: &[Value]) -> Vec<(String, i64, i64)> {
    messages
        .iter()
        .map(|m| {
            (
                m["topic"].as_str().unwrap().to_string(),
                m["partition"].as_i64().unwrap(),
                m["offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

// ---- The whole system ----

/// Broker, database, receiver and application, ready for delivery tests.
pub struct System {
    pub broker: EmbeddedBroker,
    pub db: TestDb,
    pub receiver: Receiver,
    pub app: TestApp,
    pub producer: FutureProducer,
    pub settings: Settings,
}

impl System {
    pub async fn start(db: Db) -> Self {
        Self::start_with(db, |_| {}).await
    }

    pub async fn start_with(db: Db, adjust: impl FnOnce(&mut Settings)) -> Self {
        let broker = EmbeddedBroker::start(1).expect("the embedded broker starts");
        let db = TestDb::create(db).await;
        let receiver = Receiver::start().await;
        let mut settings = test_settings(&db.url, &broker.bootstrap_servers());
        adjust(&mut settings);
        let app = TestApp::spawn(settings.clone()).await;
        let producer = producer(&broker.bootstrap_servers());
        Self {
            broker,
            db,
            receiver,
            app,
            producer,
            settings,
        }
    }

    pub fn topic(&self, name: &str, partitions: i32) {
        self.broker
            .create_topic(name, partitions)
            .expect("topic created");
    }

    /// Stops the application gracefully and starts a fresh one on the same
    /// database and broker. (Crashes are tested with the binary: see [`BinaryApp`].)
    pub async fn restart(&mut self) {
        let old = std::mem::replace(&mut self.app, TestApp::spawn(self.settings.clone()).await);
        old.stop().await;
    }
}

// ---- tansu: a stricter broker ----

/// The tansu release the README's test command installs.
pub const TANSU_VERSION: &str = "0.6.0";

/// tansu, a Kafka-compatible broker in Rust, in a child process on a free
/// loopback port with in-memory storage. Unlike the mock cluster it does not
/// auto-create topics, so what works here does not rely on that. Its group
/// coordinator never expires a dead member's session (0.6): no SIGKILL tests on it.
pub struct Tansu {
    pub brokers: String,
    _child: tokio::process::Child,
    _log: tempfile::NamedTempFile,
}

impl Tansu {
    /// Starts tansu and waits until it answers a metadata request. Panics,
    /// saying how to install it, when the binary is missing: a test that
    /// needs tansu never passes without it.
    pub async fn start() -> Self {
        let binary = tansu_binary().unwrap_or_else(|| {
            panic!(
                "tansu is not installed (looked on PATH and in ~/.cargo/bin). These tests need \
                 it: cargo install --locked tansu@{TANSU_VERSION} --features dynostore \
                 (the README's test command runs this)"
            )
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = tempfile::NamedTempFile::new().expect("a log file for tansu");
        let mut child = tokio::process::Command::new(&binary)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen().expect("tansu's log file"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let brokers = format!("127.0.0.1:{port}");
        let probe = wasmhook::kafka::Topics::new(&brokers, Duration::from_secs(1))
            .expect("a Kafka admin client");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "tansu exited ({status}) before answering; its log:\n{}",
                    std::fs::read_to_string(log.path()).unwrap_or_default()
                );
            }
            if probe.partitions("tansu-readiness").await.is_ok() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tansu did not answer metadata on {brokers} within 30 s; its log:\n{}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            brokers,
            _child: child,
            _log: log,
        }
    }
}

/// `tansu` on PATH, else where `cargo install` puts it.
fn tansu_binary() -> Option<std::path::PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".cargo"))
        });
    on_path
        .into_iter()
        .chain(cargo_home.map(|home| home.join("bin")))
        .map(|dir| dir.join("tansu"))
        .find(|candidate| candidate.is_file())
}

// ---- SMTP ----

/// Mail one SMTP server received.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: Vec<String>,
    pub data: String,
}

#[derive(Clone, Default)]
struct MailHandler {
    inbox: Arc<Mutex<Vec<Mail>>>,
    to: Vec<String>,
    data: Vec<u8>,
}

impl mailin_embedded::Handler for MailHandler {
    fn data_start(
        &mut self,
        _domain: &str,
        _from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin_embedded::Response {
        self.to = to.to_vec();
        self.data.clear();
        mailin_embedded::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        self.inbox.lock().unwrap().push(Mail {
            to: std::mem::take(&mut self.to),
            data: String::from_utf8_lossy(&std::mem::take(&mut self.data)).into_owned(),
        });
        mailin_embedded::response::OK
    }
}

/// A real SMTP server (mailin) on a free loopback port, on its own thread.
pub struct SmtpServer {
    pub port: u16,
    inbox: Arc<Mutex<Vec<Mail>>>,
}

impl SmtpServer {
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handler = MailHandler::default();
        let inbox = handler.inbox.clone();
        std::thread::spawn(move || {
            let mut server = mailin_embedded::Server::new(handler);
            server.with_name("smtp.test").with_tcp_listener(listener);
            let _ = server.serve();
        });
        Self { port, inbox }
    }

    pub fn settings(&self) -> SmtpSettings {
        SmtpSettings {
            host: "127.0.0.1".into(),
            port: self.port,
            from: "wasmhook@test.example".into(),
        }
    }

    pub async fn wait_for_mail(&self, n: usize, within: Duration) -> Vec<Mail> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let inbox = self.inbox.lock().unwrap().clone();
            if inbox.len() >= n {
                return inbox;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} mails within {within:?}, got {}",
                inbox.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---- The real binary, for crashes ----

/// An executable that runs wasmhook: `wasmhook-loadtest wasmhook …` runs the
/// same `Application` as the `wasmhook` binary. It belongs to this package, so
/// cargo builds it, fresh, for these tests (it would not build `wasmhook`'s own).
pub fn binary_path() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_wasmhook-loadtest"))
}

/// The binary in a child process, so that a test can SIGKILL it.
pub struct BinaryApp {
    /// The REST API's base URL, as the binary printed it.
    pub address: String,
    child: tokio::process::Child,
}

impl BinaryApp {
    pub async fn spawn(database_url: &str, brokers: &str) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(binary_path())
            .args(["wasmhook", "--listen", "127.0.0.1:0"])
            .args(["--database-url", database_url])
            .args(["--kafka-brokers", brokers])
            .args(["--retry-base-delay", "50ms", "--retry-max-delay", "400ms"])
            .args(["--retry-fixed-delay", "200ms"])
            .args(["--reconcile-interval", "500ms"])
            .args(["--admin-token", ADMIN_TOKEN])
            // Real brokers as far as it knows: loopback must be allowed explicitly.
            .args(["--allowed-destinations", "127.0.0.0/8,::1/128"])
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the wasmhook binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let address = loop {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("wasmhook prints its address within 30 s")
                .unwrap()
                .expect("wasmhook printed its address before exiting");
            if let Some(address) = line.split("REST API on ").nth(1) {
                break address.trim().to_string();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { address, child }
    }

    /// The most resident memory the process has had (VmHWM), in KiB; 0 when
    /// it cannot be read (not Linux, or the process is gone).
    pub fn peak_rss_kib(&self) -> u64 {
        let Some(pid) = self.child.id() else {
            return 0;
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGKILL: no shutdown path runs, nothing is flushed or committed.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }
}

// ---- Plugins ----

/// A component `tests/build.rs` built from `plugins/` (`field_match`,
/// `cloudevents`, `tenant_policy`, or a hostile guest such as `guest_loop`).
pub fn plugin_wasm(crate_name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{crate_name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A hand-written hostile guest of `plugins/test-guests/wat/` (`name` without
/// `.wat`), made into a component of the `world` of `wit/` by wit-component.
pub fn wat_component(name: &str, world: &str) -> Vec<u8> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join(format!("plugins/test-guests/wat/{name}.wat"));
    let mut module = wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(root.join("wit")).expect("wit/ parses");
    let world = resolve
        .select_world(&[package], Some(world))
        .expect("the world exists");
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .expect("component metadata");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("a core module wit-component accepts")
        .validate(true)
        .encode()
        .unwrap_or_else(|e| panic!("{name}.wat as a component: {e:?}"))
}

/// A `multipart/form-data` body with text fields and one file field `wasm`.
pub fn plugin_form(fields: &[(&str, &str)], wasm: Option<&[u8]>) -> (String, Vec<u8>) {
    let boundary = format!("wasmhook-test-{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some(wasm) = wasm {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"wasm\"; filename=\"plugin.wasm\"\r\n\
                 Content-Type: application/wasm\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(wasm);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

impl TestApp {
    /// `POST /1/Plugin` as a multipart form, with the admin token.
    pub async fn upload_plugin(
        &self,
        name: &str,
        version: &str,
        role: &str,
        wasm: &[u8],
    ) -> (StatusCode, Value) {
        self.as_admin()
            .upload_plugin(name, version, role, wasm)
            .await
    }

    pub async fn post_form(&self, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
        self.as_admin().post_form(content_type, body).await
    }

    /// Uploads a component built from `plugins/` and asserts it was accepted.
    pub async fn install_plugin(&self, crate_name: &str, name: &str, version: &str, role: &str) {
        let (status, body) = self
            .upload_plugin(name, version, role, &plugin_wasm(crate_name))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Polls the status until `check` holds, or panics after `within`.
    pub async fn wait_for_status(
        &self,
        id: &str,
        within: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let status = self.status_of(id).await;
            if check(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the status did not reach the expected state within {within:?}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Calls the API as one caller: with this bearer token, or with none.
pub struct Caller {
    address: String,
    http: reqwest::Client,
}

impl TestApp {
    /// Calls as the app's own client does (with the admin token when it has one).
    fn as_admin(&self) -> Caller {
        Caller {
            address: self.address.clone(),
            http: self.http.clone(),
        }
    }

    pub fn caller(&self, token: Option<&str>) -> Caller {
        Caller {
            address: self.address.clone(),
            http: token.map_or_else(reqwest::Client::new, authed_client),
        }
    }
}

impl Caller {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.address));
        if let Some(body) = body {
            request = request.json(body);
        }
        read(request.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// The raw response, for its headers.
    pub async fn get_response(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .unwrap()
    }

    /// `POST /1/Plugin` as a multipart form.
    pub async fn upload_plugin(
        &self,
        name: &str,
        version: &str,
        role: &str,
        wasm: &[u8],
    ) -> (StatusCode, Value) {
        let (content_type, body) = plugin_form(
            &[("name", name), ("version", version), ("role", role)],
            Some(wasm),
        );
        self.post_form(&content_type, body).await
    }

    /// `POST /1/Plugin` with this body and content type.
    pub async fn post_form(&self, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/1/Plugin", self.address))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        read(response).await
    }
}
