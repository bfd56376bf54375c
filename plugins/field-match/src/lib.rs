//! `field-match`: a filter that keeps messages whose JSON field has one of
//! the configured values.
//!
//! Configuration:
//! - `field` (required): where to look, as a JSON Pointer (`/user/country`)
//!   or a dotted path (`user.country`).
//! - exactly one of `equals=value` or `in=a,b,c`: the accepted values,
//!   compared with the field's text (strings unquoted, numbers and booleans
//!   as JSON prints them, `null`).
//! - `negate=true` (optional): keep the messages that do *not* match.
//! - `missing=keep|drop` (optional, default `drop`): what to do with messages
//!   whose value is not JSON or has no such field (not affected by `negate`).
//!
//! It does not look at keys or headers, and does not do pattern matching.

use wasmhook_guest_sdk::{Config, Filter, Message, config};
use wasmhook_plugin_common::{FieldPath, scalar_text};

/// The parsed configuration; the plugin has no other state.
#[derive(Debug)]
pub struct FieldMatch {
    field: FieldPath,
    accepted: Vec<String>,
    negate: bool,
    keep_missing: bool,
}

impl FieldMatch {
    fn keeps(&self, message: &Message) -> bool {
        // Only the field is built from the value; the rest is only checked
        // to be JSON.
        let Ok(Some(field)) = self.field.find(&message.value) else {
            return self.keep_missing;
        };
        let matched =
            scalar_text(&field).is_some_and(|text| self.accepted.iter().any(|a| *a == text));
        matched != self.negate
    }
}

fn parse_bool(config: &Config, key: &str) -> Result<bool, String> {
    match config::get(config, key) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(format!("`{key}` must be true or false, got `{other}`")),
    }
}

impl Filter for FieldMatch {
    fn init(config: Config) -> Result<Self, String> {
        config::reject_unknown(&config, &["field", "equals", "in", "negate", "missing"])?;
        let field = FieldPath::parse(config::require(&config, "field")?)?;
        let accepted = match (config::get(&config, "equals"), config::get(&config, "in")) {
            (Some(v), None) => vec![v.to_string()],
            (None, Some(_)) => {
                let list = config::list(&config, "in");
                if list.is_empty() {
                    return Err("`in` must list at least one value".into());
                }
                list
            }
            (Some(_), Some(_)) => return Err("set either `equals` or `in`, not both".into()),
            (None, None) => return Err("missing required config key `equals` or `in`".into()),
        };
        let keep_missing = match config::get(&config, "missing") {
            None | Some("drop") => false,
            Some("keep") => true,
            Some(other) => return Err(format!("`missing` must be keep or drop, got `{other}`")),
        };
        Ok(FieldMatch {
            field,
            accepted,
            negate: parse_bool(&config, "negate")?,
            keep_missing,
        })
    }

    fn filter(&mut self, batch: &[Message]) -> Result<Vec<bool>, String> {
        Ok(batch.iter().map(|m| self.keeps(m)).collect())
    }
}

wasmhook_guest_sdk::export_filter!(FieldMatch);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn msg(value: &str) -> Message {
        Message {
            topic: "orders".into(),
            partition: 0,
            offset: 0,
            timestamp: None,
            key: None,
            value: value.as_bytes().to_vec(),
            headers: vec![],
        }
    }

    fn run(config: &[(&str, &str)], values: &[&str]) -> Vec<bool> {
        let mut f = FieldMatch::init(cfg(config)).unwrap();
        let batch: Vec<Message> = values.iter().map(|v| msg(v)).collect();
        f.filter(&batch).unwrap()
    }

    #[test]
    fn equals_keeps_only_matching_messages_in_batch_order() {
        let kept = run(
            &[("field", "/country"), ("equals", "FR")],
            &[
                r#"{"country":"FR"}"#,
                r#"{"country":"DE"}"#,
                r#"{"country":"FR","x":1}"#,
            ],
        );
        assert_eq!(kept, [true, false, true]);
    }

    #[test]
    fn in_matches_any_listed_value_including_numbers_and_booleans() {
        let kept = run(
            &[("field", "a.b"), ("in", "1, true,x")],
            &[
                r#"{"a":{"b":1}}"#,
                r#"{"a":{"b":true}}"#,
                r#"{"a":{"b":"x"}}"#,
                r#"{"a":{"b":2}}"#,
            ],
        );
        assert_eq!(kept, [true, true, true, false]);
    }

    #[test]
    fn non_json_and_missing_fields_are_dropped_unless_configured() {
        let values = ["not json", r#"{"other":1}"#, r#"{"k":[1]}"#];
        assert_eq!(
            run(&[("field", "k"), ("equals", "1")], &values),
            [false, false, false]
        );
        assert_eq!(
            run(
                &[("field", "k"), ("equals", "1"), ("missing", "keep")],
                &values
            ),
            [true, true, false]
        );
    }

    #[test]
    fn negate_inverts_matches_but_not_missing_handling() {
        let kept = run(
            &[("field", "k"), ("equals", "1"), ("negate", "true")],
            &[r#"{"k":1}"#, r#"{"k":2}"#, "garbage"],
        );
        assert_eq!(kept, [false, true, false]);
    }

    #[test]
    fn bad_configuration_is_rejected_with_a_reason() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("equals", "1")], "field"),
            (&[("field", "k")], "equals"),
            (&[("field", "k"), ("equals", "1"), ("in", "1")], "not both"),
            (&[("field", "k"), ("in", " , ")], "at least one"),
            (&[("field", "a..b"), ("equals", "1")], "invalid field path"),
            (
                &[("field", "k"), ("equals", "1"), ("negate", "yes")],
                "negate",
            ),
            (
                &[("field", "k"), ("equals", "1"), ("colour", "red")],
                "colour",
            ),
        ];
        for (config, needle) in cases {
            let err = FieldMatch::init(cfg(config)).unwrap_err();
            assert!(err.contains(needle), "{config:?}: {err}");
        }
    }
}
