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
use wasmhook::config::{
    DeliverySettings, SecretSettings, ServerSettings, Settings, SmtpCredentials, SmtpPassword,
    SmtpSettings, SmtpTls,
};
use wasmhook::egress::DestinationPolicy;
use wasmhook::kafka::{
    KafkaConnection, PemFile, PemKind, SaslMechanism, SaslSettings, SecurityProtocol, TlsSettings,
};
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
        kafka: wasmhook::kafka::KafkaConnection::new(brokers),
        max_body_bytes: 64 * 1024,
        ingest: wasmhook::config::IngestSettings::default(),
        bridge: wasmhook::config::BridgeSettings::default(),
        delivery: DeliverySettings {
            request_timeout: Duration::from_secs(2),
            retry_base_delay: Duration::from_millis(50),
            retry_max_delay: Duration::from_millis(400),
            retry_fixed_delay: Duration::from_millis(100),
            reconcile_interval: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(5),
            destinations: DestinationPolicy::allowing_loopback(),
            lag_interval: Duration::from_millis(200),
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
        self.as_admin().set_platform(status, message).await;
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
    /// Requests holding a message of this (topic, partition) wait until it is released.
    hold: Mutex<Option<(String, i64)>>,
    released: Notify,
    /// Requests waiting on the hold now.
    held: Mutex<usize>,
    /// Requests being answered now, and the most there ever were at once.
    open: Mutex<(usize, usize)>,
}

/// Counts a request as open while it is being answered.
struct Open(Arc<ReceiverState>);

impl Open {
    fn new(state: &Arc<ReceiverState>) -> Self {
        let mut open = state.open.lock().unwrap();
        open.0 += 1;
        open.1 = open.1.max(open.0);
        Self(state.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.lock().unwrap().0 -= 1;
    }
}

impl ReceiverState {
    /// Waits while the hold names a partition `body` has messages of.
    async fn wait_while_held(&self, body: &Bytes) {
        let messages = serde_json::from_slice::<Vec<Value>>(body).unwrap_or_default();
        let holds = |hold: &(String, i64)| {
            messages
                .iter()
                .any(|m| m["topic"] == hold.0.as_str() && m["partition"] == hold.1)
        };
        let mut counted = false;
        loop {
            let released = self.released.notified();
            if !self.hold.lock().unwrap().as_ref().is_some_and(holds) {
                break;
            }
            if !counted {
                counted = true;
                *self.held.lock().unwrap() += 1;
                self.arrived.notify_waiters();
            }
            released.await;
        }
        if counted {
            *self.held.lock().unwrap() -= 1;
        }
    }
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
    let _open = Open::new(&state);
    state.wait_while_held(&body).await;
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

    /// Holds every request with a message of `topic`/`partition` unanswered
    /// (and unrecorded) until [`Receiver::release`].
    pub fn hold(&self, topic: &str, partition: i64) {
        *self.state.hold.lock().unwrap() = Some((topic.to_string(), partition));
    }

    /// Answers the held requests, and holds nothing more.
    pub fn release(&self) {
        *self.state.hold.lock().unwrap() = None;
        self.state.released.notify_waiters();
    }

    /// Waits until at least `n` requests are being held, or panics after `within`.
    pub async fn wait_for_held(&self, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.state.arrived.notified();
            if *self.state.held.lock().unwrap() >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("expected {n} held requests within {within:?}");
            }
        }
    }

    /// The most requests that were being answered at once.
    pub fn most_at_once(&self) -> usize {
        self.state.open.lock().unwrap().1
    }

    pub fn requests(&self) -> Vec<Received> {
        self.state.requests.lock().unwrap().clone()
    }

    /// How many messages each request carried, in arrival order.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.requests().iter().map(|r| r.messages().len()).collect()
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
/// The `webhook-id` of a request holding `messages`, as the README defines
/// it: `msg_` and the first 16 bytes, in hex, of the SHA-256 of each element's
/// topic, a zero byte, its partition (4 bytes) and offset (8 bytes, both big-endian).
pub fn webhook_id_of(messages: &[Value]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for message in messages {
        hash.update(message["topic"].as_str().expect("topic").as_bytes());
        hash.update([0]);
        hash.update((message["partition"].as_i64().expect("partition") as i32).to_be_bytes());
        hash.update(message["offset"].as_i64().expect("offset").to_be_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

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
        Self::start_with(TansuOptions::default()).await
    }

    /// As [`Tansu::start`], on a given port, advertising another address
    /// (a [`BrokerFront`] before it).
    pub async fn start_with(options: TansuOptions) -> Self {
        let binary = tansu_binary().unwrap_or_else(|| {
            panic!(
                "tansu is not installed (looked on PATH and in ~/.cargo/bin). These tests need \
                 it: cargo install --locked tansu@{TANSU_VERSION} --features dynostore \
                 (the README's test command runs this)"
            )
        });
        let port = options.port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port()
        });
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = options
            .advertised
            .as_ref()
            .map(|address| format!("tcp://{address}"))
            .unwrap_or_else(|| url.clone());
        let log = tempfile::NamedTempFile::new().expect("a log file for tansu");
        let mut command = tokio::process::Command::new(&binary);
        command
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", "memory://tansu/"]);
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen().expect("tansu's log file"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let brokers = format!("127.0.0.1:{port}");
        let connection = options
            .probe
            .clone()
            .unwrap_or_else(|| KafkaConnection::new(&brokers));
        let probe = wasmhook::kafka::Topics::new(&connection, Duration::from_secs(1))
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

/// How [`Tansu::start_with`] starts tansu.
#[derive(Debug, Clone, Default)]
pub struct TansuOptions {
    /// Its loopback port; unset: a free one.
    pub port: Option<u16>,
    /// `host:port` told to clients in metadata; unset: its own listener.
    pub advertised: Option<String>,
    /// How to ask whether it is up; unset: plaintext to its own listener.
    /// (Not that when it advertises another address: clients go there next.)
    pub probe: Option<KafkaConnection>,
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

// ---- TLS in front of a broker ----

/// A certificate authority made for one test, and what it signs, as PEM files.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// The CA's certificate: what a client trusts.
    pub cert_path: std::path::PathBuf,
    dir: tempfile::TempDir,
}

/// A certificate a [`TestCa`] signed, and its key, in PEM files and in DER.
pub struct Issued {
    pub cert_path: std::path::PathBuf,
    pub key_path: std::path::PathBuf,
    cert_der: rustls::pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl TestCa {
    pub fn generate(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join(format!("{name}-ca.pem"));
        std::fs::write(&cert_path, issuer.pem()).unwrap();
        Self {
            issuer,
            cert_path,
            dir,
        }
    }

    /// A certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub fn issue(&self, file: &str, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, file.to_string());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = self.dir.path().join(format!("{file}.pem"));
        let key_path = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Issued {
            cert_path,
            key_path,
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// A TLS server that presents `server` and, with `client_auth`, accepts
    /// only clients with a certificate this CA signed (mutual TLS).
    pub fn server_config(&self, server: &Issued, client_auth: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.issuer.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server.key_der.clone().into());
        Arc::new(
            builder
                .with_single_cert(vec![server.cert_der.clone()], key)
                .unwrap(),
        )
    }
}

/// SASL accounts a [`BrokerFront`] accepts, and with which mechanisms.
#[derive(Clone)]
pub struct SaslAccounts {
    pub mechanisms: Vec<SaslMechanism>,
    /// User → password.
    pub users: std::collections::HashMap<String, String>,
}

impl SaslAccounts {
    pub fn new(mechanisms: &[SaslMechanism], users: &[(&str, &str)]) -> Self {
        Self {
            mechanisms: mechanisms.to_vec(),
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
        }
    }
}

/// What a managed cluster's listener is to its clients, in front of a
/// plaintext broker: TLS (optionally requiring a client certificate) and/or
/// SASL (PLAIN, SCRAM-SHA-256/512, answered here as a broker would: the
/// handshake and authentication requests are served, ApiVersions is passed
/// through, anything else before a login closes the connection). Once a
/// client is in, bytes go both ways unchanged. It counts TLS handshakes and
/// SASL logins, so a test can tell how its clients came in.
pub struct BrokerFront {
    /// `127.0.0.1:port`, for bootstrap servers and the broker's advertised address.
    pub address: String,
    listener: Option<std::net::TcpListener>,
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
    logins: Arc<std::sync::atomic::AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl BrokerFront {
    /// Takes a free loopback port now (the broker must advertise it before
    /// it starts); [`BrokerFront::serve`] starts answering.
    pub fn bind() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        Self {
            address,
            listener: Some(listener),
            handshakes: Arc::default(),
            logins: Arc::default(),
            task: None,
        }
    }

    /// Serves each connection with `tls` and/or `sasl`, then forwards it to `upstream`.
    pub fn serve(
        &mut self,
        upstream: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
        sasl: Option<SaslAccounts>,
    ) {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = self.listener.take().expect("serve is called once");
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let upstream = upstream.to_string();
        let (handshakes, logins) = (self.handshakes.clone(), self.logins.clone());
        self.task = Some(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, upstream, sasl) = (acceptor.clone(), upstream.clone(), sasl.clone());
                let (handshakes, logins) = (handshakes.clone(), logins.clone());
                tokio::spawn(async move {
                    let Some(acceptor) = acceptor else {
                        let _ = front_session(stream, &upstream, sasl.as_ref(), &logins).await;
                        return;
                    };
                    // A refused handshake just closes the connection, as a broker's would.
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    handshakes.fetch_add(1, SeqCst);
                    let _ = front_session(tls, &upstream, sasl.as_ref(), &logins).await;
                });
            }
        }));
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Successful SASL logins so far.
    pub fn logins(&self) -> usize {
        self.logins.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for BrokerFront {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One client connection: the SASL login (when asked for), then bytes both ways.
async fn front_session<S>(
    mut client: S,
    upstream: &str,
    sasl: Option<&SaslAccounts>,
    logins: &std::sync::atomic::AtomicUsize,
) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut broker = tokio::net::TcpStream::connect(upstream).await?;
    if let Some(accounts) = sasl {
        let mut login = SaslLogin::new(accounts);
        loop {
            let request = read_frame(&mut client).await?;
            let header = KafkaHeader::parse(&request)?;
            match header.api_key {
                API_VERSIONS => {
                    write_frame(&mut broker, &request).await?;
                    let answer = read_frame(&mut broker).await?;
                    write_frame(&mut client, &answer).await?;
                }
                SASL_HANDSHAKE => {
                    let answer = login.handshake(&header);
                    write_frame(&mut client, &answer).await?;
                }
                SASL_AUTHENTICATE => {
                    let (answer, outcome) = login.authenticate(&header);
                    write_frame(&mut client, &answer).await?;
                    match outcome {
                        Login::Continue => {}
                        Login::Done => {
                            logins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            break;
                        }
                        Login::Failed => return Ok(()),
                    }
                }
                // Nothing else before a login: the broker closes the connection.
                _ => return Ok(()),
            }
        }
    }
    tokio::io::copy_bidirectional(&mut client, &mut broker).await?;
    Ok(())
}

const API_VERSIONS: i16 = 18;
const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const SASL_AUTHENTICATION_FAILED: i16 = 58;

async fn read_frame<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let size = stream.read_i32().await?;
    let mut frame = vec![0; usize::try_from(size).unwrap_or(0).min(16 << 20)];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

async fn write_frame<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    frame: &[u8],
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    stream.write_i32(frame.len() as i32).await?;
    stream.write_all(frame).await?;
    stream.flush().await
}

/// A request's header (v1: the SASL requests librdkafka sends are not
/// flexible) and what follows it.
struct KafkaHeader {
    api_key: i16,
    api_version: i16,
    correlation_id: i32,
    body: Vec<u8>,
}

impl KafkaHeader {
    fn parse(frame: &[u8]) -> std::io::Result<Self> {
        let short = || std::io::Error::new(std::io::ErrorKind::InvalidData, "short frame");
        if frame.len() < 10 {
            return Err(short());
        }
        let api_key = i16::from_be_bytes([frame[0], frame[1]]);
        let api_version = i16::from_be_bytes([frame[2], frame[3]]);
        let correlation_id = i32::from_be_bytes(frame[4..8].try_into().unwrap());
        let client_id = i16::from_be_bytes([frame[8], frame[9]]);
        let body_at = 10 + usize::try_from(client_id).unwrap_or(0);
        Ok(Self {
            api_key,
            api_version,
            correlation_id,
            body: frame.get(body_at..).ok_or_else(short)?.to_vec(),
        })
    }

    /// The body's leading `bytes` (SaslAuthenticate v0/v1) or `string` (SaslHandshake).
    fn leading_bytes(&self, length_bytes: usize) -> Vec<u8> {
        let (length, rest) = self.body.split_at(length_bytes.min(self.body.len()));
        let length = match length_bytes {
            2 => i16::from_be_bytes(length.try_into().unwrap_or([0; 2])) as usize,
            _ => i32::from_be_bytes(length.try_into().unwrap_or([0; 4])) as usize,
        };
        rest.get(..length).unwrap_or_default().to_vec()
    }
}

enum Login {
    Continue,
    Done,
    Failed,
}

/// The broker's side of one SASL login.
struct SaslLogin<'a> {
    accounts: &'a SaslAccounts,
    mechanism: Option<SaslMechanism>,
    /// SCRAM, between the client's first message and its last.
    scram: Option<ScramExchange>,
}

struct ScramExchange {
    user: String,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

impl<'a> SaslLogin<'a> {
    fn new(accounts: &'a SaslAccounts) -> Self {
        Self {
            accounts,
            mechanism: None,
            scram: None,
        }
    }

    fn handshake(&mut self, header: &KafkaHeader) -> Vec<u8> {
        let asked = String::from_utf8_lossy(&header.leading_bytes(2)).into_owned();
        self.mechanism = self
            .accounts
            .mechanisms
            .iter()
            .copied()
            .find(|m| m.as_kafka() == asked);
        let mut answer = header.correlation_id.to_be_bytes().to_vec();
        let code = if self.mechanism.is_some() {
            0
        } else {
            UNSUPPORTED_SASL_MECHANISM
        };
        answer.extend(code.to_be_bytes());
        answer.extend((self.accounts.mechanisms.len() as i32).to_be_bytes());
        for mechanism in &self.accounts.mechanisms {
            let name = mechanism.as_kafka();
            answer.extend((name.len() as i16).to_be_bytes());
            answer.extend(name.as_bytes());
        }
        answer
    }

    fn authenticate(&mut self, header: &KafkaHeader) -> (Vec<u8>, Login) {
        let token = header.leading_bytes(4);
        let (reply, outcome) = match self.mechanism {
            Some(SaslMechanism::Plain) => self.plain(&token),
            Some(SaslMechanism::ScramSha256) => self.scram(Scram::Sha256, &token),
            Some(SaslMechanism::ScramSha512) => self.scram(Scram::Sha512, &token),
            None => (Vec::new(), Login::Failed),
        };
        let mut answer = header.correlation_id.to_be_bytes().to_vec();
        match outcome {
            Login::Failed => {
                let message = "Authentication failed: invalid credentials";
                answer.extend(SASL_AUTHENTICATION_FAILED.to_be_bytes());
                answer.extend((message.len() as i16).to_be_bytes());
                answer.extend(message.as_bytes());
            }
            _ => {
                answer.extend(0i16.to_be_bytes());
                answer.extend((-1i16).to_be_bytes());
            }
        }
        answer.extend((reply.len() as i32).to_be_bytes());
        answer.extend(&reply);
        if header.api_version >= 1 {
            answer.extend(0i64.to_be_bytes()); // session_lifetime_ms: none
        }
        (answer, outcome)
    }

    /// `authzid \0 user \0 password`.
    fn plain(&self, token: &[u8]) -> (Vec<u8>, Login) {
        let parts: Vec<&[u8]> = token.split(|b| *b == 0).collect();
        let known = parts.len() == 3
            && self
                .accounts
                .users
                .get(&*String::from_utf8_lossy(parts[1]))
                .is_some_and(|password| password.as_bytes() == parts[2]);
        (Vec::new(), if known { Login::Done } else { Login::Failed })
    }

    /// RFC 5802, the server's half: two round trips.
    fn scram(&mut self, scram: Scram, token: &[u8]) -> (Vec<u8>, Login) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let text = String::from_utf8_lossy(token).into_owned();
        let attribute = |message: &str, key: &str| {
            message
                .split(',')
                .find_map(|part| part.strip_prefix(&format!("{key}=")).map(str::to_string))
        };
        const SALT: &[u8] = b"wasmhook-test-salt";
        const ITERATIONS: u32 = 4096;
        match self.scram.take() {
            None => {
                let Some(bare) = text.strip_prefix("n,,") else {
                    return (Vec::new(), Login::Failed);
                };
                let (Some(user), Some(client_nonce)) = (attribute(bare, "n"), attribute(bare, "r"))
                else {
                    return (Vec::new(), Login::Failed);
                };
                let nonce = format!("{client_nonce}{}", uuid::Uuid::new_v4().simple());
                let server_first = format!("r={nonce},s={},i={ITERATIONS}", b64.encode(SALT));
                self.scram = Some(ScramExchange {
                    user,
                    nonce,
                    client_first_bare: bare.to_string(),
                    server_first: server_first.clone(),
                });
                (server_first.into_bytes(), Login::Continue)
            }
            Some(exchange) => {
                let Some(password) = self.accounts.users.get(&exchange.user) else {
                    return (Vec::new(), Login::Failed);
                };
                let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
                    return (Vec::new(), Login::Failed);
                };
                if attribute(without_proof, "r").as_deref() != Some(exchange.nonce.as_str()) {
                    return (Vec::new(), Login::Failed);
                }
                let salted = scram.salted_password(password.as_bytes(), SALT, ITERATIONS);
                let client_key = scram.hmac(&salted, b"Client Key");
                let auth_message = format!(
                    "{},{},{without_proof}",
                    exchange.client_first_bare, exchange.server_first
                );
                let signature = scram.hmac(&scram.hash(&client_key), auth_message.as_bytes());
                let expected: Vec<u8> = client_key
                    .iter()
                    .zip(&signature)
                    .map(|(k, s)| k ^ s)
                    .collect();
                if b64.decode(proof).ok() != Some(expected) {
                    return (Vec::new(), Login::Failed);
                }
                let server_key = scram.hmac(&salted, b"Server Key");
                let verifier = scram.hmac(&server_key, auth_message.as_bytes());
                (
                    format!("v={}", b64.encode(verifier)).into_bytes(),
                    Login::Done,
                )
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Scram {
    Sha256,
    Sha512,
}

impl Scram {
    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        use hmac::Mac;
        match self {
            Scram::Sha256 => {
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            Scram::Sha512 => {
                let mut mac = hmac::Hmac::<sha2::Sha512>::new_from_slice(key).unwrap();
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            Scram::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Scram::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    /// PBKDF2 with this HMAC, one block (as long as the hash).
    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut block = self.hmac(password, &[salt, &1u32.to_be_bytes()].concat());
        let mut out = block.clone();
        for _ in 1..iterations {
            block = self.hmac(password, &block);
            out.iter_mut().zip(&block).for_each(|(o, b)| *o ^= b);
        }
        out
    }
}

/// How [`FrontedTansu::start`] fronts tansu.
#[derive(Clone)]
pub struct Front {
    /// TLS with a broker certificate for these names; `None`: plaintext.
    pub tls_names: Option<Vec<&'static str>>,
    /// TLS only: require a client certificate from the CA.
    pub client_auth: bool,
    pub sasl: Option<SaslAccounts>,
}

impl Front {
    /// TLS for 127.0.0.1 and localhost, nothing else.
    pub fn tls() -> Self {
        Self {
            tls_names: Some(vec!["127.0.0.1", "localhost"]),
            client_auth: false,
            sasl: None,
        }
    }
}

/// tansu behind a [`BrokerFront`] that it advertises, so that every client,
/// after bootstrap too, comes back through the front.
pub struct FrontedTansu {
    /// Kept running as long as this value.
    _tansu: Tansu,
    pub front: BrokerFront,
    pub ca: TestCa,
}

impl FrontedTansu {
    pub async fn start(options: Front) -> Self {
        let ca = TestCa::generate("kafka");
        let mut front = BrokerFront::bind();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let tls = options.tls_names.as_ref().map(|names| {
            let server = ca.issue("broker", names);
            ca.server_config(&server, options.client_auth)
        });
        // Serving before tansu starts: its metadata sends clients here at once.
        front.serve(&format!("127.0.0.1:{port}"), tls, options.sasl.clone());
        let probe = Self::probe(&ca, &front.address, &options);
        let tansu = Tansu::start_with(TansuOptions {
            port: Some(port),
            advertised: Some(front.address.clone()),
            probe: Some(probe),
        })
        .await;
        Self {
            _tansu: tansu,
            front,
            ca,
        }
    }

    /// A connection that gets through the front: the CA (names unchecked,
    /// as some tests give the broker a name that is not its address), a
    /// client certificate, an account.
    fn probe(ca: &TestCa, address: &str, options: &Front) -> KafkaConnection {
        let tls = match &options.tls_names {
            None => TlsSettings::default(),
            Some(_) => TlsSettings {
                ca: Some(PemFile::read(&ca.cert_path, PemKind::Certificates).unwrap()),
                identity: options.client_auth.then(|| {
                    let probe = ca.issue("probe", &["probe"]);
                    wasmhook::kafka::ClientIdentity {
                        certificate: PemFile::read(&probe.cert_path, PemKind::Certificates)
                            .unwrap(),
                        key: PemFile::read(&probe.key_path, PemKind::PrivateKey).unwrap(),
                        key_password: None,
                    }
                }),
                verify_hostname: false,
            },
        };
        let sasl = options.sasl.as_ref().map(|accounts| {
            let (user, password) = accounts.users.iter().next().expect("an account");
            SaslSettings {
                mechanism: accounts.mechanisms[0],
                username: user.clone(),
                password: wasmhook::secrets::HiddenText(password.clone()),
            }
        });
        let protocol = match (options.tls_names.is_some(), sasl.is_some()) {
            (true, true) => SecurityProtocol::SaslSsl,
            (true, false) => SecurityProtocol::Ssl,
            (false, true) => SecurityProtocol::SaslPlaintext,
            (false, false) => SecurityProtocol::Plaintext,
        };
        KafkaConnection::secured(address, Some(protocol), tls, sasl).expect("a probe connection")
    }

    /// TLS settings that trust the front's CA (names checked).
    pub fn tls(&self) -> TlsSettings {
        TlsSettings {
            ca: Some(PemFile::read(&self.ca.cert_path, PemKind::Certificates).unwrap()),
            ..TlsSettings::default()
        }
    }
}

// ---- SMTP ----

/// Mail one SMTP server received.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: Vec<String>,
    pub data: String,
    /// Who the client authenticated as (only a server that requires it asks).
    pub user: Option<String>,
}

/// A server's record of one connection; mailin clones it per connection.
#[derive(Clone, Default)]
struct MailHandler {
    inbox: Arc<Mutex<Vec<Mail>>>,
    /// The only user and password the server accepts, when it requires AUTH.
    account: Option<(String, String)>,
    user: Option<String>,
    to: Vec<String>,
    data: Vec<u8>,
}

impl MailHandler {
    fn login(&mut self, user: &str, password: &str) -> mailin_embedded::Response {
        match &self.account {
            Some((u, p)) if u == user && p == password => {
                self.user = Some(user.to_string());
                mailin_embedded::response::AUTH_OK
            }
            _ => mailin_embedded::response::INVALID_CREDENTIALS,
        }
    }
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
            user: self.user.clone(),
        });
        mailin_embedded::response::OK
    }

    fn auth_plain(
        &mut self,
        _authorization_id: &str,
        authentication_id: &str,
        password: &str,
    ) -> mailin_embedded::Response {
        self.login(authentication_id, password)
    }

    fn auth_login(&mut self, username: &str, password: &str) -> mailin_embedded::Response {
        self.login(username, password)
    }
}

/// How a [`SmtpServer`] wants its clients to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain SMTP, no AUTH.
    Plain,
    /// STARTTLS, then AUTH, both required before a mail is taken.
    StartTls,
    /// TLS from the first byte, then AUTH, required.
    ImplicitTls,
}

/// A self-signed certificate for 127.0.0.1 and localhost, in PEM files.
pub struct TestCertificate {
    pub cert_path: std::path::PathBuf,
    pub key_path: std::path::PathBuf,
    cert_der: rustls::pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl TestCertificate {
    pub fn generate() -> Self {
        let generated =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, generated.cert.pem()).unwrap();
        std::fs::write(&key_path, generated.signing_key.serialize_pem()).unwrap();
        Self {
            cert_path,
            key_path,
            cert_der: generated.cert.der().clone(),
            key_der: generated.signing_key.serialize_der(),
            _dir: dir,
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(vec![self.cert_der.clone()], key)
                .unwrap(),
        )
    }
}

/// rustls has two crypto providers compiled in here (mailin's and ours):
/// name the process's default once, as mailin builds its config with it.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A real SMTP server (mailin) on a free loopback port, on its own thread.
pub struct SmtpServer {
    pub port: u16,
    pub security: SmtpSecurity,
    /// Whom a secured server trusts: its certificate, for the client's CA file.
    pub certificate: Option<TestCertificate>,
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
        Self {
            port,
            security: SmtpSecurity::Plain,
            certificate: None,
            inbox,
        }
    }

    /// A server that takes mail only over TLS (STARTTLS or implicit) and
    /// only from `user` with `password`, with a fresh self-signed certificate.
    pub fn start_secured(security: SmtpSecurity, user: &str, password: &str) -> Self {
        install_crypto_provider();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let certificate = TestCertificate::generate();
        let handler = MailHandler {
            account: Some((user.to_string(), password.to_string())),
            ..MailHandler::default()
        };
        let inbox = handler.inbox.clone();
        match security {
            SmtpSecurity::Plain => panic!("a secured server is StartTls or ImplicitTls"),
            SmtpSecurity::StartTls => {
                let ssl = mailin_embedded::SslConfig::SelfSigned {
                    cert_path: certificate.cert_path.to_string_lossy().into_owned(),
                    key_path: certificate.key_path.to_string_lossy().into_owned(),
                };
                let mut server = mailin_embedded::Server::new(handler);
                server
                    .with_name("smtp.test")
                    .with_ssl(ssl)
                    .unwrap()
                    .with_auth(mailin_embedded::AuthMechanism::Plain)
                    .with_auth(mailin_embedded::AuthMechanism::Login)
                    .with_tcp_listener(listener);
                std::thread::spawn(move || {
                    let _ = server.serve();
                });
            }
            SmtpSecurity::ImplicitTls => {
                let config = certificate.server_config();
                std::thread::spawn(move || {
                    for stream in listener.incoming().flatten() {
                        let (config, handler) = (config.clone(), handler.clone());
                        std::thread::spawn(move || implicit_tls_session(stream, config, handler));
                    }
                });
            }
        }
        Self {
            port,
            security,
            certificate: Some(certificate),
            inbox,
        }
    }

    /// Settings for wasmhook to send to this server: plain, or with TLS,
    /// this server's certificate as the CA to trust, and the account given.
    pub fn settings(&self) -> SmtpSettings {
        SmtpSettings::plain("127.0.0.1", self.port, "wasmhook@test.example")
    }

    pub fn secured_settings(&self, user: &str, password: SmtpPassword) -> SmtpSettings {
        SmtpSettings {
            tls: match self.security {
                SmtpSecurity::Plain => SmtpTls::None,
                SmtpSecurity::StartTls => SmtpTls::Starttls,
                SmtpSecurity::ImplicitTls => SmtpTls::Tls,
            },
            credentials: Some(SmtpCredentials {
                user: user.to_string(),
                password: Some(password),
            }),
            ca_file: self.certificate.as_ref().map(|c| c.cert_path.clone()),
            ..self.settings()
        }
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.inbox.lock().unwrap().clone()
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

/// mailin's SMTP session over a connection that is TLS from its first byte
/// (mailin-embedded itself only knows STARTTLS).
fn implicit_tls_session(
    stream: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    handler: MailHandler,
) {
    use std::io::{BufRead, Write};
    let Ok(peer) = stream.peer_addr() else { return };
    let Ok(connection) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut builder = mailin::SessionBuilder::new("smtps.test");
    builder
        .enable_auth(mailin::AuthMechanism::Plain)
        .enable_auth(mailin::AuthMechanism::Login);
    let mut session = builder.build(peer.ip(), handler);
    // The whole connection is TLS: AUTH is allowed from the start.
    session.tls_active();
    let mut tls = std::io::BufReader::new(rustls::StreamOwned::new(connection, stream));
    let reply = |tls: &mut std::io::BufReader<_>, response: &mailin::Response| {
        let writer: &mut rustls::StreamOwned<_, _> = tls.get_mut();
        response.write_to(writer).and_then(|()| writer.flush())
    };
    if reply(&mut tls, &session.greeting()).is_err() {
        return;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        match tls.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let response = session.process(&line);
        match response.action {
            mailin::Action::NoReply => {}
            mailin::Action::Close => {
                let _ = reply(&mut tls, &response);
                return;
            }
            mailin::Action::Reply | mailin::Action::UpgradeTls => {
                if reply(&mut tls, &response).is_err() {
                    return;
                }
            }
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
    /// Its log lines (stderr), when spawned with [`BinaryApp::spawn_logged`].
    logs: Arc<Mutex<Vec<String>>>,
}

impl BinaryApp {
    pub async fn spawn(database_url: &str, brokers: &str) -> Self {
        Self::spawn_with(database_url, brokers, &[]).await
    }

    /// As [`BinaryApp::spawn`], with more flags (a later flag overrides an earlier one).
    pub async fn spawn_with(database_url: &str, brokers: &str, extra: &[&str]) -> Self {
        Self::spawn_inner(database_url, brokers, extra, &[], false).await
    }

    /// As [`BinaryApp::spawn_with`], with environment variables set for it.
    pub async fn spawn_with_env(
        database_url: &str,
        brokers: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn_inner(database_url, brokers, extra, env, false).await
    }

    /// As [`BinaryApp::spawn_with_env`], its log lines at `info` kept for
    /// [`BinaryApp::logs`].
    pub async fn spawn_logged(
        database_url: &str,
        brokers: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn_inner(database_url, brokers, extra, env, true).await
    }

    async fn spawn_inner(
        database_url: &str,
        brokers: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        logged: bool,
    ) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut command = tokio::process::Command::new(binary_path());
        command.envs(env.iter().copied());
        // PostgreSQL has no key file beside it: every host gets the database's key.
        if let Some(key) = postgres_secret_key(database_url) {
            command.env("WASMHOOK_SECRET_KEY", key.to_base64());
        }
        let defaults = [
            ("--listen", "127.0.0.1:0"),
            ("--database-url", database_url),
            ("--kafka-brokers", brokers),
            ("--retry-base-delay", "50ms"),
            ("--retry-max-delay", "400ms"),
            ("--retry-fixed-delay", "200ms"),
            ("--reconcile-interval", "500ms"),
            ("--admin-token", ADMIN_TOKEN),
            // Real brokers as far as it knows: loopback must be allowed explicitly.
            ("--allowed-destinations", "127.0.0.0/8,::1/128"),
        ];
        command.arg("wasmhook");
        for (flag, value) in defaults {
            // A flag given in `extra` replaces its default (clap takes each once).
            if !extra.contains(&flag) {
                command.args([flag, value]);
            }
        }
        command
            .args(extra)
            .env(
                "RUST_LOG",
                // WASMHOOK_TEST_CHILD_LOG shows more of a child's log when a
                // test is being investigated (its stderr is inherited).
                match std::env::var("WASMHOOK_TEST_CHILD_LOG") {
                    Ok(filter) if !logged => filter,
                    _ if logged => "info,librdkafka=warn,rdkafka=warn".into(),
                    _ => "error".into(),
                },
            )
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped());
        if logged {
            command.stderr(std::process::Stdio::piped());
        }
        let mut child = command
            .kill_on_drop(true)
            .spawn()
            .expect("the wasmhook binary starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let kept = logs.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    kept.lock().unwrap().push(line);
                }
            });
        }
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
        Self {
            address,
            child,
            logs,
        }
    }

    /// The log lines so far (only with [`BinaryApp::spawn_logged`]).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
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

    /// SIGTERM, as a service manager stops it, and waits for the exit.
    pub async fn terminate(mut self) {
        let pid = self.child.id().expect("the process is running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM delivered");
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("wasmhook exits within 60 s of SIGTERM")
            .expect("wait for wasmhook");
        assert!(status.success(), "a graceful stop exits 0, not {status}");
    }

    /// An API client for this process, as the admin.
    pub fn caller(&self) -> Caller {
        Caller {
            address: self.address.clone(),
            http: authed_client(ADMIN_TOKEN),
        }
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

/// A tenant created by the admin, with a token of its own.
pub struct Tenant {
    pub id: String,
    pub token: String,
}

impl Caller {
    /// Creates tenant `name` allowed `topics` (this caller is the admin) and
    /// mints it a token.
    pub async fn tenant(&self, name: &str, topics: &[&str]) -> Tenant {
        let (status, body) = self
            .post("/1/Tenant", &json!({"name": name, "topics": topics}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = body["id"].as_str().unwrap().to_string();
        let (status, minted) = self
            .post(&format!("/1/Tenant/{id}/Token"), &json!({"label": name}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{minted}");
        let token = minted["token"].as_str().unwrap().to_string();
        assert!(token.starts_with("whk_"), "{minted}");
        Tenant { id, token }
    }

    /// Turns subscription `id` on through this caller's host; every host
    /// starts its pipeline on the notification.
    pub async fn activate(&self, id: &str) {
        let path = format!("/1/Subscription/{id}");
        let (status, mut spec) = self.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{spec}");
        spec["active"] = json!("yes");
        let (status, body) = self.put(&path, &spec).await;
        assert!(status.is_success(), "{status} {body}");
    }

    /// Flips the admin switch through this caller's host.
    pub async fn set_platform(&self, status: &str, message: &str) {
        let (code, body) = self
            .post(
                "/1/EventNotificationAdmin",
                &json!({"status": status, "offline_message": message}),
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }

    /// The answering host's consumer of subscription `id` (null when none runs here).
    pub async fn consumer(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/1/Subscription/{id}/Status")).await;
        assert_eq!(status, 200, "{body}");
        body["consumer"].clone()
    }

    /// The partitions the answering host's consumer of `id` owns.
    pub async fn partitions(&self, id: &str) -> Vec<i64> {
        let consumer = self.consumer(id).await;
        consumer["partitions"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|p| p["partition"].as_i64())
                    .collect()
            })
            .unwrap_or_default()
    }

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
