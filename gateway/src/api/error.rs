//! The one error type of the REST API and its mapping to a status: every
//! handler returns [`ApiError`], whatever failed underneath.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::control::ControlError;
use crate::streams::StreamError;

/// An API error: `{"code": …, "message": …}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    pub(super) status: StatusCode,
    /// Machine-readable: `bad_request`, `unauthenticated`, `forbidden`,
    /// `not_found`, `conflict`, `too_large`, `unavailable`, `internal`.
    pub code: String,
    /// One line, naming what was wrong.
    pub message: String,
    /// Every problem, when the body had several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
            errors: Vec::new(),
        }
    }
    pub(super) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(super) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub(super) fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound(m) => ApiError::not_found(m),
            ControlError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            ControlError::Invalid(m) => ApiError::bad(m),
            ControlError::Unauthenticated(m) => ApiError::unauthenticated(m),
            ControlError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            ControlError::Store(
                e @ (crate::store::StoreError::Unavailable { .. }
                | crate::store::StoreError::NotLeader),
            ) => ApiError::unavailable(e.to_string()),
            ControlError::Placement(e) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
            ControlError::Store(e) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
            ControlError::Unavailable(m) => ApiError::unavailable(m),
        }
    }
}

impl From<StreamError> for ApiError {
    fn from(e: StreamError) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "too_large",
                "the request body is larger than max_body",
            )
        } else {
            ApiError::new(status, "bad_request", r.body_text())
        }
    }
}

pub(super) type ApiResult<T> = Result<T, ApiError>;
