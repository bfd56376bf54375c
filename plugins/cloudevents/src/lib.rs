//! `cloudevents`: a serialiser that sends a batch as one CloudEvents 1.0
//! JSON batch (`application/cloudevents-batch+json`, a JSON array of events
//! in the structured JSON format).
//!
//! Each message becomes one event:
//! - `id`: `<topic>/<partition>/<offset>`, unique per Kafka record, so a
//!   redelivered batch carries the same ids and receivers can deduplicate;
//! - `source` and `type`: from the `source` and `type` configuration keys
//!   (both required);
//! - `time`: the record timestamp in RFC 3339, when Kafka had one;
//! - `partitionkey` (the CloudEvents partitioning extension): the record key,
//!   when it is UTF-8;
//! - `data` with `datacontenttype: application/json` when the value is JSON,
//!   otherwise `data_base64` (and no data at all for an empty value).
//!
//! Headers are not mapped: CloudEvents extension names are restricted to
//! lowercase letters and digits, which Kafka header names rarely are.

use base64::Engine as _;
use serde_json::{Map, Value};
use wasmhook_guest_sdk::{Config, Message, Serialised, Serialiser, config};

/// Content type of a CloudEvents JSON batch (CloudEvents JSON format, §4).
pub const CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// The configured event attributes.
#[derive(Debug)]
pub struct CloudEvents {
    source: String,
    event_type: String,
}

impl CloudEvents {
    fn event(&self, message: &Message) -> Value {
        let mut event = Map::new();
        event.insert("specversion".into(), "1.0".into());
        event.insert(
            "id".into(),
            format!("{}/{}/{}", message.topic, message.partition, message.offset).into(),
        );
        event.insert("source".into(), self.source.clone().into());
        event.insert("type".into(), self.event_type.clone().into());
        if let Some(time) = message.timestamp.and_then(rfc3339_from_millis) {
            event.insert("time".into(), time.into());
        }
        if let Some(key) = message
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
        {
            event.insert("partitionkey".into(), key.into());
        }
        if !message.value.is_empty() {
            match serde_json::from_slice::<Value>(&message.value) {
                Ok(data) => {
                    event.insert("datacontenttype".into(), "application/json".into());
                    event.insert("data".into(), data);
                }
                Err(_) => {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(&message.value);
                    event.insert("data_base64".into(), encoded.into());
                }
            }
        }
        Value::Object(event)
    }
}

impl Serialiser for CloudEvents {
    fn init(config: Config) -> Result<Self, String> {
        config::reject_unknown(&config, &["source", "type"])?;
        let source = config::require(&config, "source")?.trim();
        let event_type = config::require(&config, "type")?.trim();
        // The spec requires both to be non-empty strings.
        if source.is_empty() || event_type.is_empty() {
            return Err("`source` and `type` must not be empty".into());
        }
        Ok(CloudEvents {
            source: source.to_string(),
            event_type: event_type.to_string(),
        })
    }

    fn serialise(&mut self, batch: &[Message]) -> Result<Serialised, String> {
        let events: Vec<Value> = batch.iter().map(|m| self.event(m)).collect();
        let body = serde_json::to_vec(&events).map_err(|e| format!("encoding batch: {e}"))?;
        Ok(Serialised {
            content_type: CONTENT_TYPE.to_string(),
            body,
        })
    }
}

wasmhook_guest_sdk::export_serialiser!(CloudEvents);

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC with
/// millisecond precision; `None` outside years 0..=9999, which RFC 3339
/// cannot express. Written out rather than pulling a date crate into every
/// plugin binary.
pub fn rfc3339_from_millis(millis: i64) -> Option<String> {
    let secs = millis.div_euclid(1000);
    let ms = millis.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return None;
    }
    Some(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    ))
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (y, m, d)
/// in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plugin() -> CloudEvents {
        CloudEvents::init(vec![
            ("source".into(), "urn:wasmhook:test".into()),
            ("type".into(), "com.example.order".into()),
        ])
        .unwrap()
    }

    fn msg(offset: i64, value: &[u8]) -> Message {
        Message {
            topic: "orders".into(),
            partition: 3,
            offset,
            timestamp: Some(1_700_000_000_123),
            key: Some(b"customer-9".to_vec()),
            value: value.to_vec(),
            headers: vec![("h".into(), b"v".to_vec())],
        }
    }

    #[test]
    fn batch_is_a_json_array_of_structured_events() {
        let out = plugin()
            .serialise(&[msg(10, br#"{"total":5}"#), msg(11, b"\xff\x00raw")])
            .unwrap();
        assert_eq!(out.content_type, CONTENT_TYPE);
        let events: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            events,
            json!([
                {
                    "specversion": "1.0",
                    "id": "orders/3/10",
                    "source": "urn:wasmhook:test",
                    "type": "com.example.order",
                    "time": "2023-11-14T22:13:20.123Z",
                    "partitionkey": "customer-9",
                    "datacontenttype": "application/json",
                    "data": {"total": 5}
                },
                {
                    "specversion": "1.0",
                    "id": "orders/3/11",
                    "source": "urn:wasmhook:test",
                    "type": "com.example.order",
                    "time": "2023-11-14T22:13:20.123Z",
                    "partitionkey": "customer-9",
                    "data_base64": "/wByYXc="
                }
            ])
        );
    }

    #[test]
    fn optional_attributes_are_omitted_when_absent() {
        let mut m = msg(0, b"");
        m.timestamp = None;
        m.key = Some(vec![0xff]);
        let out = plugin().serialise(&[m]).unwrap();
        let events: Value = serde_json::from_slice(&out.body).unwrap();
        let event = events[0].as_object().unwrap();
        let mut keys: Vec<&str> = event.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["id", "source", "specversion", "type"]);
    }

    #[test]
    fn empty_batch_is_an_empty_array() {
        assert_eq!(plugin().serialise(&[]).unwrap().body, b"[]");
    }

    #[test]
    fn source_and_type_are_required() {
        let err = CloudEvents::init(vec![("source".into(), "s".into())]).unwrap_err();
        assert!(err.contains("`type`"), "{err}");
        let err = CloudEvents::init(vec![
            ("source".into(), " ".into()),
            ("type".into(), "t".into()),
        ])
        .unwrap_err();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn timestamps_format_as_rfc3339() {
        assert_eq!(rfc3339_from_millis(0).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_from_millis(951_782_400_000).unwrap(),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(rfc3339_from_millis(-1).unwrap(), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_from_millis(i64::MAX), None);
        assert_eq!(rfc3339_from_millis(i64::MIN), None);
    }
}
