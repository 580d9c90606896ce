//! The operator listener (`GATEWAY_METRICS_ADDR`): Prometheus `/metrics` and
//! `/debug/downstreams`. Both tell an outsider what it should not know (the services'
//! internal URLs, which breaker is open, how many calls are in flight), so they are served
//! on their own address, under a scrape listener's connection limits
//! ([`platform::metrics::serve_with`]), and the public port answers 404 for them.

use std::future::Future;

use axum::{Json, Router, extract::State, routing::get};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::{downstream::DownstreamSnapshot, state::AppState};

/// Every downstream's breakers, concurrency and retry budget.
#[derive(Debug, Clone, Serialize)]
pub struct DownstreamsView {
    pub downstreams: Vec<DownstreamSnapshot>,
}

async fn downstreams(State(state): State<AppState>) -> Json<DownstreamsView> {
    Json(DownstreamsView {
        downstreams: state.downstreams.snapshot(),
    })
}

/// The operator's routes besides `/metrics`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/debug/downstreams", get(downstreams))
        .with_state(state)
}

/// Serves `/metrics` and [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    platform::metrics::serve_with(listener, router(state), shutdown).await
}
