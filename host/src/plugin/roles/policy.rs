//! The policy role: `authorise(ctx, batch) -> result<list<decision>, string>`,
//! one decision per message: allow, deny with a reason, or redact (deliver
//! another value).

use wasmtime::Store;
use wasmtime::component::{Func, InstancePre};

use super::super::bindings::{Decision, Message, SubscriberContext, policy::PolicyPre};
use super::super::error::PluginError;
use super::super::guest_text;
use super::super::sandbox::HostState;
use super::wrong_length;

pub(super) const EXPORTS: &str = "`init`, `authorise`";
pub(super) const BATCH_EXPORT: &str = "authorise";

pub(super) fn check_world(pre: &InstancePre<HostState>) -> wasmtime::Result<()> {
    PolicyPre::new(pre.clone()).map(|_| ())
}

pub(super) async fn call(
    authorise: &Func,
    store: &mut Store<HostState>,
    ctx: &SubscriberContext,
    batch: &[Message],
) -> wasmtime::Result<Result<Vec<Decision>, PluginError>> {
    let typed = authorise
        .typed::<(&SubscriberContext, &[Message]), (Result<Vec<Decision>, String>,)>(&*store)?;
    let (result,) = typed.call_async(&mut *store, (ctx, batch)).await?;
    Ok(match result {
        Ok(decisions) if decisions.len() == batch.len() => Ok(decisions
            .into_iter()
            .map(|decision| match decision {
                Decision::Deny(reason) => Decision::Deny(guest_text::clean(&reason)),
                other => other,
            })
            .collect()),
        Ok(decisions) => Err(wrong_length("decisions", decisions.len(), batch.len())),
        Err(reason) => Err(PluginError::Guest(guest_text::clean(&reason))),
    })
}
