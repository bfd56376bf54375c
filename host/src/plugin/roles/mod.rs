//! One home per plugin role. Each role's module holds all the host needs to
//! know of it: the world it checks an upload against, the exports it binds
//! on an instance, and its batch call — lowering the batch, lifting the
//! answer and checking it (one entry per message, text cut by
//! [`guest_text`]). What a guest can make the host copy is bounded before
//! anything is copied: each call's hostcall fuel, which wasmtime spends on
//! every byte lifted out of the guest, is set to [`result_budget`].
//!
//! (Lifting lazily, through `WasmList`, would avoid the copy but read guest
//! memory after the guest's post-return ran, which may already have freed
//! and reused it.)
//!
//! Adding a role: a world in `wit/`, its `bindgen!` in `bindings.rs`, the
//! role in [`PluginRole`], a module here with the same few items as its
//! siblings, and a line in each `match` below.

mod filter;
mod policy;
mod serialiser;

use wasmtime::Store;
use wasmtime::component::{Func, Instance, InstancePre};

use super::bindings::{Decision, Message, Serialised, SubscriberContext};
use super::error::PluginError;
use super::guest_text;
use super::sandbox::HostState;
use crate::domain::PluginRole;

/// Type-checks a component's exports against `role`'s world.
pub(crate) fn check_world(role: PluginRole, pre: &InstancePre<HostState>) -> wasmtime::Result<()> {
    match role {
        PluginRole::Filter => filter::check_world(pre),
        PluginRole::Serialiser => serialiser::check_world(pre),
        PluginRole::Policy => policy::check_world(pre),
    }
}

/// The exports `role`'s world asks for, for error messages.
pub(crate) fn expected_exports(role: PluginRole) -> &'static str {
    match role {
        PluginRole::Filter => filter::EXPORTS,
        PluginRole::Serialiser => serialiser::EXPORTS,
        PluginRole::Policy => policy::EXPORTS,
    }
}

/// One batch call, as the host asks it.
#[derive(Debug, Clone)]
pub enum Call {
    Filter(Vec<Message>),
    Serialise(Vec<Message>),
    Authorise(SubscriberContext, Vec<Message>),
}

impl Call {
    pub fn role(&self) -> PluginRole {
        match self {
            Call::Filter(_) => PluginRole::Filter,
            Call::Serialise(_) => PluginRole::Serialiser,
            Call::Authorise(..) => PluginRole::Policy,
        }
    }
}

/// What a batch call answered, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// One flag per message: true keeps it.
    Keep(Vec<bool>),
    /// The request body of the whole batch.
    Body(Serialised),
    /// One decision per message.
    Decisions(Vec<Decision>),
}

/// The exports of an instantiated plugin: `init` and the role's batch
/// function. Which role is the caller's to check ([`PluginInstance::call`]
/// does, before anything runs): a call of another role fails wasmtime's type
/// check of the export.
///
/// [`PluginInstance::call`]: super::PluginInstance::call
pub(crate) struct Exports {
    init: Func,
    batch: Func,
}

impl Exports {
    /// Finds the role's exports on an instance (the world check at upload
    /// made sure they are there, with the right types).
    pub(crate) fn bind(
        role: PluginRole,
        instance: &Instance,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Self> {
        let batch_name = match role {
            PluginRole::Filter => filter::BATCH_EXPORT,
            PluginRole::Serialiser => serialiser::BATCH_EXPORT,
            PluginRole::Policy => policy::BATCH_EXPORT,
        };
        let func = |store: &mut Store<HostState>, name: &str| {
            instance
                .get_func(&mut *store, name)
                .ok_or_else(|| wasmtime::format_err!("the instance has no `{name}` export"))
        };
        Ok(Exports {
            init: func(store, "init")?,
            batch: func(store, batch_name)?,
        })
    }

    /// Calls `init(config)`, the same in every world. `Ok(Err(reason))` when
    /// the plugin refused its configuration.
    pub(crate) async fn init(
        &self,
        store: &mut Store<HostState>,
        config: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>> {
        let init = self
            .init
            .typed::<(&[(String, String)],), (Result<(), String>,)>(&*store)?;
        store.set_hostcall_fuel(INIT_BUDGET);
        let (result,) = init.call_async(&mut *store, (config,)).await?;
        Ok(result.map_err(|reason| guest_text::clean(&reason)))
    }

    /// Runs one batch call. The outer `Err` is a failure inside wasmtime (a
    /// trap, a stopped entry); the inner one what the guest answered, or why
    /// the host cannot use its answer.
    pub(crate) async fn call(
        &self,
        store: &mut Store<HostState>,
        call: &Call,
    ) -> wasmtime::Result<Result<Answer, PluginError>> {
        let batch = match call {
            Call::Filter(batch) | Call::Serialise(batch) | Call::Authorise(_, batch) => batch,
        };
        store.set_hostcall_fuel(result_budget(batch));
        Ok(match call {
            Call::Filter(batch) => filter::call(&self.batch, store, batch)
                .await?
                .map(Answer::Keep),
            Call::Serialise(batch) => serialiser::call(&self.batch, store, batch)
                .await?
                .map(Answer::Body),
            Call::Authorise(ctx, batch) => policy::call(&self.batch, store, ctx, batch)
                .await?
                .map(Answer::Decisions),
        })
    }
}

/// The most bytes an `init` may return (an error message, cut to 1 KiB
/// anyway once it is in the host).
const INIT_BUDGET: usize = 1 << 20;

/// The most bytes a plugin may return for `batch`, all lists and strings
/// together: twice what it was given plus 16 MiB. Room for any reasonable
/// body or redaction, and a bound on what a guest can make the host copy
/// (without it, a list of decisions that all point at the same large buffer
/// would be copied once per message). Past it, the call fails.
pub(crate) fn result_budget(batch: &[Message]) -> usize {
    let given: usize = batch
        .iter()
        .map(|m| m.value.len() + m.key.as_ref().map_or(0, Vec::len))
        .sum();
    given.saturating_mul(2).saturating_add(16 << 20)
}

/// The error for a list that is not one entry per message.
pub(crate) fn wrong_length(what: &str, got: usize, expected: usize) -> PluginError {
    PluginError::BadResult(format!("{got} {what} for a batch of {expected} messages"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(value: usize, key: usize) -> Message {
        Message {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp: None,
            key: (key > 0).then(|| vec![0; key]),
            value: vec![0; value],
            headers: vec![],
        }
    }

    #[test]
    fn the_result_budget_is_twice_the_input_plus_16_mib() {
        assert_eq!(result_budget(&[]), 16 << 20);
        assert_eq!(
            result_budget(&[message(1000, 10), message(500, 0)]),
            (16 << 20) + 3020
        );
    }

    #[test]
    fn calls_know_their_role() {
        assert_eq!(Call::Filter(vec![]).role(), PluginRole::Filter);
        assert_eq!(Call::Serialise(vec![]).role(), PluginRole::Serialiser);
        let ctx = SubscriberContext {
            subscription_id: "s".into(),
            subscription_name: "n".into(),
            topic: "t".into(),
        };
        assert_eq!(Call::Authorise(ctx, vec![]).role(), PluginRole::Policy);
    }
}
