//! The `wasmhook` binary: parse flags, start the embedded broker if no Kafka is
//! configured, and run the application until SIGINT or SIGTERM. The client
//! commands (`subscription`, `plugin`, `admin`) talk to a running server
//! instead ([`wasmhook::client`]).

use anyhow::Context;
use clap::Parser;
use wasmhook::broker::EmbeddedBroker;
use wasmhook::config::{Cli, Command, KafkaSecrets, TokenCommand};
use wasmhook::domain::AccessToken;
use wasmhook::registry::Registry;
use wasmhook::startup::Application;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Before the server's parser: a client command needs none of its flags,
    // and its exit code says what failed.
    if wasmhook::client::is_command(&argv) {
        let code = runtime.block_on(wasmhook::client::run_command(argv));
        drop(runtime);
        std::process::exit(i32::from(code));
    }
    let result = runtime.block_on(serve());
    // Bounded exit: a task still blocked on an unreachable broker is left behind.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

async fn serve() -> anyhow::Result<()> {
    let cli = Cli::parse();
    wasmhook::logging::init(cli.log_format);

    match &cli.command {
        Some(Command::Migrate) => {
            Registry::open(&cli.database_url).await?;
            println!(
                "Migrations applied to {}.",
                wasmhook::config::redact_url(&cli.database_url)
            );
            return Ok(());
        }
        Some(Command::Token { action }) => return token_command(&cli, action).await,
        Some(Command::Serve) | None => {}
    }

    // Secrets only from the environment (or files), never from flags.
    let secrets = KafkaSecrets::from_env();
    // The embedded broker must outlive the application.
    let (embedded, kafka) = match &cli.kafka_brokers {
        Some(brokers) => (None, cli.kafka_connection(brokers.clone(), false, secrets)?),
        None => {
            let broker = EmbeddedBroker::start(1).context("starting the embedded broker")?;
            let kafka = cli.kafka_connection(broker.bootstrap_servers(), true, secrets)?;
            (Some(broker), kafka)
        }
    };
    let brokers = kafka.brokers().to_string();
    let security = kafka.describe();

    let mut settings = cli.settings(kafka);
    settings.delivery.destinations = cli.destinations(embedded.is_some());
    settings.delivery.dead_letter_topic = cli.dead_letter_topic(embedded.is_some());
    let app = Application::build(settings).await?;
    println!(
        "wasmhook is serving the REST API on http://{}",
        app.local_addr()
    );
    if let Some(token) = app.generated_admin_token() {
        // Printed, never logged: it is stored only as a hash and shown this once.
        println!(
            "Generated the admin token (shown once; keep it, send it as Authorization: Bearer …): {}",
            token.reveal()
        );
    }
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
        println!("Kafka brokers: {brokers}, security: {security}");
    }
    println!("{}", cli.destinations_banner(embedded.is_some()));
    if let Some(line) = app.forwarder_banner() {
        println!("{line}");
    }
    app.run_until_stopped(shutdown_signal()).await?;
    drop(embedded);
    Ok(())
}

/// `wasmhook token create`: mints a token straight into the registry and
/// prints only the token on stdout, so scripts can capture it.
async fn token_command(cli: &Cli, action: &TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create {
        admin: _,
        tenant,
        label,
        expires_in,
    } = action;
    let registry = Registry::open(&cli.database_url).await?;
    if let Some(tenant) = tenant
        && registry.get_tenant(*tenant).await?.is_none()
    {
        anyhow::bail!("no tenant with id {tenant}");
    }
    let expires_at = expires_in
        .map(|d| chrono::Duration::from_std(d).map(|d| chrono::Utc::now() + d))
        .transpose()
        .context("--expires-in is too long")?;
    let token = AccessToken::generate();
    let stored = registry
        .insert_token(&token, *tenant, label, expires_at)
        .await?;
    registry.close().await;
    eprintln!(
        "Minted {} token {} (shown once; stored only as a hash).",
        if tenant.is_some() {
            "a tenant"
        } else {
            "an admin"
        },
        stored.id
    );
    println!("{}", token.reveal());
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
