//! Who may do what: API tokens, tenants and the topics a tenant may read.
//!
//! An [`AccessToken`] is `whk_` + a 12-character public prefix (stored in
//! clear, to find the row) + a 40-character secret; the registry keeps only
//! its SHA-256. A [`TenantSpec`] names a tenant, its [`TopicAcl`] (exact
//! topic names, or prefixes ending in `*`) and an optional policy plugin the
//! admin makes mandatory for all its subscriptions. Nothing here does I/O.

use std::fmt;

use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::fields::TopicName;
use super::plugin::PluginAttachment;
use super::subscription::{PluginAttachmentRequest, ValidationErrors, parse_attachment};

const TOKEN_SCHEME: &str = "whk_";
const PREFIX_LEN: usize = 12;
const SECRET_LEN: usize = 40;
/// A token chosen by the operator (`--admin-token`) must carry at least this
/// much after `whk_`: 32 random characters are out of reach of guessing.
const MIN_CHOSEN_LEN: usize = 32;

/// A bearer token as presented or minted. Its `Debug` shows only the prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    /// A new random token.
    pub fn generate() -> Self {
        let body: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(PREFIX_LEN + SECRET_LEN)
            .map(char::from)
            .collect();
        Self(format!("{TOKEN_SCHEME}{body}"))
    }

    /// Parses a token as presented in `Authorization: Bearer …` or chosen by
    /// the operator: `whk_` then at least 32 ASCII letters, digits, `-` or `_`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let Some(body) = value.strip_prefix(TOKEN_SCHEME) else {
            return Err(format!("a wasmhook token starts with {TOKEN_SCHEME}"));
        };
        if body.len() < MIN_CHOSEN_LEN || body.len() > 256 {
            return Err(format!(
                "a wasmhook token has {MIN_CHOSEN_LEN} to 256 characters after {TOKEN_SCHEME}"
            ));
        }
        if !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a wasmhook token holds only ASCII letters, digits, '-' and '_'".into());
        }
        Ok(Self(value.to_string()))
    }

    /// The public part, stored in clear to find the token's row.
    pub fn prefix(&self) -> &str {
        &self.0[TOKEN_SCHEME.len()..TOKEN_SCHEME.len() + PREFIX_LEN]
    }

    /// Lowercase hex SHA-256 of the whole token: what the registry keeps.
    /// Tokens are long and random, so a fast hash is enough (no password stretching).
    pub fn hash(&self) -> String {
        hex(&Sha256::digest(self.0.as_bytes()))
    }

    /// The token itself: shown once, to whoever minted it.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken({TOKEN_SCHEME}{}…)", self.prefix())
    }
}

/// True when `presented` hashes to `stored_hash`, compared in constant time.
pub fn hash_matches(presented: &AccessToken, stored_hash: &str) -> bool {
    use subtle::ConstantTimeEq;
    presented
        .hash()
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A tenant's name: 1 to 64 of `[a-zA-Z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantName(String);

impl TenantName {
    pub fn parse(value: String) -> Result<Self, String> {
        if value.is_empty() || value.len() > 64 {
            return Err("must have 1 to 64 characters".into());
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "may only contain ASCII letters, digits, '.', '_' and '-', found {bad:?}"
            ));
        }
        Ok(Self(value))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(value)
    }
}

impl From<TenantName> for String {
    fn from(value: TenantName) -> String {
        value.0
    }
}

/// One entry of a tenant's topic list: an exact topic name, or a prefix
/// ending in `*` (`acme.*` allows `acme.orders`; `*` alone allows every topic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TopicPattern {
    Exact(TopicName),
    Prefix(String),
}

impl TopicPattern {
    pub fn parse(value: String) -> Result<Self, String> {
        match value.strip_suffix('*') {
            Some(prefix) => {
                if prefix.contains('*') {
                    return Err("may hold one '*', at the end".into());
                }
                if !prefix.is_empty() {
                    // A prefix must be the start of some legal topic name.
                    TopicName::parse(format!("{prefix}x"))
                        .map_err(|e| format!("is not a topic prefix: {e}"))?;
                }
                Ok(Self::Prefix(prefix.to_string()))
            }
            None => Ok(Self::Exact(TopicName::parse(value)?)),
        }
    }

    pub fn allows(&self, topic: &str) -> bool {
        match self {
            Self::Exact(name) => name.as_str() == topic,
            Self::Prefix(prefix) => topic.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name.as_str()),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

impl TryFrom<String> for TopicPattern {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(value)
    }
}

impl From<TopicPattern> for String {
    fn from(value: TopicPattern) -> String {
        value.to_string()
    }
}

/// The topics a tenant may subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TopicAcl(pub Vec<TopicPattern>);

impl TopicAcl {
    pub fn allows(&self, topic: &str) -> bool {
        self.0.iter().any(|p| p.allows(topic))
    }
}

impl fmt::Display for TopicAcl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(", "))
    }
}

/// Most patterns in one tenant's topic list.
const MAX_TOPIC_PATTERNS: usize = 256;

/// `POST /1/Tenant` and `PUT /1/Tenant/{id}` bodies.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRequest {
    /// Accepted so that a fetched tenant can be sent back as it is.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub id: Option<serde::de::IgnoredAny>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub created_at: Option<serde::de::IgnoredAny>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<serde::de::IgnoredAny>,
    pub name: Option<String>,
    pub topics: Option<Vec<String>>,
    pub mandatory_policy: Option<PluginAttachmentRequest>,
}

/// A tenant that passed every rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantSpec {
    pub name: TenantName,
    pub topics: TopicAcl,
    /// A policy plugin (shared, uploaded by the admin) run on every message of
    /// every subscription of the tenant, after the subscription's own.
    pub mandatory_policy: Option<PluginAttachment>,
}

impl TenantSpec {
    pub fn parse(request: TenantRequest) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let name = errors.check("name", request.name, TenantName::parse);
        let mut topics = Vec::new();
        match request.topics {
            None => errors.push("topics", "is required: the topics the tenant may read"),
            Some(list) if list.len() > MAX_TOPIC_PATTERNS => errors.push(
                "topics",
                format!("may list at most {MAX_TOPIC_PATTERNS} entries"),
            ),
            Some(list) => {
                for (i, raw) in list.into_iter().enumerate() {
                    if let Some(p) = errors.check(&format!("topics[{i}]"), Some(raw), |r| {
                        TopicPattern::parse(r)
                    }) {
                        topics.push(p);
                    }
                }
            }
        }
        let mandatory_policy = parse_attachment(
            "mandatory_policy",
            request.mandatory_policy,
            None,
            &mut errors,
        );
        // Tenants are stored unsealed: a secret here would sit in plain text.
        if let Some(Some(policy)) = &mandatory_policy
            && !policy.secret_config.is_empty()
        {
            errors.push(
                "mandatory_policy.secret_config",
                "is not supported for a mandatory policy; put the values in config",
            );
        }
        match (name, mandatory_policy) {
            (Some(name), Some(mandatory_policy)) if errors.is_empty() => Ok(Self {
                name,
                topics: TopicAcl(topics),
                mandatory_policy,
            }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_hash_to_what_is_stored() {
        let token = AccessToken::generate();
        assert!(token.reveal().starts_with("whk_"));
        assert_eq!(token.reveal().len(), 4 + 12 + 40);
        let again = AccessToken::parse(token.reveal()).unwrap();
        assert_eq!(again.prefix(), token.prefix());
        assert!(hash_matches(&again, &token.hash()));
        assert!(!hash_matches(&AccessToken::generate(), &token.hash()));
    }

    #[test]
    fn tokens_that_are_short_foreign_or_odd_are_refused() {
        assert!(AccessToken::parse("whk_short").is_err());
        assert!(AccessToken::parse(&format!("abc_{}", "a".repeat(40))).is_err());
        assert!(AccessToken::parse(&format!("whk_{} ", "a".repeat(40))).is_err());
        assert!(AccessToken::parse(&format!("whk_{}", "a".repeat(32))).is_ok());
    }

    #[test]
    fn a_token_debug_shows_only_its_prefix() {
        let token = AccessToken::generate();
        let shown = format!("{token:?}");
        assert!(shown.contains(token.prefix()));
        assert!(!shown.contains(&token.reveal()[16..]));
    }

    #[test]
    fn topic_patterns_are_exact_names_or_prefixes() {
        let acl = TopicAcl(vec![
            TopicPattern::parse("payments".into()).unwrap(),
            TopicPattern::parse("acme.*".into()).unwrap(),
        ]);
        assert!(acl.allows("payments"));
        assert!(!acl.allows("payments2"));
        assert!(acl.allows("acme.orders"));
        assert!(!acl.allows("acme"));
        assert!(!acl.allows("other"));
        assert!(TopicPattern::parse("*".into()).unwrap().allows("anything"));
        assert!(TopicPattern::parse("a*b*".into()).is_err());
        assert!(TopicPattern::parse("bad topic*".into()).is_err());
        assert_eq!(acl.to_string(), "payments, acme.*");
    }

    #[test]
    fn a_tenant_needs_a_name_and_its_topics() {
        let errors = TenantSpec::parse(TenantRequest::default()).unwrap_err();
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "topics"]);
        let spec = TenantSpec::parse(TenantRequest {
            name: Some("acme".into()),
            topics: Some(vec!["payments".into(), "acme.*".into()]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(spec.name.as_str(), "acme");
        assert!(spec.topics.allows("acme.x"));
    }
}
