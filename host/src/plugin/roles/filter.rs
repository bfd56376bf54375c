//! The filter role: `filter(batch) -> result<list<bool>, string>`, one flag
//! per message, true keeps it.

use wasmtime::Store;
use wasmtime::component::{Func, InstancePre, WasmList, WasmStr};

use super::super::bindings::{Message, filter::FilterPre};
use super::super::error::PluginError;
use super::super::sandbox::HostState;
use super::{text, wrong_length};

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
    let typed = filter.typed::<(&[Message],), (Result<WasmList<bool>, WasmStr>,)>(&*store)?;
    let (result,) = typed.call_async(&mut *store, (batch,)).await?;
    let flags = match result {
        Ok(flags) => flags,
        Err(reason) => return Ok(Err(PluginError::Guest(text(&reason, store)))),
    };
    // Checked before anything is copied out of the guest.
    if flags.len() != batch.len() {
        return Ok(Err(wrong_length("flags", flags.len(), batch.len())));
    }
    let keep = flags
        .iter(&mut *store)?
        .collect::<wasmtime::Result<Vec<bool>>>()?;
    Ok(Ok(keep))
}
