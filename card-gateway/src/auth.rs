//! Who may call what: the operator's token for `/admin/*`.

use axum::{http::StatusCode, response::Response};
use platform::identity::Trust;
use serde_json::json;

use crate::{config::AUDIENCE, errors::json_response};

/// Lets a request through only with a valid operator token for the card gateway.
pub(crate) async fn operator_only(
    trust: Trust,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let token = req
        .headers()
        .get(platform::identity::CALLER_HEADER)
        .and_then(|v| v.to_str().ok());
    let Some(token) = token else {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"type": "authentication_error", "message": "missing x-shop-caller operator token"}}),
        );
    };
    match trust.verify(token, &[AUDIENCE], req.uri().path()) {
        Ok(caller) if caller.is(platform::identity::OPERATOR) => next.run(req).await,
        Ok(caller) => json_response(
            StatusCode::FORBIDDEN,
            json!({"error": {"type": "permission_error", "message": format!("{} may not use the admin API", caller.service)}}),
        ),
        Err(e) => json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"type": "authentication_error", "message": e.to_string()}}),
        ),
    }
}
