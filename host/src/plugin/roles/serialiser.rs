//! The serialiser role: `serialise(batch) -> result<serialised, string>`,
//! the body and content type of one request carrying the whole batch.

use wasmtime::Store;
use wasmtime::component::{Func, InstancePre};

use super::super::bindings::{Message, Serialised, serialiser::SerialiserPre};
use super::super::error::PluginError;
use super::super::guest_text;
use super::super::sandbox::HostState;

pub(super) const EXPORTS: &str = "`init`, `serialise`";
pub(super) const BATCH_EXPORT: &str = "serialise";

/// The longest content type accepted (it becomes a header).
const MAX_CONTENT_TYPE: usize = 256;

pub(super) fn check_world(pre: &InstancePre<HostState>) -> wasmtime::Result<()> {
    SerialiserPre::new(pre.clone()).map(|_| ())
}

pub(super) async fn call(
    serialise: &Func,
    store: &mut Store<HostState>,
    batch: &[Message],
) -> wasmtime::Result<Result<Serialised, PluginError>> {
    let typed = serialise.typed::<(&[Message],), (Result<Serialised, String>,)>(&*store)?;
    let (result,) = typed.call_async(&mut *store, (batch,)).await?;
    Ok(match result {
        Ok(out) => check_content_type(&out.content_type).map(|()| out),
        Err(reason) => Err(PluginError::Guest(guest_text::clean(&reason))),
    })
}

/// The content type becomes an HTTP header: refuse anything that could
/// break or inject into the request (control characters, CR/LF, non-ASCII).
fn check_content_type(content_type: &str) -> Result<(), PluginError> {
    let printable = content_type.bytes().all(|b| (0x20..0x7f).contains(&b));
    if content_type.trim().is_empty() || !printable || content_type.len() > MAX_CONTENT_TYPE {
        let shown = guest_text::clean(content_type);
        return Err(PluginError::BadResult(format!(
            "content type {shown:?} is not a usable header value"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_that_could_inject_headers_are_refused() {
        assert!(check_content_type("application/cloudevents-batch+json").is_ok());
        assert!(check_content_type("text/plain; charset=utf-8").is_ok());
        for bad in ["", "  ", "a\r\nX-Evil: 1", "caf\u{e9}", &"a".repeat(300)] {
            assert!(
                matches!(check_content_type(bad), Err(PluginError::BadResult(_))),
                "{bad:?}"
            );
        }
    }
}
