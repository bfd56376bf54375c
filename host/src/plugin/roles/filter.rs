//! The filter role: `filter(batch) -> result<list<bool>, string>`, one flag
//! per message, true keeps it.

use wasmtime::Store;
use wasmtime::component::{Func, InstancePre};

use super::super::bindings::{Message, filter::FilterPre};
use super::super::error::PluginError;
use super::super::guest_text;
use super::super::sandbox::HostState;
use super::wrong_length;

pub(super) const EXPORTS: &str = "`init`, `filter`";
pub(super) const BATCH_EXPORT: &str = "filter";

pub(super) fn check_world(pre: &InstancePre<HostState>) -> wasmtime::Result<()> {
    FilterPre::new(pre.clone()).map(|_| ())
}

pub(super) async fn call(
    filter: &Func,
    store: &mut Store<HostState>,
    batch: &[Message],
) -> wasmtime::Result<Result<Vec<bool>, PluginError>> {
    let typed = filter.typed::<(&[Message],), (Result<Vec<bool>, String>,)>(&*store)?;
    let (result,) = typed.call_async(&mut *store, (batch,)).await?;
    Ok(match result {
        Ok(keep) if keep.len() == batch.len() => Ok(keep),
        Ok(keep) => Err(wrong_length("flags", keep.len(), batch.len())),
        Err(reason) => Err(PluginError::Guest(guest_text::clean(&reason))),
    })
}
