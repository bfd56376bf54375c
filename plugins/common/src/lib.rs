//! Helpers shared by the first-party plugins: addressing a field inside a
//! JSON message value.
//!
//! A [`FieldPath`] is parsed once, at `init`, so a bad path is a
//! configuration error rather than a per-message one. It does not parse
//! message values; plugins do that with `serde_json`.

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
    fn scalar_text_matches_what_operators_write() {
        assert_eq!(scalar_text(&json!("eu")).as_deref(), Some("eu"));
        assert_eq!(scalar_text(&json!(42)).as_deref(), Some("42"));
        assert_eq!(scalar_text(&json!(true)).as_deref(), Some("true"));
        assert_eq!(scalar_text(&json!(null)).as_deref(), Some("null"));
        assert_eq!(scalar_text(&json!([1])), None);
    }
}
