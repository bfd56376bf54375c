//! Keyset pagination for list routes: a page size and an opaque cursor.
//!
//! A cursor is the sort key of the last row a page showed (e.g. its creation
//! time and id), as base64url JSON, so the next page starts strictly after it
//! whatever was inserted or deleted in between.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::RegistryError;

/// Rows per page unless `limit` says otherwise, and the most it may say.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// Where a page starts, as the client sent it back.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor(Vec<Value>);

impl Cursor {
    pub fn time_id(at_millis: i64, id: &str) -> Self {
        Self(vec![Value::from(at_millis), Value::from(id)])
    }

    pub fn strings(keys: &[&str]) -> Self {
        Self(keys.iter().map(|k| Value::from(*k)).collect())
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&self.0).expect("keys always serialise"))
    }

    /// Parses a cursor from a query string; `Err` says what is wrong with it.
    pub fn decode(raw: &str) -> Result<Self, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|_| "is not a cursor this API returned".to_string())?;
        let keys: Vec<Value> = serde_json::from_slice(&bytes)
            .map_err(|_| "is not a cursor this API returned".to_string())?;
        Ok(Self(keys))
    }
}

/// One page request.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub limit: usize,
    pub after: Option<Cursor>,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

/// What a page holds, and the cursor of the next one when there is more.
#[derive(Debug)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

impl Page {
    /// Parses `limit` and `cursor` query values.
    pub fn parse(
        limit: Option<&str>,
        cursor: Option<&str>,
    ) -> Result<Self, (&'static str, String)> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err((
                        "limit",
                        format!("must be a whole number from 1 to {MAX_LIMIT}, got {raw:?}"),
                    ));
                }
            },
        };
        let after = cursor
            .map(Cursor::decode)
            .transpose()
            .map_err(|e| ("cursor", e))?;
        Ok(Self { limit, after })
    }

    /// One more row than shown, to know whether there is a next page.
    pub(crate) fn fetch_limit(&self) -> i64 {
        self.limit as i64 + 1
    }

    /// The (time, id) a page keyed by creation starts after; the start when none.
    pub(crate) fn after_time_id(&self) -> Result<(i64, String), RegistryError> {
        match &self.after {
            None => Ok((i64::MIN, String::new())),
            Some(Cursor(keys)) => match keys.as_slice() {
                [Value::Number(at), Value::String(id)] if at.is_i64() => {
                    Ok((at.as_i64().unwrap_or_default(), id.clone()))
                }
                _ => Err(RegistryError::BadCursor),
            },
        }
    }

    /// The string keys a page keyed by strings starts after; empty keys sort first.
    pub(crate) fn after_strings<const N: usize>(&self) -> Result<[String; N], RegistryError> {
        match &self.after {
            None => Ok(std::array::from_fn(|_| String::new())),
            Some(Cursor(keys)) if keys.len() == N => {
                let mut out: [String; N] = std::array::from_fn(|_| String::new());
                for (slot, key) in out.iter_mut().zip(keys) {
                    *slot = key.as_str().ok_or(RegistryError::BadCursor)?.to_string();
                }
                Ok(out)
            }
            Some(_) => Err(RegistryError::BadCursor),
        }
    }

    /// Cuts the extra row off and makes the next cursor from the last shown.
    pub(crate) fn listing<T>(&self, mut items: Vec<T>, key: impl Fn(&T) -> Cursor) -> Listing<T> {
        let more = items.len() > self.limit;
        items.truncate(self.limit);
        let next = if more { items.last().map(key) } else { None };
        Listing { items, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_survive_the_round_trip() {
        let cursor = Cursor::time_id(1234, "abc");
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        assert!(Cursor::decode("not base64 !").is_err());
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(Page::parse(None, None).unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(Page::parse(Some("5"), None).unwrap().limit, 5);
        assert_eq!(Page::parse(Some("0"), None).unwrap_err().0, "limit");
        assert_eq!(Page::parse(Some("1001"), None).unwrap_err().0, "limit");
        assert_eq!(Page::parse(None, Some("%%")).unwrap_err().0, "cursor");
    }

    #[test]
    fn a_page_with_more_rows_has_a_next_cursor() {
        let page = Page {
            limit: 2,
            after: None,
        };
        let listing = page.listing(vec![1, 2, 3], |n| Cursor::strings(&[&n.to_string()]));
        assert_eq!(listing.items, [1, 2]);
        assert_eq!(listing.next, Some(Cursor::strings(&["2"])));
        let last = page.listing(vec![1, 2], |n| Cursor::strings(&[&n.to_string()]));
        assert!(last.next.is_none());
    }
}
