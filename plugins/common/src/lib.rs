//! Helpers shared by the first-party plugins: addressing a field inside a
//! JSON message value.
//!
//! A [`FieldPath`] is parsed once, at `init`, so a bad path is a
//! configuration error rather than a per-message one. It finds its field in
//! a parsed value ([`FieldPath::get`]), or straight in the JSON text
//! ([`FieldPath::find`]), building nothing but the field.

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// A path to a field of a JSON value.
///
/// Two spellings are accepted: a JSON Pointer (RFC 6901) such as
/// `/user/id` or `/items/0`, and a dotted path such as `user.id`. A dotted
/// path cannot address keys containing dots; use a pointer for those.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    segments: Vec<String>,
}

impl FieldPath {
    /// Parses a pointer (leading `/`) or a dotted path. Empty paths and
    /// empty segments are rejected, since they would address the whole
    /// value or nothing, which is never what an operator means.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        let segments: Vec<String> = if let Some(pointer) = spec.strip_prefix('/') {
            pointer
                .split('/')
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect()
        } else {
            spec.split('.').map(str::to_string).collect()
        };
        if spec.is_empty() || segments.iter().any(String::is_empty) {
            return Err(format!("invalid field path `{spec}`: empty segment"));
        }
        Ok(FieldPath { segments })
    }

    /// The field, if the value has it. Array elements are addressed by index.
    pub fn get<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        self.segments.iter().try_fold(value, |v, seg| match v {
            Value::Object(map) => map.get(seg),
            Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
    }

    /// The field, read from JSON text without building the rest of the
    /// value (a filter that looks at one field of each message need not pay
    /// for a tree of all of them): `Err(NotJson)` when the text is not JSON,
    /// `Ok(None)` when the value has no such field. The same answers as
    /// parsing the whole value and [`FieldPath::get`], except that what the
    /// parser refuses only when building a value (nesting deeper than 128
    /// levels, a number beyond a double's range) is refused only on the
    /// path to the field.
    pub fn find(&self, json: &[u8]) -> Result<Option<Value>, NotJson> {
        // JSON text is UTF-8 throughout; the parts skipped below are not
        // checked for it, so it is checked first.
        let text = std::str::from_utf8(json).map_err(|_| NotJson)?;
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let found = Along(&self.segments)
            .deserialize(&mut deserializer)
            .map_err(|_| NotJson)?;
        deserializer.end().map_err(|_| NotJson)?;
        Ok(found)
    }

    /// Removes the field; returns whether it was there.
    pub fn remove(&self, value: &mut Value) -> bool {
        let Some((last, parents)) = self.segments.split_last() else {
            return false;
        };
        let mut v = value;
        for seg in parents {
            v = match v {
                Value::Object(map) => match map.get_mut(seg) {
                    Some(child) => child,
                    None => return false,
                },
                Value::Array(items) => {
                    match seg.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                        Some(child) => child,
                        None => return false,
                    }
                }
                _ => return false,
            };
        }
        match v {
            Value::Object(map) => map.remove(last).is_some(),
            Value::Array(items) => match last.parse::<usize>() {
                Ok(i) if i < items.len() => {
                    items.remove(i);
                    true
                }
                _ => false,
            },
            _ => false,
        }
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.segments.join("."))
    }
}

/// The text given to [`FieldPath::find`] is not JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotJson;

/// Follows the remaining segments of a path through a value being parsed:
/// the field at the end is built, everything beside the path only checked.
struct Along<'p>(&'p [String]);

impl<'de> DeserializeSeed<'de> for Along<'_> {
    type Value = Option<Value>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        if self.0.is_empty() {
            return de::Deserialize::deserialize(deserializer).map(Some);
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Along<'_> {
    type Value = Option<Value>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let (segment, rest) = self.0.split_first().expect("a segment is left");
        let mut found = None;
        while let Some(is_segment) = map.next_key_seed(KeyIs(segment))? {
            if is_segment {
                // A repeated key: the last one counts, as in a parsed value.
                found = map.next_value_seed(Along(rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        let (segment, rest) = self.0.split_first().expect("a segment is left");
        let wanted = segment.parse::<usize>().ok();
        let mut found = None;
        for index in 0.. {
            if Some(index) == wanted {
                match seq.next_element_seed(Along(rest))? {
                    Some(field) => found = field,
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
        }
        Ok(found)
    }

    // A scalar has no fields.
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Whether an object key is the segment, compared without allocating.
struct KeyIs<'s>(&'s str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

/// A scalar field as the text an operator would write in configuration:
/// strings without quotes, numbers and booleans as JSON prints them, `null`
/// as `null`. Objects and arrays have no such text and give `None`.
pub fn scalar_text(value: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        Value::Null => Some("null".into()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointer_and_dotted_paths_address_the_same_field() {
        let v = json!({"user": {"id": 7, "tags": ["a", "b"]}});
        let ptr = FieldPath::parse("/user/id").unwrap();
        let dot = FieldPath::parse("user.id").unwrap();
        assert_eq!(ptr, dot);
        assert_eq!(ptr.get(&v), Some(&json!(7)));
        assert_eq!(
            FieldPath::parse("/user/tags/1").unwrap().get(&v),
            Some(&json!("b"))
        );
        assert_eq!(FieldPath::parse("user.missing").unwrap().get(&v), None);
        assert_eq!(FieldPath::parse("user.id.deeper").unwrap().get(&v), None);
    }

    #[test]
    fn pointer_escapes_are_decoded() {
        let v = json!({"a/b": {"c~d": 1}});
        assert_eq!(
            FieldPath::parse("/a~1b/c~0d").unwrap().get(&v),
            Some(&json!(1))
        );
    }

    #[test]
    fn empty_paths_and_segments_are_rejected() {
        for bad in ["", "/", "a..b", "/a//b", "a."] {
            assert!(FieldPath::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn remove_deletes_nested_fields_and_reports_absence() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "d": [1, 2, 3]});
        assert!(FieldPath::parse("a.b").unwrap().remove(&mut v));
        assert!(FieldPath::parse("/d/0").unwrap().remove(&mut v));
        assert!(!FieldPath::parse("a.zz").unwrap().remove(&mut v));
        assert!(!FieldPath::parse("x.y").unwrap().remove(&mut v));
        assert_eq!(v, json!({"a": {"c": 2}, "d": [2, 3]}));
    }

    #[test]
    fn finding_a_field_in_the_text_answers_as_parsing_the_whole_value() {
        let documents = [
            r#"{"user":{"id":7,"tags":["a","b"],"n":null},"pad":"xxxx","k":[1,{"x":2}]}"#,
            r#"{"user":{"id":1},"user":{"name":"second"}}"#,
            r#"{"us\u0065r":{"id":"escaped"},"a/b":{"c~d":true}}"#,
            r#"{"user":[{"id":1},{"id":2}],"k":"text"}"#,
            r#"[{"user":1},["x","y"],3]"#,
            r#""a string""#,
            "12.5",
            "null",
            "{}",
            "[]",
        ];
        let paths = [
            "user",
            "user.id",
            "user.tags",
            "/user/tags/1",
            "/user/tags/9",
            "user.n",
            "user.name",
            "/a~1b/c~0d",
            "k.0",
            "/k/1/x",
            "/k/1",
            "0",
            "/0/user",
            "1.1",
            "missing",
            "user.id.deeper",
            "pad",
        ];
        for text in documents {
            let value: Value = serde_json::from_str(text).unwrap();
            for path in paths {
                let path = FieldPath::parse(path).unwrap();
                assert_eq!(
                    path.find(text.as_bytes()),
                    Ok(path.get(&value).cloned()),
                    "{path} in {text}"
                );
            }
        }
    }

    #[test]
    fn text_that_is_not_json_is_refused_wherever_the_fault_is() {
        let path = FieldPath::parse("user.id").unwrap();
        for text in [
            &br#"{"user":{"id":1},"pad":"unterminated}"#[..],
            br#"{"user":{"id":1},"pad":[1,2}"#,
            br#"{"user":{"id":1}} trailing"#,
            br#"{"user":{"id":1},"pad":"bad \q escape"}"#,
            b"{\"user\":{\"id\":1},\"pad\":\"\xff\"}",
            b"",
            b"not json",
        ] {
            assert_eq!(
                path.find(text),
                Err(NotJson),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn scalar_text_matches_what_operators_write() {
        assert_eq!(scalar_text(&json!("eu")).as_deref(), Some("eu"));
        assert_eq!(scalar_text(&json!(42)).as_deref(), Some("42"));
        assert_eq!(scalar_text(&json!(true)).as_deref(), Some("true"));
        assert_eq!(scalar_text(&json!(null)).as_deref(), Some("null"));
        assert_eq!(scalar_text(&json!([1])), None);
    }
}
