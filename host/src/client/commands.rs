//! Each client command: the API call it makes, and what it prints — the
//! API's JSON as it is with `--json`, else a table or a sentence for people.

use std::io::Read;
use std::path::Path;

use reqwest::Method;
use serde_json::{Value, json};

use super::args::{
    AdminCommand, ClientCommand, OffsetArg, PluginCommand, ReplayFrom, SubscriptionCommand,
};
use super::http::{Api, ClientError};
use super::table::{cell, fields, rows};

/// How to print an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Runs `command` and returns what goes to standard output.
pub async fn execute(
    api: &Api,
    command: &ClientCommand,
    format: Format,
) -> Result<String, ClientError> {
    match command {
        ClientCommand::Subscription { action } => subscription(api, action, format).await,
        ClientCommand::Plugin { action } => plugin(api, action, format).await,
        ClientCommand::Admin { action } => admin(api, action, format).await,
    }
}

/// The API's answer as it is (pretty, one value), or what `people` makes of it.
fn shown(format: Format, answer: &Value, people: impl FnOnce(&Value) -> String) -> String {
    match format {
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(answer).expect("a Value serialises")
        ),
        Format::Table => people(answer),
    }
}

/// A route that answers nothing (204): a sentence for people, nothing for scripts.
fn done(format: Format, sentence: String) -> String {
    match format {
        Format::Json => String::new(),
        Format::Table => format!("{sentence}\n"),
    }
}

async fn subscription(
    api: &Api,
    action: &SubscriptionCommand,
    format: Format,
) -> Result<String, ClientError> {
    const ROOT: [&str; 2] = ["1", "Subscription"];
    match action {
        SubscriptionCommand::List => {
            let list = api.get_all(&ROOT).await?;
            Ok(shown(format, &list, subscription_rows))
        }
        SubscriptionCommand::Get { id } => {
            let found = api.get(&["1", "Subscription", id.as_str()]).await?;
            Ok(shown(format, &found, subscription_fields))
        }
        SubscriptionCommand::Create { file } => {
            let body = read_json(file)?;
            let created = api.send_json(Method::POST, &ROOT, &body).await?;
            Ok(shown(format, &created, |c| {
                format!(
                    "Created subscription {} ({}).\nSigning secret (shown only now): {}\n",
                    cell(&c["id"]),
                    cell(&c["name"]),
                    cell(&c["signing_secret"])
                )
            }))
        }
        SubscriptionCommand::Update { id, file } => {
            let body = read_json(file)?;
            let updated = api
                .send_json(Method::PUT, &["1", "Subscription", id.as_str()], &body)
                .await?;
            Ok(shown(format, &updated, |u| {
                format!(
                    "Updated subscription {} ({}).\n",
                    cell(&u["id"]),
                    cell(&u["name"])
                )
            }))
        }
        SubscriptionCommand::Delete { id } => {
            api.delete(&["1", "Subscription", id.as_str()]).await?;
            Ok(done(format, format!("Deleted subscription {id}.")))
        }
        SubscriptionCommand::Status { id } => {
            let status = api
                .get(&["1", "Subscription", id.as_str(), "Status"])
                .await?;
            Ok(shown(format, &status, status_fields))
        }
        SubscriptionCommand::Replay { id, from } => {
            let replay = api
                .send_json(
                    Method::POST,
                    &["1", "Subscription", id.as_str(), "Replay"],
                    &replay_body(from),
                )
                .await?;
            Ok(shown(format, &replay, |r| {
                format!(
                    "Replaying subscription {} in consumer group {}:\n{}",
                    cell(&r["subscription"]),
                    cell(&r["consumer_group"]),
                    rows(
                        &["TOPIC", "PARTITION", "OFFSET"],
                        items(&r["partitions"]).map(|p| {
                            vec![cell(&p["topic"]), cell(&p["partition"]), cell(&p["offset"])]
                        }),
                    )
                )
            }))
        }
        SubscriptionCommand::Redrive { id } => {
            let redrive = api
                .send_json(
                    Method::POST,
                    &["1", "Subscription", id.as_str(), "DeadLetter", "Redrive"],
                    &json!({}),
                )
                .await?;
            Ok(shown(format, &redrive, |r| {
                format!(
                    "Redriving {} message(s) of {} (progress in `subscription status`):\n{}",
                    cell(&r["messages"]),
                    cell(&r["topic"]),
                    rows(
                        &["PARTITION", "FROM", "TO"],
                        items(&r["partitions"]).map(|p| {
                            vec![cell(&p["partition"]), cell(&p["from"]), cell(&p["to"])]
                        }),
                    )
                )
            }))
        }
    }
}

/// The replay request: `{"from": …}` or `{"offsets": […]}`.
fn replay_body(from: &ReplayFrom) -> Value {
    match &from.from {
        Some(time) => json!({ "from": time }),
        None => json!({
            "offsets": from
                .offsets
                .iter()
                .map(|OffsetArg { topic, partition, offset }| {
                    json!({"topic": topic, "partition": partition, "offset": offset})
                })
                .collect::<Vec<_>>()
        }),
    }
}

fn items(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

/// A subscription's topics, from its sources.
fn topics(subscription: &Value) -> String {
    let topics: Vec<Value> = items(&subscription["source"])
        .map(|s| s["topic"].clone())
        .collect();
    cell(&Value::Array(topics))
}

fn subscription_rows(list: &Value) -> String {
    rows(
        &["ID", "NAME", "ACTIVE", "TOPICS", "URL"],
        items(list).map(|s| {
            vec![
                cell(&s["id"]),
                cell(&s["name"]),
                cell(&s["active"]),
                topics(s),
                cell(&s["destination"]["webhook"]["url"]),
            ]
        }),
    )
}

fn subscription_fields(s: &Value) -> String {
    let batching = &s["configuration"]["batching"];
    let retry = &s["configuration"]["retry"];
    fields([
        ("id", cell(&s["id"])),
        ("name", cell(&s["name"])),
        ("active", cell(&s["active"])),
        ("url", cell(&s["destination"]["webhook"]["url"])),
        ("topics", topics(s)),
        (
            "batching",
            format!(
                "{} messages / {} s",
                cell(&batching["max_batch_size"]),
                cell(&batching["max_batch_interval_seconds"])
            ),
        ),
        (
            "retry",
            format!(
                "{} × {}",
                cell(&retry["max_retries"]),
                cell(&retry["retry_algorithm"])
            ),
        ),
        ("created_at", cell(&s["created_at"])),
        ("updated_at", cell(&s["updated_at"])),
    ]) + "(the whole subscription: --json)\n"
}

fn status_fields(s: &Value) -> String {
    let counts = &s["counts"];
    let mut shown = vec![
        ("id", cell(&s["id"])),
        ("name", cell(&s["name"])),
        ("status", cell(&s["status"])),
        ("reason", cell(&s["status_reason"])),
        ("since", cell(&s["timestamp"])),
        ("url", cell(&s["payload_url"])),
        ("consumer_group", cell(&s["consumer_group"])),
        (
            "counts",
            format!(
                "delivered {}, filtered {}, denied {}, dead-lettered {}",
                cell(&counts["delivered"]),
                cell(&counts["filtered"]),
                cell(&counts["denied"]),
                cell(&counts["dead_lettered"])
            ),
        ),
        ("dead_letter_topic", cell(&s["dead_letter_topic"])),
    ];
    if let Some(message) = s.get("offline_message") {
        shown.push(("offline", cell(message)));
    }
    if let Some(redrive) = s.get("redrive") {
        shown.push((
            "redrive",
            format!(
                "{}: {} of {} done (delivered {}, dead-lettered {})",
                cell(&redrive["state"]),
                cell(&redrive["done"]),
                cell(&redrive["messages"]),
                cell(&redrive["delivered"]),
                cell(&redrive["dead_lettered"])
            ),
        ));
    }
    let activity = items(&s["recent_activity"]).map(|a| {
        vec![
            cell(&a["timestamp"]),
            cell(&a["event"]),
            cell(&a["response_code"]),
        ]
    });
    format!(
        "{}\nRecent activity:\n{}",
        fields(shown),
        rows(&["TIME", "EVENT", "RESPONSE"], activity)
    )
}

/// The subscription's JSON from `path`, or from standard input for `-`.
fn read_json(path: &Path) -> Result<Value, ClientError> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| ClientError::Input(format!("reading standard input: {e}")))?;
        text
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| ClientError::Input(format!("reading {}: {e}", path.display())))?
    };
    serde_json::from_str(&text)
        .map_err(|e| ClientError::Input(format!("{} is not JSON: {e}", path.display())))
}

async fn plugin(api: &Api, action: &PluginCommand, format: Format) -> Result<String, ClientError> {
    match action {
        PluginCommand::Upload {
            name,
            version,
            role,
            memory_bytes,
            cpu_deadline_ms,
            wall_deadline_ms,
            file,
        } => {
            let wasm = std::fs::read(file)
                .map_err(|e| ClientError::Input(format!("reading {}: {e}", file.display())))?;
            let mut query = vec![
                ("name", name.clone()),
                ("version", version.clone()),
                ("role", role.as_str().to_string()),
            ];
            for (field, limit) in [
                ("memory_bytes", memory_bytes),
                ("cpu_deadline_ms", cpu_deadline_ms),
                ("wall_deadline_ms", wall_deadline_ms),
            ] {
                if let Some(limit) = limit {
                    query.push((field, limit.to_string()));
                }
            }
            let uploaded = api.upload(&query, wasm).await?;
            Ok(shown(format, &uploaded, |p| {
                format!(
                    "Uploaded plugin {} {} ({}, {} bytes, sha256 {}).\n",
                    cell(&p["name"]),
                    cell(&p["version"]),
                    cell(&p["role"]),
                    cell(&p["size"]),
                    cell(&p["sha256"])
                )
            }))
        }
        PluginCommand::List => {
            let list = api.get_all(&["1", "Plugin"]).await?;
            Ok(shown(format, &list, |list| {
                rows(
                    &["NAME", "VERSION", "ROLE", "SHARED", "SIZE", "CREATED"],
                    items(list).map(|p| {
                        vec![
                            cell(&p["name"]),
                            cell(&p["version"]),
                            cell(&p["role"]),
                            cell(&p["shared"]),
                            cell(&p["size"]),
                            cell(&p["created_at"]),
                        ]
                    }),
                )
            }))
        }
        PluginCommand::Delete { name, version } => {
            api.delete(&["1", "Plugin", name.as_str(), version.as_str()])
                .await?;
            Ok(done(format, format!("Deleted plugin {name} {version}.")))
        }
    }
}

async fn admin(api: &Api, action: &AdminCommand, format: Format) -> Result<String, ClientError> {
    const ROOT: [&str; 2] = ["1", "EventNotificationAdmin"];
    let answer = match action {
        AdminCommand::Status => api.get(&ROOT).await?,
        AdminCommand::Online => {
            api.send_json(Method::POST, &ROOT, &json!({"status": "online"}))
                .await?
        }
        AdminCommand::Offline { message } => {
            api.send_json(
                Method::POST,
                &ROOT,
                &json!({"status": "offline", "offline_message": message}),
            )
            .await?
        }
    };
    Ok(shown(format, &answer, admin_overview))
}

fn admin_overview(a: &Value) -> String {
    let mut shown = vec![
        ("platform", cell(&a["status"])),
        ("since", cell(&a["timestamp"])),
    ];
    if a["status"] == "offline" {
        shown.push(("message", cell(&a["offline_message"])));
    }
    format!(
        "{}\n{}",
        fields(shown),
        rows(
            &["ID", "NAME", "STATUS", "TOPICS"],
            items(&a["webhooks"]).map(|w| {
                vec![
                    cell(&w["id"]),
                    cell(&w["name"]),
                    cell(&w["status"]),
                    cell(&w["topics"]),
                ]
            }),
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_sends_a_time_or_the_offsets() {
        let from = ReplayFrom {
            from: Some("2026-11-23T10:00:00Z".into()),
            offsets: vec![],
        };
        assert_eq!(replay_body(&from), json!({"from": "2026-11-23T10:00:00Z"}));
        let from = ReplayFrom {
            from: None,
            offsets: vec![OffsetArg {
                topic: "orders".into(),
                partition: 1,
                offset: 7,
            }],
        };
        assert_eq!(
            replay_body(&from),
            json!({"offsets": [{"topic": "orders", "partition": 1, "offset": 7}]})
        );
    }

    #[test]
    fn json_is_the_answer_as_it_is_and_people_get_a_table() {
        let list = json!([{
            "id": "5eed0001-0000-4000-8000-000000000001",
            "kind": "Webhook",
            "name": "orders",
            "active": "yes",
            "destination": {"kind": "webhook", "webhook": {"url": "https://hooks.example/in"}},
            "source": [{"topic": "orders"}, {"topic": "refunds"}],
        }]);
        let json = shown(Format::Json, &list, |_| unreachable!());
        assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), list);
        let table = shown(Format::Table, &list, subscription_rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["ID", "NAME", "ACTIVE", "TOPICS", "URL"]
        );
        assert!(lines[1].contains("orders, refunds"), "{table}");
        assert!(lines[1].contains("https://hooks.example/in"), "{table}");
        assert_eq!(done(Format::Json, "Deleted.".into()), "");
        assert_eq!(done(Format::Table, "Deleted.".into()), "Deleted.\n");
    }

    #[test]
    fn the_status_table_shows_health_counts_and_activity() {
        let status = json!({
            "id": "x", "name": "orders", "status": "unhealthy",
            "status_reason": "receiver answered 500",
            "counts": {"delivered": 3, "filtered": 0, "denied": 0, "dead_lettered": 2},
            "recent_activity": [{"timestamp": "t1", "event": "api_call", "response_code": 500}],
            "offline_message": "maintenance",
        });
        let shown = status_fields(&status);
        for expected in [
            "unhealthy",
            "receiver answered 500",
            "delivered 3, filtered 0, denied 0, dead-lettered 2",
            "maintenance",
            "api_call",
        ] {
            assert!(shown.contains(expected), "{expected}: {shown}");
        }
    }

    #[test]
    fn a_missing_or_broken_file_is_a_usage_error_naming_it() {
        let error = read_json(Path::new("/nowhere/subscription.json")).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(
            error.to_string().contains("/nowhere/subscription.json"),
            "{error}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, "{nope").unwrap();
        let error = read_json(&path).unwrap_err();
        assert!(error.to_string().contains("is not JSON"), "{error}");
    }
}
