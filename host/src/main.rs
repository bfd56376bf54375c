//! The `wasmhook` binary: parse flags, start the embedded broker if no Kafka is
//! configured, and run the application until SIGINT or SIGTERM.

use anyhow::Context;
use clap::Parser;
use wasmhook::broker::EmbeddedBroker;
use wasmhook::config::{Cli, Command};
use wasmhook::registry::Registry;
use wasmhook::startup::Application;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(serve());
    // Bounded exit: a task still blocked on an unreachable broker is left behind.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

async fn serve() -> anyhow::Result<()> {
    let cli = Cli::parse();
    wasmhook::logging::init(cli.log_format);

    if let Some(Command::Migrate) = cli.command {
        Registry::open(&cli.database_url).await?;
        println!("Migrations applied to {}.", cli.database_url);
        return Ok(());
    }

    // The embedded broker must outlive the application.
    let (embedded, brokers) = match &cli.kafka_brokers {
        Some(brokers) => (None, brokers.clone()),
        None => {
            let broker = EmbeddedBroker::start(1).context("starting the embedded broker")?;
            let brokers = broker.bootstrap_servers();
            (Some(broker), brokers)
        }
    };

    let app = Application::build(cli.settings(brokers.clone())).await?;
    println!(
        "wasmhook is serving the REST API on http://{}",
        app.local_addr()
    );
    if let Some(line) = app.key_origin().banner() {
        println!("{line}");
    }
    if embedded.is_some() {
        println!(
            "Embedded Kafka broker (IN-MEMORY, for trying things out; nothing survives a restart): {brokers}"
        );
        println!(
            "  produce with: echo '{{\"hello\":\"world\"}}' | kcat -P -b {brokers} -t my-topic"
        );
    } else {
        println!("Kafka brokers: {brokers}");
    }
    app.run_until_stopped(shutdown_signal()).await?;
    drop(embedded);
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
