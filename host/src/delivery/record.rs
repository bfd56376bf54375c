//! A consumed Kafka message, owned, and its JSON form in the webhook body.
//!
//! The body of a webhook request is a JSON array with one object per message:
//! `topic`, `partition`, `offset`, `timestamp` (ms since the epoch, or null),
//! `key`, `headers` (`[{"key", "value"}]`) and `value`. A value that is JSON is
//! embedded as JSON (`"value_encoding": "json"`); otherwise UTF-8 text is a string
//! (`"string"`) and anything else is base64 (`"base64"`). Keys and header values
//! are strings, or base64 with `key_encoding`/`encoding` set to `"base64"`.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Headers};
use serde::Serialize;
use serde_json::value::RawValue;

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    pub fn from_kafka(message: &BorrowedMessage<'_>) -> Self {
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|header| (header.key.to_string(), header.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// The bytes the message carries: value, key, and header names and values
    /// (what `max_batch_bytes` counts; the body's envelope adds to it).
    pub fn content_bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.as_ref().map_or(0, Vec::len))
            .sum();
        self.value.as_ref().map_or(0, Vec::len) + self.key.as_ref().map_or(0, Vec::len) + headers
    }

    /// The value as JSON text, when it is JSON.
    pub fn json_value(&self) -> Option<&RawValue> {
        let bytes = self.value.as_deref()?;
        serde_json::from_slice::<&RawValue>(bytes).ok()
    }
}

// The body is serialised straight from the records: every string is
// borrowed unless it must be base64-encoded, and no intermediate list is built.

#[derive(Serialize)]
struct WireHeader<'a> {
    key: &'a str,
    value: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireValue<'a> {
    Json(&'a RawValue),
    Text(Cow<'a, str>),
}

#[derive(Serialize)]
struct WireRecord<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_encoding: Option<&'static str>,
    headers: WireHeaders<'a>,
    value: Option<WireValue<'a>>,
    value_encoding: &'static str,
}

/// A record's headers, serialised as `[{"key", "value"}]` as they are read.
struct WireHeaders<'a>(&'a [(String, Option<Vec<u8>>)]);

impl Serialize for WireHeaders<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|(key, value)| {
            let (value, encoding) = optional_text(value.as_deref());
            WireHeader {
                key,
                value,
                encoding,
            }
        }))
    }
}

/// Text if UTF-8, else base64 with its marker.
fn text_or_base64(bytes: &[u8]) -> (Cow<'_, str>, Option<&'static str>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Cow::Borrowed(text), None),
        Err(_) => (Cow::Owned(STANDARD.encode(bytes)), Some("base64")),
    }
}

/// Optional bytes as an optional string, and `"base64"` when encoded.
fn optional_text(bytes: Option<&[u8]>) -> (Option<Cow<'_, str>>, Option<&'static str>) {
    match bytes.map(text_or_base64) {
        Some((text, encoding)) => (Some(text), encoding),
        None => (None, None),
    }
}

/// A value as the body holds it, and its encoding: JSON embedded as JSON,
/// other UTF-8 text as a string, anything else as base64 in a string.
fn wire_value(record: &Record) -> (Option<WireValue<'_>>, &'static str) {
    let Some(bytes) = record.value.as_deref() else {
        return (None, "null");
    };
    if let Some(json) = record.json_value() {
        return (Some(WireValue::Json(json)), "json");
    }
    let (text, encoding) = text_or_base64(bytes);
    (Some(WireValue::Text(text)), encoding.unwrap_or("string"))
}

fn wire(record: &Record) -> WireRecord<'_> {
    let (key, key_encoding) = optional_text(record.key.as_deref());
    let (value, value_encoding) = wire_value(record);
    WireRecord {
        topic: &record.topic,
        partition: record.partition,
        offset: record.offset,
        timestamp: record.timestamp,
        key,
        key_encoding,
        headers: WireHeaders(&record.headers),
        value,
        value_encoding,
    }
}

/// The content type of [`json_body`].
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// Serialises a JSON array of `items`, one after another into one buffer.
fn json_array<'a, T: Serialize>(records: &'a [Record], item: impl Fn(&'a Record) -> T) -> Vec<u8> {
    // Most of a body is the values themselves; the envelope adds about 150 B each.
    let capacity: usize = records.iter().map(|r| r.content_bytes() + 160).sum();
    let mut body = Vec::with_capacity(capacity);
    let mut serializer = serde_json::Serializer::new(&mut body);
    serde::Serializer::collect_seq(&mut serializer, records.iter().map(item))
        .expect("records always serialise");
    body
}

/// The JSON array body for a batch.
pub fn json_body(records: &[Record]) -> Vec<u8> {
    json_array(records, wire)
}

/// The JSON array body for a batch, holding each message's value alone
/// (`body_format: values`): JSON embedded as JSON, other UTF-8 text as a
/// string, anything else as base64 in a string; a message without a value is null.
pub fn values_body(records: &[Record]) -> Vec<u8> {
    json_array(records, |record| wire_value(record).0)
}

/// The id a batch keeps across retries: where it starts.
pub fn delivery_id(records: &[Record]) -> String {
    use sha2::{Digest, Sha256};
    // The id names exactly the messages in the request, in order: a receiver
    // that deduplicates on it never drops a request holding a message it has
    // not seen (a batch that starts with the same message after a restart but
    // holds more gets another id).
    let mut hash = Sha256::new();
    for r in records {
        hash.update(r.topic.as_bytes());
        hash.update([0]);
        hash.update(r.partition.to_be_bytes());
        hash.update(r.offset.to_be_bytes());
    }
    let digest = hash.finalize();
    let mut id = String::with_capacity(4 + 32);
    id.push_str("msg_");
    for byte in &digest[..16] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn record(offset: i64, value: &[u8]) -> Record {
        Record {
            topic: "t".into(),
            partition: 0,
            offset,
            timestamp: Some(1),
            key: Some(vec![0xff]),
            value: Some(value.to_vec()),
            headers: vec![("h".into(), Some(b"v".to_vec()))],
        }
    }

    #[test]
    fn values_are_embedded_as_json_text_or_base64() {
        let body = json_body(&[
            record(1, br#"{"a":1}"#),
            record(2, b"plain text"),
            record(3, &[0xff, 0x00]),
        ]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v[0]["value"], serde_json::json!({"a": 1}));
        assert_eq!(v[0]["value_encoding"], "json");
        assert_eq!(v[1]["value"], "plain text");
        assert_eq!(v[1]["value_encoding"], "string");
        assert_eq!(v[2]["value"], "/wA=");
        assert_eq!(v[2]["value_encoding"], "base64");
        assert_eq!(v[0]["key"], "/w==");
        assert_eq!(v[0]["key_encoding"], "base64");
        assert_eq!(v[0]["headers"][0]["value"], "v");
    }

    #[test]
    fn a_values_body_holds_each_value_alone() {
        let mut empty = record(4, b"");
        empty.value = None;
        let body = values_body(&[
            record(1, br#"{"a": 1}"#),
            record(2, b"plain text"),
            record(3, &[0xff, 0x00]),
            empty,
        ]);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"[{"a": 1},"plain text","/wA=",null]"#
        );
    }

    #[test]
    fn the_delivery_id_names_exactly_the_messages_of_the_request() {
        let batch = delivery_id(&[record(7, b"x"), record(8, b"y")]);
        assert!(batch.starts_with("msg_") && batch.len() == 36, "{batch}");
        // The same messages: the same id, whatever the values (a retry).
        assert_eq!(batch, delivery_id(&[record(7, b"z"), record(8, b"w")]));
        // Same first message, one more after it (a larger batch after a restart).
        assert_ne!(
            batch,
            delivery_id(&[record(7, b"x"), record(8, b"y"), record(9, b"z")])
        );
        assert_ne!(batch, delivery_id(&[record(7, b"x")]));
    }
}
