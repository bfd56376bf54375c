//! Hostile test guest: a filter that misbehaves as its configuration's
//! `mode` says, so that one component covers every attack on the sandbox
//! that a Rust guest can make.
//!
//! | mode | what it does |
//! | --- | --- |
//! | `loop-init` | `init` spins forever |
//! | `sleep-init` | `init` sleeps for an hour (WASI clocks and poll) |
//! | `sleep` | `filter` sleeps for an hour |
//! | `huge-error` | `filter` returns an 8 MiB error full of control characters |
//! | `enormous-error` | `filter` returns a 24 MiB error, more than a batch's result budget |
//! | `stack-overflow` | `filter` recurses without end |
//! | `wrong-length` | `filter` returns one flag fewer than messages |
//! | `flood` | `filter` writes 1 MiB to stdout and to stderr, then keeps everything |
//! | `resources` | `filter` creates WASI pollables without ever dropping them |
//! | `fail-until` | `filter` fails until a message's value contains `ok`, then keeps everything |
//! | anything else | `filter` keeps every message |

use std::io::Write;
use std::time::Duration;

use wasmhook_guest_sdk::{Config, Filter, Message, config};

pub struct Hostile {
    mode: String,
}

impl Filter for Hostile {
    fn init(config: Config) -> Result<Self, String> {
        let mode = config::get(&config, "mode").unwrap_or("").to_string();
        match mode.as_str() {
            "loop-init" => spin(),
            "sleep-init" => std::thread::sleep(Duration::from_secs(3600)),
            _ => {}
        }
        Ok(Hostile { mode })
    }

    fn filter(&mut self, batch: &[Message]) -> Result<Vec<bool>, String> {
        match self.mode.as_str() {
            "sleep" => std::thread::sleep(Duration::from_secs(3600)),
            "huge-error" => return Err(evil_text(8 << 20)),
            "enormous-error" => return Err(evil_text(24 << 20)),
            "stack-overflow" => {
                return Ok(vec![recurse(batch.len() as u64) > 0; batch.len()]);
            }
            "wrong-length" => return Ok(vec![true; batch.len().saturating_sub(1)]),
            "flood" => {
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..16 {
                    let _ = std::io::stdout().write_all(&chunk);
                    let _ = std::io::stderr().write_all(&chunk);
                }
            }
            "resources" => {
                for _ in 0..1_000_000 {
                    // A pollable the guest never drops: a host resource each.
                    std::mem::forget(wasip2::clocks::monotonic_clock::subscribe_duration(
                        1_000_000_000,
                    ));
                }
            }
            "fail-until" => {
                if !batch.iter().any(|m| m.value.windows(2).any(|w| w == b"ok")) {
                    return Err("not yet".into());
                }
            }
            _ => {}
        }
        Ok(vec![true; batch.len()])
    }
}

/// About `bytes` of text meant to break logs and headers.
fn evil_text(bytes: usize) -> String {
    "\u{1b}[31mevil\r\nX-Injected: yes\0".repeat(bytes / 32)
}

fn spin() -> ! {
    // `black_box` keeps the optimiser from proving the loop has no effect.
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Recursion deep enough to exhaust the WebAssembly call stack (not the
/// shadow stack in linear memory: only scalars, which stay in Wasm locals).
#[inline(never)]
fn recurse(n: u64) -> u64 {
    if n == 0 {
        return 1;
    }
    // Not a tail call: the result is used after the call returns.
    let below = recurse(n.wrapping_add(1));
    below.rotate_left((n % 63) as u32) ^ n
}

wasmhook_guest_sdk::export_filter!(Hostile);
