//! Single-field newtypes, each with a `parse` that names what is wrong.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a masked secret looks like in every response.
pub const MASK: &str = "********";

fn in_range(value: i64, min: i64, max: i64) -> Result<i64, String> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(format!("must be between {min} and {max}, got {value}"))
    }
}

/// Messages per webhook request: 1 to 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct BatchSize(u16);

impl BatchSize {
    pub fn parse(value: i64) -> Result<Self, String> {
        in_range(value, 1, 1000).map(|v| Self(v as u16))
    }
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

/// Longest wait before a partial batch is sent: 1 to 300 seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct BatchInterval(u16);

impl BatchInterval {
    pub fn parse(value: i64) -> Result<Self, String> {
        in_range(value, 1, 300).map(|v| Self(v as u16))
    }
    pub fn seconds(self) -> u64 {
        self.0 as u64
    }
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.seconds())
    }
}

/// Retries after the first attempt: 0 (none) to 10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct MaxRetries(u8);

impl MaxRetries {
    pub fn parse(value: i64) -> Result<Self, String> {
        in_range(value, 0, 10).map(|v| Self(v as u8))
    }
    pub fn get(self) -> u32 {
        self.0 as u32
    }
}

/// Requests per second a subscription may send: 1 to 10000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct RateLimit(u32);

impl RateLimit {
    pub fn parse(value: i64) -> Result<Self, String> {
        in_range(value, 1, 10_000).map(|v| Self(v as u32))
    }
    pub fn per_second(self) -> u32 {
        self.0
    }
}

macro_rules! int_newtype_conversions {
    ($($ty:ident),*) => {$(
        impl TryFrom<i64> for $ty {
            type Error = String;
            fn try_from(value: i64) -> Result<Self, String> {
                Self::parse(value)
            }
        }
        impl From<$ty> for i64 {
            fn from(value: $ty) -> i64 {
                value.0 as i64
            }
        }
    )*};
}
int_newtype_conversions!(BatchSize, BatchInterval, MaxRetries, RateLimit);

/// Defines a string enum of the API, with the API's spelling.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const CHOICES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!(
                        "must be one of {}, got {:?}",
                        Self::CHOICES.join(" | "),
                        other
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// Whether a subscription delivers: `yes` or `no`.
    Active { Yes => "yes", No => "no" }
);
wire_enum!(
    /// How the wait between attempts grows.
    RetryAlgorithm { ExponentialBackoff => "exponential_backoff", FixedTime => "fixed_time" }
);
wire_enum!(
    /// Where alerts go. Email is the only channel so far.
    AlertChannel { Email => "email" }
);

impl Active {
    pub fn is_active(self) -> bool {
        self == Active::Yes
    }
}

/// A subscription's display name: 1 to 200 characters, not blank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SubscriptionName(String);

impl SubscriptionName {
    pub fn parse(value: String) -> Result<Self, String> {
        if value.trim().is_empty() {
            Err("must not be empty".into())
        } else if value.chars().count() > 200 {
            Err("must be at most 200 characters".into())
        } else if value.chars().any(char::is_control) {
            Err("must not contain control characters".into())
        } else {
            Ok(Self(value))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An absolute `http` or `https` URL with a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookUrl(url::Url);

impl WebhookUrl {
    pub fn parse(value: &str) -> Result<Self, String> {
        let url = url::Url::parse(value).map_err(|e| format!("is not an absolute URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("must use http or https, got {:?}", url.scheme()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("must name a host".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            // Credentials in the URL would be echoed in responses and logs.
            return Err("must not carry credentials; use a header instead".into());
        }
        Ok(Self(url))
    }
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
    pub fn url(&self) -> &url::Url {
        &self.0
    }
}

/// A Kafka topic name: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicName(String);

impl TopicName {
    pub fn parse(value: String) -> Result<Self, String> {
        if value.is_empty() {
            return Err("must not be empty".into());
        }
        if value.len() > 249 {
            return Err(format!(
                "must be at most 249 characters, got {}",
                value.len()
            ));
        }
        if value == "." || value == ".." {
            return Err(format!("{value:?} is not a legal Kafka topic name"));
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

/// A JMESPath expression, compiled once when the subscription is registered.
#[derive(Clone)]
pub struct JmesFilter {
    source: String,
    compiled: std::sync::Arc<jmespath::Expression<'static>>,
}

impl JmesFilter {
    pub fn parse(value: String) -> Result<Self, String> {
        if value.trim().is_empty() {
            return Err("must not be empty".into());
        }
        let compiled = jmespath::compile(&value)
            .map_err(|e| format!("is not a valid JMESPath expression: {e}"))?;
        Ok(Self {
            source: value,
            compiled: std::sync::Arc::new(compiled),
        })
    }
    pub fn as_str(&self) -> &str {
        &self.source
    }
    /// True when the expression yields a truthy value for `document`
    /// (JMESPath truthiness: not null, false, "", [] or {}).
    pub fn matches(&self, document: &jmespath::Variable) -> bool {
        self.compiled
            .search(document)
            .map(|result| result.is_truthy())
            .unwrap_or(false)
    }
}

impl fmt::Debug for JmesFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JmesFilter").field(&self.source).finish()
    }
}

impl PartialEq for JmesFilter {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for JmesFilter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for JmesFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Headers wasmhook sets itself; a subscription may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// One `Name: value` header for the destination. The value may be a shared
/// secret, so it is only ever shown masked.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeaderLine {
    name: reqwest::header::HeaderName,
    value: reqwest::header::HeaderValue,
}

impl HeaderLine {
    pub fn parse(line: &str) -> Result<Self, String> {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| "must have the form \"Name: value\"".to_string())?;
        let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("{:?} is not a valid header name", name.trim()))?;
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(format!(
                "{name} is set by wasmhook and cannot be overridden"
            ));
        }
        let value = reqwest::header::HeaderValue::from_str(value.trim())
            .map_err(|_| format!("the value of {name} is not a valid header value"))?;
        Ok(Self { name, value })
    }
    pub fn name(&self) -> &reqwest::header::HeaderName {
        &self.name
    }
    pub fn value(&self) -> &reqwest::header::HeaderValue {
        &self.value
    }
    /// The line as responses show it: the name, and the value masked.
    pub fn masked(&self) -> String {
        format!("{}: {MASK}", self.name)
    }
    /// True when the client sent back the masked form instead of a value.
    pub fn is_mask(&self) -> bool {
        self.value.as_bytes() == MASK.as_bytes()
    }
}

impl fmt::Debug for HeaderLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl TryFrom<String> for HeaderLine {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(&value)
    }
}

impl From<HeaderLine> for String {
    fn from(h: HeaderLine) -> String {
        format!(
            "{}: {}",
            h.name,
            String::from_utf8_lossy(h.value.as_bytes())
        )
    }
}

/// An email address, checked against RFC 5322's grammar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(value: String) -> Result<Self, String> {
        // The crate accepts display forms like `Name <a@b>`; alerts want a bare address.
        if email_address::EmailAddress::is_valid(&value) && !value.contains('<') {
            Ok(Self(value))
        } else {
            Err(format!("{value:?} is not a valid email address"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype_conversions {
    ($($ty:ident),*) => {$(
        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                Self::parse(value)
            }
        }
        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0
            }
        }
    )*};
}
pub(super) use string_newtype_conversions;
string_newtype_conversions!(SubscriptionName, TopicName, EmailAddress);

impl TryFrom<String> for WebhookUrl {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(&value)
    }
}

impl From<WebhookUrl> for String {
    fn from(value: WebhookUrl) -> String {
        value.0.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_accepts_its_bounds_and_rejects_beyond() {
        assert!(BatchSize::parse(0).is_err());
        assert_eq!(BatchSize::parse(1).unwrap().get(), 1);
        assert_eq!(BatchSize::parse(1000).unwrap().get(), 1000);
        assert!(BatchSize::parse(1001).is_err());
    }

    #[test]
    fn interval_and_retries_follow_the_api_ranges() {
        assert!(BatchInterval::parse(0).is_err());
        assert!(BatchInterval::parse(300).is_ok());
        assert!(BatchInterval::parse(301).is_err());
        assert!(MaxRetries::parse(-1).is_err());
        assert!(MaxRetries::parse(0).is_ok());
        assert!(MaxRetries::parse(10).is_ok());
        assert!(MaxRetries::parse(11).is_err());
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(TopicName::parse("orders.v1_x-y".into()).is_ok());
        assert!(TopicName::parse("".into()).is_err());
        assert!(TopicName::parse("..".into()).is_err());
        assert!(TopicName::parse("a b".into()).is_err());
        assert!(TopicName::parse("a".repeat(249)).is_ok());
        assert!(TopicName::parse("a".repeat(250)).is_err());
    }

    #[test]
    fn webhook_urls_must_be_absolute_http() {
        assert!(WebhookUrl::parse("https://example.com/hook").is_ok());
        assert!(WebhookUrl::parse("/relative").is_err());
        assert!(WebhookUrl::parse("ftp://example.com").is_err());
        assert!(WebhookUrl::parse("https://user:pw@example.com").is_err());
    }

    #[test]
    fn header_lines_keep_the_name_and_hide_the_value() {
        let h = HeaderLine::parse("Authorization: Bearer s3cret").unwrap();
        assert_eq!(h.masked(), "authorization: ********");
        assert!(!format!("{h:?}").contains("s3cret"));
        assert!(HeaderLine::parse("no colon").is_err());
        assert!(HeaderLine::parse("Content-Length: 3").is_err());
        assert!(HeaderLine::parse("bad name: x").is_err());
    }

    #[test]
    fn jmes_filters_compile_once_and_use_truthiness() {
        let f = JmesFilter::parse("amount > `10`".into()).unwrap();
        let doc = jmespath::Variable::from_json(r#"{"amount": 12}"#).unwrap();
        assert!(f.matches(&doc));
        let doc = jmespath::Variable::from_json(r#"{"amount": 2}"#).unwrap();
        assert!(!f.matches(&doc));
        assert!(JmesFilter::parse("amount >".into()).is_err());
    }

    #[test]
    fn enums_use_the_api_spelling() {
        assert_eq!(
            "exponential_backoff".parse::<RetryAlgorithm>(),
            Ok(RetryAlgorithm::ExponentialBackoff)
        );
        assert!("Yes".parse::<Active>().is_err());
        assert!(EmailAddress::parse("ops@example.com".into()).is_ok());
        assert!(EmailAddress::parse("not-an-address".into()).is_err());
    }
}
