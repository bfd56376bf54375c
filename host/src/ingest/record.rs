//! What one request asks to produce, parsed: how its body is read, where each
//! record's key, partition and headers come from, and whether the answer
//! waits for the brokers. Pure (no I/O), so every rule is tested here.
//!
//! - The body: `application/json` is one JSON value, checked and compacted;
//!   `application/x-ndjson` is one JSON value per line (blank lines skipped);
//!   anything else is one value taken as it is.
//! - The key: the `wasmhook-key` header (its bytes), else `?key_path=`, a
//!   JMESPath expression over the JSON value (`order.id`, `customer."zip-code"`):
//!   a string gives its text, any other value its compact JSON; null (nothing
//!   found) is an error naming the path. Neither: no key.
//! - The partition: `wasmhook-partition`; `-1` or absent lets the
//!   partitioner choose (by key hash, or spread when there is no key).
//! - Record headers: each `wasmhook-header-<name>: <value>` becomes header
//!   `<name>` (lower case, as HTTP has it).
//! - `?ack=all` (the default) answers after the brokers acknowledged;
//!   `?ack=none` answers 202 once the record is queued.

use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;

use super::error::IngestError;
use super::json::compact;
use crate::domain::{JmesDocument, JmesFilter};

pub const KEY_HEADER: &str = "wasmhook-key";
pub const PARTITION_HEADER: &str = "wasmhook-partition";
pub const RECORD_HEADER_PREFIX: &str = "wasmhook-header-";

/// How a request's body becomes records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// One JSON value: checked and compacted.
    Json,
    /// One JSON value per line.
    Ndjson,
    /// One value, as sent.
    Raw,
}

impl BodyKind {
    pub fn of(headers: &HeaderMap) -> Self {
        let Some(value) = headers.get(CONTENT_TYPE) else {
            return BodyKind::Raw;
        };
        let text = String::from_utf8_lossy(value.as_bytes());
        let essence = text.split(';').next().unwrap_or_default().trim();
        if essence.eq_ignore_ascii_case("application/json") {
            BodyKind::Json
        } else if essence.eq_ignore_ascii_case("application/x-ndjson") {
            BodyKind::Ndjson
        } else {
            BodyKind::Raw
        }
    }

    pub fn is_json(self) -> bool {
        matches!(self, BodyKind::Json | BodyKind::Ndjson)
    }
}

/// When the request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// After the brokers acknowledged every record (acks=all).
    All,
    /// As soon as the records are queued; failures are only logged.
    None,
}

/// The query string of `POST /1/Topic/{topic}/Records`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RecordsQuery {
    /// A JMESPath expression reading each record's key from its JSON value.
    pub key_path: Option<String>,
    /// `all` (the default): answer once the brokers acknowledged; `none`: once queued.
    pub ack: Option<String>,
}

/// A JMESPath expression that reads a record's key from its JSON value.
#[derive(Debug, Clone)]
pub struct KeyPath(JmesFilter);

impl KeyPath {
    pub fn parse(text: &str) -> Result<Self, IngestError> {
        JmesFilter::parse(text.to_string())
            .map(KeyPath)
            .map_err(|reason| IngestError::BadKeyPath {
                path: text.to_string(),
                reason,
            })
    }

    /// The key of the (valid, UTF-8) JSON value `json`.
    pub fn key(&self, json: &[u8]) -> Result<Vec<u8>, IngestError> {
        let not_found = || IngestError::KeyNotFound {
            path: self.0.as_str().to_string(),
        };
        let text = std::str::from_utf8(json).map_err(|_| not_found())?;
        let document = JmesDocument::read(text, self.0.reads()).ok_or_else(not_found)?;
        let found = self.0.value(&document).ok_or_else(not_found)?;
        Ok(match found.as_string() {
            Some(text) => text.clone().into_bytes(),
            None => serde_json::to_vec(&*found).map_err(|_| not_found())?,
        })
    }
}

/// Where each record's key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    None,
    Header(Vec<u8>),
    Path(KeyPath),
}

/// What a request asks of every record it carries.
#[derive(Debug, Clone)]
pub struct Options {
    pub kind: BodyKind,
    pub key: KeySource,
    /// `None`: the partitioner chooses.
    pub partition: Option<i32>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub ack: Ack,
}

impl Options {
    /// Reads the request's headers and query; nothing about the body yet.
    pub fn parse(headers: &HeaderMap, query: &RecordsQuery) -> Result<Self, IngestError> {
        let kind = BodyKind::of(headers);
        let ack = match query.ack.as_deref() {
            None | Some("all") => Ack::All,
            Some("none") => Ack::None,
            Some(other) => {
                return Err(IngestError::BadQuery(format!(
                    "ack must be all or none, got {other:?}"
                )));
            }
        };
        // The header wins over the path, as in seed 003: a caller that knows
        // the key says so.
        let key = match (headers.get(KEY_HEADER), &query.key_path) {
            (Some(value), _) => KeySource::Header(value.as_bytes().to_vec()),
            (None, Some(_)) if !kind.is_json() => return Err(IngestError::KeyPathWithoutJson),
            (None, Some(path)) => KeySource::Path(KeyPath::parse(path)?),
            (None, None) => KeySource::None,
        };
        let partition = match headers.get(PARTITION_HEADER) {
            None => None,
            Some(value) => parse_partition(value.as_bytes())?,
        };
        let mut record_headers = Vec::new();
        for (name, value) in headers {
            let Some(record_name) = name.as_str().strip_prefix(RECORD_HEADER_PREFIX) else {
                continue;
            };
            if record_name.is_empty() {
                return Err(IngestError::BadHeader {
                    header: "wasmhook-header-",
                    message: "a record header needs a name after wasmhook-header-".into(),
                });
            }
            record_headers.push((record_name.to_string(), value.as_bytes().to_vec()));
        }
        Ok(Self {
            kind,
            key,
            partition,
            headers: record_headers,
            ack,
        })
    }

    /// One record from one value (the body, or an NDJSON line): the size
    /// checked first, then the JSON and the key.
    pub fn record(&self, value: &[u8], max_bytes: usize) -> Result<Outgoing, IngestError> {
        if value.len() > max_bytes {
            return Err(IngestError::RecordTooLarge {
                size: value.len(),
                limit: max_bytes,
            });
        }
        let value = if self.kind.is_json() {
            compact(value).map_err(IngestError::InvalidJson)?
        } else {
            value.to_vec()
        };
        let key = match &self.key {
            KeySource::None => None,
            KeySource::Header(key) => Some(key.clone()),
            KeySource::Path(path) => Some(path.key(&value)?),
        };
        Ok(Outgoing { key, value })
    }
}

fn parse_partition(value: &[u8]) -> Result<Option<i32>, IngestError> {
    let bad = || IngestError::BadHeader {
        header: PARTITION_HEADER,
        message: format!(
            "{PARTITION_HEADER} must be -1 (the partitioner chooses) or a partition number, \
             got {:?}",
            String::from_utf8_lossy(value)
                .chars()
                .take(40)
                .collect::<String>()
        ),
    };
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    match text.trim().parse::<i32>().map_err(|_| bad())? {
        -1 => Ok(None),
        partition if partition >= 0 => Ok(Some(partition)),
        _ => Err(bad()),
    }
}

/// One record ready to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// The non-blank lines of an NDJSON body with their numbers (from 1), a
/// trailing `\r` removed.
pub fn lines(body: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    body.split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.strip_suffix(b"\r").unwrap_or(line)))
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn options(pairs: &[(&'static str, &str)], key_path: Option<&str>) -> Options {
        try_options(pairs, key_path).unwrap()
    }

    fn try_options(
        pairs: &[(&'static str, &str)],
        key_path: Option<&str>,
    ) -> Result<Options, IngestError> {
        let query = RecordsQuery {
            key_path: key_path.map(str::to_string),
            ack: None,
        };
        Options::parse(&headers(pairs), &query)
    }

    const JSON: (&str, &str) = ("content-type", "application/json; charset=utf-8");

    #[test]
    fn json_is_compacted_and_raw_bodies_are_kept_as_sent() {
        let record = options(&[JSON], None)
            .record(b"{ \"a\" : 1 }", 100)
            .unwrap();
        assert_eq!(record.value, br#"{"a":1}"#);
        assert_eq!(record.key, None);
        let raw = options(&[("content-type", "text/plain")], None)
            .record(b"{ not json", 100)
            .unwrap();
        assert_eq!(raw.value, b"{ not json");
        assert_eq!(options(&[], None).kind, BodyKind::Raw);
    }

    #[test]
    fn bad_json_names_the_error_and_its_position() {
        let error = options(&[JSON], None)
            .record(b"{\"a\":\n tru}", 100)
            .unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("not valid JSON"), "{text}");
        assert!(text.contains("line 2 column"), "{text}");
    }

    #[test]
    fn the_key_comes_from_the_header_else_the_path() {
        let body = br#"{"order": {"id": "o-7", "n": 3, "tags": ["a"]}}"#;
        let by_path = options(&[JSON], Some("order.id"));
        assert_eq!(
            by_path.record(body, 100).unwrap().key,
            Some(b"o-7".to_vec())
        );
        let number = options(&[JSON], Some("order.n"));
        assert_eq!(number.record(body, 100).unwrap().key, Some(b"3".to_vec()));
        let array = options(&[JSON], Some("order.tags"));
        assert_eq!(
            array.record(body, 100).unwrap().key,
            Some(br#"["a"]"#.to_vec())
        );
        let header = options(&[JSON, ("wasmhook-key", "k1")], Some("order.id"));
        assert_eq!(header.record(body, 100).unwrap().key, Some(b"k1".to_vec()));
    }

    #[test]
    fn a_key_path_that_finds_nothing_or_does_not_parse_is_named() {
        let error = options(&[JSON], Some("order.missing"))
            .record(br#"{"order": {}}"#, 100)
            .unwrap_err();
        assert!(error.to_string().contains("order.missing"), "{error}");
        let error = try_options(&[JSON], Some("order[")).unwrap_err();
        assert!(matches!(error, IngestError::BadKeyPath { .. }), "{error}");
        let error = try_options(&[("content-type", "text/plain")], Some("a")).unwrap_err();
        assert!(matches!(error, IngestError::KeyPathWithoutJson), "{error}");
    }

    #[test]
    fn the_partition_header_takes_minus_one_or_a_partition_number() {
        assert_eq!(options(&[], None).partition, None);
        assert_eq!(
            options(&[("wasmhook-partition", "-1")], None).partition,
            None
        );
        assert_eq!(
            options(&[("wasmhook-partition", " 3 ")], None).partition,
            Some(3)
        );
        for bad in ["x", "-2", "1.5", "99999999999"] {
            let error = try_options(&[("wasmhook-partition", bad)], None).unwrap_err();
            assert!(
                matches!(
                    error,
                    IngestError::BadHeader {
                        header: PARTITION_HEADER,
                        ..
                    }
                ),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn prefixed_headers_become_record_headers() {
        let parsed = options(
            &[
                ("wasmhook-header-trace-id", "abc"),
                ("wasmhook-header-Source", "shop"),
                ("x-other", "ignored"),
            ],
            None,
        );
        assert_eq!(
            parsed.headers,
            [
                ("trace-id".to_string(), b"abc".to_vec()),
                ("source".to_string(), b"shop".to_vec())
            ]
        );
    }

    #[test]
    fn ack_is_all_unless_none_is_asked_for() {
        assert_eq!(options(&[], None).ack, Ack::All);
        let query = RecordsQuery {
            key_path: None,
            ack: Some("none".into()),
        };
        assert_eq!(
            Options::parse(&HeaderMap::new(), &query).unwrap().ack,
            Ack::None
        );
        let query = RecordsQuery {
            key_path: None,
            ack: Some("1".into()),
        };
        assert!(Options::parse(&HeaderMap::new(), &query).is_err());
    }

    #[test]
    fn a_record_over_the_limit_is_refused_before_it_is_parsed() {
        let error = options(&[JSON], None).record(&[b' '; 11], 10).unwrap_err();
        assert!(matches!(
            error,
            IngestError::RecordTooLarge {
                size: 11,
                limit: 10
            }
        ));
    }

    #[test]
    fn ndjson_lines_are_numbered_and_blank_ones_skipped() {
        let body = b"{\"a\":1}\r\n\n  \n{\"b\":2}\n";
        let found: Vec<(usize, &[u8])> = lines(body).collect();
        assert_eq!(found, [(1, &b"{\"a\":1}"[..]), (4, &b"{\"b\":2}"[..])]);
    }
}
