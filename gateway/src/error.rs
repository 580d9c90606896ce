//! One error type for every HTTP answer that is not a success, and the one mapping from
//! gRPC status codes to HTTP. The body is always `{"error":{"code","message","field"}}`.

use axum::{
    Json,
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    response::{IntoResponse, Response},
};
use http::StatusCode;
use serde::Serialize;
use tonic::Code;
use utoipa::ToSchema;

/// The JSON error body.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_argument`, `card_declined`, `out_of_stock`.
    pub code: String,
    /// Human-readable explanation, safe to show to a user.
    pub message: String,
    /// The offending request field, when one is to blame (`lines[0].quantity`).
    pub field: Option<String>,
    /// The checkout's order, when a checkout failed in a way that is still being settled
    /// (GET /api/orders/{order_id} shows how it ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// The processes an admin call could not reach or was refused by (the lab:
    /// "item-service", "card-gateway").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub order_id: Option<String>,
    /// Boxed: rare, and every handler's error stays small.
    pub targets: Option<Box<Vec<String>>>,
    /// Sent as Retry-After (whole seconds, at least 1): when trying again makes sense.
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            order_id: None,
            targets: None,
            retry_after: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn with_targets(mut self, targets: Vec<String>) -> Self {
        self.targets = Some(Box::new(targets));
        self
    }

    pub fn with_order(mut self, order_id: impl Into<String>) -> Self {
        self.order_id = Some(order_id.into());
        self
    }

    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message).with_field(field)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_denied", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }

    /// The one gRPC -> HTTP mapping; the field a service named (x-shop-field) is kept, and a
    /// refusal that said when to come back (a bulkhead, an open circuit, anything marked
    /// with [`platform::shedding::RETRY_AFTER_MS`]) answers 503 with Retry-After.
    pub fn from_status(status: &tonic::Status) -> Self {
        let field = platform::error::field_of(status);
        let msg = status.message().to_owned();
        let (http, code, message) = match status.code() {
            Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument", msg),
            Code::OutOfRange => (StatusCode::BAD_REQUEST, "out_of_range", msg),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated", msg),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied", msg),
            Code::NotFound => (StatusCode::NOT_FOUND, "not_found", msg),
            Code::AlreadyExists => (StatusCode::CONFLICT, "already_exists", msg),
            Code::Aborted => (StatusCode::CONFLICT, "conflict", msg),
            Code::FailedPrecondition => (StatusCode::CONFLICT, "failed_precondition", msg),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted", msg),
            Code::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "a service is temporarily unavailable; try again shortly".to_owned(),
            ),
            Code::DeadlineExceeded | Code::Cancelled => (
                StatusCode::GATEWAY_TIMEOUT,
                "deadline_exceeded",
                "the request took too long; try again".to_owned(),
            ),
            Code::Unimplemented => (
                StatusCode::NOT_IMPLEMENTED,
                "unimplemented",
                "not implemented".to_owned(),
            ),
            Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => {
                tracing::error!(code = ?status.code(), message = %status.message(), "downstream failure");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".to_owned(),
                )
            }
        };
        let retry_after = platform::shedding::retry_after(status);
        let shed = platform::shedding::is_shed(status);
        let (http, code, message) = if shed && http != StatusCode::SERVICE_UNAVAILABLE {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "a service is temporarily unavailable; try again shortly".to_owned(),
            )
        } else {
            (http, code, message)
        };
        Self {
            status: http,
            code,
            message,
            field,
            order_id: None,
            targets: None,
            retry_after,
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        Self::from_status(&s)
    }
}

impl From<platform::FieldError> for ApiError {
    fn from(e: platform::FieldError) -> Self {
        Self::bad_request(e.field.clone(), e.to_string())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("gateway_errors_total", "code" => self.code).increment(1);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
                order_id: self.order_id,
                targets: self.targets.map(|t| *t).unwrap_or_default(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(secs.max(1)),
            );
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The body was not read, so the connection is closed after this answer: say so,
            // or a client may send its next request on it and lose it.
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                // The body text names the field path and what was wrong with it.
                e.body_text(),
            ),
            JsonRejection::JsonSyntaxError(e) => {
                Self::new(StatusCode::BAD_REQUEST, "malformed_json", e.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(e) => {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Self::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "request body is too large",
                    )
                } else {
                    Self::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text())
                }
            }
            other => Self::new(StatusCode::BAD_REQUEST, "bad_request", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_path", r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_codes_and_keeps_field() {
        let s: tonic::Status = platform::FieldError::new("price.currency", "unknown").into();
        let e = ApiError::from_status(&s);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.field.as_deref(), Some("price.currency"));
        for (code, http) in [
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
        ] {
            let e = ApiError::from_status(&tonic::Status::new(code, "x"));
            assert_eq!(e.status.as_u16(), http, "{code:?}");
        }
        // A refusal to shed load says when to come back.
        let shed = platform::shedding::mark_shed(
            tonic::Status::unavailable("busy"),
            std::time::Duration::from_millis(2500),
        );
        let e = ApiError::from_status(&shed);
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let resp = e.into_response();
        assert_eq!(resp.headers()[http::header::RETRY_AFTER], "3");
        let plain = ApiError::from_status(&tonic::Status::unavailable("down")).into_response();
        assert!(!plain.headers().contains_key(http::header::RETRY_AFTER));
        // Internal details never leak.
        let e = ApiError::from_status(&tonic::Status::internal("db password wrong"));
        assert_eq!(e.message, "internal error");
    }
}
