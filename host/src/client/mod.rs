//! The command line's client: `wasmhook subscription|plugin|admin …` talks
//! to a running wasmhook over its REST API, as any other caller would.
//!
//! The binary dispatches here before the server's parser sees the arguments
//! ([`is_command`]), so a client command needs none of the server's flags
//! and its `--help` shows only its own. The server is `--server` or
//! `WASMHOOK_SERVER`; the token only `WASMHOOK_TOKEN` (see [`args`]).
//!
//! - [`args`]: the flags and subcommands (clap).
//! - [`http`]: the calls, and [`http::ClientError`], which says whose a
//!   failure is and so the exit code.
//! - [`commands`]: what each command calls and prints.
//! - [`table`]: tables for people.
//!
//! Exit codes: [`EXIT_OK`], [`EXIT_API`], [`EXIT_USAGE`], [`EXIT_UNREACHABLE`].

pub mod args;
pub mod commands;
pub mod http;
pub mod table;

use std::ffi::OsString;

use clap::Parser;

pub use args::ClientArgs;
use commands::Format;

/// Done.
pub const EXIT_OK: u8 = 0;
/// The API refused (its message is printed), or answered what cannot be read.
pub const EXIT_API: u8 = 1;
/// The command line is wrong: clap's code, also for a file that cannot be read.
pub const EXIT_USAGE: u8 = 2;
/// Nothing answered at the server's address.
pub const EXIT_UNREACHABLE: u8 = 3;

/// The subcommands that are the client's, not the server's.
pub const COMMANDS: [&str; 3] = ["subscription", "plugin", "admin"];

/// Whether `argv` (the program's name first) is a client command: its first
/// argument names one. Flags such as `--server` come after it.
pub fn is_command(argv: &[OsString]) -> bool {
    argv.get(1)
        .and_then(|arg| arg.to_str())
        .is_some_and(|arg| COMMANDS.contains(&arg))
}

/// Parses `argv` (the program's name first) and runs the command; returns
/// the exit code. Help is printed with 0, a usage error with 2.
pub async fn run_command(argv: Vec<OsString>) -> u8 {
    match ClientArgs::try_parse_from(argv) {
        Ok(args) => run(args).await,
        Err(error) => {
            // Help and usage errors go where clap sends them (stdout, stderr).
            let _ = error.print();
            u8::try_from(error.exit_code()).unwrap_or(EXIT_USAGE)
        }
    }
}

/// Runs a parsed command: its output on stdout, `error: …` on stderr.
pub async fn run(args: ClientArgs) -> u8 {
    let token = std::env::var("WASMHOOK_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let format = if args.json {
        Format::Json
    } else {
        Format::Table
    };
    let outcome = match http::Api::new(args.server, token.as_deref()) {
        Ok(api) => commands::execute(&api, &args.command, format).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(output) => {
            print!("{output}");
            EXIT_OK
        }
        Err(error) => {
            eprintln!("error: {error}");
            if token.is_none() && matches!(error, http::ClientError::Api { status: 401, .. }) {
                eprintln!("hint: set WASMHOOK_TOKEN to an API token (whk_…)");
            }
            error.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn only_the_clients_subcommands_go_to_the_client() {
        assert!(is_command(&argv(&["wasmhook", "subscription", "list"])));
        assert!(is_command(&argv(&["wasmhook", "plugin"])));
        assert!(is_command(&argv(&["/usr/bin/wasmhook", "admin", "status"])));
        for server in [
            &["wasmhook"][..],
            &["wasmhook", "serve"],
            &["wasmhook", "token", "create", "--admin"],
            &["wasmhook", "migrate"],
            &["wasmhook", "--listen", "0.0.0.0:8080"],
            &["wasmhook", "--help"],
        ] {
            assert!(!is_command(&argv(server)), "{server:?}");
        }
    }

    #[tokio::test]
    async fn usage_errors_exit_2_and_help_exits_0() {
        assert_eq!(
            run_command(argv(&["wasmhook", "subscription", "frobnicate"])).await,
            EXIT_USAGE
        );
        assert_eq!(
            run_command(argv(&["wasmhook", "subscription", "get"])).await,
            EXIT_USAGE
        );
        assert_eq!(
            run_command(argv(&["wasmhook", "subscription", "--help"])).await,
            EXIT_OK
        );
    }
}
