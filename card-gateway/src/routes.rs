//! The HTTP surface: routes, connection limits and the limit answers.

use axum::{
    Json, Router,
    http::StatusCode,
    response::Response,
    routing::{get, post},
};
use platform::{
    http_server::{Exceeded, HttpLimits},
    identity::Trust,
};
use serde_json::json;

use crate::{
    admin,
    auth::{self, Accounts},
    errors::json_response,
    handle::Gateway,
    handlers::{charges, refunds, tokens},
    ledger::error_body,
};

/// Fault-rule keys (`method` in a rule) of the routes faults apply to.
pub const ROUTE_CREATE_CHARGE: &str = "POST /v1/charges";
pub const ROUTE_GET_CHARGE: &str = "GET /v1/charges/{id}";
pub const ROUTE_LIST_CHARGES: &str = "GET /v1/charges";
pub const ROUTE_CREATE_REFUND: &str = "POST /v1/refunds";
pub const ROUTE_CREATE_TOKEN: &str = "POST /v1/tokens";

/// The shared connection limits, without a request timeout: an injected hang must stay a
/// hang (never answered) for the callers it is meant to test.
pub(crate) fn http_limits() -> HttpLimits {
    HttpLimits {
        request_timeout: None,
        ..HttpLimits::default()
    }
}

/// A body sent too slowly, in the processor's error format.
pub(crate) fn limit_answer(exceeded: Exceeded) -> Response {
    match exceeded {
        Exceeded::Body => json_response(
            StatusCode::REQUEST_TIMEOUT,
            error_body(
                "invalid_request_error",
                Some("request_timeout"),
                None,
                "The request body was not sent in time.",
                None,
                None,
            ),
        ),
        Exceeded::Request => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            error_body(
                "api_error",
                Some("request_timeout"),
                None,
                "The request took too long.",
                None,
                None,
            ),
        ),
    }
}

/// The gateway's routes over `gateway`'s state: the API behind `accounts`' keys (the token
/// route takes the publishable key too, the rest only the secret key); `/admin/*` only when
/// `admin` names whom to trust for the operator's token.
pub fn router(gateway: Gateway, accounts: Accounts, admin: Option<Trust>) -> Router {
    let public = accounts.clone();
    let tokens = Router::new()
        .route("/v1/tokens", post(tokens::create_token))
        .route_layer(axum::middleware::from_fn(move |req, next| {
            auth::api_key(public.clone(), true, req, next)
        }));
    let secret = Router::new()
        .route(
            "/v1/charges",
            post(charges::create_charge).get(charges::list_charges),
        )
        .route("/v1/charges/{id}", get(charges::get_charge))
        .route("/v1/refunds", post(refunds::create_refund))
        .route_layer(axum::middleware::from_fn(move |req, next| {
            auth::api_key(accounts.clone(), false, req, next)
        }));
    let mut routes = tokens
        .merge(secret)
        // A server span per API call, child of the payment service's client span.
        .route_layer(axum::middleware::from_fn(platform::telemetry::trace_http))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }));
    if let Some(trust) = admin {
        let admin_routes = Router::new()
            .route("/admin/stats", get(admin::stats))
            .route(
                "/admin/faults",
                get(admin::get_faults).put(admin::put_faults),
            )
            .route("/admin/hangs", get(admin::get_hangs).put(admin::put_hangs))
            .route_layer(axum::middleware::from_fn(move |req, next| {
                auth::operator_only(trust.clone(), req, next)
            }));
        routes = routes.merge(admin_routes);
    }
    routes
        .with_state(gateway)
        .merge(platform::metrics::router())
}
