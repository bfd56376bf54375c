//! The command line's client in a child process against a running host:
//! subscriptions from a file through their whole life, plugins, the admin
//! switch, replay and redrive across a running pipeline, and the exit codes
//! (1 with the API's message, 2 for usage, 3 when nothing answers).
//!
//! The child is the test package's binary in its `wasmhook` mode, which
//! dispatches client commands as the wasmhook binary does (this package
//! cannot name the other package's binary); `host/tests/cli.rs` runs the
//! wasmhook binary itself.

use std::time::Duration;

use serde_json::{Value, json};

use crate::delivery::{WAIT, values};
use crate::helpers::{
    ADMIN_TOKEN, Db, System, TestApp, binary_path, plugin_wasm, positions, produce, subscription,
};
use crate::replay::{at, wait_for_committed, wait_for_deliveries};

/// What a client command did.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The client, pointed at one server with one token (or none).
struct Client {
    server: String,
    token: Option<String>,
}

impl Client {
    fn admin_of(app: &TestApp) -> Self {
        Self {
            server: app.address.clone(),
            token: Some(ADMIN_TOKEN.into()),
        }
    }

    async fn run(&self, args: &[&str]) -> Ran {
        let mut command = tokio::process::Command::new(binary_path());
        command
            .arg("wasmhook")
            .args(args)
            .env("WASMHOOK_SERVER", &self.server)
            .env("RUST_LOG", "error")
            .kill_on_drop(true);
        match &self.token {
            Some(token) => command.env("WASMHOOK_TOKEN", token),
            None => command.env_remove("WASMHOOK_TOKEN"),
        };
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .unwrap_or_else(|_| panic!("wasmhook {args:?} did not end within 60 s"))
            .expect("the client runs");
        Ran {
            code: output.status.code().expect("exited, not killed"),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    /// Runs a command that must succeed; its standard output.
    async fn ok(&self, args: &[&str]) -> String {
        let ran = self.run(args).await;
        assert_eq!(ran.code, 0, "wasmhook {args:?}: {ran:?}");
        ran.stdout
    }

    /// Runs a command with `--json` that must succeed; the JSON it printed.
    async fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(&[args, &["--json"]].concat()).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed {out:?}: {e}"))
    }

    /// Runs a command that must fail with `code`, saying `expected` on stderr.
    async fn fails(&self, args: &[&str], code: i32, expected: &str) -> Ran {
        let ran = self.run(args).await;
        assert_eq!(ran.code, code, "wasmhook {args:?}: {ran:?}");
        assert!(
            ran.stderr.contains(expected),
            "wasmhook {args:?} should say {expected:?}: {ran:?}"
        );
        assert!(ran.stdout.is_empty(), "{ran:?}");
        ran
    }
}

fn write_json(dir: &tempfile::TempDir, name: &str, value: &Value) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, value.to_string()).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_from_a_file_through_its_whole_life() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("cli-orders", 1);
    let cli = Client::admin_of(&sys.app);
    let dir = tempfile::tempdir().unwrap();
    let file = write_json(
        &dir,
        "orders.json",
        &subscription("cli-orders", &sys.receiver.url, &["cli-orders"]),
    );

    let created = cli.ok(&["subscription", "create", "-f", &file]).await;
    assert!(created.starts_with("Created subscription "), "{created}");
    assert!(
        created.contains("whsec_"),
        "the secret is shown once: {created}"
    );

    let list = cli.json(&["subscription", "list"]).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], "cli-orders");
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert!(created.contains(&id), "{created}");

    let table = cli.ok(&["subscription", "list"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["ID", "NAME", "ACTIVE", "TOPICS", "URL"],
        "{table}"
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [
            id.as_str(),
            "cli-orders",
            "yes",
            "cli-orders",
            &sys.receiver.url
        ],
        "{table}"
    );

    let shown = cli.ok(&["subscription", "get", &id]).await;
    assert!(shown.contains(&sys.receiver.url), "{shown}");
    assert!(shown.contains("10 messages / 1 s"), "{shown}");
    let mut spec = cli.json(&["subscription", "get", &id]).await;
    assert_eq!(spec["kind"], "Webhook");

    // What get --json prints goes back with update -f, changed.
    spec["name"] = json!("cli-orders-renamed");
    let file = write_json(&dir, "renamed.json", &spec);
    let updated = cli.ok(&["subscription", "update", &id, "-f", &file]).await;
    assert_eq!(
        updated,
        format!("Updated subscription {id} (cli-orders-renamed).\n")
    );
    assert_eq!(
        cli.json(&["subscription", "get", &id]).await["name"],
        "cli-orders-renamed"
    );

    // A change the API refuses: exit 1 and the API's own message.
    spec["configuration"]["batching"]["max_batch_size"] = json!(0);
    let file = write_json(&dir, "bad.json", &spec);
    cli.fails(
        &["subscription", "update", &id, "-f", &file],
        1,
        "configuration.batching.max_batch_size: must be between 1 and 1000, got 0",
    )
    .await;

    produce(&sys.producer, "cli-orders", 0, &values(0..2)).await;
    sys.receiver.wait_for_delivered(2, WAIT).await;
    let status = cli.json(&["subscription", "status", &id]).await;
    assert_eq!(status["kind"], "WebhookStatus");
    assert_eq!(status["status"], "healthy", "{status}");
    let table = cli.ok(&["subscription", "status", &id]).await;
    assert!(table.contains("healthy"), "{table}");
    assert!(table.contains("Recent activity"), "{table}");

    let deleted = cli.ok(&["subscription", "delete", &id]).await;
    assert_eq!(deleted, format!("Deleted subscription {id}.\n"));
    let ran = cli
        .fails(
            &["subscription", "get", &id],
            1,
            "error: no subscription with id",
        )
        .await;
    assert!(ran.stderr.contains("(HTTP 404)"), "{ran:?}");
    assert_eq!(cli.json(&["subscription", "list"]).await, json!([]));

    // Without a token: the API's 401, and a hint.
    let anonymous = Client {
        server: sys.app.address.clone(),
        token: None,
    };
    let ran = anonymous
        .fails(&["subscription", "list"], 1, "(HTTP 401)")
        .await;
    assert!(ran.stderr.contains("WASMHOOK_TOKEN"), "{ran:?}");
    // A file that is not there is the command line's fault.
    cli.fails(
        &["subscription", "create", "-f", "/nowhere/s.json"],
        2,
        "/nowhere/s.json",
    )
    .await;
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plugins_are_uploaded_listed_and_deleted_and_the_admin_switch_flips() {
    let sys = System::start(Db::Sqlite).await;
    let cli = Client::admin_of(&sys.app);
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("field_match.wasm");
    std::fs::write(&wasm, plugin_wasm("field_match")).unwrap();
    let wasm = wasm.to_string_lossy().into_owned();

    let uploaded = cli
        .ok(&[
            "plugin",
            "upload",
            "--name",
            "field-match",
            "--version",
            "1.0.0",
            "--kind",
            "filter",
            &wasm,
        ])
        .await;
    assert!(
        uploaded.starts_with("Uploaded plugin field-match 1.0.0 (filter, "),
        "{uploaded}"
    );
    // The server checks the component against the role it is uploaded as.
    cli.fails(
        &[
            "plugin",
            "upload",
            "--name",
            "field-match",
            "--version",
            "2.0.0",
            "--role",
            "serialiser",
            &wasm,
        ],
        1,
        "(HTTP 400)",
    )
    .await;
    let list = cli.json(&["plugin", "list"]).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["name"], "field-match");
    assert_eq!(list[0]["role"], "filter");
    let table = cli.ok(&["plugin", "list"]).await;
    assert_eq!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .take(4)
            .collect::<Vec<_>>(),
        ["field-match", "1.0.0", "filter", "true"],
        "{table}"
    );
    assert_eq!(
        cli.ok(&["plugin", "delete", "field-match", "1.0.0"]).await,
        "Deleted plugin field-match 1.0.0.\n"
    );
    cli.fails(
        &["plugin", "delete", "field-match", "1.0.0"],
        1,
        "error: no plugin field-match version 1.0.0 (HTTP 404)",
    )
    .await;
    assert_eq!(cli.json(&["plugin", "list"]).await, json!([]));

    let offline = cli
        .ok(&["admin", "offline", "--message", "upgrading the brokers"])
        .await;
    assert!(offline.contains("offline"), "{offline}");
    assert!(offline.contains("upgrading the brokers"), "{offline}");
    let status = cli.json(&["admin", "status"]).await;
    assert_eq!(status["status"], "offline");
    assert_eq!(status["offline_message"], "upgrading the brokers");
    let online = cli.json(&["admin", "online"]).await;
    assert_eq!(online["status"], "online", "{online}");
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_through_the_cli_delivers_those_partitions_again() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("cli-replayed", 2);
    let id = sys
        .app
        .subscribe(&subscription(
            "cli-replayed",
            &sys.receiver.url,
            &["cli-replayed"],
        ))
        .await;
    produce(&sys.producer, "cli-replayed", 0, &values(0..3)).await;
    produce(&sys.producer, "cli-replayed", 1, &values(3..5)).await;
    sys.receiver.wait_for_delivered(5, WAIT).await;
    wait_for_committed(&sys.app, &id, 5).await;

    let cli = Client::admin_of(&sys.app);
    let replay = cli
        .json(&[
            "subscription",
            "replay",
            &id,
            "--offset",
            "cli-replayed:0:1",
        ])
        .await;
    assert_eq!(replay["consumer_group"], format!("webhooks-{id}.r1"));
    let delivered = wait_for_deliveries(&sys.receiver, 7).await;
    let mut again = positions(&delivered[5..]);
    again.sort();
    assert_eq!(again, [at("cli-replayed", 0, 1), at("cli-replayed", 0, 2)]);

    // Both partitions, as a table; an offset past the end is the API's 400.
    wait_for_committed(&sys.app, &id, 5).await;
    let table = cli
        .ok(&[
            "subscription",
            "replay",
            &id,
            "--offset",
            "cli-replayed:0:2",
            "--offset",
            "cli-replayed:1:1",
        ])
        .await;
    assert!(
        table.starts_with(&format!(
            "Replaying subscription {id} in consumer group webhooks-{id}.r2:\n"
        )),
        "{table}"
    );
    let delivered = wait_for_deliveries(&sys.receiver, 9).await;
    let mut again = positions(&delivered[7..]);
    again.sort();
    assert_eq!(again, [at("cli-replayed", 0, 2), at("cli-replayed", 1, 1)]);
    cli.fails(
        &[
            "subscription",
            "replay",
            &id,
            "--offset",
            "cli-replayed:0:9",
        ],
        1,
        "outside what the partition holds",
    )
    .await;
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redrive_through_the_cli_delivers_the_dead_letters_again() {
    let sys = System::start(Db::Sqlite).await;
    sys.topic("cli-redriven", 1);
    sys.receiver.answer(500);
    let mut body = subscription("cli-redriven", &sys.receiver.url, &["cli-redriven"]);
    body["configuration"]["retry"] = json!({"max_retries": 1, "retry_algorithm": "fixed_time"});
    let id = sys.app.subscribe(&body).await;
    produce(&sys.producer, "cli-redriven", 0, &values(0..3)).await;
    sys.app
        .wait_for_status(&id, WAIT, |s| s["counts"]["dead_lettered"] == 3)
        .await;

    sys.receiver.answer(200);
    let cli = Client::admin_of(&sys.app);
    let plan = cli.ok(&["subscription", "redrive", &id]).await;
    assert!(
        plan.starts_with(&format!("Redriving 3 message(s) of webhooks-{id}-dlq")),
        "{plan}"
    );
    let delivered = wait_for_deliveries(&sys.receiver, 3).await;
    let mut came = positions(&delivered);
    came.sort();
    assert_eq!(
        came,
        [
            at("cli-redriven", 0, 0),
            at("cli-redriven", 0, 1),
            at("cli-redriven", 0, 2),
        ]
    );
    sys.app
        .wait_for_status(&id, WAIT, |s| s["redrive"]["state"] == "done")
        .await;
    let status = cli.ok(&["subscription", "status", &id]).await;
    assert!(status.contains("done: 3 of 3 done"), "{status}");
    // Nothing is left: a second redrive has nothing to do.
    let again = cli.json(&["subscription", "redrive", &id]).await;
    assert_eq!(again["messages"], 0, "{again}");
    sys.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_is_exit_3_naming_it_and_bad_usage_is_exit_2() {
    // A port just released: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cli = Client {
        server: format!("http://127.0.0.1:{port}"),
        token: Some(ADMIN_TOKEN.into()),
    };
    cli.fails(
        &["subscription", "list"],
        3,
        &format!("error: cannot reach the server at http://127.0.0.1:{port}"),
    )
    .await;
    cli.fails(&["subscription", "replay", "x"], 2, "--from")
        .await;
    cli.fails(&["admin", "reboot"], 2, "unrecognized subcommand")
        .await;
    // Help is short: the client's, without the server's flags.
    let help = cli.ok(&["subscription", "--help"]).await;
    assert!(help.contains("replay"), "{help}");
    assert!(!help.contains("--kafka-brokers"), "{help}");
}
