//! `wasmhook-loadtest`: the load test, one command.
//!
//! It publishes `--rows` rows spread over `--duration` across `--topics`
//! topics, each carrying its publish time; a wasmhook (started here as a child
//! process, or the one at `--wasmhook`) delivers them through one subscription
//! per topic to a receiver that stores every message in SQLite; a fault can be
//! injected on schedule. Its topics are created through the admin API first,
//! on any broker. At the end it prints the report, and as its last line the
//! same report as one JSON object. It exits 1 when anything is missing, any
//! row was refused, or nothing was published or delivered.

pub mod receiver;
pub mod report;
pub mod rows;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;
use wasmhook::broker::EmbeddedBroker;
use wasmhook::kafka::{Ensured, TopicLayout, Topics};

use receiver::{LoadReceiver, Mode};

/// Load test for wasmhook: publish, deliver, receive, compare.
#[derive(Debug, Clone, Parser)]
#[command(name = "wasmhook-loadtest", version, about, long_about)]
pub struct Options {
    /// Rows to publish.
    #[arg(long, default_value_t = 10_000)]
    pub rows: u64,
    /// Time over which the rows are spread (0s: as fast as possible).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Topics, one subscription each.
    #[arg(long, default_value_t = 3)]
    pub topics: usize,
    /// Partitions per topic. Topics are created through the admin API (any
    /// broker); one that exists already keeps its own.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Replication factor of the topics created; -1: the brokers' default.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub replication: i32,
    /// Approximate size of each message value, in bytes.
    #[arg(long, default_value_t = 200)]
    pub message_bytes: usize,
    /// max_batch_size of each subscription.
    #[arg(long, default_value_t = 100)]
    pub batch_size: u32,
    /// max_batch_interval_seconds of each subscription.
    #[arg(long, default_value_t = 1)]
    pub batch_interval: u32,
    /// Kafka bootstrap servers; without it an embedded in-memory broker is used.
    #[arg(long)]
    pub brokers: Option<String>,
    /// A running wasmhook to target; without it one is started as a child process.
    #[arg(long)]
    pub wasmhook: Option<String>,
    /// The admin token of the wasmhook at --wasmhook (the child gets its own).
    #[arg(long, env = "WASMHOOK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where the receiver listens (it must be reachable from wasmhook).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub receiver_listen: SocketAddr,
    /// SQLite file the receiver stores into (default: a temporary file).
    #[arg(long)]
    pub store: Option<std::path::PathBuf>,
    /// A fault to inject.
    #[arg(long, value_enum, default_value_t = Fault::None)]
    pub fault: Fault,
    /// When the fault starts, from the first publish.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub fault_at: Duration,
    /// How long the fault lasts.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub fault_for: Duration,
    /// How long to wait, after publishing, for everything to arrive.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fault {
    None,
    /// The receiver answers 503 for the window.
    Receiver5xx,
    /// The receiver holds requests past wasmhook's timeout for the window.
    ReceiverTimeout,
    /// The receiver is off the network for the window.
    ReceiverDown,
    /// The (embedded) broker is unreachable for the window.
    BrokerDown,
    /// wasmhook is SIGKILLed at the start of the window and restarted at its end.
    KillWasmhook,
}

/// A wasmhook in a child process: this same executable, in its `wasmhook` mode.
struct Child {
    process: tokio::process::Child,
    address: String,
}

/// The admin token of the wasmhook this tool starts (it is killed with the run).
const CHILD_ADMIN_TOKEN: &str = "whk_loadtest00000_0123456789abcdefghijklmnop";

impl Child {
    /// `receiver`: the receiver's address, which the guard must let through.
    async fn spawn(database_url: &str, brokers: &str, receiver: IpAddr) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut process = tokio::process::Command::new(exe)
            .args(["wasmhook", "--listen", "127.0.0.1:0"])
            .args(["--database-url", database_url, "--kafka-brokers", brokers])
            .args(["--admin-token", CHILD_ADMIN_TOKEN])
            .args(["--allowed-destinations", &receiver.to_string()])
            // Faults last seconds here: keep retries short so recovery is measured, not waited for.
            .args([
                "--request-timeout",
                "2s",
                "--retry-max-delay",
                "2s",
                "--retry-base-delay",
                "200ms",
            ])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting wasmhook")?;
        let stdout = process.stdout.take().context("wasmhook's stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let address = loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .context("wasmhook did not print its address within 60 s")??
                .context("wasmhook exited before printing its address")?;
            if let Some(address) = line.split("REST API on ").nth(1) {
                break address.trim().to_string();
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { process, address })
    }

    async fn kill(&mut self) {
        let _ = self.process.kill().await;
    }

    async fn terminate(mut self) {
        if let Some(pid) = self.process.id() {
            // SIGTERM: let it stop gracefully, then make sure.
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            if tokio::time::timeout(Duration::from_secs(15), self.process.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        self.kill().await;
    }
}

/// The `wasmhook` mode of this executable: runs wasmhook itself, so the load
/// test needs no other binary built.
pub async fn run_wasmhook(args: Vec<String>) -> anyhow::Result<()> {
    use clap::Parser as _;
    let cli =
        wasmhook::config::Cli::parse_from(std::iter::once("wasmhook".to_string()).chain(args));
    let brokers = cli
        .kafka_brokers
        .clone()
        .context("the wasmhook mode needs --kafka-brokers")?;
    let kafka = cli.kafka_connection(brokers, false, wasmhook::config::KafkaSecrets::from_env())?;
    let app = wasmhook::Application::build(cli.settings(kafka)).await?;
    println!(
        "wasmhook is serving the REST API on http://{}",
        app.local_addr()
    );
    app.run_until_stopped(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
    .await
}

pub async fn run(options: Options) -> anyhow::Result<report::Report> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let workdir = tempfile::tempdir()?;

    // Broker.
    let embedded = match &options.brokers {
        Some(_) => None,
        None => Some(EmbeddedBroker::start(1)?),
    };
    let brokers = match (&options.brokers, &embedded) {
        (Some(b), _) => b.clone(),
        (None, Some(e)) => e.bootstrap_servers(),
        (None, None) => unreachable!(),
    };
    if options.fault == Fault::BrokerDown && embedded.is_none() {
        bail!("--fault broker-down needs the embedded broker (leave out --brokers)");
    }
    if options.fault == Fault::KillWasmhook && options.wasmhook.is_some() {
        bail!("--fault kill-wasmhook needs the wasmhook this tool starts (leave out --wasmhook)");
    }
    let topics: Vec<String> = (0..options.topics)
        .map(|i| format!("loadtest-{run_id}-{i}"))
        .collect();
    create_topics(&brokers, embedded.as_ref(), &topics, &options).await?;

    // Receiver.
    let store = options
        .store
        .clone()
        .unwrap_or_else(|| workdir.path().join("received.db"));
    let receiver = LoadReceiver::start(options.receiver_listen, &store).await?;

    // wasmhook.
    let database_url = format!("sqlite://{}", workdir.path().join("wasmhook.db").display());
    let mut child = match &options.wasmhook {
        Some(_) => None,
        None => Some(Child::spawn(&database_url, &brokers, receiver.address().ip()).await?),
    };
    let api = match (&options.wasmhook, &child) {
        (Some(url), _) => url.trim_end_matches('/').to_string(),
        (None, Some(c)) => c.address.clone(),
        (None, None) => unreachable!(),
    };
    let token = match (&options.wasmhook, &options.token) {
        (None, _) => CHILD_ADMIN_TOKEN.to_string(),
        (Some(_), Some(token)) => token.clone(),
        (Some(_), None) => bail!("--wasmhook needs --token (or WASMHOOK_TOKEN): its admin token"),
    };
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token is not a valid header value")?,
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    let mut subscriptions = Vec::new();
    for topic in &topics {
        let response = http
            .post(format!("{api}/1/Subscription"))
            .json(&json!({
                "name": topic,
                "active": "yes",
                "destination": {"kind": "webhook", "webhook": {"url": receiver.url}},
                "source": [{"topic": topic}],
                "configuration": {
                    "batching": {"max_batch_size": options.batch_size, "max_batch_interval_seconds": options.batch_interval},
                    "retry": {"max_retries": 10, "retry_algorithm": "exponential_backoff"}
                }
            }))
            .send()
            .await
            .with_context(|| format!("registering a subscription at {api}"))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        if !status.is_success() {
            bail!("wasmhook refused the subscription: {body}");
        }
        subscriptions.push(body["id"].as_str().unwrap_or_default().to_string());
    }
    eprintln!(
        "Publishing {} rows over {:?} to {} topics ({brokers}); wasmhook at {api}; receiver at {}; fault: {:?}.",
        options.rows, options.duration, options.topics, receiver.url, options.fault
    );

    // Publish, with the fault on its schedule.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // The topics were created above; one missing now is refused and counted.
        .set("allow.auto.create.topics", "false")
        .set("message.timeout.ms", "300000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let start = Instant::now();
    let fault_window = (
        start + options.fault_at,
        start + options.fault_at + options.fault_for,
    );
    let mut fault_started = false;
    let mut fault_ended = options.fault == Fault::None;
    let mut acked = HashSet::with_capacity(options.rows as usize);
    let mut failed = 0u64;
    let mut pending = FuturesUnordered::new();
    let mut schedule = rows::schedule(options.rows, options.duration, options.topics).peekable();

    loop {
        let now = Instant::now();
        // Fault transitions.
        if !fault_started && options.fault != Fault::None && now >= fault_window.0 {
            fault_started = true;
            eprintln!("Fault {:?} begins.", options.fault);
            begin_fault(options.fault, &receiver, embedded.as_ref(), child.as_mut()).await?;
        }
        if fault_started && !fault_ended && now >= fault_window.1 {
            fault_ended = true;
            eprintln!("Fault {:?} ends.", options.fault);
            if let Some(new_child) = end_fault(
                options.fault,
                &receiver,
                embedded.as_ref(),
                &database_url,
                &brokers,
            )
            .await?
            {
                child = Some(new_child);
            }
        }
        // Publish what is due.
        while let Some(row) = schedule.peek().copied() {
            if start + row.at > now {
                break;
            }
            schedule.next();
            let topic = &topics[row.topic];
            let value = rows::value(
                &row,
                topic,
                chrono::Utc::now().timestamp_micros(),
                options.message_bytes,
            );
            let key = row.id.to_string();
            let record = FutureRecord::to(topic).key(&key).payload(&value);
            let delivery = producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .context("queueing a row")?;
            pending.push(async move { (row.id, delivery.await) });
        }
        // Collect acknowledgements.
        while let Some(Some((id, result))) = futures::FutureExt::now_or_never(pending.next()) {
            match result {
                Ok(Ok(_)) => {
                    acked.insert(id);
                }
                _ => failed += 1,
            }
        }
        let published_all = schedule.peek().is_none() && pending.is_empty();
        if published_all && fault_ended {
            break;
        }
        let next_row = schedule.peek().map(|r| start + r.at);
        let next_fault = if !fault_started && options.fault != Fault::None {
            Some(fault_window.0)
        } else if !fault_ended {
            Some(fault_window.1)
        } else {
            None
        };
        let wake = [next_row, next_fault, Some(now + Duration::from_millis(50))]
            .into_iter()
            .flatten()
            .min()
            .expect("at least the tick");
        tokio::select! {
            Some((id, result)) = pending.next(), if !pending.is_empty() => {
                match result {
                    Ok(Ok(_)) => { acked.insert(id); }
                    _ => failed += 1,
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    let published_in = start.elapsed();
    eprintln!(
        "Published {} rows in {published_in:?} ({failed} refused); waiting for delivery.",
        acked.len()
    );

    // Drain.
    let deadline = Instant::now() + options.drain_timeout;
    loop {
        let received = receiver.distinct_received().await?;
        if received >= acked.len() as u64 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let in-flight duplicates land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = report::compute(&acked, failed, &receiver.receipts().await?);

    for id in subscriptions {
        let _ = http
            .delete(format!("{api}/1/Subscription/{id}"))
            .send()
            .await;
    }
    if let Some(c) = child {
        c.terminate().await;
    }
    // Clients first, then the broker they talk to, so nothing logs a dead broker.
    drop(producer);
    drop(embedded);
    Ok(report)
}

/// Creates the topics on any broker, before anything produces to them: a
/// real broker usually refuses to auto-create them, and a row produced to a
/// missing topic is refused, not delivered.
async fn create_topics(
    brokers: &str,
    embedded: Option<&EmbeddedBroker>,
    topics: &[String],
    options: &Options,
) -> anyhow::Result<()> {
    let layout = TopicLayout::new(options.partitions, options.replication)
        .context("--partitions or --replication")?;
    if let Some(broker) = embedded {
        // The mock cluster has no admin API: this is how it gets the layout asked for.
        for topic in topics {
            broker.create_topic(topic, options.partitions)?;
        }
    }
    let admin = Topics::new(
        &wasmhook::kafka::KafkaConnection::new(brokers),
        Duration::from_secs(30),
    )
    .context("creating a Kafka admin client")?;
    for topic in topics {
        match admin.ensure(topic, layout).await? {
            Ensured::Created | Ensured::Existed => {}
            Ensured::AutoCreated => eprintln!(
                "The brokers have no admin API: topic {topic} was auto-created with their \
                 default partitions, not --partitions {}.",
                options.partitions
            ),
        }
    }
    Ok(())
}

async fn begin_fault(
    fault: Fault,
    receiver: &LoadReceiver,
    broker: Option<&EmbeddedBroker>,
    child: Option<&mut Child>,
) -> anyhow::Result<()> {
    match fault {
        Fault::None => {}
        Fault::Receiver5xx => receiver.set_mode(Mode::Failing),
        Fault::ReceiverTimeout => receiver.set_mode(Mode::Hanging),
        Fault::ReceiverDown => receiver.go_down().await,
        Fault::BrokerDown => broker.context("embedded broker")?.broker_down(1)?,
        Fault::KillWasmhook => child.context("child wasmhook")?.kill().await,
    }
    Ok(())
}

async fn end_fault(
    fault: Fault,
    receiver: &LoadReceiver,
    broker: Option<&EmbeddedBroker>,
    database_url: &str,
    brokers: &str,
) -> anyhow::Result<Option<Child>> {
    match fault {
        Fault::None => {}
        Fault::Receiver5xx | Fault::ReceiverTimeout => receiver.set_mode(Mode::Normal),
        Fault::ReceiverDown => receiver.come_up().await?,
        Fault::BrokerDown => broker.context("embedded broker")?.broker_up(1)?,
        Fault::KillWasmhook => {
            return Ok(Some(
                Child::spawn(database_url, brokers, receiver.address().ip()).await?,
            ));
        }
    }
    Ok(None)
}

/// The human-readable report.
pub fn describe(options: &Options, report: &report::Report) -> String {
    let mut text = format!(
        "wasmhook load test: {} rows, {} topics × {} partitions, batch {} / {} s, fault {:?}\n\
         expected {}  received {}  missing {}  duplicates {}  refused by broker {}\n",
        options.rows,
        options.topics,
        options.partitions,
        options.batch_size,
        options.batch_interval,
        options.fault,
        report.expected,
        report.received,
        report.missing,
        report.duplicates,
        report.publish_failed,
    );
    if let Some(l) = &report.latency_ms {
        text.push_str(&format!(
            "latency publish→receipt (ms): min {:.1}  avg {:.1}  p50 {:.1}  p99 {:.1}  max {:.1}\n",
            l.min, l.avg, l.p50, l.p99, l.max
        ));
    }
    text.push_str(&format!(
        "delivered {:.0} messages/s\n",
        report.messages_per_second
    ));
    text
}
