//! A JSON body extractor whose every rejection is an [`ApiError`] naming the problem.
//!
//! axum's own `Json` answers some failures in plain text; this one reports the
//! path of a wrongly typed or unknown field and the size limit when exceeded.
//! It reads only bodies declared `application/json`: a browser sends other
//! types (`text/plain`, forms) cross-site without asking first, so accepting
//! them would let any web page the operator visits drive the API.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, header::CONTENT_TYPE};
use serde::de::DeserializeOwned;

use super::error::ApiError;

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let declared = MediaType::of(req.headers());
        if !matches!(declared, MediaType::Json | MediaType::Absent) {
            return Err(unsupported(&sent_type(req.headers()), JSON));
        }
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(DEFAULT_BODY_LIMIT);
        let bytes = read_body(req, state, limit).await?;
        // Without a type, only an empty body passes (to be told it is empty).
        if declared == MediaType::Absent && !bytes.is_empty() {
            return Err(unsupported("no content type", JSON));
        }
        parse(&bytes).map(ApiJson)
    }
}

/// The body limit in force, recorded so that a 413 can say what it is.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// How long a handler waits for the whole body, set by the server.
#[derive(Clone, Copy)]
pub struct BodyTimeout(pub Duration);

pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

const JSON: &str = "application/json";

/// A request's declared media type, reduced to what routes decide on.
#[derive(Debug, PartialEq, Eq)]
pub enum MediaType {
    Absent,
    /// `application/json`, whatever its parameters (`charset=utf-8`).
    Json,
    /// `multipart/form-data` (its `boundary` is the form reader's business).
    Multipart,
    /// `application/wasm`.
    Wasm,
    /// Anything else, as sent (shortened), for the 415's message.
    Other(String),
}

impl MediaType {
    pub fn of(headers: &HeaderMap) -> Self {
        let Some(value) = headers.get(CONTENT_TYPE) else {
            return MediaType::Absent;
        };
        let text = String::from_utf8_lossy(value.as_bytes());
        let essence = text.split(';').next().unwrap_or_default().trim();
        if essence.eq_ignore_ascii_case(JSON) {
            MediaType::Json
        } else if essence.eq_ignore_ascii_case("multipart/form-data") {
            MediaType::Multipart
        } else if essence.eq_ignore_ascii_case("application/wasm") {
            MediaType::Wasm
        } else {
            // The header is echoed: keep the answer small whatever was sent.
            MediaType::Other(text.chars().take(100).collect())
        }
    }
}

/// The `content-type` as sent, shortened: it is echoed in the 415.
pub fn sent_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(100)
                .collect()
        })
        .unwrap_or_else(|| "no content type".into())
}

pub fn unsupported(sent: &str, expected: &str) -> ApiError {
    ApiError::UnsupportedMediaType {
        sent: sent.to_string(),
        expected: expected.to_string(),
    }
}

/// Reads the whole body, within `limit` bytes and the server's body timeout.
pub async fn read_body<S: Send + Sync>(
    req: Request,
    state: &S,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let timeout = body_timeout(&req);
    let read = Bytes::from_request(req, state);
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(ApiError::BodyTimeout {
            seconds: timeout.as_secs(),
        }),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(rejection)) if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Ok(Err(rejection)) => Err(ApiError::BadRequest(format!(
            "could not read the body: {}",
            rejection.body_text()
        ))),
    }
}

pub fn body_timeout(req: &Request) -> Duration {
    req.extensions()
        .get::<BodyTimeout>()
        .map_or(DEFAULT_BODY_TIMEOUT, |t| t.0)
}

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedJson("the body is empty".into()));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_data() {
            let message = inner.to_string();
            ApiError::InvalidField {
                field: missing_field(&path, &message).unwrap_or(path),
                message,
            }
        } else {
            ApiError::MalformedJson(inner.to_string())
        }
    })?;
    deserializer.end().map_err(|e| {
        ApiError::MalformedJson(format!("trailing characters after the JSON value: {e}"))
    })?;
    Ok(value)
}

/// The path of the field a "missing field `x`" error is about: serde names
/// the object that lacks it (`.` for the top level), the client wants the field.
fn missing_field(path: &str, message: &str) -> Option<String> {
    let name = message.strip_prefix("missing field `")?.split('`').next()?;
    Some(if path == "." {
        name.to_string()
    } else {
        format!("{path}.{name}")
    })
}

/// 415 unless the body is declared `application/json`, for handlers that
/// read an optional body themselves.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match MediaType::of(headers) {
        MediaType::Json => Ok(()),
        _ => Err(unsupported(&sent_type(headers), JSON)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(value: &str) -> MediaType {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, value.parse().unwrap());
        MediaType::of(&headers)
    }

    #[test]
    fn json_is_recognised_with_parameters_and_in_any_case() {
        assert_eq!(declared("application/json"), MediaType::Json);
        assert_eq!(declared("Application/JSON; charset=utf-8"), MediaType::Json);
        assert_eq!(
            declared("multipart/form-data; boundary=x"),
            MediaType::Multipart
        );
        assert_eq!(declared("application/wasm"), MediaType::Wasm);
        assert_eq!(MediaType::of(&HeaderMap::new()), MediaType::Absent);
    }

    #[test]
    fn types_a_browser_sends_cross_site_are_other() {
        for value in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonx",
            "application/json-seq",
        ] {
            assert_eq!(declared(value), MediaType::Other(value.into()), "{value}");
        }
        let long = "x".repeat(1000);
        assert_eq!(declared(&long), MediaType::Other("x".repeat(100)));
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code, reason = "read by serde only")]
    struct Outer {
        name: String,
        inner: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code, reason = "read by serde only")]
    struct Inner {
        id: i64,
    }

    #[test]
    fn a_missing_field_is_named_by_its_own_path() {
        let field = |body: &str| match parse::<Outer>(body.as_bytes()).unwrap_err() {
            ApiError::InvalidField { field, .. } => field,
            other => panic!("{other}"),
        };
        assert_eq!(field(r#"{"inner": {"id": 1}}"#), "name");
        assert_eq!(field(r#"{"name": "n", "inner": {}}"#), "inner.id");
        assert_eq!(field(r#"{"name": "n", "inner": {"id": "x"}}"#), "inner.id");
    }
}
