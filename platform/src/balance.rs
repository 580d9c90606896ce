//! Client-side load balancing over a service's replicas.
//!
//! gRPC runs over HTTP/2, which multiplexes every call of a caller over one long-lived
//! connection per peer. Behind a plain (ClusterIP) Service that connection lands on one pod
//! and stays there, so all of a caller's load goes to one replica however many run. The
//! caller therefore knows every replica's address (a list of URLs, or a DNS name such as a
//! Kubernetes headless Service, re-resolved every `SHOP_RESOLVE_INTERVAL_MS`), keeps one
//! lazily connected channel per address and picks one per call, round-robin.
//!
//! An endpoint whose transport fails (connection refused, reset, connect timeout) is
//! ejected for `SHOP_EJECT_MS` and gets no calls until then (unless every endpoint is
//! ejected: then the one back soonest is tried, so one replica alone behaves as before).
//! A call whose connection could not even be opened was never sent, so it is tried at
//! once on the next endpoint, whatever the method; a call that failed after it was sent is
//! not repeated here (its effect is unknown) but answered UNAVAILABLE: callers retry the
//! calls that are safe to repeat (the gateway's retry policy), and the failed endpoint is
//! no longer picked.
//!
//! Over TLS (`https://` URLs), each replica's certificate must carry the name the URL gave
//! (the DNS name for a resolved address): a replica that cannot prove it counts as
//! unreachable, and the handshake's error is logged with its ejection.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http_body_util::BodyExt as _;
use tonic::{body::Body, transport::Channel};
use tower::{BoxError, ServiceExt as _};

use crate::{
    endpoints::{ServiceUrls, Target},
    tls::ClientTls,
    transport::TransportError,
};

/// How callers balance: shared by every `*_SERVICE_URL` of a process.
#[derive(Debug, Clone, clap::Args)]
pub struct BalanceSettings {
    /// How often DNS names in the *_SERVICE_URL settings are resolved again (ms), so that
    /// replicas that come and go (a headless Service's pods) are picked up.
    #[arg(long, env = "SHOP_RESOLVE_INTERVAL_MS", default_value_t = 5_000)]
    pub resolve_interval_ms: u64,
    /// How long a replica whose connection failed gets no calls (ms).
    #[arg(long, env = "SHOP_EJECT_MS", default_value_t = 5_000)]
    pub eject_ms: u64,
}

impl Default for BalanceSettings {
    fn default() -> Self {
        Self {
            resolve_interval_ms: 5_000,
            eject_ms: 5_000,
        }
    }
}

impl BalanceSettings {
    fn resolve_interval(&self) -> Duration {
        Duration::from_millis(self.resolve_interval_ms.max(100))
    }
    fn eject_for(&self) -> Duration {
        Duration::from_millis(self.eject_ms)
    }
}

/// One replica: its address and its own lazily connected channel.
struct Endpoint {
    addr: SocketAddr,
    label: String,
    channel: Channel,
    ejected_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    fn ejected_until(&self) -> Option<Instant> {
        match self.ejected_until.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }

    fn set_ejected_until(&self, until: Option<Instant>) {
        match self.ejected_until.lock() {
            Ok(mut g) => *g = until,
            Err(p) => *p.into_inner() = until,
        }
    }

    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until().is_some_and(|t| t > now)
    }
}

/// What the balancer knows about one endpoint (tests, debugging).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointState {
    pub addr: SocketAddr,
    pub ejected: bool,
}

/// An address to call, and the name its certificate must carry over TLS.
type Addressed = (SocketAddr, String);

struct Shared {
    service: &'static str,
    connect_timeout: Duration,
    tls: Option<ClientTls>,
    eject_for: Duration,
    endpoints: RwLock<Arc<Vec<Arc<Endpoint>>>>,
    next: AtomicUsize,
    /// Bumped on every resolution, so a call made before the first one can wait for it.
    resolved: tokio::sync::watch::Sender<u64>,
}

/// A tower service over the replicas of one service; see the module docs.
#[derive(Clone)]
pub struct Balancer {
    shared: Arc<Shared>,
}

/// Calls tried on further endpoints when the connection could not be opened.
const MAX_ATTEMPTS: usize = 3;

impl Balancer {
    /// A balancer over `urls`. IP addresses are used as given; DNS names are resolved in
    /// the background now and every `settings.resolve_interval_ms` while the balancer
    /// lives. Over TLS when `tls` is given (the URLs' scheme is the caller's to check:
    /// [`crate::tls::check_scheme`]). Needs a Tokio runtime.
    pub fn new(
        service: &'static str,
        urls: &ServiceUrls,
        connect_timeout: Duration,
        settings: &BalanceSettings,
        tls: Option<ClientTls>,
    ) -> Self {
        let (resolved, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            service,
            connect_timeout,
            tls,
            eject_for: settings.eject_for(),
            endpoints: RwLock::new(Arc::new(Vec::new())),
            next: AtomicUsize::new(0),
            resolved,
        });
        let fixed: Vec<Addressed> = urls
            .targets()
            .iter()
            .filter_map(|t| match t {
                Target::Addr { ip, port } => Some((SocketAddr::new(*ip, *port), t.tls_name())),
                Target::Name { .. } => None,
            })
            .collect();
        shared.replace(&fixed);
        let names: Vec<(String, u16)> = urls
            .targets()
            .iter()
            .filter_map(|t| match t {
                Target::Name { host, port } => Some((host.clone(), *port)),
                Target::Addr { .. } => None,
            })
            .collect();
        if !names.is_empty() {
            tokio::spawn(resolve_loop(
                Arc::downgrade(&shared),
                fixed,
                names,
                settings.resolve_interval(),
            ));
        }
        Self { shared }
    }

    /// Every endpoint known now, and whether it is ejected.
    pub fn endpoints(&self) -> Vec<EndpointState> {
        let now = Instant::now();
        self.shared
            .current()
            .iter()
            .map(|e| EndpointState {
                addr: e.addr,
                ejected: e.is_ejected(now),
            })
            .collect()
    }
}

impl Shared {
    fn current(&self) -> Arc<Vec<Arc<Endpoint>>> {
        match self.endpoints.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Makes `addrs` the endpoint set, keeping the channel (and ejection) of every address
    /// that stays.
    fn replace(&self, addrs: &[Addressed]) {
        let old = self.current();
        let mut next = Vec::with_capacity(addrs.len());
        for (addr, name) in addrs {
            if next.iter().any(|e: &Arc<Endpoint>| e.addr == *addr) {
                continue;
            }
            if let Some(e) = old.iter().find(|e| e.addr == *addr) {
                next.push(e.clone());
                continue;
            }
            let (url, tls) = match &self.tls {
                Some(tls) => (format!("https://{addr}"), Some((tls, name.as_str()))),
                None => (format!("http://{addr}"), None),
            };
            match crate::transport::lazy_channel(&url, self.connect_timeout, tls) {
                Ok(channel) => next.push(Arc::new(Endpoint {
                    addr: *addr,
                    label: addr.to_string(),
                    channel,
                    ejected_until: Mutex::new(None),
                })),
                // A socket address always makes a valid URI, and the name was checked when
                // the URL was parsed; log rather than fail anyway.
                Err(e) => {
                    tracing::warn!(service = self.service, %addr, error = %e, "skipping an endpoint")
                }
            }
        }
        if next.len() != old.len() || next.iter().zip(old.iter()).any(|(a, b)| a.addr != b.addr) {
            let shown: Vec<String> = next.iter().map(|e| e.label.clone()).collect();
            tracing::info!(service = self.service, endpoints = ?shown, "endpoints changed");
        }
        metrics::gauge!("shop_endpoints", "service" => self.service).set(next.len() as f64);
        let next = Arc::new(next);
        match self.endpoints.write() {
            Ok(mut g) => *g = next,
            Err(p) => *p.into_inner() = next,
        }
    }

    /// The endpoint for the next attempt: round-robin over those not ejected and not yet
    /// tried by this call; if every untried one is ejected, the one back soonest.
    fn pick(&self, all: &[Arc<Endpoint>], tried: &[SocketAddr]) -> Option<Arc<Endpoint>> {
        let n = all.len();
        if n == 0 {
            return None;
        }
        let now = Instant::now();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let untried = (0..n)
            .map(|i| &all[(start + i) % n])
            .filter(|e| !tried.contains(&e.addr));
        let mut soonest: Option<&Arc<Endpoint>> = None;
        for e in untried {
            match e.ejected_until() {
                Some(t) if t > now => {
                    if soonest.is_none_or(|s| s.ejected_until().is_some_and(|st| t < st)) {
                        soonest = Some(e);
                    }
                }
                _ => return Some(e.clone()),
            }
        }
        soonest.cloned()
    }

    /// The endpoints, waiting (up to the connect timeout) for the first DNS resolution.
    async fn endpoints_for_call(&self) -> Arc<Vec<Arc<Endpoint>>> {
        let now = self.current();
        if !now.is_empty() {
            return now;
        }
        let mut rx = self.resolved.subscribe();
        if *rx.borrow_and_update() == 0 {
            let _ = tokio::time::timeout(self.connect_timeout, rx.changed()).await;
        }
        self.current()
    }

    fn eject(&self, e: &Endpoint) {
        e.set_ejected_until(Some(Instant::now() + self.eject_for));
        metrics::counter!("shop_endpoint_ejections_total", "service" => self.service, "endpoint" => e.label.clone()).increment(1);
    }

    async fn send(&self, req: http::Request<Body>) -> Result<http::Response<Body>, TransportError> {
        // Unary gRPC bodies are one small message: buffered, a call can be sent again to
        // another endpoint when its connection could not be opened.
        let (parts, body) = req.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|e| TransportError(BoxError::from(e)))?
            .to_bytes();
        let all = self.endpoints_for_call().await;
        let mut tried: Vec<SocketAddr> = Vec::new();
        loop {
            let Some(e) = self.pick(&all, &tried) else {
                return Err(unreachable(
                    self.service,
                    None,
                    "no address known (its DNS name resolved to nothing)".into(),
                ));
            };
            tried.push(e.addr);
            let attempt = http::Request::from_parts(
                parts.clone(),
                Body::new(http_body_util::Full::new(bytes.clone())),
            );
            match e.channel.clone().oneshot(attempt).await {
                Ok(resp) => {
                    if e.ejected_until().is_some() {
                        e.set_ejected_until(None);
                    }
                    metrics::counter!("shop_endpoint_requests_total", "service" => self.service, "endpoint" => e.label.clone(), "outcome" => "ok").increment(1);
                    return Ok(resp);
                }
                Err(err) => {
                    let sent = !never_sent(&err);
                    metrics::counter!("shop_endpoint_requests_total", "service" => self.service, "endpoint" => e.label.clone(), "outcome" => if sent { "failed" } else { "unreachable" }).increment(1);
                    self.eject(&e);
                    let cause = crate::telemetry::chain(&err);
                    tracing::warn!(service = self.service, endpoint = %e.label, sent, error = %cause, "endpoint failed; ejected");
                    let more = tried.len() < MAX_ATTEMPTS.min(all.len());
                    if sent || !more {
                        return Err(unreachable(self.service, Some(&e.label), cause));
                    }
                    metrics::counter!("shop_endpoint_retries_total", "service" => self.service)
                        .increment(1);
                }
            }
        }
    }
}

/// Whether `err` says the connection could not be opened, so the request never left.
fn never_sent(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// A transport failure towards one endpoint, carrying the UNAVAILABLE status that tonic
/// hands to the caller (found through `source`): gRPC's code for "not reached, or the
/// connection broke", which callers may retry when the call is safe to repeat.
#[derive(Debug)]
struct Unreachable(tonic::Status);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.message())
    }
}

impl std::error::Error for Unreachable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn unreachable(service: &str, endpoint: Option<&str>, cause: String) -> TransportError {
    let at = endpoint.map(|e| format!(" at {e}")).unwrap_or_default();
    TransportError(Box::new(Unreachable(tonic::Status::unavailable(format!(
        "{service}{at}: {cause}"
    )))))
}

async fn resolve_loop(
    shared: Weak<Shared>,
    fixed: Vec<Addressed>,
    names: Vec<(String, u16)>,
    every: Duration,
) {
    // The last good answer per name: a failed lookup keeps it rather than dropping replicas.
    let mut last: HashMap<(String, u16), Vec<SocketAddr>> = HashMap::new();
    loop {
        for (host, port) in &names {
            match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(found) => {
                    let mut addrs: Vec<SocketAddr> = found.collect();
                    addrs.sort();
                    addrs.dedup();
                    last.insert((host.clone(), *port), addrs);
                }
                Err(e) => {
                    let service = shared.upgrade().map_or("?", |s| s.service);
                    tracing::warn!(service, host = %host, error = %e, "resolving a service name failed; keeping its last addresses");
                }
            }
        }
        let Some(s) = shared.upgrade() else { return };
        let mut all = fixed.clone();
        for (host, port) in &names {
            if let Some(a) = last.get(&(host.clone(), *port)) {
                all.extend(a.iter().map(|addr| (*addr, host.clone())));
            }
        }
        let none = all.is_empty();
        s.replace(&all);
        s.resolved.send_modify(|n| *n += 1);
        drop(s);
        // Nothing resolved yet (the callee's name not in DNS yet): look again soon.
        let pause = if none {
            every.min(Duration::from_secs(1))
        } else {
            every
        };
        tokio::time::sleep(pause).await;
    }
}

impl tower::Service<http::Request<Body>> for Balancer {
    type Response = http::Response<Body>;
    type Error = TransportError;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, TransportError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call picks its endpoint, and its channel's own readiness is awaited then.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move { shared.send(req).await })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tonic::{Code, transport::Server};
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    use super::*;

    /// A health server on `listener` counting the calls it serves; stops when `stop` fires.
    async fn serve_counting(
        listener: tokio::net::TcpListener,
        calls: Arc<AtomicUsize>,
    ) -> tokio::sync::oneshot::Sender<()> {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let counting = tower::layer::layer_fn(move |inner| {
            let calls = calls.clone();
            tower::util::MapRequest::new(inner, move |req: http::Request<Body>| {
                calls.fetch_add(1, Ordering::SeqCst);
                req
            })
        });
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            Server::builder()
                .layer(counting)
                .add_service(health)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                }),
        );
        tx
    }

    async fn listener() -> tokio::net::TcpListener {
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0")
    }

    fn settings(eject_ms: u64) -> BalanceSettings {
        BalanceSettings {
            resolve_interval_ms: 100,
            eject_ms,
        }
    }

    async fn check(b: &Balancer, service: &str) -> Result<(), tonic::Status> {
        let mut c = HealthClient::new(b.clone());
        c.check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(drop)
    }

    fn addr_of(l: &tokio::net::TcpListener) -> SocketAddr {
        l.local_addr().expect("bound")
    }

    #[tokio::test]
    async fn calls_spread_over_every_replica() {
        let (la, lb) = (listener().await, listener().await);
        let urls = ServiceUrls::of_addrs(&[addr_of(&la), addr_of(&lb)]);
        let (ca, cb) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let _a = serve_counting(la, ca.clone()).await;
        let _b = serve_counting(lb, cb.clone()).await;
        let b = Balancer::new(
            "test",
            &urls,
            Duration::from_secs(1),
            &settings(5_000),
            None,
        );
        for _ in 0..100 {
            check(&b, "").await.expect("served");
        }
        let (a, bb) = (ca.load(Ordering::SeqCst), cb.load(Ordering::SeqCst));
        assert_eq!(a + bb, 100);
        assert!((40..=60).contains(&a), "{a} / {bb}");
    }

    #[tokio::test]
    async fn a_dead_replica_is_ejected_its_calls_go_elsewhere_and_it_returns_after_the_cool_down() {
        let (la, lb) = (listener().await, listener().await);
        let (a_addr, b_addr) = (addr_of(&la), addr_of(&lb));
        let urls = ServiceUrls::of_addrs(&[a_addr, b_addr]);
        let (ca, cb) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let _a = serve_counting(la, ca.clone()).await;
        drop(lb); // b is down: its port refuses connections.
        let b = Balancer::new("test", &urls, Duration::from_secs(1), &settings(300), None);
        for _ in 0..20 {
            check(&b, "")
                .await
                .expect("a refused connection is tried on the other replica");
        }
        assert_eq!(ca.load(Ordering::SeqCst), 20, "every call reached a");
        assert_eq!(
            b.endpoints(),
            vec![
                EndpointState {
                    addr: a_addr,
                    ejected: false
                },
                EndpointState {
                    addr: b_addr,
                    ejected: true
                },
            ]
        );

        // b comes back on its port; after the cool-down it gets calls again.
        let lb = tokio::net::TcpListener::bind(b_addr)
            .await
            .expect("rebind b's port");
        let _b = serve_counting(lb, cb.clone()).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        for _ in 0..20 {
            check(&b, "").await.expect("served");
        }
        assert!(cb.load(Ordering::SeqCst) >= 9, "b is back: {cb:?}");
        assert!(b.endpoints().iter().all(|e| !e.ejected));
    }

    #[tokio::test]
    async fn an_answer_is_not_a_failure_and_is_not_repeated() {
        let (la, lb) = (listener().await, listener().await);
        let urls = ServiceUrls::of_addrs(&[addr_of(&la), addr_of(&lb)]);
        let (ca, cb) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let _a = serve_counting(la, ca.clone()).await;
        let _b = serve_counting(lb, cb.clone()).await;
        let b = Balancer::new(
            "test",
            &urls,
            Duration::from_secs(1),
            &settings(5_000),
            None,
        );
        let err = check(&b, "no.such.Service")
            .await
            .expect_err("unknown service");
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(ca.load(Ordering::SeqCst) + cb.load(Ordering::SeqCst), 1);
        assert!(b.endpoints().iter().all(|e| !e.ejected));
    }

    #[tokio::test]
    async fn with_every_replica_down_the_caller_gets_unavailable() {
        let (la, lb) = (listener().await, listener().await);
        let urls = ServiceUrls::of_addrs(&[addr_of(&la), addr_of(&lb)]);
        drop((la, lb));
        let b = Balancer::new(
            "test",
            &urls,
            Duration::from_secs(1),
            &settings(5_000),
            None,
        );
        let err = check(&b, "").await.expect_err("nobody listens");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().starts_with("test at 127.0.0.1:"), "{err:?}");
        // Both ejected; the next call still tries one (never a dead end by itself).
        assert!(b.endpoints().iter().all(|e| e.ejected));
        assert_eq!(
            check(&b, "").await.expect_err("still down").code(),
            Code::Unavailable
        );
    }

    #[tokio::test]
    async fn a_dns_name_stands_for_every_address_it_resolves_to() {
        let l = listener().await;
        let port = addr_of(&l).port();
        let calls = Arc::new(AtomicUsize::new(0));
        let _s = serve_counting(l, calls.clone()).await;
        let urls = ServiceUrls::parse(&format!("http://localhost:{port}")).expect("valid");
        let b = Balancer::new(
            "test",
            &urls,
            Duration::from_secs(1),
            &settings(5_000),
            None,
        );
        // localhost may also resolve to ::1, where nothing listens: that one is ejected
        // and the call goes to 127.0.0.1.
        for _ in 0..5 {
            check(&b, "")
                .await
                .expect("served through the resolved address");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        assert!(
            b.endpoints()
                .iter()
                .any(|e| e.addr == SocketAddr::from(([127, 0, 0, 1], port)))
        );
    }
}
