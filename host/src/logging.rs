//! Where log lines go and how they look: human-readable text, coloured only
//! when stdout is a terminal (and `NO_COLOR` is unset), or one JSON object per
//! line for log collectors (`--log-format json`).
//!
//! `RUST_LOG` chooses what is logged; the default keeps librdkafka's chatter out.

use std::io::IsTerminal;

use clap::ValueEnum;

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Text for people; colours only on a terminal.
    #[default]
    Text,
    /// One JSON object per line, for machines.
    Json,
}

/// The filter used when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info,librdkafka=warn,rdkafka=warn";

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| DEFAULT_FILTER.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(colours_wanted()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// Colours only for a person at a terminal who has not asked for none
/// (<https://no-color.org>): a file or a pipe gets plain text.
fn colours_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
