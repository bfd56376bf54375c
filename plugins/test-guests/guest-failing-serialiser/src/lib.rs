//! Hostile test guest: a serialiser that fails every batch. With config
//! `mode=trap` it panics (a trap); otherwise it returns an error result.
//! The host must retry the batch per the subscription's schedule, then
//! dead-letter it.

use wasmhook_guest_sdk::{Config, Message, Serialised, Serialiser, config};

pub struct Failing {
    trap: bool,
}

impl Serialiser for Failing {
    fn init(config: Config) -> Result<Self, String> {
        config::reject_unknown(&config, &["mode"])?;
        let trap = match config::get(&config, "mode") {
            None | Some("error") => false,
            Some("trap") => true,
            Some(other) => return Err(format!("`mode` must be error or trap, got {other:?}")),
        };
        Ok(Failing { trap })
    }

    fn serialise(&mut self, batch: &[Message]) -> Result<Serialised, String> {
        if self.trap {
            panic!("guest-failing-serialiser traps on {} messages", batch.len());
        }
        Err(format!(
            "guest-failing-serialiser refuses {} messages",
            batch.len()
        ))
    }
}

wasmhook_guest_sdk::export_serialiser!(Failing);
