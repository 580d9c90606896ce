//! The public HTTP surface: REST API under /api, the web shop at /, /openapi.json,
//! /healthz; one edge middleware for metrics and injected faults. `/metrics` and
//! `/debug/downstreams` are the operator listener's ([`crate::operator`]), 404 here.

pub mod admin;
pub mod checkout;
pub mod items;
pub mod model;
pub mod orders;
pub mod users;

use std::time::Instant;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use platform::{
    context::{self, TraceContext},
    faults::Verdict,
};
use tracing::Instrument as _;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::{error::ApiError, state::AppState};

#[derive(OpenApi)]
#[openapi(
    info(title = "Shop gateway", description = "REST/JSON API of the Shop. Errors are always {\"error\":{\"code\",\"message\",\"field\"}}."),
    paths(
        users::register, users::login, users::me,
        items::list, items::get, items::create, items::update, items::delete,
        checkout::price, checkout::checkout,
        orders::list, orders::get,
        admin::get_faults, admin::put_faults, admin::healthz,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail, model::ItemSort, model::Strategy)),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Accounts and tokens"),
        (name = "items", description = "The catalog"),
        (name = "checkout", description = "Cart pricing and checkout"),
        (name = "orders", description = "Order history"),
        (name = "admin", description = "Needs an admin token"),
        (name = "ops", description = "Operations"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// The route label of every request no route matched (the fallback and the `/api/` catch-all).
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// The route pattern that answers 404 for unknown `/api/` paths.
const API_CATCH_ALL: &str = "/api/{*rest}";

/// Routes whose key the fault injector sees and metrics label, e.g. "GET /api/items/{id}".
/// Only route patterns and standard methods become labels: any path no route matches is
/// [`UNMATCHED_ROUTE`] and any other method "OTHER", so a client requesting random paths
/// or inventing methods cannot grow /metrics without bound.
fn route_key(req: &Request) -> String {
    let path = match req.extensions().get::<MatchedPath>() {
        Some(p) if p.as_str() != API_CATCH_ALL => p.as_str(),
        _ => return UNMATCHED_ROUTE.to_owned(),
    };
    let method = match *req.method() {
        http::Method::GET
        | http::Method::POST
        | http::Method::PUT
        | http::Method::PATCH
        | http::Method::DELETE
        | http::Method::HEAD
        | http::Method::OPTIONS => req.method().as_str(),
        _ => "OTHER",
    };
    format!("{method} {path}")
}

/// Metrics per route, a trace for every request (continued from the browser's
/// `traceparent` or started here, and passed to every downstream call), and the gateway's
/// own injected faults (never on the admin routes and the health probe, so faults can
/// always be inspected and turned off).
async fn edge(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let key = route_key(&req);
    let start = Instant::now();
    let exempt = key.contains("/api/admin/") || key.ends_with("/healthz");
    let mut trace = TraceContext::from_headers(req.headers());
    // Exported when traces are on (not probes): the span continues the browser's trace if
    // it sent one, and its ids are this request's context.
    let exported = platform::telemetry::enabled() && !key.ends_with("/healthz");
    let span = if exported {
        let span = tracing::info_span!(
            target: platform::telemetry::TARGET,
            "http",
            otel.name = %key,
            otel.kind = "server",
            http.request.method = %req.method(),
            http.route = %key.split_once(' ').map_or(key.as_str(), |(_, r)| r),
            route = %key,
            trace_id = tracing::field::Empty,
            request_id = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        platform::telemetry::adopt(
            &span,
            context::Traceparent::from_headers(req.headers()).as_ref(),
            &mut trace,
        );
        span.record("trace_id", tracing::field::display(&trace.trace_id));
        span.record("request_id", tracing::field::display(&trace.request_id));
        span
    } else if platform::telemetry::enabled() {
        // A probe: below the level spans are exported at.
        tracing::debug_span!("http", route = %key, trace_id = %trace.trace_id, request_id = %trace.request_id)
    } else {
        tracing::info_span!("http", route = %key, trace_id = %trace.trace_id, request_id = %trace.request_id)
    };
    // The request's own `traceparent` names this hop from here on: handlers build their
    // call context from it (`TraceContext::of_this_hop`), so downstream calls are children
    // of this request's span.
    if let Ok(v) = http::HeaderValue::from_str(&trace.traceparent()) {
        req.headers_mut().insert(context::TRACEPARENT, v);
    }

    let mut resp = async {
        if !exempt && state.faults.inject(&key).await == Verdict::Fail {
            ApiError::unavailable("temporarily unavailable (injected fault); try again shortly")
                .into_response()
        } else {
            next.run(req).await
        }
    }
    .instrument(span.clone())
    .await;
    let elapsed = start.elapsed();
    let status = resp.status();
    if exported {
        platform::telemetry::record_http_status(&span, status);
    }
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                elapsed_ms = elapsed.as_secs_f64() * 1e3,
                "request failed"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                elapsed_ms = elapsed.as_secs_f64() * 1e3,
                "request"
            );
        }
    });
    if let Ok(v) = http::HeaderValue::from_str(&trace.request_id) {
        resp.headers_mut().insert(context::REQUEST_ID, v);
    }
    metrics::counter!("gateway_http_requests_total", "route" => key.clone(), "status" => status.as_u16().to_string()).increment(1);
    metrics::histogram!("gateway_http_request_duration_seconds", "route" => key)
        .record(elapsed.as_secs_f64());
    resp
}

/// The gateway's public routes; `/api/admin/faults` only when `fault_admin`
/// (SHOP_FAULT_ADMIN=on).
pub fn router(state: AppState, body_limit: usize, fault_admin: bool) -> Router {
    let mut api = Router::new()
        .route("/api/auth/register", post(users::register))
        .route("/api/auth/login", post(users::login))
        .route("/api/me", get(users::me))
        .route("/api/items", get(items::list).post(items::create))
        .route(
            "/api/items/{id}",
            get(items::get).patch(items::update).delete(items::delete),
        )
        .route("/api/cart/price", post(checkout::price))
        .route("/api/checkout", post(checkout::checkout))
        .route("/api/orders", get(orders::list))
        .route("/api/orders/{id}", get(orders::get))
        .route("/healthz", get(admin::healthz))
        .route("/openapi.json", get(openapi_json));
    if fault_admin {
        api = api.route(
            "/api/admin/faults",
            get(admin::get_faults).put(admin::put_faults),
        );
    }
    let api = api
        .route(API_CATCH_ALL, axum::routing::any(not_found))
        .merge(crate::web::router())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), edge))
        .layer(middleware::from_fn(platform::timing::server_timing))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state);
    crate::web::security_headers(api)
}
