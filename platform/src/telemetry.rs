//! `tracing` setup (`RUST_LOG` filters, human or JSON lines) and OpenTelemetry traces.
//!
//! Traces are exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, e.g. `http://127.0.0.1:4317`; otherwise
//! nothing is installed and the spans made only for traces are not even created
//! ([`enabled`] is false). `service.name` is the process's name, or `OTEL_SERVICE_NAME`.
//!
//! The spans made for traces (request, call and store spans of this crate, the gateway and
//! the card gateway) have the target [`TARGET`], enabled at INFO whatever `RUST_LOG` says;
//! a health probe's span is a DEBUG span then, so it never becomes a trace of its own. The
//! events logged inside a span become its span events. (One global filter and no per-layer
//! filters: with a per-layer filter on the OpenTelemetry layer, some spans were randomly
//! never seen by it.) The ids of an exported span are also the [`TraceContext`] of its hop: the
//! trace id in log lines is the OTel trace id, and the `traceparent` sent on names the
//! client span of the call, so the callee's server span is its child.

use std::{
    future::Future,
    pin::Pin,
    sync::OnceLock,
    task::{Context as TaskContext, Poll},
    time::{Duration, SystemTime},
};

use opentelemetry::{
    Context, KeyValue,
    trace::{
        SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
        TraceState, Tracer as _, TracerProvider as _,
    },
};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::{Instrument as _, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, fmt, prelude::*};

use crate::context::{TRACEPARENT, TraceContext, Traceparent};

/// The target of the spans made for traces.
pub const TARGET: &str = "otel";

/// The tracer of the process, when traces are exported.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// True when this process exports traces (set once, by [`install`]).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Installs the global subscriber without exporting traces. Safe to call more than once
/// (tests, the monolith): later calls are no-ops.
pub fn init(json: bool) {
    let _ = try_init(json, None);
}

/// The process's telemetry: logs, and traces when the OTLP endpoint is set. Keep it until
/// the process stops and call [`Telemetry::shutdown`] then, so the last spans are sent.
#[must_use = "shut it down when the process stops, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// The OTLP endpoint the environment names, if any.
fn otlp_endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .filter_map(|v| std::env::var(v).ok())
    .find(|v| !v.trim().is_empty())
}

/// Sets up logging for the process `service` and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set,
/// trace export. Call it inside the Tokio runtime (the exporter's batches are sent from a
/// task on it). A failure to build the exporter is logged, and the process runs without
/// traces rather than not at all.
pub fn install(service: &str, json: bool) -> Telemetry {
    let Some(endpoint) = otlp_endpoint() else {
        init(json);
        return Telemetry { provider: None };
    };
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| service.to_owned());
    let provider = match provider(&name) {
        Ok(p) => p,
        Err(e) => {
            init(json);
            tracing::error!(endpoint = %endpoint, error = %chain(&e), "trace export is off: the OTLP exporter could not be built");
            return Telemetry { provider: None };
        }
    };
    let tracer = provider.tracer("shop");
    if try_init(json, Some(tracer.clone())) {
        let _ = TRACER.set(tracer);
        tracing::info!(endpoint = %endpoint, service = %name, "exporting traces over OTLP/gRPC");
        Telemetry {
            provider: Some(provider),
        }
    } else {
        // Someone installed a subscriber first: this one's spans would go nowhere.
        let _ = provider.shutdown();
        Telemetry { provider: None }
    }
}

fn provider(service: &str) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    if let Ok(p) = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL")
        && !p.is_empty()
        && p != "grpc"
    {
        // Logged once the subscriber is up (see `install`'s caller): only gRPC is built in.
        eprintln!("OTEL_EXPORTER_OTLP_PROTOCOL={p} is not supported; exporting over OTLP/gRPC");
    }
    // The endpoint, timeout and headers come from the standard OTEL_EXPORTER_OTLP_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    // Batches are exported from a task on the process's Tokio runtime: the tonic client
    // needs its reactor, which the SDK's default batch thread does not have.
    let batches =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_resource(resource)
        .build())
}

/// Builds and installs the subscriber; false when one was installed already.
fn try_init(json: bool, tracer: Option<SdkTracer>) -> bool {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if tracer.is_some()
        && let Ok(spans) = format!("{TARGET}=info").parse()
    {
        filter = filter.add_directive(spans);
    }
    let logs = if json {
        fmt::layer().json().with_current_span(true).boxed()
    } else {
        // Colours only for a terminal: a log file or a pipe gets no escape codes (and no
        // process pays for styling every span's fields).
        fmt::layer()
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .boxed()
    };
    let traces = tracer.map(|tracer| tracing_opentelemetry::layer().with_tracer(tracer));
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok()
}

impl Telemetry {
    /// Sends the spans still buffered and stops the exporter (graceful stop).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The SDK blocks this thread until its batch task (on the runtime) has exported.
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing the last spans failed"),
            Err(e) => tracing::warn!(error = %e, "flushing the last spans failed"),
        }
    }
}

/// Makes `span` the hop of `trace`: its OTel parent is `parent` (the caller's span from
/// `traceparent`), or none (a new trace); then `trace` takes the span's own ids, so what is
/// logged and sent on agrees with what is exported. Does nothing when the span is not
/// exported.
pub fn adopt(span: &Span, parent: Option<&Traceparent>, trace: &mut TraceContext) {
    let _ = span.set_parent(parent.map_or_else(Context::new, remote));
    if let Some(sc) = span_context(span) {
        let old = std::mem::replace(&mut trace.trace_id, sc.trace_id().to_string());
        if trace.request_id == old {
            trace.request_id = trace.trace_id.clone();
        }
        trace.span_id = sc.span_id().to_string();
    }
}

/// The exported span's context (None when it is not exported).
fn span_context(span: &Span) -> Option<SpanContext> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// A context whose span is the caller's, known only by its ids.
fn remote(p: &Traceparent) -> Context {
    let trace_id = TraceId::from_hex(&p.trace_id).unwrap_or(TraceId::INVALID);
    let span_id = SpanId::from_hex(&p.span_id).unwrap_or(SpanId::INVALID);
    Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// The `traceparent` naming `span` (None when it is not exported).
pub fn traceparent_of(span: &Span) -> Option<String> {
    span_context(span).map(|sc| format!("00-{}-{}-01", sc.trace_id(), sc.span_id()))
}

/// Marks `span` failed (OTel status ERROR with `why`).
pub fn fail(span: &Span, why: impl Into<std::borrow::Cow<'static, str>>) {
    span.set_status(Status::error(why));
}

/// The OTel `db.system` of a store name used by [`crate::timing::store`].
fn db_system(store: &str) -> Option<&'static str> {
    Some(match store {
        "postgres" => "postgresql",
        "mysql" => "mysql",
        "mongodb" => "mongodb",
        "redis" => "redis",
        _ => return None,
    })
}

/// The current span's context, when it is an exported span: store operations outside any
/// request (a background loop's idle polling) are not traced, or each would be a trace.
fn exported_parent() -> Option<Context> {
    let cx = Span::current().context();
    cx.span().span_context().is_valid().then_some(cx)
}

/// The span of one store operation (`store` as in [`crate::timing::store`]), a child of the
/// current span; disabled when traces are off, outside a traced request, or when `store`
/// is no database.
pub fn store_span(store: &'static str, op: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    let Some(system) = db_system(store) else {
        return Span::none();
    };
    if exported_parent().is_none() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "store",
        otel.name = %format!("{store} {op}"),
        otel.kind = "client",
        db.system = system,
        db.operation = %op,
        otel.status_code = Empty,
    )
}

/// Exports one store round trip that already happened (timed by the driver, as MongoDB's
/// command monitoring does), as a child of the current span (none outside a traced request).
pub fn record_store_span(store: &'static str, op: &str, took: Duration, failed: bool) {
    let (Some(tracer), Some(system)) = (TRACER.get(), db_system(store)) else {
        return;
    };
    let Some(parent) = exported_parent() else {
        return;
    };
    let end = SystemTime::now();
    let mut span = tracer
        .span_builder(format!("{store} {op}"))
        .with_kind(SpanKind::Client)
        .with_start_time(end.checked_sub(took).unwrap_or(end))
        .with_attributes([
            KeyValue::new("db.system", system),
            KeyValue::new("db.operation", op.to_owned()),
        ])
        .start_with_context(tracer, &parent);
    if failed {
        opentelemetry::trace::Span::set_status(&mut span, Status::error("command failed"));
    }
    opentelemetry::trace::Span::end_with_timestamp(&mut span, end);
}

/// Client-side layer for every gRPC transport: a client span per call (child of the span
/// named by the request's `traceparent`, i.e. the caller's hop), and the `traceparent` sent
/// on rewritten to name that client span. Passes calls through untouched when traces are off.
#[derive(Clone, Copy, Default)]
pub struct ClientSpanLayer;

impl<S> tower::Layer<S> for ClientSpanLayer {
    type Service = ClientSpans<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientSpans { inner }
    }
}

#[derive(Clone)]
pub struct ClientSpans<S> {
    inner: S,
}

/// `/shop.item.v1.ItemService/ReserveStock` -> ("shop.item.v1.ItemService", "ReserveStock").
fn rpc_parts(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default().to_owned();
    let method = parts.next().unwrap_or_default().to_owned();
    (service, method)
}

/// The span of a gRPC call to `path`, of `kind` ("client" or "server").
pub fn grpc_span(kind: &'static str, path: &str) -> Span {
    let (service, method) = rpc_parts(path);
    let name = path.trim_start_matches('/');
    match kind {
        "server" => tracing::info_span!(
            target: TARGET,
            "grpc",
            otel.name = %name,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            method = %path,
            trace_id = Empty,
            request_id = Empty,
            rpc.grpc.status_code = Empty,
            otel.status_code = Empty,
        ),
        _ => tracing::info_span!(
            target: TARGET,
            "grpc.client",
            otel.name = %name,
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = Empty,
            otel.status_code = Empty,
        ),
    }
}

/// Records a gRPC status on `span` (ERROR for the codes that mean the server failed).
pub fn record_grpc_status(span: &Span, code: tonic::Code) {
    span.record("rpc.grpc.status_code", code as i32);
    if matches!(
        code,
        tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unimplemented
            | tonic::Code::Internal
            | tonic::Code::Unavailable
            | tonic::Code::DataLoss
    ) {
        fail(span, format!("{code:?}"));
    }
}

/// The gRPC status of a response whose headers carry it (a trailers-only error answer).
pub fn grpc_status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

impl<S, B, RB> tower::Service<http::Request<B>> for ClientSpans<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !enabled() {
            return Box::pin(self.inner.call(req));
        }
        let span = grpc_span("client", req.uri().path());
        // The caller's hop is the one its CallContext put in `traceparent`; without one
        // (a call made outside any request) the current span is the parent.
        if let Some(parent) = Traceparent::from_headers(req.headers()) {
            let _ = span.set_parent(remote(&parent));
        }
        if let Some(tp) = traceparent_of(&span)
            && let Ok(v) = http::HeaderValue::from_str(&tp)
        {
            req.headers_mut().insert(TRACEPARENT, v);
        }
        let fut = span.in_scope(|| self.inner.call(req));
        let recorded = span.clone();
        Box::pin(
            async move {
                let res = fut.await;
                match &res {
                    Ok(r) => {
                        if let Some(code) = grpc_status_in(r.headers()) {
                            record_grpc_status(&recorded, code);
                        }
                    }
                    Err(_) => fail(&recorded, "transport error"),
                }
                res
            }
            .instrument(span),
        )
    }
}

/// An HTTP client call's span (the card gateway client), a child of the current span, and
/// the `traceparent` to send with it (None when traces are off).
pub fn http_client_span(method: &str, url: &str, route: &str) -> (Span, Option<String>) {
    if !enabled() {
        return (Span::none(), None);
    }
    let span = tracing::info_span!(
        target: TARGET,
        "http.client",
        otel.name = %format!("{method} {route}"),
        otel.kind = "client",
        http.request.method = %method,
        url.full = %url,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    let tp = traceparent_of(&span);
    (span, tp)
}

/// An HTTP server span for `method route`, continuing the caller's `traceparent`.
pub fn http_server_span(method: &str, route: &str, headers: &http::HeaderMap) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "http",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        route = %format!("{method} {route}"),
        trace_id = Empty,
        request_id = Empty,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    let mut trace = TraceContext::from_headers(headers);
    adopt(
        &span,
        Traceparent::from_headers(headers).as_ref(),
        &mut trace,
    );
    span.record("trace_id", tracing::field::display(&trace.trace_id));
    span.record("request_id", tracing::field::display(&trace.request_id));
    span
}

/// Records an HTTP response status on `span` (ERROR for 5xx).
pub fn record_http_status(span: &Span, status: http::StatusCode) {
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        fail(span, status.to_string());
    }
}

/// axum middleware for a plain HTTP server (the card gateway): a server span per request,
/// continuing the caller's `traceparent`. Passes requests through when traces are off.
pub async fn trace_http(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !enabled() {
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = http_server_span(req.method().as_str(), &route, req.headers());
    let res = next.run(req).instrument(span.clone()).await;
    record_http_status(&span, res.status());
    res
}

/// Formats an error with its whole `source()` chain, for logs.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
