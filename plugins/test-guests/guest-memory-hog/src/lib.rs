//! Hostile test guest: `filter` allocates until the host refuses memory,
//! to test the memory cap.

use wasmhook_guest_sdk::{Config, Filter, Message};

pub struct Hog;

impl Filter for Hog {
    fn init(_: Config) -> Result<Self, String> {
        Ok(Hog)
    }

    fn filter(&mut self, batch: &[Message]) -> Result<Vec<bool>, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Written to, so the pages are really used; kept, so never freed.
            let block = vec![1u8; 1 << 20];
            hoard.push(std::hint::black_box(block));
            if hoard.len() == usize::MAX {
                return Ok(vec![true; batch.len()]);
            }
        }
    }
}

wasmhook_guest_sdk::export_filter!(Hog);
