//! Hostile test guest: `filter` never returns, to test the CPU deadline.

use wasmhook_guest_sdk::{Config, Filter, Message};

pub struct Loop;

impl Filter for Loop {
    fn init(_: Config) -> Result<Self, String> {
        Ok(Loop)
    }

    fn filter(&mut self, batch: &[Message]) -> Result<Vec<bool>, String> {
        // `black_box` keeps the optimiser from proving the loop has no effect.
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(batch.len() as u64 + 1));
        }
    }
}

wasmhook_guest_sdk::export_filter!(Loop);
