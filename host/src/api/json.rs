//! A JSON body extractor whose every rejection is an [`ApiError`] naming the problem.
//!
//! axum's own `Json` answers some failures in plain text; this one reports the
//! path of a wrongly typed or unknown field and the size limit when exceeded.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
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
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(DEFAULT_BODY_LIMIT);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::BadRequest(format!(
                    "could not read the body: {}",
                    rejection.body_text()
                ))
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

/// The body limit in force, recorded so that a 413 can say what it is.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedJson("the body is empty".into()));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_data() {
            ApiError::InvalidField {
                field: path,
                message: inner.to_string(),
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

/// 415 unless the request says its body is JSON (`application/json`, with
/// parameters allowed): browsers may send other types cross-site without
/// asking first, so accepting them would let any web page call the API.
pub fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let sent = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let essence = sent
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if essence == "application/json" {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "the body must be sent as content-type: application/json, got {}",
            sent.map_or("none".to_string(), |s| format!("{s:?}"))
        )))
    }
}
