//! `wasmhook-bench`: what wasmhook costs and how fast it is, in one command.
//!
//! On the embedded broker (or `--brokers`), with wasmhook in a child process
//! whose CPU time, memory and threads are read from `/proc`:
//!
//! - **throughput**: `--topics` topics of `--rows-per-topic` JSON messages of
//!   about `--message-bytes`, published ahead; first bare librdkafka
//!   consumers (one per topic, on threads of this process) read them all,
//!   then wasmhook with one subscription per topic and a JMES filter that
//!   keeps half (batch `--batch-size`), then the same with the Rust Wasm
//!   filter `field-match` instead. Each reports messages consumed and
//!   delivered per second (bare consumers: from their first message to their
//!   last; wasmhook: from the first consumer's assignment to the last
//!   request received) and, for wasmhook, CPU µs per consumed message.
//! - **latency**: one subscription with batch size 1, messages published at
//!   `--latency-rate` per second for `--latency-duration`; publish → receipt
//!   p50 / p99 / max.
//! - **idle**: `--idle-subscriptions` subscriptions on topics that receive
//!   nothing; once all are in `--idle-state` (hibernating, by default: the
//!   child's `--hibernate-after` has passed; or running): resident memory,
//!   threads, and CPU over `--idle-window`.
//!
//! It prints the figures, then the same as one JSON line; it exits 1 when a
//! scenario measured nothing (nothing delivered, not everything consumed).

pub mod counter;
pub mod process;

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use wasmhook::broker::EmbeddedBroker;

use crate::child::{self, Child};
use counter::CountingReceiver;

#[derive(Debug, Clone, Parser)]
#[command(name = "wasmhook-bench", version, about, long_about)]
pub struct Options {
    /// Kafka bootstrap servers; without it an embedded in-memory broker is used.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Which scenarios to run (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "throughput,latency,idle"
    )]
    pub scenarios: Vec<Scenario>,
    /// Throughput: messages per topic.
    #[arg(long, default_value_t = 100_000)]
    pub rows_per_topic: u64,
    /// Throughput: topics, one subscription (or bare consumer) each.
    #[arg(long, default_value_t = 3)]
    pub topics: usize,
    /// Partitions of each topic (the embedded broker keeps ~5 MiB per partition).
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Replication factor of the topics created; -1: the brokers' default.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub replication: i32,
    /// Approximate size of each message value, in bytes.
    #[arg(long, default_value_t = 250)]
    pub message_bytes: usize,
    /// Throughput: max_batch_size of each subscription.
    #[arg(long, default_value_t = 500)]
    pub batch_size: u32,
    /// Latency: messages per second.
    #[arg(long, default_value_t = 1000)]
    pub latency_rate: u64,
    /// Latency: the subscription's `max_in_flight_batches` (batches of
    /// different partitions delivered at once; 1: strict order).
    #[arg(long, default_value_t = 1)]
    pub latency_in_flight: u32,
    /// Latency: how long to publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub latency_duration: Duration,
    /// Idle: how many subscriptions.
    #[arg(long, default_value_t = 1000)]
    pub idle_subscriptions: usize,
    /// Idle: the consumer state every subscription must be in before
    /// measuring (`running` needs `--wasmhook-arg=--hibernate-after=0s`).
    #[arg(long, value_enum, default_value = "hibernating")]
    pub idle_state: IdleState,
    /// Idle: how long CPU time is measured once they all are in that state.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub idle_window: Duration,
    /// How long any one wait (delivery, start-up) may take before the run fails.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Extra flags for the wasmhook child (e.g. `--wasmhook-arg=--plugin-threads=1`).
    #[arg(long = "wasmhook-arg", allow_hyphen_values = true)]
    pub wasmhook_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    Throughput,
    Latency,
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleState {
    /// Each consumer closed until a message arrives (`--hibernate-after`).
    Hibernating,
    /// Each consumer in its group, fetching.
    Running,
}

impl IdleState {
    fn as_status(self) -> &'static str {
        match self {
            IdleState::Hibernating => "hibernating",
            IdleState::Running => "running",
        }
    }
}

/// One throughput run: bare consumers or wasmhook with a filter.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub what: String,
    pub consumed: u64,
    pub delivered: u64,
    pub seconds: f64,
    pub consumed_per_second: f64,
    pub delivered_per_second: f64,
    /// wasmhook's CPU time per consumed message, from before the
    /// subscriptions were created (their start-up included: group joins,
    /// plugins instantiated) to the last delivery; none for bare consumers.
    pub cpu_us_per_message: Option<f64>,
    /// The same from the first assignment on: what consuming costs once
    /// running (messages taken by a consumer in the few milliseconds before
    /// that sample are counted without their CPU time).
    pub cpu_us_per_message_consuming: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// The subscription's `max_in_flight_batches`.
    pub in_flight: u32,
    pub messages: u64,
    pub requests: u64,
    pub rate: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub cpu_us_per_message: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub subscriptions: usize,
    /// The state they were waited for, and how many reached it.
    pub state: IdleState,
    pub running: usize,
    pub rss_mib: f64,
    pub threads: u64,
    /// Percent of one core over the window.
    pub cpu_percent: f64,
    pub window_seconds: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub machine: String,
    pub broker: String,
    pub throughput: Vec<Throughput>,
    pub latency: Option<Latency>,
    pub idle: Option<Idle>,
    pub failures: Vec<String>,
}

/// The message values: JSON with an id, a `kind` the filters select on (every
/// other message is an `order`), the publish time, padded to about `bytes`.
pub fn value(id: u64, published_us: i64, bytes: usize) -> String {
    let kind = if id.is_multiple_of(2) {
        "order"
    } else {
        "refund"
    };
    let head = format!(
        r#"{{"id":{id},"kind":"{kind}","amount":{},"published_us":{published_us},"pad":""#,
        id % 1000
    );
    let pad = bytes.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// How many of `rows` (ids 0..rows) the filters keep.
fn kept(rows: u64) -> u64 {
    rows.div_ceil(2)
}

struct Bench {
    options: Options,
    brokers: String,
    embedded: Option<EmbeddedBroker>,
    receiver: CountingReceiver,
    child: Child,
    pid: u32,
    http: reqwest::Client,
    run_id: String,
    _workdir: tempfile::TempDir,
}

pub async fn run(options: Options) -> anyhow::Result<Report> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let workdir = tempfile::tempdir()?;
    let embedded = match &options.brokers {
        Some(_) => None,
        None => Some(EmbeddedBroker::start(1)?),
    };
    let brokers = match (&options.brokers, &embedded) {
        (Some(b), _) => b.clone(),
        (None, Some(e)) => e.bootstrap_servers(),
        (None, None) => unreachable!(),
    };
    let receiver = CountingReceiver::start().await?;
    let database_url = format!("sqlite://{}", workdir.path().join("wasmhook.db").display());
    let extra: Vec<&str> = options.wasmhook_args.iter().map(String::as_str).collect();
    let child = Child::spawn(&database_url, &brokers, receiver.address.ip(), &extra).await?;
    let pid = child.pid().context("the wasmhook child has no pid")?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", child::ADMIN_TOKEN))?,
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    let mut report = Report {
        machine: machine(),
        broker: match &options.brokers {
            Some(b) => format!("--brokers {b}"),
            None => "embedded (librdkafka mock cluster, 1 broker, in the bench process)".into(),
        },
        ..Report::default()
    };
    let bench = Bench {
        options,
        brokers,
        embedded,
        receiver,
        child,
        pid,
        http,
        run_id,
        _workdir: workdir,
    };
    let result = bench.scenarios(&mut report).await;
    let Bench {
        child, embedded, ..
    } = bench;
    child.terminate().await;
    drop(embedded);
    result?;
    Ok(report)
}

impl Bench {
    async fn scenarios(&self, report: &mut Report) -> anyhow::Result<()> {
        let scenarios = &self.options.scenarios;
        if scenarios.contains(&Scenario::Throughput) {
            self.throughput(report).await?;
        }
        if scenarios.contains(&Scenario::Latency) {
            report.latency = Some(self.latency(&mut report.failures).await?);
        }
        if scenarios.contains(&Scenario::Idle) {
            report.idle = Some(self.idle(&mut report.failures).await?);
        }
        Ok(())
    }

    async fn throughput(&self, report: &mut Report) -> anyhow::Result<()> {
        let o = &self.options;
        let topics: Vec<String> = (0..o.topics)
            .map(|i| format!("bench-{}-{i}", self.run_id))
            .collect();
        crate::loadtest::create_topics(
            &self.brokers,
            self.embedded.as_ref(),
            &topics,
            o.partitions,
            o.replication,
        )
        .await?;
        let started = Instant::now();
        for topic in &topics {
            self.publish_all(topic, o.rows_per_topic).await?;
        }
        eprintln!(
            "Published {} messages to {} topics in {:.1} s.",
            o.rows_per_topic * topics.len() as u64,
            topics.len(),
            started.elapsed().as_secs_f64()
        );

        let bare = self.bare_consumers(&topics).await?;
        eprintln!("{}", describe_throughput(&bare));
        report.throughput.push(bare);

        let jmes = |topic: &str| json!([{"topic": topic, "jmes_filters": ["kind == 'order'"]}]);
        let run = self
            .wasmhook_throughput("wasmhook, JMES filter", &topics, jmes, &mut report.failures)
            .await?;
        eprintln!("{}", describe_throughput(&run));
        report.throughput.push(run);

        self.install_field_match().await?;
        let wasm = |topic: &str| {
            json!([{"topic": topic, "filter_plugin": {
                "name": "bench-field-match", "version": "1.0.0",
                "config": {"field": "/kind", "equals": "order"}}}])
        };
        let run = self
            .wasmhook_throughput(
                "wasmhook, Rust Wasm filter (field-match)",
                &topics,
                wasm,
                &mut report.failures,
            )
            .await?;
        eprintln!("{}", describe_throughput(&run));
        report.throughput.push(run);
        Ok(())
    }

    /// Publishes `rows` messages to `topic` as fast as the broker acknowledges.
    async fn publish_all(&self, topic: &str, rows: u64) -> anyhow::Result<()> {
        let producer = self.producer("5")?;
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut failed = 0u64;
        for id in 0..rows {
            let value = value(
                id,
                chrono::Utc::now().timestamp_micros(),
                self.options.message_bytes,
            );
            let key = id.to_string();
            let delivery = producer
                .send_result(FutureRecord::to(topic).key(&key).payload(&value))
                .map_err(|(e, _)| e)
                .context("queueing a message")?;
            pending.push(delivery);
            // Collect acknowledgements as they come, so the queue stays bounded.
            while pending.len() >= 50_000 {
                if !matches!(pending.next().await, Some(Ok(Ok(_)))) {
                    failed += 1;
                }
            }
        }
        while let Some(result) = pending.next().await {
            if !matches!(result, Ok(Ok(_))) {
                failed += 1;
            }
        }
        if failed > 0 {
            bail!("the broker refused {failed} of {rows} messages to {topic}");
        }
        Ok(())
    }

    fn producer(&self, linger_ms: &str) -> anyhow::Result<FutureProducer> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", linger_ms)
            .set("allow.auto.create.topics", "false")
            .set("message.timeout.ms", "300000")
            .set("queue.buffering.max.messages", "1000000")
            .create()?)
    }

    /// One plain librdkafka consumer per topic, each polling on a thread of
    /// its own and reading every message's payload: the rate to keep up with.
    async fn bare_consumers(&self, topics: &[String]) -> anyhow::Result<Throughput> {
        let rows = self.options.rows_per_topic;
        let deadline = std::time::Instant::now() + self.options.timeout;
        let mut threads = Vec::new();
        for topic in topics {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &self.brokers)
                .set("group.id", format!("bench-bare-{topic}"))
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "true")
                .create()?;
            consumer.subscribe(&[topic.as_str()])?;
            threads.push(std::thread::spawn(move || {
                let mut count = 0u64;
                let mut bytes = 0usize;
                let mut first = None;
                let mut last = std::time::Instant::now();
                while count < rows && std::time::Instant::now() < deadline {
                    if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                        use rdkafka::Message as _;
                        let now = std::time::Instant::now();
                        first.get_or_insert(now);
                        last = now;
                        bytes += message.payload().map_or(0, <[u8]>::len);
                        count += 1;
                    }
                }
                std::hint::black_box(bytes);
                (count, first, last)
            }));
        }
        let results = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .map(|t| t.join().expect("a bare consumer thread panicked"))
                .collect::<Vec<_>>()
        })
        .await?;
        let consumed: u64 = results.iter().map(|(count, _, _)| count).sum();
        let first = results.iter().filter_map(|(_, first, _)| *first).min();
        let last = results.iter().map(|(_, _, last)| *last).max();
        let seconds = match (first, last) {
            (Some(first), Some(last)) => (last - first).as_secs_f64(),
            _ => bail!(
                "the bare consumers received nothing within {:?}",
                self.options.timeout
            ),
        };
        if consumed < rows * topics.len() as u64 {
            bail!(
                "the bare consumers received {consumed} of {} messages within {:?}",
                rows * topics.len() as u64,
                self.options.timeout
            );
        }
        Ok(Throughput {
            what: format!("bare librdkafka consumers ({} threads)", topics.len()),
            consumed,
            delivered: 0,
            seconds,
            consumed_per_second: consumed as f64 / seconds,
            delivered_per_second: 0.0,
            cpu_us_per_message: None,
            cpu_us_per_message_consuming: None,
        })
    }

    /// One subscription per topic with `source(topic)`, from the earliest
    /// message; measured from the first request received to the last.
    async fn wasmhook_throughput(
        &self,
        what: &str,
        topics: &[String],
        source: impl Fn(&str) -> Value,
        failures: &mut Vec<String>,
    ) -> anyhow::Result<Throughput> {
        let rows = self.options.rows_per_topic;
        let total = rows * topics.len() as u64;
        let expected = kept(rows) * topics.len() as u64;
        self.receiver.reset();
        let before = process::sample(self.pid)?;
        let mut ids = Vec::new();
        for topic in topics {
            ids.push(
                self.subscribe(json!({
                    "name": format!("bench {topic}"),
                    "destination": {"kind": "webhook", "webhook": {"url": self.receiver.url}},
                    "source": source(topic),
                    "configuration": {
                        "batching": {"max_batch_size": self.options.batch_size, "max_batch_interval_seconds": 1},
                        "retry": {"max_retries": 10, "retry_algorithm": "exponential_backoff"}
                    }
                }))
                .await?,
            );
        }
        // Consumption starts when a consumer is assigned its partitions
        // (librdkafka fetches ahead of the first request, so the first
        // receipt would be too late a start).
        let started = self.first_running(&ids).await?;
        let running = process::sample(self.pid)?;
        // Short of them, what did arrive is reported below.
        self.receiver
            .wait_for(expected, Instant::now() + self.options.timeout)
            .await;
        let after = process::sample(self.pid)?;
        let delivered = self.receiver.messages();
        // Every message reached a final outcome: the counters say so (they
        // are written a little after the last request).
        let mut consumed = 0;
        let settle = Instant::now() + Duration::from_secs(30);
        while Instant::now() < settle {
            consumed = self.consumed(&ids).await?;
            if consumed >= total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for id in &ids {
            self.unsubscribe(id).await?;
        }
        if delivered < expected {
            failures.push(format!(
                "{what}: {delivered} of {expected} messages delivered within {:?}",
                self.options.timeout
            ));
        }
        if consumed < total {
            failures.push(format!(
                "{what}: the counters show {consumed} of {total} messages consumed"
            ));
        }
        let (_, last) = self
            .receiver
            .window()
            .with_context(|| format!("{what}: nothing was delivered"))?;
        let seconds = (last - started).as_secs_f64().max(0.001);
        // CPU µs per consumed message since a sample.
        let per_message =
            |since: Duration| (after.cpu - since).as_secs_f64() * 1e6 / consumed.max(1) as f64;
        Ok(Throughput {
            what: what.to_string(),
            consumed,
            delivered,
            seconds,
            consumed_per_second: consumed as f64 / seconds,
            delivered_per_second: delivered as f64 / seconds,
            cpu_us_per_message: Some(per_message(before.cpu)),
            cpu_us_per_message_consuming: Some(per_message(running.cpu)),
        })
    }

    async fn latency(&self, failures: &mut Vec<String>) -> anyhow::Result<Latency> {
        let o = &self.options;
        let topic = format!("bench-{}-latency", self.run_id);
        crate::loadtest::create_topics(
            &self.brokers,
            self.embedded.as_ref(),
            std::slice::from_ref(&topic),
            o.partitions,
            o.replication,
        )
        .await?;
        let id = self
            .subscribe(json!({
                "name": "bench latency",
                "destination": {"kind": "webhook", "webhook": {"url": self.receiver.url}},
                "source": [{"topic": topic}],
                "configuration": {
                    "batching": {
                        "max_batch_size": 1,
                        "max_batch_interval_seconds": 1,
                        "max_in_flight_batches": o.latency_in_flight
                    },
                    "retry": {"max_retries": 10, "retry_algorithm": "exponential_backoff"}
                }
            }))
            .await?;
        self.wait_running(&id).await?;
        let producer = self.producer("0")?;
        // Assigned is not yet fetching: the consumer still looks up where
        // each partition starts (a second on some brokers). One message per
        // partition, received, shows it fetches everywhere; timing starts then.
        for partition in 0..o.partitions {
            let value = value(
                u64::MAX,
                chrono::Utc::now().timestamp_micros(),
                o.message_bytes,
            );
            producer
                .send(
                    FutureRecord::<str, _>::to(&topic)
                        .partition(partition)
                        .payload(&value),
                    o.timeout,
                )
                .await
                .map_err(|(e, _)| e)
                .context("producing the warm-up messages")?;
        }
        let warm = Instant::now() + o.timeout;
        if !self.receiver.wait_for(o.partitions as u64, warm).await {
            bail!(
                "latency: the warm-up messages were not delivered within {:?}",
                o.timeout
            );
        }
        self.receiver.reset();
        let rows = o.latency_rate * o.latency_duration.as_secs().max(1);
        let before = process::sample(self.pid)?;
        let start = Instant::now();
        let mut pending = futures::stream::FuturesUnordered::new();
        for n in 0..rows {
            let at = start + Duration::from_nanos(n * 1_000_000_000 / o.latency_rate);
            tokio::time::sleep_until(at).await;
            let value = value(n, chrono::Utc::now().timestamp_micros(), o.message_bytes);
            let key = n.to_string();
            let delivery = producer
                .send_result(FutureRecord::to(&topic).key(&key).payload(&value))
                .map_err(|(e, _)| e)
                .context("queueing a message")?;
            pending.push(delivery);
            while let Some(Some(_)) = futures::FutureExt::now_or_never(pending.next()) {}
        }
        while pending.next().await.is_some() {}
        // Short of them, the shortfall is reported below.
        self.receiver
            .wait_for(rows, Instant::now() + o.timeout)
            .await;
        let after = process::sample(self.pid)?;
        self.unsubscribe(&id).await?;
        let latencies = self.receiver.latencies_ms();
        if latencies.len() < rows as usize {
            failures.push(format!(
                "latency: {} of {rows} messages delivered within {:?}",
                latencies.len(),
                o.timeout
            ));
        }
        if latencies.is_empty() {
            bail!("latency: nothing was delivered");
        }
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        Ok(Latency {
            in_flight: o.latency_in_flight,
            messages: latencies.len() as u64,
            requests: self.receiver.requests(),
            rate: o.latency_rate,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
            cpu_us_per_message: (after.cpu - before.cpu).as_secs_f64() * 1e6
                / latencies.len() as f64,
        })
    }

    async fn idle(&self, failures: &mut Vec<String>) -> anyhow::Result<Idle> {
        let o = &self.options;
        let topics: Vec<String> = (0..10)
            .map(|i| format!("bench-{}-idle-{i}", self.run_id))
            .collect();
        crate::loadtest::create_topics(
            &self.brokers,
            self.embedded.as_ref(),
            &topics,
            1,
            o.replication,
        )
        .await?;
        let started = Instant::now();
        let bodies: Vec<Value> = (0..o.idle_subscriptions)
            .map(|i| {
                json!({
                    "name": format!("idle {i}"),
                    "destination": {"kind": "webhook", "webhook": {"url": self.receiver.url}},
                    "source": [{"topic": topics[i % topics.len()]}],
                })
            })
            .collect();
        let ids: Vec<String> = futures::stream::iter(bodies)
            .map(|body| self.subscribe(body))
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        eprintln!(
            "Created {} idle subscriptions in {:.1} s; waiting for them all to run.",
            ids.len(),
            started.elapsed().as_secs_f64()
        );
        let deadline = Instant::now() + o.timeout;
        let wanted = o.idle_state.as_status();
        let mut running = 0;
        while Instant::now() < deadline {
            running = futures::stream::iter(&ids)
                .map(|id| self.consumer_state(id))
                .buffer_unordered(16)
                .filter(|state| futures::future::ready(matches!(state, Ok(Some(s)) if s == wanted)))
                .count()
                .await;
            if running == ids.len() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        eprintln!(
            "{running} of {} idle subscriptions {wanted} ({:.1} s after the first was created); measuring for {:?}.",
            ids.len(),
            started.elapsed().as_secs_f64(),
            o.idle_window
        );
        if running < ids.len() {
            failures.push(format!(
                "idle: only {running} of {} subscriptions were {wanted} within {:?}",
                ids.len(),
                o.timeout
            ));
        }
        let before = process::sample(self.pid)?;
        let window_start = Instant::now();
        tokio::time::sleep(o.idle_window).await;
        let after = process::sample(self.pid)?;
        let window = window_start.elapsed().as_secs_f64();
        Ok(Idle {
            subscriptions: ids.len(),
            state: o.idle_state,
            running,
            rss_mib: after.rss_bytes as f64 / (1024.0 * 1024.0),
            threads: after.threads,
            cpu_percent: (after.cpu - before.cpu).as_secs_f64() / window * 100.0,
            window_seconds: window,
        })
    }

    async fn subscribe(&self, body: Value) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!("{}/1/Subscription", self.child.address))
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let answer: Value = response.json().await?;
        if !status.is_success() {
            bail!("wasmhook refused a subscription ({status}): {answer}");
        }
        answer["id"]
            .as_str()
            .map(str::to_string)
            .context("the created subscription has no id")
    }

    async fn unsubscribe(&self, id: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(format!("{}/1/Subscription/{id}", self.child.address))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("could not delete subscription {id}: {}", response.status());
        }
        Ok(())
    }

    async fn status(&self, id: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}/1/Subscription/{id}/Status", self.child.address))
            .send()
            .await?;
        Ok(response.json().await?)
    }

    async fn consumer_state(&self, id: &str) -> anyhow::Result<Option<String>> {
        let status = self.status(id).await?;
        Ok(status["consumer"]["state"].as_str().map(str::to_string))
    }

    /// When the first of `ids` was seen running (assigned its partitions).
    async fn first_running(&self, ids: &[String]) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + self.options.timeout;
        while Instant::now() < deadline {
            for id in ids {
                if self.consumer_state(id).await?.as_deref() == Some("running") {
                    return Ok(Instant::now());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bail!(
            "no subscription was running within {:?}",
            self.options.timeout
        )
    }

    async fn wait_running(&self, id: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.options.timeout;
        while Instant::now() < deadline {
            if self.consumer_state(id).await?.as_deref() == Some("running") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "subscription {id} was not running within {:?}",
            self.options.timeout
        )
    }

    /// Messages with a final outcome, over `ids`, by their counters.
    async fn consumed(&self, ids: &[String]) -> anyhow::Result<u64> {
        let mut total = 0;
        for id in ids {
            let counts = &self.status(id).await?["counts"];
            for name in ["delivered", "filtered", "denied", "dead_lettered"] {
                total += counts[name].as_u64().unwrap_or(0);
            }
        }
        Ok(total)
    }

    async fn install_field_match(&self) -> anyhow::Result<()> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../plugins/target/wasm32-wasip2/release/field_match.wasm");
        let wasm = std::fs::read(&path).with_context(|| {
            format!(
                "reading {} (the tests package's build script builds it: `cargo build -p wasmhook-tests`)",
                path.display()
            )
        })?;
        let response = self
            .http
            .post(format!(
                "{}/1/Plugin?name=bench-field-match&version=1.0.0&role=filter",
                self.child.address
            ))
            .header("content-type", "application/wasm")
            .body(wasm)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("uploading field-match failed: {}", response.text().await?);
        }
        Ok(())
    }
}

fn describe_throughput(t: &Throughput) -> String {
    let cpu = match (t.cpu_us_per_message, t.cpu_us_per_message_consuming) {
        (Some(all), Some(consuming)) => format!(
            ", {all:.2} µs CPU per consumed message ({consuming:.2} µs from the first assignment on)"
        ),
        _ => String::new(),
    };
    format!(
        "{}: consumed {} in {:.2} s = {:.0} msg/s; delivered {} = {:.0} msg/s{cpu}",
        t.what, t.consumed, t.seconds, t.consumed_per_second, t.delivered, t.delivered_per_second
    )
}

/// The human-readable report.
pub fn describe(options: &Options, report: &Report) -> String {
    let mut text = format!(
        "wasmhook benchmark on {}\nbroker: {}\n",
        report.machine, report.broker
    );
    if !report.throughput.is_empty() {
        text.push_str(&format!(
            "throughput: {} topics × {} messages of ~{} B, {} partitions each, batch {}, filters keep half\n",
            options.topics, options.rows_per_topic, options.message_bytes, options.partitions, options.batch_size
        ));
        for t in &report.throughput {
            text.push_str(&format!("  {}\n", describe_throughput(t)));
        }
    }
    if let Some(l) = &report.latency {
        text.push_str(&format!(
            "latency: {} msg/s, batch size 1, {} in flight: {} messages in {} requests, publish→receipt p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {:.2} µs CPU per message\n",
            l.rate, l.in_flight, l.messages, l.requests, l.p50_ms, l.p99_ms, l.max_ms, l.cpu_us_per_message
        ));
    }
    if let Some(i) = &report.idle {
        text.push_str(&format!(
            "idle: {} subscriptions ({} {}): RSS {:.0} MiB, {} threads, {:.1} % of a core over {:.0} s\n",
            i.subscriptions, i.running, i.state.as_status(), i.rss_mib, i.threads, i.cpu_percent, i.window_seconds
        ));
    }
    text
}

/// The CPU model and core count, to label the figures.
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "an unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores of {model}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_alternate_kinds_and_carry_their_publish_time() {
        let order: Value = serde_json::from_str(&value(4, 123, 250)).unwrap();
        let refund: Value = serde_json::from_str(&value(5, 123, 250)).unwrap();
        assert_eq!(order["kind"], "order");
        assert_eq!(refund["kind"], "refund");
        assert_eq!(order["published_us"], 123);
        assert_eq!(value(4, 123, 250).len(), 250);
    }

    #[test]
    fn the_filters_keep_every_other_message() {
        assert_eq!(kept(100_000), 50_000);
        assert_eq!(kept(3), 2);
    }
}
