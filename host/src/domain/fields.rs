//! Single-field newtypes, each with a `parse` that names what is wrong.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::jmes::{JmesDocument, Reads};

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

/// Most bytes of message content (values, keys and headers) in one webhook
/// request: 1 KiB to 64 MiB. A message larger than the cap goes alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct BatchBytes(u32);

impl BatchBytes {
    pub const MIN: i64 = 1 << 10;
    pub const MAX: i64 = 64 << 20;

    pub fn parse(value: i64) -> Result<Self, String> {
        in_range(value, Self::MIN, Self::MAX).map(|v| Self(v as u32))
    }
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

/// Batches of one subscription delivered at once: 1 (one at a time, in order
/// across the subscription) to 64. Each partition stays in order whatever the
/// value: its batches are never in flight together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct MaxInFlightBatches(u8);

impl MaxInFlightBatches {
    pub const MAX: i64 = 64;
    /// One batch at a time: what a subscription that does not say gets.
    pub const ONE: Self = Self(1);

    pub fn parse(value: i64) -> Result<Self, String> {
        in_range(value, 1, Self::MAX).map(|v| Self(v as u8))
    }
    pub fn get(self) -> usize {
        self.0 as usize
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

/// The wait between attempts of `fixed_time` retries: 1 to 300 seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct FixedDelay(u16);

impl FixedDelay {
    pub fn parse(value: i64) -> Result<Self, String> {
        in_range(value, 1, 300).map(|v| Self(v as u16))
    }
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0 as u64)
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
int_newtype_conversions!(
    BatchSize,
    BatchBytes,
    BatchInterval,
    MaxInFlightBatches,
    MaxRetries,
    FixedDelay,
    RateLimit
);

/// Defines a string enum of the API, with the API's spelling.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$variant_attr:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$variant_attr])* #[serde(rename = $text)] $variant),+
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
    /// Where alerts go: mail to a list of addresses, or a signed POST to a URL.
    AlertChannel { Email => "email", Webhook => "webhook" }
);
wire_enum!(
    /// What the built-in JSON body holds per message: the envelope (topic,
    /// partition, offset, key, headers, value) or the value alone.
    #[derive(Default)]
    BodyFormat { #[default] Envelope => "envelope", Values => "values" }
);

impl BodyFormat {
    pub fn is_envelope(&self) -> bool {
        *self == BodyFormat::Envelope
    }
}

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
    /// What it can read of a document: a document is parsed that far only.
    reads: std::sync::Arc<Reads>,
}

/// Longest JMESPath expression accepted, in bytes.
pub const MAX_JMES_BYTES: usize = 1024;
/// Deepest nesting of a JMESPath expression accepted, both as written
/// (brackets, `!`, `&`, projections) and as compiled (the syntax tree).
pub const MAX_JMES_DEPTH: usize = 32;

impl JmesFilter {
    /// The `jmespath` crate parses, searches and drops its syntax tree
    /// recursively, so a deeply nested expression would overflow the stack
    /// and kill the process: the length and the nesting are bounded before
    /// the parser sees it, and the compiled tree before anything searches it.
    pub fn parse(value: String) -> Result<Self, String> {
        if value.trim().is_empty() {
            return Err("must not be empty".into());
        }
        if value.len() > MAX_JMES_BYTES {
            return Err(format!(
                "must be at most {MAX_JMES_BYTES} bytes, got {}",
                value.len()
            ));
        }
        let written = written_depth(&value);
        if written > MAX_JMES_DEPTH {
            return Err(format!(
                "nests {written} levels deep; at most {MAX_JMES_DEPTH} are allowed"
            ));
        }
        let compiled = jmespath::compile(&value)
            .map_err(|e| format!("is not a valid JMESPath expression: {e}"))?;
        let depth = ast_depth(compiled.as_ast());
        if depth > MAX_JMES_DEPTH {
            return Err(format!(
                "nests {depth} levels deep once compiled; at most {MAX_JMES_DEPTH} are allowed \
                 (a long chain of '.', '|', '||', '&&' or comparisons counts one level per link)"
            ));
        }
        let reads = Reads::of(compiled.as_ast());
        Ok(Self {
            source: value,
            compiled: std::sync::Arc::new(compiled),
            reads: std::sync::Arc::new(reads),
        })
    }
    pub fn as_str(&self) -> &str {
        &self.source
    }
    /// What the expression can read of a document ([`JmesDocument::read`]).
    pub fn reads(&self) -> &Reads {
        &self.reads
    }
    /// True when the expression yields a truthy value for `document`
    /// (JMESPath truthiness: not null, false, "", [] or {}).
    pub fn matches(&self, document: &JmesDocument) -> bool {
        self.search(document)
            .map(|result| result.is_truthy())
            .unwrap_or(false)
    }
    /// What the expression yields for `document`; `None` for null (nothing
    /// found) or an error (a function given the wrong type).
    pub fn value(&self, document: &JmesDocument) -> Option<jmespath::Rcvar> {
        self.search(document)
            .ok()
            .filter(|result| !result.is_null())
    }
    /// Searches the document as it is. (`Expression::search` would first
    /// copy it whole through serde: without the nightly `specialized`
    /// feature, the crate converts even a `Variable` that way.)
    fn search(&self, document: &JmesDocument) -> jmespath::SearchResult {
        let mut context =
            jmespath::Context::new(self.compiled.as_str(), &jmespath::DEFAULT_RUNTIME);
        jmespath::interpret(&document.0, self.compiled.as_ast(), &mut context)
    }
}

/// How deeply the parser would recurse on `expression`, over-estimated
/// cheaply from the text: brackets, parentheses and braces nest; `!`, a
/// unary `&`, a wildcard `*`, `[]`, `[*]` and `[?` each nest everything after
/// them up to the end of their enclosing bracket. Quoted names, raw strings
/// and JSON literals are skipped (the literals' own parser limits its depth).
fn written_depth(expression: &str) -> usize {
    let bytes = expression.as_bytes();
    // One entry per open bracket: the depth it was opened at.
    let mut open: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let next = bytes.get(i + 1).copied();
        match bytes[i] {
            quote @ (b'"' | b'\'' | b'`') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'[' if next == Some(b']') => {
                depth += 1;
                i += 1;
            }
            b'[' if next == Some(b'*') && bytes.get(i + 2) == Some(&b']') => {
                depth += 1;
                i += 2;
            }
            b'[' if next == Some(b'?') => {
                // The filter's condition is inside the bracket, and the
                // projection it starts nests what follows the bracket.
                depth += 1;
                open.push(depth);
                depth += 1;
                i += 1;
            }
            b'(' | b'[' | b'{' => {
                open.push(depth);
                depth += 1;
            }
            b')' | b']' | b'}' => depth = open.pop().unwrap_or(0),
            b'!' if next != Some(b'=') => depth += 1,
            b'&' if next == Some(b'&') => i += 1,
            b'&' | b'*' => depth += 1,
            _ => {}
        }
        deepest = deepest.max(depth);
        i += 1;
    }
    deepest
}

/// The depth of a compiled syntax tree, walked without recursion.
fn ast_depth(root: &jmespath::ast::Ast) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(root, 1usize)];
    while let Some((node, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        stack.extend(children(node).into_iter().map(|child| (child, depth + 1)));
    }
    deepest
}

fn children(node: &jmespath::ast::Ast) -> Vec<&jmespath::ast::Ast> {
    use jmespath::ast::Ast;
    match node {
        Ast::Comparison { lhs, rhs, .. }
        | Ast::Projection { lhs, rhs, .. }
        | Ast::And { lhs, rhs, .. }
        | Ast::Or { lhs, rhs, .. }
        | Ast::Subexpr { lhs, rhs, .. } => vec![&**lhs, &**rhs],
        Ast::Condition {
            predicate, then, ..
        } => vec![&**predicate, &**then],
        Ast::Expref { ast: node, .. }
        | Ast::Flatten { node, .. }
        | Ast::Not { node, .. }
        | Ast::ObjectValues { node, .. } => vec![&**node],
        Ast::Function { args: nodes, .. }
        | Ast::MultiList {
            elements: nodes, ..
        } => nodes.iter().collect(),
        Ast::MultiHash { elements, .. } => elements.iter().map(|pair| &pair.value).collect(),
        Ast::Identity { .. }
        | Ast::Field { .. }
        | Ast::Index { .. }
        | Ast::Literal { .. }
        | Ast::Slice { .. } => Vec::new(),
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

/// Longest `Name: value` line accepted, in bytes; receivers commonly refuse
/// header sections beyond 8 KiB in all.
pub const MAX_HEADER_LINE_BYTES: usize = 4096;

impl HeaderLine {
    pub fn parse(line: &str) -> Result<Self, String> {
        if line.len() > MAX_HEADER_LINE_BYTES {
            return Err(format!(
                "must be at most {MAX_HEADER_LINE_BYTES} bytes, got {}",
                line.len()
            ));
        }
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
    fn batch_bytes_run_from_one_kib_to_sixty_four_mib() {
        assert!(BatchBytes::parse(1023).is_err());
        assert_eq!(BatchBytes::parse(1024).unwrap().get(), 1024);
        assert_eq!(BatchBytes::parse(64 << 20).unwrap().get(), 64 << 20);
        let error = BatchBytes::parse((64 << 20) + 1).unwrap_err();
        assert!(error.contains("between 1024 and 67108864"), "{error}");
    }

    #[test]
    fn batches_in_flight_run_from_one_to_sixty_four() {
        assert!(MaxInFlightBatches::parse(0).is_err());
        assert_eq!(
            MaxInFlightBatches::parse(1).unwrap(),
            MaxInFlightBatches::ONE
        );
        assert_eq!(MaxInFlightBatches::parse(64).unwrap().get(), 64);
        let error = MaxInFlightBatches::parse(65).unwrap_err();
        assert!(error.contains("between 1 and 64"), "{error}");
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
        let doc = JmesDocument::from_json(r#"{"amount": 12}"#).unwrap();
        assert!(f.matches(&doc));
        let doc = JmesDocument::from_json(r#"{"amount": 2}"#).unwrap();
        assert!(!f.matches(&doc));
        assert!(JmesFilter::parse("amount >".into()).is_err());
    }

    #[test]
    fn jmes_filters_beyond_1024_bytes_are_refused() {
        let longest = format!("a == '{}'", "x".repeat(MAX_JMES_BYTES - 7));
        assert_eq!(longest.len(), MAX_JMES_BYTES);
        assert!(JmesFilter::parse(longest.clone()).is_ok());
        let error = JmesFilter::parse(format!("{longest} ")).unwrap_err();
        assert!(error.contains("at most 1024 bytes"), "{error}");
    }

    #[test]
    fn written_depth_counts_nesting_but_not_quoted_text() {
        assert_eq!(written_depth("a.b"), 0);
        assert_eq!(written_depth("((a))"), 2);
        assert_eq!(written_depth("!!a"), 2);
        assert_eq!(written_depth("a && b || !c"), 1);
        assert_eq!(written_depth("a != b"), 0);
        assert_eq!(written_depth("a[*][*].b[]"), 3);
        assert_eq!(written_depth("a[?b > `1`].c"), 2);
        assert_eq!(written_depth("sort_by(a, &b)"), 2);
        assert_eq!(written_depth("'((((' == \"[[[[\" || `{\"a\": [[1]]}`"), 0);
        assert_eq!(written_depth("'\\'(((' == a"), 0);
        // Closers without openers do not make the depth negative.
        assert_eq!(written_depth(")))(a"), 1);
    }

    /// Expressions that nest `n` levels in the ways the parser, the
    /// interpreter or the syntax tree's drop recurse on.
    /// A name, and the expression of that shape nested `n` deep.
    type Shape = (&'static str, fn(usize) -> String);

    fn hostile_shapes() -> [Shape; 15] {
        [
            ("parentheses", |n| {
                format!("{}a{}", "(".repeat(n), ")".repeat(n))
            }),
            ("negations", |n| format!("{}a", "!".repeat(n))),
            ("multi-select lists", |n| {
                format!("{}a{}", "[".repeat(n), "]".repeat(n))
            }),
            ("multi-select hashes", |n| {
                format!("{}a{}", "{a: ".repeat(n), "}".repeat(n))
            }),
            ("expression references", |n| {
                format!("{}a{}", "max_by(@, &".repeat(n), ")".repeat(n))
            }),
            ("projections", |n| format!("a{}", "[*]".repeat(n))),
            ("wildcards", |n| format!("a{}", ".*".repeat(n))),
            ("flattens", |n| format!("a{}", "[]".repeat(n))),
            ("filters", |n| format!("a{}", "[?a]".repeat(n))),
            ("subexpressions", |n| format!("a{}", ".a".repeat(n))),
            ("pipes", |n| format!("a{}", " | a".repeat(n))),
            ("ors", |n| format!("a{}", " || a".repeat(n))),
            ("ands", |n| format!("a{}", " && a".repeat(n))),
            ("comparisons", |n| format!("a{}", " == a".repeat(n))),
            ("a deep literal", |n| {
                format!("a == `{}1{}`", "[".repeat(n), "]".repeat(n))
            }),
        ]
    }

    /// A document as deep as the shapes above, so their searches go deep too.
    fn deep_document() -> JmesDocument {
        let mut json = "true".to_string();
        // 120 levels: within serde_json's recursion limit of 128.
        for _ in 0..60 {
            json = format!("{{\"a\": [{json}]}}");
        }
        JmesDocument::from_json(&json).unwrap()
    }

    /// Runs `check` on a thread with a stack far smaller than the 2 MiB of
    /// tokio's workers: a recursion that is only just bounded fails here.
    fn on_a_small_stack(check: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(check)
            .unwrap()
            .join()
            .expect("no stack overflow or panic on a 256 KiB stack");
    }

    #[test]
    fn the_deepest_accepted_expressions_compile_and_search_on_a_small_stack() {
        on_a_small_stack(|| {
            let document = deep_document();
            for (shape, nest) in hostile_shapes() {
                let deepest = (1..=MAX_JMES_BYTES)
                    .take_while(|&n| JmesFilter::parse(nest(n)).is_ok())
                    .last()
                    .unwrap_or_else(|| panic!("{shape}: one level is accepted"));
                assert!(deepest >= 8, "{shape}: only {deepest} levels accepted");
                let filter = JmesFilter::parse(nest(deepest)).unwrap();
                filter.matches(&document);
                drop(filter);
            }
        });
    }

    #[test]
    fn expressions_nested_to_the_length_cap_are_refused_on_a_small_stack() {
        on_a_small_stack(|| {
            for (shape, nest) in hostile_shapes() {
                let deepest = (1..)
                    .take_while(|&n| nest(n).len() <= MAX_JMES_BYTES)
                    .last()
                    .unwrap();
                let error = JmesFilter::parse(nest(deepest)).unwrap_err();
                // A literal's depth is refused by its JSON parser, not by ours.
                let refused_by = if shape == "a deep literal" {
                    "recursion limit"
                } else {
                    "levels deep"
                };
                assert!(error.contains(refused_by), "{shape}: {error}");
            }
            let million = "(".repeat(1 << 20);
            assert!(JmesFilter::parse(million).unwrap_err().contains("bytes"));
        });
    }

    #[test]
    fn header_lines_beyond_4096_bytes_are_refused() {
        let line = format!("X-Big: {}", "v".repeat(MAX_HEADER_LINE_BYTES - 7));
        assert!(HeaderLine::parse(&line).is_ok());
        let error = HeaderLine::parse(&format!("{line}v")).unwrap_err();
        assert!(error.contains("at most 4096 bytes"), "{error}");
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
