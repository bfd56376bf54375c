//! The client's command line (clap): which server, how to print, and one
//! subcommand per API call.
//!
//! The token is deliberately not a flag: a flag's value shows in `ps` to
//! every user of the machine, so it comes only from `WASMHOOK_TOKEN`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::domain::PluginRole;

/// Where the client looks for the server when neither `--server` nor
/// `WASMHOOK_SERVER` says: the server's own default `--listen`.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Talks to a running wasmhook over its REST API, with the token in
/// WASMHOOK_TOKEN. Tables for people; --json prints the API's answer as it
/// is, for scripts. Exit codes: 0 done, 1 the API refused (its message on
/// stderr), 2 bad usage, 3 the server could not be reached.
#[derive(Debug, Parser)]
#[command(name = "wasmhook")]
pub struct ClientArgs {
    #[command(subcommand)]
    pub command: ClientCommand,

    /// The server's base URL.
    #[arg(long, env = "WASMHOOK_SERVER", default_value = DEFAULT_SERVER, value_parser = parse_server, global = true)]
    pub server: url::Url,

    /// Print the API's JSON answer as it is, instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Webhook subscriptions: list, show, create, change, delete, status, deliver again.
    Subscription {
        #[command(subcommand)]
        action: SubscriptionCommand,
    },
    /// WebAssembly plugins: upload, list, delete.
    Plugin {
        #[command(subcommand)]
        action: PluginCommand,
    },
    /// The platform's online/offline switch (admin).
    Admin {
        #[command(subcommand)]
        action: AdminCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SubscriptionCommand {
    /// Every subscription the token may see.
    List,
    /// One subscription.
    Get { id: String },
    /// Register the subscription in a JSON file (as POST /1/Subscription takes it).
    Create {
        /// The subscription's JSON; `-` reads standard input.
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Replace a subscription with the one in a JSON file (as `get --json` prints it).
    Update {
        id: String,
        /// The subscription's JSON; `-` reads standard input.
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Delete a subscription.
    Delete { id: String },
    /// Health, counts, recent requests and dead letters.
    Status { id: String },
    /// Deliver again from a time or from given offsets (moves the consumer group).
    Replay {
        id: String,
        #[command(flatten)]
        from: ReplayFrom,
    },
    /// Deliver again what the dead-letter topic holds.
    Redrive { id: String },
}

/// Exactly one of a time and a list of offsets.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ReplayFrom {
    /// Every partition from its first message at or after this RFC 3339 time.
    #[arg(long, value_name = "RFC3339")]
    pub from: Option<String>,
    /// A partition from this offset (repeatable); other partitions stay put.
    #[arg(long = "offset", value_name = "TOPIC:PARTITION:OFFSET", value_parser = parse_offset)]
    pub offsets: Vec<OffsetArg>,
}

/// `topic:partition:offset`, as `--offset` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetArg {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Upload a component (compiled and checked against its role by the server).
    Upload {
        /// The plugin's name, as subscriptions attach it.
        #[arg(long)]
        name: String,
        /// Its version.
        #[arg(long)]
        version: String,
        /// What it is attached as: filter, serialiser or policy.
        #[arg(long, alias = "kind", value_parser = parse_role)]
        role: PluginRole,
        /// Memory limit of its instances, in bytes (else the server's default).
        #[arg(long)]
        memory_bytes: Option<u64>,
        /// CPU deadline per call, in milliseconds (else the server's default).
        #[arg(long)]
        cpu_deadline_ms: Option<u64>,
        /// Wall-clock deadline per call, in milliseconds (else the server's default).
        #[arg(long)]
        wall_deadline_ms: Option<u64>,
        /// The component (.wasm).
        file: PathBuf,
    },
    /// Every plugin the token may use.
    List,
    /// Delete a plugin no subscription uses.
    Delete { name: String, version: String },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Whether the platform delivers, and every subscription's status.
    Status,
    /// Resume delivery on every subscription.
    Online,
    /// Stop delivery on every subscription (positions kept).
    Offline {
        /// Shown in every subscription's status while offline.
        #[arg(long, default_value = "")]
        message: String,
    },
}

fn parse_server(value: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(value).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("must be http or https, not {other}")),
    }
}

/// `topic:partition:offset`; split from the right, though a Kafka topic name
/// cannot hold a colon anyway.
fn parse_offset(value: &str) -> Result<OffsetArg, String> {
    let mut parts = value.rsplitn(3, ':');
    let (Some(offset), Some(partition), Some(topic)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("{value:?} is not TOPIC:PARTITION:OFFSET"));
    };
    if topic.is_empty() {
        return Err(format!("{value:?} names no topic"));
    }
    Ok(OffsetArg {
        topic: topic.to_string(),
        partition: partition
            .parse()
            .map_err(|_| format!("partition {partition:?} is not a number"))?,
        offset: offset
            .parse()
            .map_err(|_| format!("offset {offset:?} is not a number"))?,
    })
}

/// The server's own role names, so the two never disagree.
fn parse_role(value: &str) -> Result<PluginRole, String> {
    value
        .parse()
        .map_err(|_| format!("must be {}", PluginRole::choices()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ClientArgs, clap::Error> {
        ClientArgs::try_parse_from(std::iter::once("wasmhook").chain(args.iter().copied()))
    }

    #[test]
    fn an_offset_is_topic_partition_offset() {
        assert_eq!(
            parse_offset("orders.eu:2:40").unwrap(),
            OffsetArg {
                topic: "orders.eu".into(),
                partition: 2,
                offset: 40
            }
        );
        for (bad, says) in [
            ("orders:2", "is not TOPIC:PARTITION:OFFSET"),
            (":1:2", "names no topic"),
            ("orders:x:2", "partition \"x\" is not a number"),
            ("orders:1:-", "offset \"-\" is not a number"),
        ] {
            let error = parse_offset(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn replay_takes_a_time_or_offsets_but_not_both_nor_neither() {
        let args = parse(&[
            "subscription",
            "replay",
            "abc",
            "--offset",
            "a:0:1",
            "--offset",
            "b:1:2",
        ])
        .unwrap();
        let ClientCommand::Subscription {
            action: SubscriptionCommand::Replay { id, from },
        } = args.command
        else {
            panic!("a replay");
        };
        assert_eq!(id, "abc");
        assert_eq!(from.from, None);
        assert_eq!(from.offsets.len(), 2);
        assert_eq!(from.offsets[1].topic, "b");

        let args = parse(&[
            "subscription",
            "replay",
            "abc",
            "--from",
            "2026-11-23T10:00:00Z",
        ]);
        assert!(args.is_ok());
        for bad in [
            &["subscription", "replay", "abc"][..],
            &[
                "subscription",
                "replay",
                "abc",
                "--from",
                "2026-11-23T10:00:00Z",
                "--offset",
                "a:0:1",
            ],
            &["subscription", "replay", "abc", "--offset", "a:0"],
        ] {
            let error = parse(bad).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad:?}: {error}");
        }
    }

    #[test]
    fn the_server_defaults_to_the_servers_default_address_and_must_be_http() {
        let args = parse(&["admin", "status"]).unwrap();
        // WASMHOOK_SERVER may be set where the tests run.
        if std::env::var_os("WASMHOOK_SERVER").is_none() {
            assert_eq!(args.server.as_str(), "http://127.0.0.1:8080/");
        }
        let args = parse(&["admin", "status", "--server", "https://hooks.example/api/"]).unwrap();
        assert_eq!(args.server.as_str(), "https://hooks.example/api/");
        assert!(!args.json);
        let error = parse(&["admin", "status", "--server", "ftp://x"]).unwrap_err();
        assert!(
            error.to_string().contains("must be http or https"),
            "{error}"
        );
    }

    #[test]
    fn there_is_no_token_flag() {
        let error = parse(&["subscription", "list", "--token", "whk_x"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn a_plugin_upload_names_a_role_the_server_knows_also_as_kind() {
        let args = parse(&[
            "plugin",
            "upload",
            "--name",
            "field-match",
            "--version",
            "1.0.0",
            "--kind",
            "filter",
            "--json",
            "f.wasm",
        ])
        .unwrap();
        assert!(args.json);
        let ClientCommand::Plugin {
            action: PluginCommand::Upload { role, file, .. },
        } = args.command
        else {
            panic!("an upload");
        };
        assert_eq!(role, PluginRole::Filter);
        assert_eq!(file, PathBuf::from("f.wasm"));
        let error = parse(&[
            "plugin",
            "upload",
            "--name",
            "n",
            "--version",
            "1",
            "--role",
            "sorter",
            "f.wasm",
        ])
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("must be filter, serialiser or policy"),
            "{error}"
        );
    }
}
