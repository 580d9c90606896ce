//! Prometheus metrics: one process-wide recorder (the monolith shares it across services)
//! and a `/metrics` HTTP endpoint.

use std::{future::Future, sync::OnceLock};

use axum::{Router, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's recorder handle, installed on first use.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".to_owned()),
                    LATENCY_BUCKETS,
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then this handle simply
            // renders nothing, which is visible and harmless.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

/// Axum router serving `GET /metrics` in the Prometheus text format.
pub fn router() -> Router {
    let handle = handle();
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                handle.run_upkeep();
                (
                    [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    handle.render(),
                )
            }
        }),
    )
}

/// Serves `/metrics` on `listener` until `shutdown` resolves, with a scrape listener's
/// connection limits (a silent or slow client cannot hold it).
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, Router::new(), shutdown).await
}

/// As [`serve`], with an operator's own routes beside `/metrics` (the gateway's
/// `/debug/downstreams`): an operator listener, never the public one, under the same limits.
pub async fn serve_with(
    listener: TcpListener,
    operator: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::http_server::HttpServer::new("metrics", crate::http_server::HttpLimits::metrics())
        .serve(listener, router().merge(operator), shutdown)
        .await
}
