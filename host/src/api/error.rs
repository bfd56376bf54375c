//! The API's error type and its one mapping to HTTP status and JSON body.
//!
//! Every error answers `{"code": …, "message": …, "errors": [{"field", "message"}]}`;
//! `errors` lists each offending field for validation failures.

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
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Validation(_) => (StatusCode::BAD_REQUEST, "validation_failed"),
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::InvalidField { .. } => (StatusCode::BAD_REQUEST, "invalid_field"),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::InvalidPlugin { code, .. } => (StatusCode::BAD_REQUEST, *code),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
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
            other => other.to_string(),
        };
        let body = ErrorBody {
            code,
            message,
            errors,
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
