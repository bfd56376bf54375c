//! Plugin roles, names, versions and a subscription's attachment of a plugin.
//!
//! [`PluginRole`] is the one list of roles: the API's messages, the registry's
//! column and the runtime's choice of world all come from it. Adding a role
//! starts here (then `wit/`, and the role's home in `plugin/roles/`).
//!
//! An attachment names an uploaded plugin by name and version and gives it a
//! configuration (string keys and values, passed to the plugin's `init`);
//! values under `secret_config` reach `init` alike but are sealed at rest and
//! only ever shown masked.
//! Whether the named plugin exists and has the right role is the API's check
//! (it needs the registry); this module only parses.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which world a plugin implements, and so where a subscription may attach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginRole {
    /// Keeps or drops each message (`source[].filter_plugin`).
    Filter,
    /// Makes the request body of a batch (`configuration.serialiser_plugin`).
    Serialiser,
    /// Allows, denies or redacts each message for a subscriber (`source[].policy_plugin`).
    Policy,
}

impl PluginRole {
    /// Every role, in the order messages list them.
    pub const ALL: [PluginRole; 3] = [
        PluginRole::Filter,
        PluginRole::Serialiser,
        PluginRole::Policy,
    ];

    /// The name used in the API and the registry, and the WIT world's name.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginRole::Filter => "filter",
            PluginRole::Serialiser => "serialiser",
            PluginRole::Policy => "policy",
        }
    }

    /// "filter, serialiser or policy", for messages that list the choices.
    pub fn choices() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|r| r.as_str()).collect();
        match names.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

impl fmt::Display for PluginRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string was not the name of a role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown plugin role `{0}` (expected {choices})", choices = PluginRole::choices())]
pub struct UnknownRole(pub String);

impl FromStr for PluginRole {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// A plugin's name: 1 to 64 of `[a-z0-9-_]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PluginName(String);

impl PluginName {
    pub fn parse(value: String) -> Result<Self, String> {
        if value.is_empty() || value.len() > 64 {
            return Err(format!(
                "must be 1 to 64 characters, got {}",
                value.chars().count()
            ));
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_')))
        {
            return Err(format!(
                "may only contain a-z, 0-9, '-' and '_', found {bad:?}"
            ));
        }
        Ok(Self(value))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A plugin's version, semver-shaped: `MAJOR.MINOR.PATCH`, optionally
/// followed by `-prerelease` and `+build` of `[0-9A-Za-z.-]`; at most 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PluginVersion(String);

impl PluginVersion {
    pub fn parse(value: String) -> Result<Self, String> {
        let wrong = || format!("must look like 1.2.3 (semver), got {value:?}");
        if value.len() > 64 {
            return Err(format!(
                "must be at most 64 characters, got {}",
                value.len()
            ));
        }
        let (rest, build) = match value.split_once('+') {
            Some((rest, build)) => (rest, Some(build)),
            None => (value.as_str(), None),
        };
        let (core, pre) = match rest.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (rest, None),
        };
        let numbers: Vec<&str> = core.split('.').collect();
        let numeric = |n: &&str| {
            !n.is_empty()
                && n.len() <= 9
                && n.bytes().all(|b| b.is_ascii_digit())
                && (n.len() == 1 || !n.starts_with('0'))
        };
        if numbers.len() != 3 || !numbers.iter().all(numeric) {
            return Err(wrong());
        }
        let label = |l: &str| {
            !l.is_empty()
                && l.split('.').all(|part| {
                    !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        };
        if pre.is_some_and(|p| !label(p)) || build.is_some_and(|b| !label(b)) {
            return Err(wrong());
        }
        Ok(Self(value))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

super::fields::string_newtype_conversions!(PluginName, PluginVersion);

impl fmt::Display for PluginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for PluginVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Most configuration entries an attachment may carry, and the longest key
/// and value: plugins are configured, not fed data, this way.
const MAX_CONFIG_ENTRIES: usize = 64;
const MAX_CONFIG_KEY: usize = 128;
const MAX_CONFIG_VALUE: usize = 4096;

/// A plugin's configuration: string pairs in the order given, shown as a JSON object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginConfig(Vec<(String, String)>);

impl PluginConfig {
    /// Parses a JSON object of strings; `Err` holds `(key, message)` pairs
    /// (an empty key for the object as a whole).
    pub fn parse(
        object: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Vec<(String, String)>> {
        let mut errors = Vec::new();
        if object.len() > MAX_CONFIG_ENTRIES {
            errors.push((
                String::new(),
                format!(
                    "must have at most {MAX_CONFIG_ENTRIES} entries, got {}",
                    object.len()
                ),
            ));
        }
        let mut pairs = Vec::with_capacity(object.len());
        for (key, value) in object {
            if key.is_empty() || key.len() > MAX_CONFIG_KEY {
                errors.push((key, format!("keys must be 1 to {MAX_CONFIG_KEY} bytes")));
                continue;
            }
            match value {
                serde_json::Value::String(text) if text.len() <= MAX_CONFIG_VALUE => {
                    pairs.push((key, text))
                }
                serde_json::Value::String(_) => {
                    errors.push((key, format!("must be at most {MAX_CONFIG_VALUE} bytes")))
                }
                other => errors.push((key, format!("must be a string, got {other}"))),
            }
        }
        if errors.is_empty() {
            Ok(Self(pairs))
        } else {
            Err(errors)
        }
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Configuration values that are secrets (tokens, passwords): passed to
/// `init` like the others, sealed by the registry, masked in responses and in
/// `Debug`. Its serialised form (for the registry, which seals it) is in full.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretConfig(pub PluginConfig);

impl SecretConfig {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Makes the secret part of an attachment from what was sent: a key may
    /// not also be in `plain`, and a masked value stands for the one stored in
    /// `previous` (the same plugin's, where it was attached before). `Err`
    /// holds `(key, message)` pairs.
    pub fn resolve(
        sent: PluginConfig,
        plain: &PluginConfig,
        previous: Option<&SecretConfig>,
    ) -> Result<Self, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut pairs = Vec::with_capacity(sent.0.len());
        for (key, value) in sent.0 {
            if plain.get(&key).is_some() {
                errors.push((
                    key,
                    "is also a key of config; a key is either plain or secret".to_string(),
                ));
                continue;
            }
            if value != super::fields::MASK {
                pairs.push((key, value));
                continue;
            }
            match previous.and_then(|p| p.0.get(&key)) {
                Some(stored) => {
                    let stored = stored.to_string();
                    pairs.push((key, stored));
                }
                None => errors.push((
                    key,
                    format!(
                        "{} stands for a stored value, but this plugin has none stored here \
                         under that key; send the value",
                        super::fields::MASK
                    ),
                )),
            }
        }
        if errors.is_empty() {
            Ok(Self(PluginConfig(pairs)))
        } else {
            Err(errors)
        }
    }
}

impl fmt::Debug for SecretConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.pairs().iter().map(|(k, _)| (k, super::fields::MASK)))
            .finish()
    }
}

impl Serialize for PluginConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for PluginConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let object = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        Self::parse(object).map_err(|errors| {
            let (key, message) = &errors[0];
            serde::de::Error::custom(format!("config {key:?}: {message}"))
        })
    }
}

/// A plugin attached to a subscription: which one, and its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginAttachment {
    pub name: PluginName,
    pub version: PluginVersion,
    #[serde(default)]
    pub config: PluginConfig,
    #[serde(default, skip_serializing_if = "SecretConfig::is_empty")]
    pub secret_config: SecretConfig,
}

impl PluginAttachment {
    /// What the plugin's `init` receives: `config`, then `secret_config`
    /// (parsing keeps their keys apart).
    pub fn init_config(&self) -> Vec<(String, String)> {
        let mut pairs = self.config.pairs().to_vec();
        pairs.extend(self.secret_config.0.pairs().iter().cloned());
        pairs
    }

    /// The attachment as answers show it: every `secret_config` value masked,
    /// as a subscription's are (secrets are never echoed).
    pub fn to_public_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("an attachment always serialises");
        if let Some(secrets) = value
            .get_mut("secret_config")
            .and_then(serde_json::Value::as_object_mut)
        {
            for secret in secrets.values_mut() {
                *secret = super::fields::MASK.into();
            }
        }
        value
    }

    /// `text` with every secret config value replaced by the mask: a plugin
    /// may quote its configuration back in an error.
    pub fn scrub(&self, text: &str) -> String {
        let mut values: Vec<&str> = self
            .secret_config
            .0
            .pairs()
            .iter()
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
            .collect();
        // Longest first, so a secret containing another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.into_iter().fold(text.to_string(), |text, v| {
            text.replace(v, super::fields::MASK)
        })
    }
}

impl fmt::Display for PluginAttachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_from_their_names_only() {
        for role in PluginRole::ALL {
            assert_eq!(role.as_str().parse::<PluginRole>(), Ok(role));
        }
        let err = "serializer".parse::<PluginRole>().unwrap_err();
        assert_eq!(err, UnknownRole("serializer".into()));
        assert_eq!(
            err.to_string(),
            "unknown plugin role `serializer` (expected filter, serialiser or policy)"
        );
    }

    #[test]
    fn names_are_short_lowercase_words() {
        assert!(PluginName::parse("field-match_2".into()).is_ok());
        assert!(PluginName::parse("".into()).is_err());
        assert!(PluginName::parse("Field".into()).is_err());
        assert!(PluginName::parse("a/b".into()).is_err());
        assert!(PluginName::parse("a".repeat(64)).is_ok());
        assert!(PluginName::parse("a".repeat(65)).is_err());
    }

    #[test]
    fn versions_are_semver_shaped() {
        for ok in [
            "0.1.0",
            "1.2.3",
            "10.0.1-rc.1",
            "1.0.0+build.5",
            "1.0.0-alpha-2+x",
        ] {
            assert!(PluginVersion::parse(ok.into()).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "01.2.3",
            "1.2.x",
            "1.2.3-",
            "1.2.3+",
            "v1.2.3",
            "1.2.3-a..b",
        ] {
            assert!(PluginVersion::parse(bad.into()).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_keeps_string_pairs_in_order_and_names_bad_values() {
        let object = serde_json::json!({"b": "2", "a": "1"});
        let config = PluginConfig::parse(object.as_object().unwrap().clone()).unwrap();
        assert_eq!(
            config.pairs(),
            [("b".to_string(), "2".to_string()), ("a".into(), "1".into())]
        );
        assert_eq!(serde_json::to_value(&config).unwrap(), object);
        let bad = serde_json::json!({"n": 1, "ok": "x"});
        let errors = PluginConfig::parse(bad.as_object().unwrap().clone()).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, "n");
    }

    #[test]
    fn a_masked_secret_value_keeps_the_stored_one_and_keys_stay_apart() {
        let config =
            |v: serde_json::Value| PluginConfig::parse(v.as_object().unwrap().clone()).unwrap();
        let stored = SecretConfig(config(serde_json::json!({"token": "t"})));
        let plain = config(serde_json::json!({"field": "/a"}));
        let kept = SecretConfig::resolve(
            config(serde_json::json!({"token": "********", "other": "o"})),
            &plain,
            Some(&stored),
        )
        .unwrap();
        assert_eq!(
            kept.0.pairs(),
            [
                ("token".to_string(), "t".to_string()),
                ("other".into(), "o".into())
            ]
        );
        let errors = SecretConfig::resolve(
            config(serde_json::json!({"token": "********", "field": "x"})),
            &plain,
            None,
        )
        .unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["token", "field"]);
    }

    #[test]
    fn secret_config_reaches_init_but_not_debug_or_errors() {
        let object = |v: serde_json::Value| v.as_object().unwrap().clone();
        let attachment = PluginAttachment {
            name: PluginName::parse("p".into()).unwrap(),
            version: PluginVersion::parse("1.0.0".into()).unwrap(),
            config: PluginConfig::parse(object(serde_json::json!({"field": "/a"}))).unwrap(),
            secret_config: SecretConfig(
                PluginConfig::parse(object(serde_json::json!({"token": "t0ken-value"}))).unwrap(),
            ),
        };
        assert_eq!(
            attachment.init_config(),
            [
                ("field".to_string(), "/a".to_string()),
                ("token".into(), "t0ken-value".into())
            ]
        );
        let debug = format!("{attachment:?}");
        assert!(
            !debug.contains("t0ken-value") && debug.contains("token"),
            "{debug}"
        );
        assert_eq!(
            attachment.scrub("bad token t0ken-value!"),
            "bad token ********!"
        );
        let stored = serde_json::to_value(&attachment).unwrap();
        assert_eq!(stored["secret_config"]["token"], "t0ken-value");
        assert_eq!(
            serde_json::from_value::<PluginAttachment>(stored).unwrap(),
            attachment
        );
    }
}
