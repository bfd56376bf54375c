//! Reading a plugin's configuration.
//!
//! The host passes configuration as ordered `(key, value)` pairs. These
//! helpers cover the common cases (one value per key, required keys,
//! comma-separated lists) and produce error messages fit to show an operator.
//! They do not parse values beyond splitting: each plugin knows its own.

/// The last value set for `key`, so a later entry overrides an earlier one.
pub fn get<'a>(config: &'a [(String, String)], key: &str) -> Option<&'a str> {
    config
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Like [`get`], but a missing key is an error naming it.
pub fn require<'a>(config: &'a [(String, String)], key: &str) -> Result<&'a str, String> {
    get(config, key).ok_or_else(|| format!("missing required config key `{key}`"))
}

/// The comma-separated items of `key`'s value, trimmed, without empty ones;
/// empty if the key is absent.
pub fn list(config: &[(String, String)], key: &str) -> Vec<String> {
    get(config, key)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Fails on any key not in `known`, so that a typo in a key is reported
/// instead of silently ignored.
pub fn reject_unknown(config: &[(String, String)], known: &[&str]) -> Result<(), String> {
    match config.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        Some((k, _)) => Err(format!(
            "unknown config key `{k}` (expected one of: {})",
            known.join(", ")
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn later_entries_override_earlier_ones() {
        let c = cfg(&[("a", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!(get(&c, "a"), Some("3"));
        assert_eq!(get(&c, "z"), None);
    }

    #[test]
    fn require_names_the_missing_key() {
        let err = require(&[], "field").unwrap_err();
        assert!(err.contains("`field`"), "{err}");
    }

    #[test]
    fn list_splits_trims_and_drops_empty_items() {
        let c = cfg(&[("in", " a, b ,,c ")]);
        assert_eq!(list(&c, "in"), ["a", "b", "c"]);
        assert!(list(&c, "missing").is_empty());
    }

    #[test]
    fn reject_unknown_names_the_offending_key() {
        let c = cfg(&[("field", "/x"), ("equal", "1")]);
        let err = reject_unknown(&c, &["field", "equals"]).unwrap_err();
        assert!(err.contains("`equal`"), "{err}");
        assert!(reject_unknown(&c[..1], &["field"]).is_ok());
    }
}
