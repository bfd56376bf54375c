//! Hostile test guest: a serialiser whose body is a JSON report of what of
//! the host it could reach: files, directories, environment, arguments,
//! network. In the sandbox every probe must come back empty or failed.

use std::fmt::Write as _;
use wasmhook_guest_sdk::{Config, Message, Serialised, Serialiser};

pub struct Probe;

fn outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("err: {e}"),
    }
}

/// Minimal JSON string escaping, to avoid a serde dependency in a test guest.
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Serialiser for Probe {
    fn init(_: Config) -> Result<Self, String> {
        Ok(Probe)
    }

    fn serialise(&mut self, _batch: &[Message]) -> Result<Serialised, String> {
        let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
        let args: Vec<String> = std::env::args().collect();
        let files = [
            ("read_etc_passwd", outcome(std::fs::read("/etc/passwd"))),
            ("read_relative", outcome(std::fs::read("Cargo.toml"))),
            ("list_root", outcome(std::fs::read_dir("/"))),
            ("list_cwd", outcome(std::fs::read_dir("."))),
            (
                "create_file",
                outcome(std::fs::write("/tmp/wasmhook-escape", b"x")),
            ),
            (
                "tcp_connect",
                outcome(std::net::TcpStream::connect("127.0.0.1:9")),
            ),
        ];
        let mut body = String::from("{");
        let _ = write!(
            body,
            "\"env\":[{}],\"args\":[{}]",
            env.iter()
                .map(|s| json_str(s))
                .collect::<Vec<_>>()
                .join(","),
            args.iter()
                .map(|s| json_str(s))
                .collect::<Vec<_>>()
                .join(",")
        );
        for (name, result) in files {
            let _ = write!(body, ",\"{name}\":{}", json_str(&result));
        }
        body.push('}');
        Ok(Serialised {
            content_type: "application/json".into(),
            body: body.into_bytes(),
        })
    }
}

wasmhook_guest_sdk::export_serialiser!(Probe);
