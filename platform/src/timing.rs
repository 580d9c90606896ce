//! Where a request's time goes, measured by the services themselves.
//!
//! Each request served (gRPC, or the gateway's HTTP) gets a [`Timings`] ledger in a task
//! local. Store operations ([`store`]) and outgoing calls ([`TimingLayer`] on every
//! transport) add to it; a server returns its ledger to the caller in the `x-shop-timing`
//! response header, and the caller folds it into its own. The gateway finally answers with
//! a standard `Server-Timing` header, so one HTTP response tells how long it spent in each
//! downstream call as the caller saw it, in each handler, and in each store, with the
//! number of round trips. The load test reads that header to draw the waterfall of a
//! median checkout.
//!
//! Names are Server-Timing tokens: `call.item.ReserveStock` (as the caller saw it),
//! `handler.item.ReserveStock` (inside the server), `store.mongodb`, `store.postgres`,
//! `store.mysql`, `store.redis`, `store.card_gateway`.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::HeaderValue;

/// The response header that carries a server's ledger back to its caller.
pub const HEADER: &str = "x-shop-timing";

/// Time and count per component, summed over a request.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ledger {
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Entry {
    pub total: Duration,
    pub count: u32,
}

impl Ledger {
    pub fn add(&mut self, name: &str, took: Duration, count: u32) {
        // Most adds hit a name already there: no allocation for those.
        let e = match self.entries.get_mut(name) {
            Some(e) => e,
            None => self.entries.entry(name.to_owned()).or_default(),
        };
        e.total += took;
        e.count += count;
    }

    pub fn merge(&mut self, other: &Ledger) {
        for (name, e) in &other.entries {
            self.add(name, e.total, e.count);
        }
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, Entry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub fn get(&self, name: &str) -> Option<Entry> {
        self.entries.get(name).copied()
    }

    /// `name;dur=1.234;n=2, ...` (milliseconds, the Server-Timing syntax plus a count).
    pub fn encode(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(self.entries.len() * 40);
        for (i, (name, e)) in self.entries.iter().enumerate() {
            // Whole microseconds as integers: exact float formatting was 3% of the
            // gateway's CPU on a cached read.
            let us = e.total.as_micros();
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(
                out,
                "{sep}{name};dur={}.{:03};n={}",
                us / 1000,
                us % 1000,
                e.count
            );
        }
        out
    }

    /// Parses [`Ledger::encode`]'s output (and plain Server-Timing); ignores what it cannot
    /// read, since a timing header must never fail a call.
    pub fn decode(s: &str) -> Self {
        let mut ledger = Ledger::default();
        for item in s.split(',') {
            let mut parts = item.trim().split(';');
            let Some(name) = parts.next().map(str::trim).filter(|n| is_token(n)) else {
                continue;
            };
            let mut dur = None;
            let mut count = 1;
            for p in parts {
                match p.trim().split_once('=') {
                    Some(("dur", v)) => dur = v.parse::<f64>().ok(),
                    Some(("n", v)) => count = v.parse::<u32>().unwrap_or(1),
                    _ => {}
                }
            }
            if let Some(ms) = dur.filter(|d| d.is_finite() && *d >= 0.0) {
                ledger.add(name, Duration::from_secs_f64(ms / 1e3), count);
            }
        }
        ledger
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The ledger of the request being served, shared by everything working on it.
#[derive(Debug, Clone, Default)]
pub struct Timings(Arc<Mutex<Shared>>);

#[derive(Debug, Default)]
struct Shared {
    ledger: Ledger,
    /// Time in calls this process made itself (not those its callees reported), so that
    /// "time here" = total - own calls.
    own_calls: Duration,
}

impl Timings {
    pub fn add(&self, name: &str, took: Duration, count: u32) {
        if let Ok(mut s) = self.0.lock() {
            s.ledger.add(name, took, count);
        }
    }

    pub fn merge(&self, other: &Ledger) {
        if let Ok(mut s) = self.0.lock() {
            s.ledger.merge(other);
        }
    }

    fn add_own_call(&self, name: &str, took: Duration, callee: Option<&Ledger>) {
        if let Ok(mut s) = self.0.lock() {
            s.ledger.add(name, took, 1);
            s.own_calls += took;
            if let Some(l) = callee {
                s.ledger.merge(l);
            }
        }
    }

    pub fn snapshot(&self) -> Ledger {
        self.0.lock().map(|s| s.ledger.clone()).unwrap_or_default()
    }

    /// Summed time of this process's own outgoing calls (overlapping ones count twice).
    pub fn own_calls(&self) -> Duration {
        self.0.lock().map(|s| s.own_calls).unwrap_or_default()
    }
}

tokio::task_local! {
    static CURRENT: Timings;
}

/// The ledger of the request this task works for, if any.
pub fn current() -> Option<Timings> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `fut` with `timings` as its ledger.
pub async fn scope<F: Future>(timings: Timings, fut: F) -> F::Output {
    CURRENT.scope(timings, fut).await
}

/// Runs `fut` under the current ledger, if any: for work a handler spawns onto another
/// task but still does on the request's behalf.
pub fn carry<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    let timings = current();
    // The request's span too, so the spawned work's spans stay in its trace.
    let span = tracing::Span::current();
    tracing::Instrument::instrument(
        async move {
            match timings {
                Some(t) => CURRENT.scope(t, fut).await,
                None => fut.await,
            }
        },
        span,
    )
}

/// Times one store round trip (`store` is `postgres`, `mysql`, `mongodb`, `redis` or
/// `card_gateway`; `op` names the operation), into the request's ledger and the
/// `store_operation_duration_seconds` histogram.
pub async fn store<F: Future>(store: &'static str, op: &'static str, fut: F) -> F::Output {
    let span = crate::telemetry::store_span(store, op);
    let start = Instant::now();
    let out = tracing::Instrument::instrument(fut, span).await;
    record_store(store, op.to_owned(), start.elapsed());
    out
}

/// Records one store round trip that was timed elsewhere (e.g. by a driver's command
/// monitoring, which runs in the caller's task).
pub fn record_store(store: &'static str, op: String, took: Duration) {
    metrics::histogram!("store_operation_duration_seconds", "store" => store, "op" => op)
        .record(took.as_secs_f64());
    if let Some(t) = current() {
        t.add(&format!("store.{store}"), took, 1);
    }
}

/// `fut.store_op("postgres", "insert_order").await`: [`store`] as a method, so a query
/// chain reads top to bottom.
pub trait StoreOp: Future + Sized {
    fn store_op(
        self,
        store_name: &'static str,
        op: &'static str,
    ) -> impl Future<Output = Self::Output> {
        store(store_name, op, self)
    }
}

impl<F: Future> StoreOp for F {}

/// `/shop.item.v1.ItemService/ReserveStock` -> `item.ReserveStock`; other paths keep
/// their token characters.
pub fn method_label(path: &str) -> String {
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let service = segments.next().unwrap_or_default();
    let method = segments.next().unwrap_or_default();
    let short = service
        .strip_prefix("shop.")
        .and_then(|s| s.split('.').next())
        .unwrap_or(service);
    let label = format!("{short}.{method}");
    label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect()
}

/// Writes the ledger into a response's headers.
pub fn write_header(headers: &mut http::HeaderMap, ledger: &Ledger) {
    if let Ok(mut v) = HeaderValue::from_str(&ledger.encode()) {
        // New on every response: not worth a place in HTTP/2's header table (see
        // `context::never_index_per_call_headers`).
        v.set_sensitive(true);
        headers.insert(HEADER, v);
    }
}

/// Client-side layer for every transport: times each call as the caller sees it (to the
/// response headers, which a unary server sends once its handler is done) and folds the
/// callee's own ledger into the caller's. Being the last layer before the wire, it also
/// keeps the per-call headers out of HTTP/2's header table
/// ([`crate::context::never_index_per_call_headers`]): tonic adds `grpc-timeout` only
/// after the caller's own code has run.
#[derive(Clone, Copy, Default)]
pub struct TimingLayer;

impl<S> tower::Layer<S> for TimingLayer {
    type Service = TimedCalls<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TimedCalls { inner }
    }
}

#[derive(Clone)]
pub struct TimedCalls<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for TimedCalls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        crate::context::never_index_per_call_headers(req.headers_mut());
        let Some(timings) = current() else {
            return Box::pin(self.inner.call(req));
        };
        let name = format!("call.{}", method_label(req.uri().path()));
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let callee = res.as_ref().ok().and_then(|r| {
                r.headers()
                    .get(HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(Ledger::decode)
            });
            timings.add_own_call(&name, start.elapsed(), callee.as_ref());
            res
        })
    }
}

/// axum middleware for the gateway: gives each HTTP request a ledger and answers with a
/// `Server-Timing` header: `total` (the whole request in the gateway), `gateway.self`
/// (total minus the gateway's own downstream calls; for calls made concurrently this
/// undercounts, and is then shown as 0) and every entry the calls reported.
pub async fn server_timing(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let timings = Timings::default();
    let start = Instant::now();
    let mut res = scope(timings.clone(), next.run(req)).await;
    let total = start.elapsed();
    let mut ledger = timings.snapshot();
    ledger.add("total", total, 1);
    ledger.add("gateway.self", total.saturating_sub(timings.own_calls()), 1);
    if let Ok(v) = HeaderValue::from_str(&ledger.encode()) {
        res.headers_mut().insert("server-timing", v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes_a_ledger() {
        let mut l = Ledger::default();
        l.add("store.mongodb", Duration::from_micros(1500), 1);
        l.add("store.mongodb", Duration::from_micros(500), 1);
        l.add("call.item.ReserveStock", Duration::from_millis(3), 1);
        let back = Ledger::decode(&l.encode());
        let m = back.get("store.mongodb").expect("mongodb entry");
        assert_eq!(m.count, 2);
        assert!((m.total.as_secs_f64() * 1e3 - 2.0).abs() < 1e-6);
        assert_eq!(back.get("call.item.ReserveStock").map(|e| e.count), Some(1));
    }

    #[test]
    fn encodes_milliseconds_with_three_decimals_in_name_order() {
        let mut l = Ledger::default();
        l.add("store.redis", Duration::from_nanos(42_900), 1);
        l.add("call.item.GetItem", Duration::from_micros(12_345), 2);
        assert_eq!(
            l.encode(),
            "call.item.GetItem;dur=12.345;n=2, store.redis;dur=0.042;n=1"
        );
        assert_eq!(Ledger::default().encode(), "");
    }

    #[tokio::test]
    async fn every_call_leaves_with_its_per_call_headers_never_indexed() {
        use tower::{Layer as _, ServiceExt as _};
        let seen = Arc::new(Mutex::new(None));
        let sent = seen.clone();
        let wire = tower::service_fn(move |req: http::Request<()>| {
            let sensitive = ["traceparent", "grpc-timeout", "x-shop-caller"]
                .map(|h| req.headers().get(h).map(HeaderValue::is_sensitive));
            *sent.lock().expect("lock") = Some(sensitive);
            async { Ok::<_, std::convert::Infallible>(http::Response::new(())) }
        });
        let req = http::Request::builder()
            .uri("/shop.item.v1.ItemService/GetItem")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .header("grpc-timeout", "1999m")
            .header("x-shop-caller", "token")
            .body(())
            .expect("request");
        TimingLayer.layer(wire).oneshot(req).await.expect("call");
        let seen = *seen.lock().expect("lock");
        assert_eq!(seen, Some([Some(true), Some(true), Some(false)]));
    }

    #[test]
    fn garbage_is_ignored_not_fatal() {
        let l = Ledger::decode("bad name;dur=1, ok;dur=x, fine;dur=2.5;n=3, ;;;");
        assert_eq!(l.entries().count(), 1);
        assert_eq!(l.get("fine").map(|e| e.count), Some(3));
    }

    #[test]
    fn method_labels_are_short_tokens() {
        assert_eq!(
            method_label("/shop.item.v1.ItemService/ReserveStock"),
            "item.ReserveStock"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health.Check"
        );
    }

    #[tokio::test]
    async fn store_time_lands_in_the_current_ledger_also_across_carried_spawns() {
        let t = Timings::default();
        scope(t.clone(), async {
            store("postgres", "test", async {}).await;
            tokio::spawn(carry(store("redis", "test", async {})))
                .await
                .expect("task");
        })
        .await;
        let l = t.snapshot();
        assert_eq!(l.get("store.postgres").map(|e| e.count), Some(1));
        assert_eq!(l.get("store.redis").map(|e| e.count), Some(1));
        // Outside any request, nothing is recorded and nothing fails.
        store("mysql", "test", async {}).await;
    }
}
