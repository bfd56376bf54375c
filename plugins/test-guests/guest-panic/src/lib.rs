//! Hostile test guest: panics (a trap) on a message whose value is `panic`,
//! keeps every message otherwise; counts its calls so a test can tell a
//! rebuilt instance (count restarts) from a reused one.

use wasmhook_guest_sdk::{Config, Filter, Message};

pub struct Panicky {
    calls: u32,
}

impl Filter for Panicky {
    fn init(_: Config) -> Result<Self, String> {
        Ok(Panicky { calls: 0 })
    }

    fn filter(&mut self, batch: &[Message]) -> Result<Vec<bool>, String> {
        self.calls += 1;
        if batch.iter().any(|m| m.value == b"panic") {
            panic!("guest-panic was asked to panic");
        }
        if batch.iter().any(|m| m.value == b"calls") {
            // Reports the call count through the error channel.
            return Err(format!("calls={}", self.calls));
        }
        Ok(vec![true; batch.len()])
    }
}

wasmhook_guest_sdk::export_filter!(Panicky);
