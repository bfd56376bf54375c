//! The API's error type and its one mapping to HTTP status and JSON body.
//!
//! Every error answers `{"code": …, "message": …, "errors": [{"field", "message"}]}`;
//! `errors` lists each offending field for validation failures. An internal
//! error's detail (a database error, say) is logged, never answered: the client
//! gets a `reference` to find it in the log by.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::{FieldError, ValidationErrors};
use crate::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request has invalid fields: {0}")]
    Validation(ValidationErrors),
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{message}")]
    InvalidField { field: String, message: String },
    #[error("the body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// Something other than the whole body is too large (a record, a batch's count).
    #[error("{0}")]
    TooLarge(String),
    /// The body's media type is not one this route reads.
    #[error("the content type must be {expected}, got {sent}")]
    UnsupportedMediaType { sent: String, expected: String },
    /// The client did not send the whole body in time.
    #[error("the body did not arrive within {seconds} s")]
    BodyTimeout { seconds: u64 },
    #[error("{0}")]
    BadRequest(String),
    /// An upload that is not a usable plugin; `code` says which way.
    #[error("{message}")]
    InvalidPlugin { code: &'static str, message: String },
    /// No usable bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token that may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    /// The host cannot serve this now; trying again later may work.
    #[error("{0}")]
    Unavailable(String),
    /// The Kafka brokers answered, and refused what this request needs (a
    /// topic): the broker's reason is shown, as the operator must act on it.
    #[error("{0}")]
    BrokerRefused(String),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<uuid::Uuid>,
}

impl ApiError {
    /// The status and code this error answers with; also what each failed
    /// line of an NDJSON batch carries.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Validation(_) => (StatusCode::BAD_REQUEST, "validation_failed"),
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::InvalidField { .. } => (StatusCode::BAD_REQUEST, "invalid_field"),
            ApiError::PayloadTooLarge { .. } | ApiError::TooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::UnsupportedMediaType { .. } => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::BodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::InvalidPlugin { code, .. } => (StatusCode::BAD_REQUEST, *code),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::BrokerRefused(_) => (StatusCode::BAD_GATEWAY, "broker_refused"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::Conflict | RegistryError::Duplicate(_) => {
                ApiError::Conflict(error.to_string())
            }
            RegistryError::BadCursor => ApiError::InvalidField {
                field: "cursor".into(),
                message: error.to_string(),
            },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Brokers that do not answer are a 503 (try again later); brokers that
/// answer no are a 502: the request was fine, the host's upstream refused it,
/// and unlike a 500 the reason (a broker's, holding no secret) is shown.
impl From<crate::kafka::TopicError> for ApiError {
    fn from(error: crate::kafka::TopicError) -> Self {
        if error.is_unreachable() {
            ApiError::Unavailable(error.to_string())
        } else {
            ApiError::BrokerRefused(error.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let reference = matches!(self, ApiError::Internal(_)).then(uuid::Uuid::new_v4);
        if let Some(reference) = reference {
            tracing::error!(%reference, error = %self, "Request failed.");
        } else if status.is_server_error() {
            tracing::error!(error = %self, "Request failed.");
        }
        let single;
        let errors: &[FieldError] = match &self {
            ApiError::Validation(errors) => &errors.0,
            ApiError::InvalidField { field, message } => {
                single = [FieldError {
                    field: field.clone(),
                    message: message.clone(),
                }];
                &single
            }
            _ => &[],
        };
        let message = match &self {
            ApiError::Validation(errors) => format!(
                "{} invalid field{}: {errors}",
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            ),
            ApiError::InvalidField { field, message } => format!("{field}: {message}"),
            // The detail may name tables, queries or hosts: it stays in the log.
            ApiError::Internal(_) => format!(
                "an internal error occurred; the operator can find it in the log by reference {}",
                reference.expect("set for internal errors")
            ),
            other => other.to_string(),
        };
        let body = ErrorBody {
            code,
            message,
            errors,
            reference,
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if matches!(
            self,
            ApiError::PayloadTooLarge { .. } | ApiError::BodyTimeout { .. }
        ) {
            // The request's body was not read to its end, so the server
            // closes this connection after answering; saying so keeps a
            // client from putting it back in its pool and sending the next
            // request on a connection that is closing (it would fail with no
            // answer at all).
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(error: ApiError) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn internal_errors_answer_a_reference_and_not_their_detail() {
        let (status, body) = answer(ApiError::Internal(
            "error returned from database: relation \"subscriptions\" does not exist".into(),
        ))
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["code"], "internal");
        let reference = body["reference"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(reference).is_ok(), "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(reference), "{body}");
        assert!(!body.to_string().contains("relation"), "{body}");
    }

    #[test]
    fn an_answer_before_the_body_was_read_closes_the_connection() {
        let closes = |error: ApiError| {
            error
                .into_response()
                .headers()
                .get(axum::http::header::CONNECTION)
                .is_some_and(|value| value == "close")
        };
        assert!(closes(ApiError::PayloadTooLarge { limit: 1024 }));
        assert!(closes(ApiError::BodyTimeout { seconds: 5 }));
        // A record too large inside a body read whole: the connection stays.
        assert!(!closes(ApiError::TooLarge("record 3 is too large".into())));
        assert!(!closes(ApiError::BadRequest("no".into())));
    }

    #[tokio::test]
    async fn a_wrong_content_type_is_a_415_naming_both_types() {
        let (status, body) = answer(ApiError::UnsupportedMediaType {
            sent: "text/plain".into(),
            expected: "application/json".into(),
        })
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body["code"], "unsupported_media_type");
        assert_eq!(
            body["message"],
            "the content type must be application/json, got text/plain"
        );
        assert!(body.get("reference").is_none());
    }
}
