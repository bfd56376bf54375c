//! Hostile test guest: a policy whose `authorise` traps on every batch, so
//! the host's fail-closed path (deny everything) can be tested end to end.

use wasmhook_guest_sdk::{Config, Decision, Message, Policy, SubscriberContext};

pub struct Trapping;

impl Policy for Trapping {
    fn init(_: Config) -> Result<Self, String> {
        Ok(Trapping)
    }

    fn authorise(&mut self, _: &SubscriberContext, _: &[Message]) -> Result<Vec<Decision>, String> {
        // `unreachable` in the guest: a trap, not an error result.
        panic!("guest-trap-policy always traps")
    }
}

wasmhook_guest_sdk::export_policy!(Trapping);
