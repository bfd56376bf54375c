//! Configuration: command-line flags, each with an environment variable, and the
//! plain [`Settings`] that the rest of the crate (and the tests) build from.
//!
//! Flags override the environment, which overrides the defaults.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::bridge::{ConsumerGroup, MqLimit};
use crate::domain::{AccessToken, BatchInterval, BatchSize, TopicName, WebhookUrl};
use crate::egress::DestinationPolicy;
use crate::kafka::{
    ClientIdentity, ConnectionError, KafkaConnection, KafkaOption, PemFile, PemKind, SaslMechanism,
    SaslSettings, SecurityProtocol, TlsSettings, TopicLayout,
};
use crate::logging::LogFormat;
use crate::plugin::{HostLimits, PluginLimits, RuntimeSettings};
use crate::secrets::{HiddenText, KeySource};

/// Delivers Kafka messages to webhooks, with WebAssembly plugins.
///
/// With nothing configured it serves the REST API on 127.0.0.1:8080, keeps its
/// registry in ./wasmhook.db (SQLite) and starts an embedded, in-memory Kafka
/// broker for trying things out.
#[derive(Parser)]
#[command(
    name = "wasmhook",
    version,
    about,
    long_about,
    after_help = "Client commands, which talk to a running server (WASMHOOK_SERVER, WASMHOOK_TOKEN):\n  wasmhook subscription|plugin|admin --help"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address the REST API listens on.
    #[arg(
        long,
        env = "WASMHOOK_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// Registry database: sqlite://PATH (created if missing) or postgres://USER@HOST/DB.
    #[arg(
        long,
        env = "WASMHOOK_DATABASE_URL",
        default_value = "sqlite://wasmhook.db",
        global = true
    )]
    pub database_url: String,

    /// Kafka bootstrap servers (host:port,…). Unset: start an embedded in-memory broker.
    #[arg(long, env = "WASMHOOK_KAFKA_BROKERS", global = true)]
    pub kafka_brokers: Option<String>,

    /// How every Kafka client talks to the brokers: plaintext, ssl,
    /// sasl_plaintext or sasl_ssl. Unset: sasl_ssl when a SASL user is set,
    /// ssl when TLS files are, else plaintext.
    #[arg(
        long,
        env = "WASMHOOK_KAFKA_SECURITY_PROTOCOL",
        value_enum,
        ignore_case = true,
        global = true
    )]
    pub kafka_security_protocol: Option<SecurityProtocol>,

    /// PEM file of the certificate authorities to trust for the brokers.
    /// Unset: the system's CA certificates.
    #[arg(long, env = "WASMHOOK_KAFKA_CA_FILE", global = true)]
    pub kafka_ca_file: Option<PathBuf>,

    /// PEM file of this host's client certificate (mutual TLS); needs --kafka-key-file.
    #[arg(
        long,
        env = "WASMHOOK_KAFKA_CERT_FILE",
        requires = "kafka_key_file",
        global = true
    )]
    pub kafka_cert_file: Option<PathBuf>,

    /// PEM file of the client certificate's private key. If it is
    /// encrypted, its password comes from WASMHOOK_KAFKA_KEY_PASSWORD or
    /// --kafka-key-password-file.
    #[arg(
        long,
        env = "WASMHOOK_KAFKA_KEY_FILE",
        requires = "kafka_cert_file",
        global = true
    )]
    pub kafka_key_file: Option<PathBuf>,

    /// File holding the client key's password (a trailing newline is ignored).
    #[arg(
        long,
        env = "WASMHOOK_KAFKA_KEY_PASSWORD_FILE",
        requires = "kafka_key_file",
        global = true
    )]
    pub kafka_key_password_file: Option<PathBuf>,

    /// Do not check that a broker's certificate names the host connected to
    /// (the certificate chain is still checked). For brokers reached by an
    /// address their certificates do not name; prefer fixing the certificates.
    #[arg(long, env = "WASMHOOK_KAFKA_NO_HOSTNAME_VERIFICATION", global = true)]
    pub kafka_no_hostname_verification: bool,

    /// SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; needs --kafka-sasl-username.
    #[arg(
        long,
        env = "WASMHOOK_KAFKA_SASL_MECHANISM",
        value_enum,
        ignore_case = true,
        requires = "kafka_sasl_username",
        global = true
    )]
    pub kafka_sasl_mechanism: Option<SaslMechanism>,

    /// SASL user. Its password comes from the environment variable
    /// WASMHOOK_KAFKA_PASSWORD or from --kafka-password-file, never from a flag.
    #[arg(
        long,
        env = "WASMHOOK_KAFKA_SASL_USERNAME",
        requires = "kafka_sasl_mechanism",
        global = true
    )]
    pub kafka_sasl_username: Option<String>,

    /// File holding the SASL password (a trailing newline is ignored),
    /// instead of WASMHOOK_KAFKA_PASSWORD.
    #[arg(
        long,
        env = "WASMHOOK_KAFKA_PASSWORD_FILE",
        requires = "kafka_sasl_username",
        global = true
    )]
    pub kafka_password_file: Option<PathBuf>,

    /// A librdkafka property passed to every Kafka client as is
    /// (repeatable; in the variable, `;` separates several). Applied after
    /// the settings above, so it overrides them (the security protocol too);
    /// what a client's role depends on (group, offset commits,
    /// acknowledgements) is set after it. Unknown keys stop start-up.
    #[arg(
        long = "kafka-option",
        env = "WASMHOOK_KAFKA_OPTIONS",
        value_name = "KEY=VALUE",
        value_delimiter = ';',
        global = true
    )]
    pub kafka_options: Vec<KafkaOption>,

    /// Partitions of each subscription's dead-letter topic, created with the subscription.
    #[arg(long, env = "WASMHOOK_DEAD_LETTER_PARTITIONS", default_value_t = 1, value_parser = parse_partitions, global = true)]
    pub dead_letter_partitions: i32,

    /// Replication factor of each dead-letter topic; -1: the brokers' default.
    /// Unset: 1 with the embedded broker, -1 with --kafka-brokers.
    #[arg(long, env = "WASMHOOK_DEAD_LETTER_REPLICATION", allow_negative_numbers = true, value_parser = parse_replication, global = true)]
    pub dead_letter_replication: Option<i32>,

    /// How long a Kafka admin operation (creating a topic) may take before
    /// the API answers 503.
    #[arg(long, env = "WASMHOOK_KAFKA_ADMIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub kafka_admin_timeout: Duration,

    /// Where a new subscription starts reading a topic it has no committed offset for.
    #[arg(long, env = "WASMHOOK_START_FROM", value_enum, default_value_t = StartFrom::Earliest, global = true)]
    pub start_from: StartFrom,

    /// Largest request body the API accepts, in bytes.
    #[arg(long, env = "WASMHOOK_MAX_BODY_BYTES", default_value_t = 1024 * 1024, global = true)]
    pub max_body_bytes: usize,

    /// Timeout of one webhook request.
    #[arg(long, env = "WASMHOOK_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub request_timeout: Duration,

    /// First wait of exponential_backoff; doubles per retry up to --retry-max-delay.
    #[arg(long, env = "WASMHOOK_RETRY_BASE_DELAY", default_value = "1s", value_parser = humantime::parse_duration, global = true)]
    pub retry_base_delay: Duration,

    /// Longest wait between two attempts (also caps Retry-After).
    #[arg(long, env = "WASMHOOK_RETRY_MAX_DELAY", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub retry_max_delay: Duration,

    /// Wait between attempts for fixed_time.
    #[arg(long, env = "WASMHOOK_RETRY_FIXED_DELAY", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub retry_fixed_delay: Duration,

    /// Webhook requests in flight at once, across all subscriptions.
    #[arg(
        long,
        env = "WASMHOOK_MAX_CONCURRENT_DELIVERIES",
        default_value_t = 64,
        global = true
    )]
    pub max_concurrent_deliveries: usize,

    /// How often the registry is re-read for changes made by other hosts.
    #[arg(long, env = "WASMHOOK_RECONCILE_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration, global = true)]
    pub reconcile_interval: Duration,

    /// This host's name in every subscription's consumer group, for static
    /// membership (`group.instance.id` = `<id>-<subscription>`): a restart
    /// within the session timeout takes the same partitions back without a
    /// rebalance. Must differ per host. Unset: dynamic membership.
    #[arg(long, env = "WASMHOOK_INSTANCE_ID", value_parser = parse_instance_id, global = true)]
    pub instance_id: Option<String>,

    /// How long a silent consumer stays in its group (Kafka's session timeout).
    #[arg(long, env = "WASMHOOK_SESSION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub session_timeout: Duration,

    /// How partitions are shared between the hosts of a consumer group.
    #[arg(long, env = "WASMHOOK_ASSIGNMENT_STRATEGY", value_enum, default_value_t = AssignmentStrategy::CooperativeSticky, global = true)]
    pub assignment_strategy: AssignmentStrategy,

    /// How long a fetch waits at the broker when there is nothing new. A
    /// real broker answers as soon as messages arrive, so this only sets how
    /// often an idle consumer asks (raise it for many idle subscriptions);
    /// the embedded broker always waits this long, so there it adds latency.
    #[arg(long, env = "WASMHOOK_FETCH_WAIT", default_value = "100ms", value_parser = humantime::parse_duration, global = true)]
    pub fetch_wait: Duration,

    /// How long a subscription must have had nothing to deliver, on any
    /// host, before its consumer is closed until a message arrives (it
    /// leaves its group and costs no threads meanwhile); `0s`: never.
    #[arg(long, env = "WASMHOOK_HIBERNATE_AFTER", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub hibernate_after: Duration,

    /// How often each consumer's lag per partition is refreshed (shown in status).
    #[arg(long, env = "WASMHOOK_LAG_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub lag_interval: Duration,

    /// How long shutdown waits for in-flight batches before abandoning them (uncommitted).
    #[arg(long, env = "WASMHOOK_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_grace: Duration,

    /// SMTP server for alert emails (host). Unset: alerts by email are only logged.
    #[arg(long, env = "WASMHOOK_SMTP_HOST", global = true)]
    pub smtp_host: Option<String>,

    /// How the SMTP connection is secured: none (plain SMTP, for a relay on a
    /// trusted network), starttls (required upgrade) or tls (implicit TLS, SMTPS).
    #[arg(long, env = "WASMHOOK_SMTP_TLS", value_enum, default_value_t = SmtpTls::Starttls, global = true)]
    pub smtp_tls: SmtpTls,

    /// SMTP port. Default: 25 with --smtp-tls none, 587 with starttls, 465 with tls.
    #[arg(long, env = "WASMHOOK_SMTP_PORT", global = true)]
    pub smtp_port: Option<u16>,

    /// Sender address of alert emails.
    #[arg(
        long,
        env = "WASMHOOK_SMTP_FROM",
        default_value = "wasmhook@localhost",
        global = true
    )]
    pub smtp_from: String,

    /// User to authenticate to the SMTP server as; its password comes from
    /// WASMHOOK_SMTP_PASSWORD or --smtp-password-file.
    #[arg(long, env = "WASMHOOK_SMTP_USER", global = true)]
    pub smtp_user: Option<String>,

    /// The SMTP password (prefer the environment variable or a file to a flag).
    #[arg(long, env = "WASMHOOK_SMTP_PASSWORD", hide_env_values = true, value_parser = hidden_text, conflicts_with = "smtp_password_file", requires = "smtp_user", global = true)]
    pub smtp_password: Option<HiddenText>,

    /// File holding the SMTP password (a trailing newline is ignored).
    #[arg(
        long,
        env = "WASMHOOK_SMTP_PASSWORD_FILE",
        requires = "smtp_user",
        global = true
    )]
    pub smtp_password_file: Option<PathBuf>,

    /// PEM file of certificate authorities to trust for the SMTP server,
    /// besides the public ones (a private CA, or the server's own certificate).
    #[arg(long, env = "WASMHOOK_SMTP_CA_FILE", global = true)]
    pub smtp_ca_file: Option<PathBuf>,

    /// Default CPU time one plugin entry (instantiation, `init`, one batch)
    /// may use; a plugin may ask for more at upload, up to --plugin-max-cpu-deadline.
    #[arg(long, env = "WASMHOOK_PLUGIN_CPU_DEADLINE", default_value = "100ms", value_parser = humantime::parse_duration, global = true)]
    pub plugin_cpu_deadline: Duration,

    /// Default wall-clock time one plugin entry may take, waiting included.
    #[arg(long, env = "WASMHOOK_PLUGIN_WALL_DEADLINE", default_value = "1s", value_parser = humantime::parse_duration, global = true)]
    pub plugin_wall_deadline: Duration,

    /// Default linear memory of one plugin instance, in bytes.
    #[arg(long, env = "WASMHOOK_PLUGIN_MEMORY_BYTES", default_value_t = 64 << 20, global = true)]
    pub plugin_memory: usize,

    /// Most CPU time per entry a plugin may ask for at upload.
    #[arg(long, env = "WASMHOOK_PLUGIN_MAX_CPU_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub plugin_max_cpu_deadline: Duration,

    /// Most wall-clock time per entry a plugin may ask for at upload.
    #[arg(long, env = "WASMHOOK_PLUGIN_MAX_WALL_DEADLINE", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub plugin_max_wall_deadline: Duration,

    /// Most memory per instance a plugin may ask for at upload, in bytes.
    #[arg(long, env = "WASMHOOK_PLUGIN_MAX_MEMORY_BYTES", default_value_t = 1 << 30, global = true)]
    pub plugin_max_memory: usize,

    /// Threads that run plugin code (default: one per core).
    #[arg(long, env = "WASMHOOK_PLUGIN_THREADS", default_value_t = crate::plugin::default_threads(), global = true)]
    pub plugin_threads: usize,

    /// Most machine code of compiled plugins kept in memory, in bytes.
    #[arg(long, env = "WASMHOOK_PLUGIN_CACHE_BYTES", default_value_t = 512 << 20, global = true)]
    pub plugin_cache_bytes: usize,

    /// Longest a plugin's compilation may take.
    #[arg(long, env = "WASMHOOK_PLUGIN_COMPILE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration, global = true)]
    pub plugin_compile_timeout: Duration,

    /// Largest plugin upload (`POST /1/Plugin`) the API accepts, in bytes.
    #[arg(long, env = "WASMHOOK_MAX_PLUGIN_BYTES", default_value_t = 32 << 20, global = true)]
    pub max_plugin_bytes: usize,

    /// Largest value of one record produced over HTTP (a request body, or one
    /// NDJSON line), in bytes.
    #[arg(long, env = "WASMHOOK_MAX_RECORD_BYTES", default_value_t = 1 << 20, global = true)]
    pub max_record_bytes: usize,

    /// Largest body of `POST /1/Topic/{topic}/Records` (an NDJSON batch), in bytes.
    #[arg(long, env = "WASMHOOK_MAX_INGEST_BYTES", default_value_t = 4 << 20, global = true)]
    pub max_ingest_bytes: usize,

    /// Most records (lines) in one NDJSON batch.
    #[arg(
        long,
        env = "WASMHOOK_MAX_INGEST_RECORDS",
        default_value_t = 10_000,
        global = true
    )]
    pub max_ingest_records: usize,

    /// How long a record produced over HTTP may take to be acknowledged by
    /// the brokers before the request is answered 503 (100ms to 300s).
    #[arg(long, env = "WASMHOOK_PRODUCE_TIMEOUT", default_value = "10s", value_parser = parse_produce_timeout, global = true)]
    pub produce_timeout: Duration,

    /// The topic `POST /log` produces to (seed 001's records).
    #[arg(long, env = "WASMHOOK_LOG_TOPIC", default_value = "log", value_parser = parse_topic, global = true)]
    pub log_topic: TopicName,

    /// Seed 001: forward --log-topic to this URL as JSON arrays of records
    /// (the built-in subscription `log-forwarder`). Unset: no forwarding.
    #[arg(long, env = "WEBHOOK_POST_ENDPOINT", value_parser = parse_endpoint, global = true)]
    pub post_endpoint: Option<WebhookUrl>,

    /// Seed 001: records per forwarded batch (1 to 1000).
    #[arg(long, env = "WEBHOOK_BATCH_SIZE", default_value = "10", value_parser = parse_batch_size, global = true)]
    pub batch_size: BatchSize,

    /// Seed 001: longest wait before a partial batch is forwarded (whole
    /// seconds, 1s to 300s; e.g. 10s, 1m).
    #[arg(long, env = "WEBHOOK_BATCH_INTERVAL", default_value = "10s", value_parser = parse_batch_interval, global = true)]
    pub batch_interval: BatchInterval,

    /// WebSocket bridge (seed 004's consumer `mq_limit`): most notifications
    /// a connection buffers before pushing them; when that many wait, its
    /// partitions pause until the client reads (1 to 1000000).
    #[arg(long, env = "WASMHOOK_WS_PUSH_LIMIT", default_value = "5000", value_parser = parse_mq_limit, global = true)]
    pub ws_push_limit: MqLimit,

    /// WebSocket bridge (seed 004's consumer `mq_interval`): how often
    /// buffered notifications are pushed to the socket (0: at once).
    #[arg(long, env = "WASMHOOK_WS_PUSH_INTERVAL", default_value = "50ms", value_parser = humantime::parse_duration, global = true)]
    pub ws_push_interval: Duration,

    /// WebSocket bridge (seed 004's producer `mq_limit`): most messages the
    /// bridge's producer queues before sending (1 to 1000000).
    #[arg(long, env = "WASMHOOK_WS_PRODUCE_LIMIT", default_value = "20000", value_parser = parse_mq_limit, global = true)]
    pub ws_produce_limit: MqLimit,

    /// WebSocket bridge (seed 004's producer `mq_interval`): how long
    /// produced messages wait to be sent together (0: at once).
    #[arg(long, env = "WASMHOOK_WS_PRODUCE_INTERVAL", default_value = "200ms", value_parser = humantime::parse_duration, global = true)]
    pub ws_produce_interval: Duration,

    /// WebSocket bridge: the consumer group of a subscribe frame that names none.
    #[arg(long, env = "WASMHOOK_WS_CONSUMER_GROUP", default_value = "wasmhook-ws", value_parser = parse_consumer_group, global = true)]
    pub ws_consumer_group: ConsumerGroup,

    /// WebSocket bridge: where a group with no committed offset starts (the seed: latest).
    #[arg(long, env = "WASMHOOK_WS_START_FROM", value_enum, default_value_t = StartFrom::Latest, global = true)]
    pub ws_start_from: StartFrom,

    /// WebSocket bridge: how often the server pings each connection.
    #[arg(long, env = "WASMHOOK_WS_PING_INTERVAL", default_value = "20s", value_parser = humantime::parse_duration, global = true)]
    pub ws_ping_interval: Duration,

    /// WebSocket bridge: a connection from which nothing (not even a pong)
    /// arrives for this long is closed.
    #[arg(long, env = "WASMHOOK_WS_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub ws_idle_timeout: Duration,

    /// Log lines as text (coloured only on a terminal) or as JSON, one object per line.
    #[arg(long, env = "WASMHOOK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// The admin's bearer token (`whk_` and at least 32 letters or digits).
    /// Unset: the first start generates one and prints it once.
    #[arg(long, env = "WASMHOOK_ADMIN_TOKEN", value_parser = parse_token, hide_env_values = true, global = true)]
    pub admin_token: Option<AccessToken>,
    /// Longest a client may take to send a request's head (line and headers).
    #[arg(long, env = "WASMHOOK_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub header_read_timeout: Duration,

    /// Longest a client may take to send a request's body.
    #[arg(long, env = "WASMHOOK_BODY_READ_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub body_read_timeout: Duration,

    /// Longest a kept-alive connection may wait, silent, for its next request.
    #[arg(long, env = "WASMHOOK_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub idle_timeout: Duration,

    /// Most client connections open at once; beyond, a new one is answered 503 and closed.
    #[arg(
        long,
        env = "WASMHOOK_MAX_CONNECTIONS",
        default_value_t = 1024,
        global = true
    )]
    pub max_connections: usize,

    /// Most API requests handled at once; beyond, a request is answered 503.
    #[arg(
        long,
        env = "WASMHOOK_MAX_CONCURRENT_REQUESTS",
        default_value_t = 256,
        global = true
    )]
    pub max_concurrent_requests: usize,

    /// How long each check of `GET /readyz` (the registry, the brokers) may take.
    #[arg(long, env = "WASMHOOK_READINESS_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub readiness_timeout: Duration,

    /// Shortest time between two "unhealthy" alerts about one subscription;
    /// repeats within it are folded into the next alert. Recoveries are always told.
    #[arg(long, env = "WASMHOOK_ALERT_INTERVAL", default_value = "15m", value_parser = humantime::parse_duration, global = true)]
    pub alert_interval: Duration,

    /// Non-public ranges webhooks may go to (CIDRs, comma-separated; a bare
    /// address is one host). Unset: public addresses only, plus loopback with
    /// the embedded broker.
    #[arg(
        long,
        env = "WASMHOOK_ALLOWED_DESTINATIONS",
        value_name = "CIDR,...",
        global = true
    )]
    pub allowed_destinations: Option<DestinationPolicy>,
    /// Key that seals secrets at rest: the base64 of 32 random bytes
    /// (`openssl rand -base64 32`), the same on every host. Unset, and no key
    /// file: SQLite keeps a generated key beside its file; PostgreSQL refuses to start.
    #[arg(long, env = "WASMHOOK_SECRET_KEY", hide_env_values = true, value_parser = hidden_text, conflicts_with = "secret_key_file", global = true)]
    pub secret_key: Option<HiddenText>,

    /// File holding the secret key (its base64 form), instead of WASMHOOK_SECRET_KEY.
    #[arg(long, env = "WASMHOOK_SECRET_KEY_FILE", global = true)]
    pub secret_key_file: Option<PathBuf>,

    /// How long a rotated-out signing secret keeps signing beside the new one.
    #[arg(long, env = "WASMHOOK_SECRET_ROTATION_OVERLAP", default_value = "24h", value_parser = humantime::parse_duration, global = true)]
    pub secret_rotation_overlap: Duration,
}

fn parse_produce_timeout(text: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if (Duration::from_millis(100)..=Duration::from_secs(300)).contains(&timeout) {
        Ok(timeout)
    } else {
        Err(format!("must be 100ms to 300s, got {text}"))
    }
}

fn parse_topic(text: &str) -> Result<TopicName, String> {
    TopicName::parse(text.to_string())
}

fn parse_endpoint(text: &str) -> Result<WebhookUrl, String> {
    WebhookUrl::parse(text)
}

fn parse_batch_size(text: &str) -> Result<BatchSize, String> {
    let size = text
        .trim()
        .parse::<i64>()
        .map_err(|_| format!("must be a whole number, got {text:?}"))?;
    BatchSize::parse(size)
}

/// A duration as seed 001 writes it (Go's `10s`, `1m`, `1m30s`), in whole
/// seconds: the delivery engine's batch interval counts seconds.
fn parse_batch_interval(text: &str) -> Result<BatchInterval, String> {
    let interval = humantime::parse_duration(text.trim()).map_err(|e| e.to_string())?;
    if interval.subsec_nanos() != 0 {
        return Err(format!("must be whole seconds, got {text}"));
    }
    BatchInterval::parse(i64::try_from(interval.as_secs()).unwrap_or(i64::MAX))
}

fn parse_mq_limit(text: &str) -> Result<MqLimit, String> {
    let limit = text
        .trim()
        .parse::<usize>()
        .map_err(|_| format!("must be a whole number, got {text:?}"))?;
    MqLimit::parse(limit)
}

fn parse_consumer_group(text: &str) -> Result<ConsumerGroup, String> {
    ConsumerGroup::parse(text.to_string())
}

fn parse_partitions(text: &str) -> Result<i32, String> {
    let partitions = text.parse().map_err(|e| format!("{e}"))?;
    TopicLayout::new(partitions, TopicLayout::BROKER_DEFAULT_REPLICATION)
        .map(|layout| layout.partitions())
        .map_err(|e| e.to_string())
}

fn parse_replication(text: &str) -> Result<i32, String> {
    let replication = text.parse().map_err(|e| format!("{e}"))?;
    TopicLayout::new(1, replication)
        .map(|layout| layout.replication())
        .map_err(|e| e.to_string())
}

/// Takes the key's text as it is: parsing it here would let clap quote it in
/// its error; start-up parses it and names the problem without the text.
fn hidden_text(text: &str) -> Result<HiddenText, std::convert::Infallible> {
    Ok(HiddenText(text.to_string()))
}

/// By hand so that the database URL's password stays out of it.
impl fmt::Debug for Cli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cli")
            .field("command", &self.command)
            .field("listen", &self.listen)
            .field("database_url", &redact_url(&self.database_url))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve the REST API and deliver (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Manage API tokens directly in the registry (no server needed).
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Mint a token and print it (only the token, on stdout).
    Create {
        /// An admin token.
        #[arg(long, conflicts_with = "tenant", required_unless_present = "tenant")]
        admin: bool,
        /// A token for this tenant (its id).
        #[arg(long)]
        tenant: Option<uuid::Uuid>,
        /// A note shown when tokens are listed.
        #[arg(long, default_value = "")]
        label: String,
        /// Lifetime, e.g. 90d; unset: the token does not expire.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
}

fn parse_token(value: &str) -> Result<AccessToken, String> {
    AccessToken::parse(value).map_err(|e| {
        format!("{e}; generate one with: echo whk_$(head -c 30 /dev/urandom | base64 | tr -dc A-Za-z0-9)")
    })
}

/// Where a consumer group with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartFrom {
    /// Everything the topic still holds.
    Earliest,
    /// Only messages produced after the subscription's consumer joined.
    Latest,
}

impl StartFrom {
    pub fn as_kafka(self) -> &'static str {
        match self {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        }
    }
}

/// Kafka's partition assignment strategy for the subscriptions' groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AssignmentStrategy {
    /// Incremental: a rebalance moves only the partitions that must move;
    /// the others keep being delivered.
    CooperativeSticky,
    /// Eager: every rebalance revokes every partition first.
    Range,
    RoundRobin,
}

impl AssignmentStrategy {
    pub fn as_kafka(self) -> &'static str {
        match self {
            Self::CooperativeSticky => "cooperative-sticky",
            Self::Range => "range",
            Self::RoundRobin => "roundrobin",
        }
    }
}

/// A `group.instance.id` prefix: letters, digits, `.`, `_` and `-`, at most 200.
fn parse_instance_id(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 200
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a valid instance id: use 1 to 200 letters, digits, '.', '_' or '-' \
             (for example the host name)"
        ))
    }
}

/// The Kafka secrets that come from the environment only, never from a flag
/// (a flag's value shows in `ps` and in shell history).
#[derive(Debug, Clone, Default)]
pub struct KafkaSecrets {
    /// `WASMHOOK_KAFKA_PASSWORD`: the SASL password.
    pub password: Option<HiddenText>,
    /// `WASMHOOK_KAFKA_KEY_PASSWORD`: the client key's password.
    pub key_password: Option<HiddenText>,
}

impl KafkaSecrets {
    /// Reads both variables; an empty one counts as unset.
    pub fn from_env() -> Self {
        let read = |name| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.is_empty())
                .map(HiddenText)
        };
        Self {
            password: read("WASMHOOK_KAFKA_PASSWORD"),
            key_password: read("WASMHOOK_KAFKA_KEY_PASSWORD"),
        }
    }
}

/// Why the Kafka settings cannot be used; each names the flag or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum KafkaConfigError {
    #[error("{flag}: {source}")]
    File {
        flag: &'static str,
        #[source]
        source: crate::kafka::client::PemError,
    },
    #[error("{flag}: cannot read {path}: {source}")]
    PasswordFile {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: is empty")]
    EmptyPassword { what: String },
    #[error("both {variable} and {flag} are set: keep one")]
    PasswordTwice {
        variable: &'static str,
        flag: &'static str,
    },
    #[error(
        "--kafka-sasl-username {username} has no password: set WASMHOOK_KAFKA_PASSWORD or \
         --kafka-password-file"
    )]
    NoPassword { username: String },
    #[error("{what} is set, but {needs} is not")]
    Unused {
        what: &'static str,
        needs: &'static str,
    },
    #[error(
        "{flag} needs --kafka-brokers: without it wasmhook starts its embedded broker, \
         which speaks plaintext only"
    )]
    EmbeddedBroker { flag: &'static str },
    #[error(transparent)]
    Connection(#[from] ConnectionError),
}

/// A password from its variable or its file (one of them, not both).
fn password(
    from_env: Option<HiddenText>,
    file: Option<&std::path::Path>,
    variable: &'static str,
    flag: &'static str,
) -> Result<Option<HiddenText>, KafkaConfigError> {
    match (from_env, file) {
        (Some(_), Some(_)) => Err(KafkaConfigError::PasswordTwice { variable, flag }),
        (Some(text), None) => Ok(Some(text)),
        (None, None) => Ok(None),
        (None, Some(path)) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| KafkaConfigError::PasswordFile {
                    flag,
                    path: path.to_path_buf(),
                    source,
                })?;
            let text = text.trim_end_matches(['\n', '\r']);
            if text.is_empty() {
                return Err(KafkaConfigError::EmptyPassword {
                    what: format!("{flag} {}", path.display()),
                });
            }
            Ok(Some(HiddenText(text.to_string())))
        }
    }
}

/// Everything the application needs, independent of how it was configured.
///
/// Its `Debug` shows the database URL without its password.
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database_url: String,
    /// How to reach Kafka; the binary fills in the embedded broker when no brokers are set.
    pub kafka: crate::kafka::KafkaConnection,
    pub max_body_bytes: usize,
    /// The door into Kafka: the records API and seed 001's /log.
    pub ingest: IngestSettings,
    /// The WebSocket door: seed 004's protocol.
    pub bridge: BridgeSettings,
    pub delivery: DeliverySettings,
    pub smtp: Option<SmtpSettings>,
    /// The configured admin token (its `Debug` shows only the public prefix).
    pub admin_token: Option<AccessToken>,
    pub server: ServerSettings,
    pub secrets: SecretSettings,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("database_url", &redact_url(&self.database_url))
            .field("kafka", &self.kafka)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("ingest", &self.ingest)
            .field("bridge", &self.bridge)
            .field("delivery", &self.delivery)
            .field("smtp", &self.smtp)
            .field("server", &self.server)
            .field("admin_token", &self.admin_token)
            .field("secrets", &self.secrets)
            .finish()
    }
}

/// How records come in over HTTP, and seed 001's forwarder.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestSettings {
    /// Largest value of one record.
    pub max_record_bytes: usize,
    /// Largest request body (an NDJSON batch).
    pub max_request_bytes: usize,
    /// Most records in one NDJSON batch.
    pub max_records: usize,
    /// How long a record may wait for the brokers' acknowledgement.
    pub produce_timeout: Duration,
    /// Where `POST /log` produces.
    pub log_topic: TopicName,
    /// Seed 001's forwarding of the log topic, when an endpoint is configured.
    pub forwarder: Option<ForwarderSettings>,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            max_record_bytes: 1 << 20,
            max_request_bytes: 4 << 20,
            max_records: 10_000,
            produce_timeout: Duration::from_secs(10),
            log_topic: TopicName::parse("log".into()).expect("a valid topic name"),
            forwarder: None,
        }
    }
}

/// How the WebSocket bridge buffers, keeps connections alive and joins groups.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeSettings {
    /// Notifications buffered per connection; at this count its partitions pause.
    pub push_limit: MqLimit,
    /// How often buffered notifications are pushed (zero: at once).
    pub push_interval: Duration,
    /// Messages the producer queues (librdkafka's `queue.buffering.max.messages`).
    pub produce_limit: MqLimit,
    /// How long produced messages wait to be sent together (`linger.ms`).
    pub produce_interval: Duration,
    /// The group of a subscription that names none.
    pub default_group: ConsumerGroup,
    /// Where a group with no committed offset starts.
    pub start_from: StartFrom,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// How long a produced message may wait for the brokers' acknowledgement.
    pub produce_timeout: Duration,
}

impl Default for BridgeSettings {
    fn default() -> Self {
        Self {
            push_limit: MqLimit::parse(5000).expect("a valid limit"),
            push_interval: Duration::from_millis(50),
            produce_limit: MqLimit::parse(20_000).expect("a valid limit"),
            produce_interval: Duration::from_millis(200),
            default_group: ConsumerGroup::parse("wasmhook-ws".into()).expect("a valid group"),
            start_from: StartFrom::Latest,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            produce_timeout: Duration::from_secs(10),
        }
    }
}

/// Seed 001's forwarder: the log topic to `endpoint`, in batches. Its
/// `Debug` shows the endpoint's origin only (a path or query may hold a token).
#[derive(Clone, PartialEq)]
pub struct ForwarderSettings {
    pub endpoint: WebhookUrl,
    pub batch_size: BatchSize,
    pub batch_interval: BatchInterval,
}

impl fmt::Debug for ForwarderSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwarderSettings")
            .field(
                "endpoint",
                &self.endpoint.url().origin().ascii_serialization(),
            )
            .field("batch_size", &self.batch_size)
            .field("batch_interval", &self.batch_interval)
            .finish()
    }
}

/// How the REST API's server guards itself against slow or too many clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSettings {
    /// From a request's first byte to the end of its head.
    pub header_read_timeout: Duration,
    /// For a handler to read the whole body.
    pub body_read_timeout: Duration,
    /// Silence allowed between two requests on one connection.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_concurrent_requests: usize,
    /// For each check of `/readyz`.
    pub readiness_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_concurrent_requests: 256,
            readiness_timeout: Duration::from_secs(2),
        }
    }
}

/// The URL with its password masked, for messages, logs and `Debug`; text
/// that is not a URL is shown as it is (it holds no password field to find).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("********"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// The key that seals secrets at rest, and signing-secret rotation.
#[derive(Debug, Clone)]
pub struct SecretSettings {
    /// `None`: SQLite keeps a generated key beside its file; PostgreSQL refuses to start.
    pub key: Option<KeySource>,
    pub rotation_overlap: Duration,
}

impl Default for SecretSettings {
    fn default() -> Self {
        Self {
            key: None,
            rotation_overlap: Duration::from_secs(24 * 60 * 60),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub start_from: StartFrom,
    pub request_timeout: Duration,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    pub retry_fixed_delay: Duration,
    pub max_concurrent_deliveries: usize,
    pub reconcile_interval: Duration,
    pub shutdown_grace: Duration,
    pub alert_interval: Duration,
    /// Static membership: this host's `group.instance.id` prefix.
    pub instance_id: Option<String>,
    pub session_timeout: Duration,
    pub assignment_strategy: AssignmentStrategy,
    /// How often librdkafka reports statistics (the lag in status).
    pub lag_interval: Duration,
    /// `fetch.wait.max.ms` of every consumer.
    pub fetch_wait: Duration,
    /// Quiet time before a subscription's consumer hibernates; `None`: never.
    pub hibernate_after: Option<Duration>,
    /// Plugin settings live here rather than in [`Settings`] because this
    /// struct has a `Default`, which the tests and the load test build on.
    pub plugins: RuntimeSettings,
    /// Where webhooks may go; the default, public addresses only.
    pub destinations: DestinationPolicy,
    /// The layout of each subscription's dead-letter topic, created with it.
    pub dead_letter_topic: TopicLayout,
    /// Bound on a Kafka admin operation (creating a topic).
    pub kafka_admin_timeout: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            start_from: StartFrom::Earliest,
            request_timeout: Duration::from_secs(10),
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(60),
            retry_fixed_delay: Duration::from_secs(5),
            max_concurrent_deliveries: 64,
            reconcile_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            alert_interval: Duration::from_secs(15 * 60),
            instance_id: None,
            session_timeout: Duration::from_secs(10),
            assignment_strategy: AssignmentStrategy::CooperativeSticky,
            lag_interval: Duration::from_secs(5),
            fetch_wait: Duration::from_millis(100),
            hibernate_after: Some(Duration::from_secs(60)),
            plugins: RuntimeSettings::default(),
            destinations: DestinationPolicy::public_only(),
            dead_letter_topic: TopicLayout::default(),
            kafka_admin_timeout: Duration::from_secs(10),
        }
    }
}

/// The SMTP server alert emails go through. Its `Debug` masks the password.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub from: String,
    pub tls: SmtpTls,
    pub credentials: Option<SmtpCredentials>,
    /// Extra trusted certificate authorities (PEM), besides the public roots.
    pub ca_file: Option<PathBuf>,
}

impl SmtpSettings {
    /// Plain SMTP without authentication, on `host:port`.
    pub fn plain(host: impl Into<String>, port: u16, from: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port,
            from: from.into(),
            tls: SmtpTls::None,
            credentials: None,
            ca_file: None,
        }
    }
}

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SmtpTls {
    /// Plain SMTP: for a relay on a trusted network only.
    None,
    /// Plain, then upgraded with STARTTLS, which the server must offer.
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
}

impl SmtpTls {
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        }
    }
}

/// Who alert emails are sent as.
#[derive(Debug, Clone)]
pub struct SmtpCredentials {
    pub user: String,
    /// `None`: a user without a password, which start-up refuses.
    pub password: Option<SmtpPassword>,
}

/// Where the SMTP password comes from; read at start-up.
#[derive(Debug, Clone)]
pub enum SmtpPassword {
    /// `WASMHOOK_SMTP_PASSWORD` (or the flag).
    Text(HiddenText),
    /// `--smtp-password-file`.
    File(PathBuf),
}

impl Cli {
    /// Where webhooks may go: `--allowed-destinations` when given; else
    /// loopback with the embedded broker (receivers on the same laptop), and
    /// public addresses only with real brokers.
    pub fn destinations(&self, embedded_broker: bool) -> DestinationPolicy {
        match &self.allowed_destinations {
            Some(policy) => policy.clone(),
            None if embedded_broker => DestinationPolicy::allowing_loopback(),
            None => DestinationPolicy::public_only(),
        }
    }

    /// The layout of dead-letter topics: as configured; an unset replication
    /// is 1 with the embedded broker (it has one), else the brokers' default.
    pub fn dead_letter_topic(&self, embedded_broker: bool) -> TopicLayout {
        let replication = self.dead_letter_replication.unwrap_or(if embedded_broker {
            1
        } else {
            TopicLayout::BROKER_DEFAULT_REPLICATION
        });
        // Both numbers went through the same checks when the flags were parsed.
        TopicLayout::new(self.dead_letter_partitions, replication).unwrap_or_default()
    }

    /// The start-up banner's line about where webhooks may go.
    pub fn destinations_banner(&self, embedded_broker: bool) -> String {
        if embedded_broker && self.allowed_destinations.is_none() {
            "Webhook destinations: loopback allowed (embedded broker default); with real \
             brokers only public addresses unless --allowed-destinations"
                .into()
        } else {
            format!(
                "Webhook destinations: {} (--allowed-destinations)",
                self.destinations(embedded_broker).describe()
            )
        }
    }

    /// How every Kafka client connects, from the Kafka flags and `secrets`:
    /// reads and checks the PEM files and password files now, so that a
    /// wrong path or a missing password stops start-up naming the flag.
    /// The embedded broker speaks plaintext only: security settings are
    /// refused with it, raw options are not.
    pub fn kafka_connection(
        &self,
        brokers: String,
        embedded_broker: bool,
        secrets: KafkaSecrets,
    ) -> Result<KafkaConnection, KafkaConfigError> {
        if embedded_broker {
            if let Some(flag) = self.kafka_security_flag(&secrets) {
                return Err(KafkaConfigError::EmbeddedBroker { flag });
            }
            return KafkaConnection::new(brokers)
                .with_options(self.kafka_options.clone())
                .map_err(Into::into);
        }
        let pem = |flag: &'static str, path: &Option<PathBuf>, kind| {
            path.as_ref()
                .map(|path| PemFile::read(path, kind))
                .transpose()
                .map_err(|source| KafkaConfigError::File { flag, source })
        };
        let ca = pem(
            "--kafka-ca-file",
            &self.kafka_ca_file,
            PemKind::Certificates,
        )?;
        let certificate = pem(
            "--kafka-cert-file",
            &self.kafka_cert_file,
            PemKind::Certificates,
        )?;
        let key = pem(
            "--kafka-key-file",
            &self.kafka_key_file,
            PemKind::PrivateKey,
        )?;
        let key_password = password(
            secrets.key_password,
            self.kafka_key_password_file.as_deref(),
            "WASMHOOK_KAFKA_KEY_PASSWORD",
            "--kafka-key-password-file",
        )?;
        let identity = match (certificate, key) {
            (Some(certificate), Some(key)) => Some(ClientIdentity {
                certificate,
                key,
                key_password,
            }),
            // clap requires both together; a key password alone has no key.
            _ if key_password.is_some() => {
                return Err(KafkaConfigError::Unused {
                    what: "WASMHOOK_KAFKA_KEY_PASSWORD",
                    needs: "--kafka-key-file",
                });
            }
            _ => None,
        };
        let tls = TlsSettings {
            ca,
            identity,
            verify_hostname: !self.kafka_no_hostname_verification,
        };
        let password = password(
            secrets.password,
            self.kafka_password_file.as_deref(),
            "WASMHOOK_KAFKA_PASSWORD",
            "--kafka-password-file",
        )?;
        let sasl = match (
            self.kafka_sasl_mechanism,
            &self.kafka_sasl_username,
            password,
        ) {
            (Some(mechanism), Some(username), Some(password)) => Some(SaslSettings {
                mechanism,
                username: username.clone(),
                password,
            }),
            (Some(_), Some(username), None) => {
                return Err(KafkaConfigError::NoPassword {
                    username: username.clone(),
                });
            }
            (_, _, Some(_)) => {
                return Err(KafkaConfigError::Unused {
                    what: "WASMHOOK_KAFKA_PASSWORD",
                    needs: "--kafka-sasl-username",
                });
            }
            // clap requires the mechanism and the user together.
            _ => None,
        };
        KafkaConnection::secured(brokers, self.kafka_security_protocol, tls, sasl)?
            .with_options(self.kafka_options.clone())
            .map_err(Into::into)
    }

    /// The first security setting given, for the embedded broker's refusal.
    fn kafka_security_flag(&self, secrets: &KafkaSecrets) -> Option<&'static str> {
        [
            (
                self.kafka_security_protocol.is_some(),
                "--kafka-security-protocol",
            ),
            (self.kafka_ca_file.is_some(), "--kafka-ca-file"),
            (self.kafka_cert_file.is_some(), "--kafka-cert-file"),
            (self.kafka_sasl_username.is_some(), "--kafka-sasl-username"),
            (
                self.kafka_no_hostname_verification,
                "--kafka-no-hostname-verification",
            ),
            (secrets.password.is_some(), "WASMHOOK_KAFKA_PASSWORD"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }

    /// Settings for serving, given how to reach Kafka (from
    /// [`Self::kafka_connection`], or the embedded broker's plaintext one).
    pub fn settings(&self, kafka: KafkaConnection) -> Settings {
        Settings {
            listen: self.listen,
            database_url: self.database_url.clone(),
            kafka,
            max_body_bytes: self.max_body_bytes,
            ingest: IngestSettings {
                max_record_bytes: self.max_record_bytes,
                max_request_bytes: self.max_ingest_bytes,
                max_records: self.max_ingest_records,
                produce_timeout: self.produce_timeout,
                log_topic: self.log_topic.clone(),
                forwarder: self
                    .post_endpoint
                    .clone()
                    .map(|endpoint| ForwarderSettings {
                        endpoint,
                        batch_size: self.batch_size,
                        batch_interval: self.batch_interval,
                    }),
            },
            bridge: BridgeSettings {
                push_limit: self.ws_push_limit,
                push_interval: self.ws_push_interval,
                produce_limit: self.ws_produce_limit,
                produce_interval: self.ws_produce_interval,
                default_group: self.ws_consumer_group.clone(),
                start_from: self.ws_start_from,
                ping_interval: self.ws_ping_interval,
                idle_timeout: self.ws_idle_timeout,
                produce_timeout: self.produce_timeout,
            },
            delivery: DeliverySettings {
                start_from: self.start_from,
                request_timeout: self.request_timeout,
                retry_base_delay: self.retry_base_delay,
                retry_max_delay: self.retry_max_delay,
                retry_fixed_delay: self.retry_fixed_delay,
                max_concurrent_deliveries: self.max_concurrent_deliveries,
                reconcile_interval: self.reconcile_interval,
                shutdown_grace: self.shutdown_grace,
                alert_interval: self.alert_interval,
                instance_id: self.instance_id.clone(),
                session_timeout: self.session_timeout,
                assignment_strategy: self.assignment_strategy,
                lag_interval: self.lag_interval,
                fetch_wait: self.fetch_wait,
                hibernate_after: (!self.hibernate_after.is_zero()).then_some(self.hibernate_after),
                dead_letter_topic: self.dead_letter_topic(false),
                kafka_admin_timeout: self.kafka_admin_timeout,
                plugins: RuntimeSettings {
                    limits: HostLimits {
                        defaults: PluginLimits {
                            memory_bytes: self.plugin_memory,
                            cpu_deadline: self.plugin_cpu_deadline,
                            wall_deadline: self.plugin_wall_deadline,
                        },
                        maxima: PluginLimits {
                            memory_bytes: self.plugin_max_memory,
                            cpu_deadline: self.plugin_max_cpu_deadline,
                            wall_deadline: self.plugin_max_wall_deadline,
                        },
                    },
                    threads: self.plugin_threads,
                    cache_bytes: self.plugin_cache_bytes,
                    compile_timeout: self.plugin_compile_timeout,
                    max_component_bytes: self.max_plugin_bytes,
                },
                destinations: self.destinations(false),
            },
            smtp: self.smtp_host.as_ref().map(|host| SmtpSettings {
                host: host.clone(),
                port: self.smtp_port.unwrap_or(self.smtp_tls.default_port()),
                from: self.smtp_from.clone(),
                tls: self.smtp_tls,
                credentials: self.smtp_user.as_ref().map(|user| SmtpCredentials {
                    user: user.clone(),
                    password: match (&self.smtp_password, &self.smtp_password_file) {
                        (Some(text), _) => Some(SmtpPassword::Text(text.clone())),
                        (None, Some(path)) => Some(SmtpPassword::File(path.clone())),
                        (None, None) => None,
                    },
                }),
                ca_file: self.smtp_ca_file.clone(),
            }),
            admin_token: self.admin_token.clone(),
            server: ServerSettings {
                header_read_timeout: self.header_read_timeout,
                body_read_timeout: self.body_read_timeout,
                idle_timeout: self.idle_timeout,
                max_connections: self.max_connections,
                max_concurrent_requests: self.max_concurrent_requests,
                readiness_timeout: self.readiness_timeout,
            },
            secrets: SecretSettings {
                key: match (&self.secret_key, &self.secret_key_file) {
                    (Some(text), _) => Some(KeySource::Base64(text.clone())),
                    (None, Some(path)) => Some(KeySource::File(path.clone())),
                    (None, None) => None,
                },
                rotation_overlap: self.secret_rotation_overlap,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_serve_locally_with_sqlite() {
        let cli = Cli::try_parse_from(["wasmhook"]).unwrap();
        assert_eq!(cli.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(cli.database_url, "sqlite://wasmhook.db");
        assert!(cli.kafka_brokers.is_none());
    }

    #[test]
    fn dead_letter_topics_default_to_one_partition_and_the_brokers_replication() {
        let cli = Cli::try_parse_from(["wasmhook"]).unwrap();
        assert_eq!(
            cli.dead_letter_topic(false),
            TopicLayout::new(1, -1).unwrap()
        );
        assert_eq!(cli.dead_letter_topic(true), TopicLayout::new(1, 1).unwrap());
        let cli = Cli::try_parse_from([
            "wasmhook",
            "--dead-letter-partitions",
            "3",
            "--dead-letter-replication",
            "-1",
        ])
        .unwrap();
        assert_eq!(
            cli.dead_letter_topic(true),
            TopicLayout::new(3, -1).unwrap()
        );
        assert!(Cli::try_parse_from(["wasmhook", "--dead-letter-partitions", "0"]).is_err());
        assert!(Cli::try_parse_from(["wasmhook", "--dead-letter-replication", "0"]).is_err());
    }

    #[test]
    fn log_format_is_text_unless_json_is_asked_for() {
        let cli = Cli::try_parse_from(["wasmhook"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Text);
        let cli = Cli::try_parse_from(["wasmhook", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["wasmhook", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn an_admin_token_must_look_like_one() {
        let good = format!("whk_{}", "a".repeat(40));
        let cli = Cli::try_parse_from(["wasmhook", "--admin-token", &good]).unwrap();
        assert_eq!(cli.admin_token.unwrap().reveal(), good);
        assert!(Cli::try_parse_from(["wasmhook", "--admin-token", "secret"]).is_err());
    }

    #[test]
    fn token_create_needs_admin_or_a_tenant() {
        assert!(Cli::try_parse_from(["wasmhook", "token", "create"]).is_err());
        assert!(Cli::try_parse_from(["wasmhook", "token", "create", "--admin"]).is_ok());
        let tenant = uuid::Uuid::new_v4().to_string();
        assert!(Cli::try_parse_from(["wasmhook", "token", "create", "--tenant", &tenant]).is_ok());
    }

    #[test]
    fn the_secret_key_comes_from_a_flag_or_a_file_and_is_never_shown() {
        let cli = Cli::try_parse_from(["wasmhook"]).unwrap();
        let secrets = cli.settings(KafkaConnection::new("b")).secrets;
        assert!(secrets.key.is_none());
        assert_eq!(secrets.rotation_overlap, Duration::from_secs(86_400));
        let cli = Cli::try_parse_from(["wasmhook", "--secret-key", "c2VjcmV0LWtleQ=="]).unwrap();
        let settings = cli.settings(KafkaConnection::new("b"));
        assert!(matches!(settings.secrets.key, Some(KeySource::Base64(_))));
        assert!(!format!("{cli:?} {settings:?}").contains("c2VjcmV0LWtleQ"));
        let cli = Cli::try_parse_from(["wasmhook", "--secret-key-file", "/k"]).unwrap();
        assert!(matches!(
            cli.settings(KafkaConnection::new("b")).secrets.key,
            Some(KeySource::File(_))
        ));
        assert!(
            Cli::try_parse_from(["wasmhook", "--secret-key", "x", "--secret-key-file", "/k"])
                .is_err()
        );
    }

    #[test]
    fn smtp_defaults_to_starttls_on_587_and_the_password_is_never_shown() {
        let cli = Cli::try_parse_from(["wasmhook", "--smtp-host", "mail.example"]).unwrap();
        let smtp = cli.settings(KafkaConnection::new("b")).smtp.unwrap();
        assert_eq!((smtp.tls, smtp.port), (SmtpTls::Starttls, 587));
        assert!(smtp.credentials.is_none());
        let cli = Cli::try_parse_from([
            "wasmhook",
            "--smtp-host",
            "mail.example",
            "--smtp-tls",
            "tls",
            "--smtp-user",
            "alerts",
            "--smtp-password",
            "hunter2",
        ])
        .unwrap();
        let settings = cli.settings(KafkaConnection::new("b"));
        let smtp = settings.smtp.as_ref().unwrap();
        assert_eq!((smtp.tls, smtp.port), (SmtpTls::Tls, 465));
        let credentials = smtp.credentials.as_ref().unwrap();
        assert_eq!(credentials.user, "alerts");
        assert!(matches!(
            &credentials.password,
            Some(SmtpPassword::Text(text)) if text.0 == "hunter2"
        ));
        assert!(!format!("{settings:?}").contains("hunter2"));
        let cli = Cli::try_parse_from([
            "wasmhook",
            "--smtp-host",
            "m",
            "--smtp-tls",
            "none",
            "--smtp-user",
            "u",
            "--smtp-password-file",
            "/run/secrets/smtp",
        ])
        .unwrap();
        let smtp = cli.settings(KafkaConnection::new("b")).smtp.unwrap();
        assert_eq!(smtp.port, 25);
        assert!(matches!(
            smtp.credentials.unwrap().password,
            Some(SmtpPassword::File(_))
        ));
        // A password is for a user, and comes from one place.
        assert!(Cli::try_parse_from(["wasmhook", "--smtp-password", "p"]).is_err());
        assert!(
            Cli::try_parse_from([
                "wasmhook",
                "--smtp-user",
                "u",
                "--smtp-password",
                "p",
                "--smtp-password-file",
                "/f"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["wasmhook", "--smtp-tls", "ssl"]).is_err());
    }

    #[test]
    fn flags_parse_durations() {
        let cli =
            Cli::try_parse_from(["wasmhook", "--retry-base-delay", "250ms", "serve"]).unwrap();
        assert_eq!(cli.retry_base_delay, Duration::from_millis(250));
    }

    #[test]
    fn allowed_destinations_default_to_loopback_only_with_the_embedded_broker() {
        let cli = Cli::try_parse_from(["wasmhook"]).unwrap();
        assert_eq!(
            cli.destinations(true),
            DestinationPolicy::allowing_loopback()
        );
        assert_eq!(cli.destinations(false), DestinationPolicy::public_only());
        assert_eq!(
            cli.settings(KafkaConnection::new("b"))
                .delivery
                .destinations,
            DestinationPolicy::public_only()
        );
        let cli =
            Cli::try_parse_from(["wasmhook", "--allowed-destinations", "10.0.0.0/8, ::1"]).unwrap();
        let expected: DestinationPolicy = "10.0.0.0/8,::1/128".parse().unwrap();
        assert_eq!(cli.destinations(true), expected);
        assert_eq!(
            cli.settings(KafkaConnection::new("b"))
                .delivery
                .destinations,
            expected
        );
        // Given but empty: public addresses only, even with the embedded broker.
        let cli = Cli::try_parse_from(["wasmhook", "--allowed-destinations", ""]).unwrap();
        assert_eq!(cli.destinations(true), DestinationPolicy::public_only());
    }

    #[test]
    fn the_banner_says_where_webhooks_may_go() {
        let cli = Cli::try_parse_from(["wasmhook"]).unwrap();
        assert!(
            cli.destinations_banner(true)
                .contains("loopback allowed (embedded broker default)")
        );
        assert_eq!(
            cli.destinations_banner(false),
            "Webhook destinations: public addresses only (--allowed-destinations)"
        );
        let cli =
            Cli::try_parse_from(["wasmhook", "--allowed-destinations", "10.0.0.0/8"]).unwrap();
        assert_eq!(
            cli.destinations_banner(true),
            "Webhook destinations: public addresses and 10.0.0.0/8 (--allowed-destinations)"
        );
    }

    #[test]
    fn a_bad_allowed_destination_is_a_clear_error() {
        let error = Cli::try_parse_from(["wasmhook", "--allowed-destinations", "10.0.0.0/8,nope"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--allowed-destinations"), "{error}");
        assert!(
            error.contains("\"nope\" is not a CIDR or an IP address"),
            "{error}"
        );
    }

    #[test]
    fn server_limits_default_to_10s_60s_60s_1024_and_256() {
        let cli = Cli::try_parse_from(["wasmhook"]).unwrap();
        assert_eq!(
            cli.settings(KafkaConnection::new("b")).server,
            ServerSettings::default()
        );
        let cli = Cli::try_parse_from([
            "wasmhook",
            "--header-read-timeout",
            "1s",
            "--max-concurrent-requests",
            "8",
        ])
        .unwrap();
        let server = cli.settings(KafkaConnection::new("b")).server;
        assert_eq!(server.header_read_timeout, Duration::from_secs(1));
        assert_eq!(server.max_concurrent_requests, 8);
        assert_eq!(server.max_connections, 1024);
    }

    #[test]
    fn debug_output_hides_the_database_password() {
        let cli = Cli::try_parse_from([
            "wasmhook",
            "--database-url",
            "postgres://app:hunter2@db.internal/wasmhook",
        ])
        .unwrap();
        let settings = cli.settings(KafkaConnection::new("b"));
        for shown in [format!("{settings:?}"), format!("{cli:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains("postgres://app:********@db.internal/wasmhook"),
                "{shown}"
            );
        }
        assert_eq!(redact_url("sqlite://wasmhook.db"), "sqlite://wasmhook.db");
    }

    fn kafka(args: &[&str], secrets: KafkaSecrets) -> Result<KafkaConnection, KafkaConfigError> {
        let cli =
            Cli::try_parse_from(std::iter::once("wasmhook").chain(args.iter().copied())).unwrap();
        cli.kafka_connection("b:9093".into(), false, secrets)
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    #[test]
    fn with_no_kafka_flags_clients_connect_in_plaintext() {
        let connection = kafka(&[], KafkaSecrets::default()).unwrap();
        assert_eq!(connection.protocol(), SecurityProtocol::Plaintext);
        assert_eq!(connection.brokers(), "b:9093");
        assert_eq!(connection.describe(), "plaintext");
    }

    #[test]
    fn kafka_tls_and_sasl_flags_reach_every_client_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let ca = write(&dir, "ca.pem", CERT);
        let cert = write(&dir, "client.pem", CERT);
        let key = write(&dir, "client.key", KEY);
        let key_password = write(&dir, "key-password", "k3y\n");
        let password = write(&dir, "password", "hunter2\r\n");
        let connection = kafka(
            &[
                "--kafka-ca-file",
                &ca,
                "--kafka-cert-file",
                &cert,
                "--kafka-key-file",
                &key,
                "--kafka-key-password-file",
                &key_password,
                "--kafka-sasl-mechanism",
                "scram-sha-512",
                "--kafka-sasl-username",
                "alice",
                "--kafka-password-file",
                &password,
                "--kafka-option",
                "socket.keepalive.enable=true",
                "--kafka-option",
                "reconnect.backoff.ms=50;reconnect.backoff.max.ms=2000",
            ],
            KafkaSecrets::default(),
        )
        .unwrap();
        let config = connection.client_config("wasmhook-x");
        for (key_name, value) in [
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "alice"),
            ("sasl.password", "hunter2"),
            ("ssl.ca.location", ca.as_str()),
            ("ssl.certificate.location", cert.as_str()),
            ("ssl.key.location", key.as_str()),
            ("ssl.key.password", "k3y"),
            ("ssl.endpoint.identification.algorithm", "https"),
            ("socket.keepalive.enable", "true"),
            ("reconnect.backoff.ms", "50"),
            ("reconnect.backoff.max.ms", "2000"),
        ] {
            assert_eq!(config.get(key_name), Some(value), "{key_name}");
        }
        let shown = format!("{connection:?} {}", connection.describe());
        assert!(
            !shown.contains("hunter2") && !shown.contains("k3y"),
            "{shown}"
        );
    }

    #[test]
    fn the_sasl_password_comes_from_the_environment_or_a_file_never_a_flag() {
        assert!(Cli::try_parse_from(["wasmhook", "--kafka-password", "x"]).is_err());
        let user = [
            "--kafka-sasl-mechanism",
            "PLAIN",
            "--kafka-sasl-username",
            "u",
        ];
        let from_env = || KafkaSecrets {
            password: Some(HiddenText("from-env".into())),
            key_password: None,
        };
        let config = kafka(&user, from_env()).unwrap().client_config("x");
        assert_eq!(config.get("sasl.password"), Some("from-env"));
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));

        let dir = tempfile::tempdir().unwrap();
        let file = write(&dir, "password", "p");
        let both = [&user[..], &["--kafka-password-file", &file]].concat();
        assert!(matches!(
            kafka(&both, from_env()),
            Err(KafkaConfigError::PasswordTwice { .. })
        ));
        let none = kafka(&user, KafkaSecrets::default()).unwrap_err();
        assert!(
            none.to_string().contains("WASMHOOK_KAFKA_PASSWORD"),
            "{none}"
        );
        assert!(matches!(
            kafka(&[], from_env()),
            Err(KafkaConfigError::Unused { .. })
        ));
        let empty = write(&dir, "empty", "\n");
        let error = kafka(
            &[&user[..], &["--kafka-password-file", &empty]].concat(),
            KafkaSecrets::default(),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("--kafka-password-file"),
            "{error}"
        );
        // A mechanism needs a user, and the other way round.
        assert!(Cli::try_parse_from(["wasmhook", "--kafka-sasl-mechanism", "PLAIN"]).is_err());
        assert!(Cli::try_parse_from(["wasmhook", "--kafka-sasl-username", "u"]).is_err());
        assert!(
            Cli::try_parse_from([
                "wasmhook",
                "--kafka-sasl-mechanism",
                "GSSAPI",
                "--kafka-sasl-username",
                "u"
            ])
            .is_err()
        );
    }

    #[test]
    fn a_kafka_file_that_is_missing_or_not_pem_is_an_error_naming_the_flag_and_the_path() {
        let error = kafka(
            &["--kafka-ca-file", "/nowhere/ca.pem"],
            KafkaSecrets::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("--kafka-ca-file: "), "{error}");
        assert!(error.contains("/nowhere/ca.pem"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let cert = write(&dir, "c.pem", CERT);
        let key = write(&dir, "k.pem", CERT);
        let error = kafka(
            &["--kafka-cert-file", &cert, "--kafka-key-file", &key],
            KafkaSecrets::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("--kafka-key-file: "), "{error}");
        assert!(error.contains("no PEM private key"), "{error}");
        // A certificate needs its key.
        assert!(Cli::try_parse_from(["wasmhook", "--kafka-cert-file", &cert]).is_err());
    }

    #[test]
    fn the_security_protocol_is_a_kafka_name_in_any_case_and_must_fit_the_rest() {
        let connection = kafka(
            &[
                "--kafka-security-protocol",
                "SSL",
                "--kafka-no-hostname-verification",
            ],
            KafkaSecrets::default(),
        )
        .unwrap();
        let config = connection.client_config("x");
        assert_eq!(config.get("security.protocol"), Some("ssl"));
        assert_eq!(config.get("ssl.ca.location"), Some("probe"));
        assert_eq!(
            config.get("ssl.endpoint.identification.algorithm"),
            Some("none")
        );
        let error = kafka(
            &["--kafka-security-protocol", "sasl_ssl"],
            KafkaSecrets::default(),
        )
        .unwrap_err();
        assert!(matches!(
            error,
            KafkaConfigError::Connection(ConnectionError::SaslMissing { .. })
        ));
        assert!(Cli::try_parse_from(["wasmhook", "--kafka-security-protocol", "tls"]).is_err());
    }

    #[test]
    fn a_kafka_option_must_be_key_equals_value() {
        let error = Cli::try_parse_from(["wasmhook", "--kafka-option", "fetch.max.bytes"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--kafka-option"), "{error}");
        assert!(error.contains("is not key=value"), "{error}");
        let error = kafka(
            &["--kafka-option", "no.such.thing=1"],
            KafkaSecrets::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("no.such.thing"), "{error}");
    }

    #[test]
    fn the_embedded_broker_refuses_security_settings_but_takes_options() {
        let cli = Cli::try_parse_from(["wasmhook", "--kafka-security-protocol", "ssl"]).unwrap();
        let error = cli
            .kafka_connection("127.0.0.1:1".into(), true, KafkaSecrets::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--kafka-security-protocol needs --kafka-brokers"),
            "{error}"
        );
        let cli = Cli::try_parse_from(["wasmhook", "--kafka-option", "debug=broker"]).unwrap();
        let connection = cli
            .kafka_connection("127.0.0.1:1".into(), true, KafkaSecrets::default())
            .unwrap();
        assert_eq!(connection.client_config("x").get("debug"), Some("broker"));
        assert_eq!(connection.protocol(), SecurityProtocol::Plaintext);
    }

    #[test]
    fn readiness_checks_default_to_two_seconds() {
        let cli = Cli::try_parse_from(["wasmhook", "--readiness-timeout", "500ms"]).unwrap();
        assert_eq!(
            cli.settings(KafkaConnection::new("b"))
                .server
                .readiness_timeout,
            Duration::from_millis(500)
        );
        assert_eq!(
            ServerSettings::default().readiness_timeout,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn plugin_limits_default_to_100ms_1s_64mib_and_32mib_uploads() {
        let cli = Cli::try_parse_from(["wasmhook"]).unwrap();
        let plugins = cli.settings(KafkaConnection::new("b")).delivery.plugins;
        assert_eq!(plugins.limits, HostLimits::default());
        assert_eq!(
            plugins.limits.defaults.cpu_deadline,
            Duration::from_millis(100)
        );
        assert_eq!(
            plugins.limits.defaults.wall_deadline,
            Duration::from_secs(1)
        );
        assert_eq!(plugins.limits.defaults.memory_bytes, 64 << 20);
        assert_eq!(plugins.max_component_bytes, 32 << 20);
        let cli = Cli::try_parse_from(["wasmhook", "--plugin-cpu-deadline", "2s"]).unwrap();
        assert_eq!(cli.plugin_cpu_deadline, Duration::from_secs(2));
    }

    #[test]
    fn ingest_defaults_to_1mib_records_4mib_bodies_and_the_log_topic_without_forwarding() {
        let cli = Cli::try_parse_from(["wasmhook"]).unwrap();
        assert_eq!(
            cli.settings(KafkaConnection::new("b")).ingest,
            IngestSettings::default()
        );
        assert!(
            cli.settings(KafkaConnection::new("b"))
                .ingest
                .forwarder
                .is_none()
        );
    }

    #[test]
    fn seed_001s_forwarder_is_configured_by_its_flags() {
        let cli = Cli::try_parse_from([
            "wasmhook",
            "--post-endpoint",
            "https://requestbin.example/abc",
            "--batch-size",
            "5",
            "--batch-interval",
            "1m30s",
            "--log-topic",
            "app-log",
        ])
        .unwrap();
        let ingest = cli.settings(KafkaConnection::new("b")).ingest;
        assert_eq!(ingest.log_topic.as_str(), "app-log");
        let forwarder = ingest.forwarder.unwrap();
        assert_eq!(
            forwarder.endpoint.as_str(),
            "https://requestbin.example/abc"
        );
        assert_eq!(forwarder.batch_size.get(), 5);
        assert_eq!(forwarder.batch_interval.seconds(), 90);
        assert!(!format!("{forwarder:?}").contains("/abc"), "{forwarder:?}");
        for bad in [
            ["--batch-size", "0"],
            ["--batch-size", "ten"],
            ["--batch-interval", "500ms"],
            ["--batch-interval", "301s"],
            ["--post-endpoint", "ftp://x.example/"],
            ["--log-topic", "no spaces"],
            ["--produce-timeout", "0s"],
        ] {
            assert!(
                Cli::try_parse_from(["wasmhook", bad[0], bad[1]]).is_err(),
                "{bad:?}"
            );
        }
    }
}
