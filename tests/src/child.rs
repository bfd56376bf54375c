//! A wasmhook in a child process, for the load test and the benchmark: this
//! same executable run in its `wasmhook` mode ([`run_wasmhook`]), so neither
//! needs another binary built, and the child can be SIGKILLed, restarted and
//! measured (its CPU time, memory and threads) apart from the harness.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncBufReadExt;

/// The admin token of the wasmhook started here (it dies with the run).
pub const ADMIN_TOKEN: &str = "whk_loadtest00000_0123456789abcdefghijklmnop";

pub struct Child {
    process: tokio::process::Child,
    /// `http://host:port` of its REST API.
    pub address: String,
}

impl Child {
    /// Starts wasmhook on `database_url` and `brokers`, allowed to deliver to
    /// `receiver`; `extra` flags come last and so override the defaults here.
    pub async fn spawn(
        database_url: &str,
        brokers: &str,
        receiver: IpAddr,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut process = tokio::process::Command::new(exe)
            .args(["wasmhook", "--listen", "127.0.0.1:0"])
            .args(["--database-url", database_url, "--kafka-brokers", brokers])
            .args(["--admin-token", ADMIN_TOKEN])
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
            .args(extra)
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

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.id()
    }

    pub async fn kill(&mut self) {
        let _ = self.process.kill().await;
    }

    /// SIGTERM, so it stops gracefully; SIGKILL after 15 s.
    pub async fn terminate(mut self) {
        if let Some(pid) = self.process.id() {
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

/// Log lines of the harness (and of the child's `wasmhook` mode) on stderr,
/// `warn` unless `RUST_LOG` says otherwise, so stdout carries only the report.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The `wasmhook` mode of this executable: runs wasmhook itself, until
/// SIGINT or SIGTERM.
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
