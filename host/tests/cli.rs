//! The `wasmhook` binary itself: the admin token printed once at the first
//! start, `wasmhook token create`, a bad `--admin-token` refused, and the
//! client commands dispatched before the server's flags.

use std::time::Duration;

use reqwest::StatusCode;

const WAIT: Duration = Duration::from_secs(60);

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_wasmhook")
}

fn authed_client(token: &str) -> reqwest::Client {
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

/// Runs the binary (embedded broker, this registry) until it has printed its
/// banner; returns what it printed and the process.
async fn start_binary(database_url: &str) -> (Vec<String>, tokio::process::Child) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(binary())
        .args(["--listen", "127.0.0.1:0", "--database-url", database_url])
        .env("RUST_LOG", "error")
        .env_remove("WASMHOOK_ADMIN_TOKEN")
        .env_remove("WASMHOOK_KAFKA_BROKERS")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the wasmhook binary starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("wasmhook prints its banner")
            .unwrap()
            .unwrap_or_else(|| panic!("wasmhook exited after printing {printed:?}"));
        // The broker line closes the banner.
        let last = line.starts_with("Embedded Kafka broker");
        printed.push(line);
        if last {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (printed, child)
}

fn address_in(printed: &[String]) -> String {
    printed
        .iter()
        .find_map(|l| l.split("REST API on ").nth(1))
        .expect("the address is printed")
        .trim()
        .to_string()
}

async fn status_with(token: &str, address: &str) -> StatusCode {
    authed_client(token)
        .get(format!("{address}/1/Subscription"))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_prints_an_admin_token_once_and_the_cli_mints_more() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("wasmhook.db").display());
    let (printed, mut first) = start_binary(&db_url).await;
    let token_line = printed
        .iter()
        .find(|l| l.contains("admin token"))
        .unwrap_or_else(|| panic!("no admin token line in {printed:?}"));
    let token = token_line.rsplit(' ').next().unwrap().to_string();
    assert!(token.starts_with("whk_"), "{token_line}");
    let address = address_in(&printed);
    assert_eq!(status_with(&token, &address).await, StatusCode::OK);
    assert_eq!(
        reqwest::get(format!("{address}/1/Subscription"))
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    first.kill().await.unwrap();

    // The next start has an admin token already: it prints none.
    let (printed, mut second) = start_binary(&db_url).await;
    assert!(
        !printed.iter().any(|l| l.contains("admin token")),
        "{printed:?}"
    );
    // The CLI mints another straight into the registry; it works at once.
    let minted = tokio::process::Command::new(binary())
        .args(["token", "create", "--admin", "--database-url", &db_url])
        .env("RUST_LOG", "error")
        .output()
        .await
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let cli_token = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    assert!(
        cli_token.starts_with("whk_") && cli_token != token,
        "{cli_token}"
    );
    let address = address_in(&printed);
    for token in [&token, &cli_token] {
        assert_eq!(status_with(token, &address).await, StatusCode::OK);
    }
    second.kill().await.unwrap();

    // A configured token that is not a wasmhook token stops the start.
    let bad = tokio::process::Command::new(binary())
        .args(["--admin-token", "hunter2", "--database-url", &db_url])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("whk_"), "{stderr}");
}

/// Runs a client command of the binary against `server` with `token`.
async fn client(server: &str, token: &str, args: &[&str]) -> std::process::Output {
    tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(binary())
            .args(args)
            .env("WASMHOOK_SERVER", server)
            .env("WASMHOOK_TOKEN", token)
            .output(),
    )
    .await
    .expect("the client ends")
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_commands_talk_to_a_running_server_without_the_servers_flags() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("wasmhook.db").display());
    let (printed, mut server) = start_binary(&db_url).await;
    let token_line = printed
        .iter()
        .find(|l| l.contains("admin token"))
        .unwrap_or_else(|| panic!("no admin token line in {printed:?}"));
    let token = token_line.rsplit(' ').next().unwrap().to_string();
    let address = address_in(&printed);

    let status = client(&address, &token, &["admin", "status", "--json"]).await;
    assert_eq!(status.status.code(), Some(0), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["status"], "online", "{status}");

    let missing = client(&address, &token, &["subscription", "get", "nope"]).await;
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr),
        "error: no subscription with id \"nope\" (HTTP 404)\n"
    );
    assert!(missing.stdout.is_empty(), "{missing:?}");

    // The client's own help: short, none of the server's flags.
    let help = client(&address, &token, &["subscription", "--help"]).await;
    assert_eq!(help.status.code(), Some(0), "{help:?}");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("replay") && help.contains("--server"),
        "{help}"
    );
    assert!(!help.contains("--kafka-brokers"), "{help}");
    let usage = client(&address, &token, &["plugin", "delete", "only-a-name"]).await;
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");

    server.kill().await.unwrap();
    server.wait().await.unwrap();
    let gone = client(&address, &token, &["subscription", "list"]).await;
    assert_eq!(gone.status.code(), Some(3), "{gone:?}");
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(
        stderr.starts_with(&format!("error: cannot reach the server at {address}: ")),
        "{stderr}"
    );
}
