//! The API's typed errors: one stable HTTP status per code (the table in docs/SERVICE.md is
//! checked against [`status_of`] by a test).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use supervisor::{CellError, ErrorCode};

/// An error answered as `{code, message, ...}` with the status its code fixes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// Stable error code (`bad_request`, `cell_not_found`, or a cell error code's name).
    pub code: String,
    /// Human-readable detail.
    pub message: String,
    /// The quota named in a `quota_exceeded` answer.
    pub quota: Option<&'static str>,
    /// Where the cell lives, for a redirect.
    pub location: Option<String>,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code: code.into(),
            message: message.into(),
            quota: None,
            location: None,
        }
    }

    /// A `bad_request` (400).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new("bad_request", message)
    }

    /// A `cell_not_found` for cell `id`.
    pub fn cell_not_found(id: &str) -> ApiError {
        ApiError::new("cell_not_found", format!("no cell `{id}`"))
    }

    /// A `quota_exceeded` naming `quota`.
    pub fn quota(quota: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            quota: Some(quota),
            ..ApiError::new("quota_exceeded", message)
        }
    }

    /// A `moved` redirect to the cell's node at `location`.
    pub fn redirect(node: &str, location: String) -> ApiError {
        ApiError {
            location: Some(location),
            ..ApiError::new("moved", format!("the cell lives on node `{node}`"))
        }
    }

    /// The HTTP status the code fixes (see [`status_of`]).
    pub fn status(&self) -> StatusCode {
        status_of(&self.code)
    }
}

impl From<CellError> for ApiError {
    fn from(e: CellError) -> ApiError {
        ApiError::new(e.code.name(), e.message)
    }
}

/// The service's own codes, beside the cell codes of [`ErrorCode`].
pub const SERVICE_CODES: &[&str] = &[
    "bad_request",
    "unauthorized",
    "forbidden",
    "cell_not_found",
    "no_route",
    "method_not_allowed",
    "unknown_backend",
    "unknown_policy",
    "invalid_policy",
    "payload_too_large",
    "quota_exceeded",
    "idempotency_key_reused",
    "moved",
    "draining",
    "backend_unavailable",
    "internal",
];

/// The HTTP status of an error code. Script outcomes are 422, codes that mean the cell is gone
/// are 410, a wall-time overrun is 504.
pub fn status_of(code: &str) -> StatusCode {
    match code {
        "bad_request" | "unknown_backend" | "unknown_policy" | "invalid_policy" => {
            StatusCode::BAD_REQUEST
        }
        "unauthorized" => StatusCode::UNAUTHORIZED,
        "forbidden" => StatusCode::FORBIDDEN,
        "cell_not_found" | "no_route" => StatusCode::NOT_FOUND,
        "method_not_allowed" => StatusCode::METHOD_NOT_ALLOWED,
        "payload_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "quota_exceeded" => StatusCode::TOO_MANY_REQUESTS,
        "idempotency_key_reused" => StatusCode::UNPROCESSABLE_ENTITY,
        "moved" => StatusCode::TEMPORARY_REDIRECT,
        "draining" | "backend_unavailable" | "spawn_failed" => StatusCode::SERVICE_UNAVAILABLE,
        "timed_out" => StatusCode::GATEWAY_TIMEOUT,
        c if ErrorCode::ALL.iter().any(|k| k.name() == c) => cell_status(c),
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn cell_status(code: &str) -> StatusCode {
    let code = ErrorCode::ALL
        .iter()
        .copied()
        .find(|k| k.name() == code)
        .unwrap_or(ErrorCode::Internal);
    match code {
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        // The cell is dead or was killed by this error.
        c if c.is_fatal() => StatusCode::GONE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "code": self.code, "message": self.message });
        if let Some(q) = self.quota {
            body["quota"] = q.into();
        }
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let Some(location) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }
}
