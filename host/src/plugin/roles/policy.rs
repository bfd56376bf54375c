//! The policy role: `authorise(ctx, batch) -> result<list<decision>, string>`,
//! one decision per message: allow, deny with a reason, or redact (deliver
//! another value).

use wasmtime::Store;
use wasmtime::component::{ComponentType, Func, InstancePre, Lift, WasmList, WasmStr};

use super::super::bindings::{Decision, Message, SubscriberContext, policy::PolicyPre};
use super::super::error::PluginError;
use super::super::sandbox::HostState;
use super::{result_budget, text, wrong_length};

pub(super) const EXPORTS: &str = "`init`, `authorise`";
pub(super) const BATCH_EXPORT: &str = "authorise";

pub(super) fn check_world(pre: &InstancePre<HostState>) -> wasmtime::Result<()> {
    PolicyPre::new(pre.clone()).map(|_| ())
}

/// `decision`, left in guest memory until checked.
#[derive(ComponentType, Lift)]
#[component(variant)]
enum LazyDecision {
    #[component(name = "allow")]
    Allow,
    #[component(name = "deny")]
    Deny(WasmStr),
    #[component(name = "redact")]
    Redact(WasmList<u8>),
}

pub(super) async fn call(
    authorise: &Func,
    store: &mut Store<HostState>,
    ctx: &SubscriberContext,
    batch: &[Message],
) -> wasmtime::Result<Result<Vec<Decision>, PluginError>> {
    let typed = authorise
        .typed::<(&SubscriberContext, &[Message]), (Result<WasmList<LazyDecision>, WasmStr>,)>(
            &*store,
        )?;
    let (result,) = typed.call_async(&mut *store, (ctx, batch)).await?;
    let lazy = match result {
        Ok(decisions) => decisions,
        Err(reason) => return Ok(Err(PluginError::Guest(text(&reason, store)))),
    };
    if lazy.len() != batch.len() {
        return Ok(Err(wrong_length("decisions", lazy.len(), batch.len())));
    }
    let lazy = lazy
        .iter(&mut *store)?
        .collect::<wasmtime::Result<Vec<LazyDecision>>>()?;
    // Redacted values are copied only while their total stays in budget.
    let mut budget = result_budget(batch);
    let mut decisions = Vec::with_capacity(lazy.len());
    for decision in lazy {
        decisions.push(match decision {
            LazyDecision::Allow => Decision::Allow,
            LazyDecision::Deny(reason) => Decision::Deny(text(&reason, store)),
            LazyDecision::Redact(value) => {
                let Some(left) = budget.checked_sub(value.len()) else {
                    return Ok(Err(PluginError::BadResult(format!(
                        "redacted values total more than the {} bytes allowed for this batch",
                        result_budget(batch)
                    ))));
                };
                budget = left;
                Decision::Redact(value.as_le_slice(&*store).to_vec())
            }
        });
    }
    Ok(Ok(decisions))
}
