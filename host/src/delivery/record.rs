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
    /// Set once the value was parsed as JSON (by the topic's JMES filters):
    /// the body embeds it without checking it again. Whoever replaces the
    /// value clears it.
    pub value_is_json: bool,
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
            value_is_json: false,
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

    /// The value as JSON text (without the whitespace around it), when it
    /// is JSON: checked here unless it was already.
    pub fn json_value(&self) -> Option<&[u8]> {
        let bytes = self.value.as_deref()?;
        if self.value_is_json {
            return Some(bytes.trim_ascii());
        }
        serde_json::from_slice::<&RawValue>(bytes)
            .ok()
            .map(|json| json.get().as_bytes())
    }
}

// The body is written straight from the records, one field after another
// (JSON values are embedded as they are, which serde cannot do without
// checking them again); every string goes through serde_json, borrowed unless
// it must be base64-encoded.

#[derive(Serialize)]
struct WireHeader<'a> {
    key: &'a str,
    value: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
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

/// Appends `value` as JSON.
fn put(body: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    serde_json::to_writer(body, value).expect("strings, numbers and lists always serialise");
}

/// Appends a value as the body holds it, and returns its encoding: JSON
/// embedded as JSON, other UTF-8 text as a string, anything else as base64
/// in a string, no value as null.
fn put_value(body: &mut Vec<u8>, record: &Record) -> &'static str {
    let Some(bytes) = record.value.as_deref() else {
        body.extend_from_slice(b"null");
        return "null";
    };
    if let Some(json) = record.json_value() {
        body.extend_from_slice(json);
        return "json";
    }
    let (text, encoding) = text_or_base64(bytes);
    put(body, &text);
    encoding.unwrap_or("string")
}

/// Appends the envelope of one record: `topic`, `partition`, `offset`,
/// `timestamp`, `key` (and `key_encoding` when base64), `headers`, `value`,
/// `value_encoding`, in that order.
fn put_envelope(body: &mut Vec<u8>, record: &Record) {
    body.extend_from_slice(b"{\"topic\":");
    put(body, &record.topic);
    body.extend_from_slice(b",\"partition\":");
    put(body, &record.partition);
    body.extend_from_slice(b",\"offset\":");
    put(body, &record.offset);
    body.extend_from_slice(b",\"timestamp\":");
    put(body, &record.timestamp);
    let (key, key_encoding) = optional_text(record.key.as_deref());
    body.extend_from_slice(b",\"key\":");
    put(body, &key);
    if let Some(encoding) = key_encoding {
        body.extend_from_slice(b",\"key_encoding\":");
        put(body, encoding);
    }
    body.extend_from_slice(b",\"headers\":");
    put(body, &WireHeaders(&record.headers));
    body.extend_from_slice(b",\"value\":");
    let encoding = put_value(body, record);
    body.extend_from_slice(b",\"value_encoding\":");
    put(body, encoding);
    body.push(b'}');
}

/// The content type of [`json_body`].
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// A JSON array of one item per record, written one after another into one
/// buffer.
fn json_array(records: &[Record], put_item: impl Fn(&mut Vec<u8>, &Record)) -> Vec<u8> {
    // Most of a body is the values themselves; the envelope adds about 150 B each.
    let capacity: usize = records.iter().map(|r| r.content_bytes() + 160).sum();
    let mut body = Vec::with_capacity(capacity + 2);
    body.push(b'[');
    for (index, record) in records.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        put_item(&mut body, record);
    }
    body.push(b']');
    body
}

/// The JSON array body for a batch.
pub fn json_body(records: &[Record]) -> Vec<u8> {
    json_array(records, put_envelope)
}

/// The JSON array body for a batch, holding each message's value alone
/// (`body_format: values`): JSON embedded as JSON, other UTF-8 text as a
/// string, anything else as base64 in a string; a message without a value is null.
pub fn values_body(records: &[Record]) -> Vec<u8> {
    json_array(records, |body, record| {
        put_value(body, record);
    })
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
            value_is_json: false,
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
    fn the_envelope_keeps_its_fields_in_order_and_escapes_strings() {
        let mut r = record(5, b"  {\"a\": [1, 2]}\n");
        r.topic = "t\"q".into();
        r.key = Some(b"k\\".to_vec());
        r.headers.push(("bin".into(), Some(vec![0xff])));
        r.headers.push(("none".into(), None));
        assert_eq!(
            String::from_utf8(json_body(&[r])).unwrap(),
            r#"[{"topic":"t\"q","partition":0,"offset":5,"timestamp":1,"key":"k\\","headers":[{"key":"h","value":"v"},{"key":"bin","value":"/w==","encoding":"base64"},{"key":"none","value":null}],"value":{"a": [1, 2]},"value_encoding":"json"}]"#
        );
    }

    #[test]
    fn a_value_already_parsed_as_json_is_embedded_as_one_checked_here() {
        for value in [
            &br#"{"a": 1}"#[..],
            b" \t{\"a\":[true,null]}\r\n",
            b"12",
            b"\"text\"",
        ] {
            let mut parsed = record(1, value);
            parsed.value_is_json = true;
            let checked = record(1, value);
            assert_eq!(
                json_body(std::slice::from_ref(&parsed)),
                json_body(std::slice::from_ref(&checked))
            );
            assert_eq!(values_body(&[parsed]), values_body(&[checked]));
        }
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
