//! Serving an axum router over HTTP/1 and HTTP/2 with every connection bounded in time and
//! number: the one place the gateway, the mock card gateway and every `/metrics` listener
//! get their connection limits from.
//!
//! What the libraries offer is used as is: hyper's HTTP/1 `header_read_timeout` (every
//! request head on a connection, once the protocol is known), hyper's HTTP/2 keep-alive
//! pings (a peer that stops answering them is dropped) and tower's `Timeout` around the
//! whole request. What they do not offer is written here, per connection:
//!
//! - a **first-byte deadline**: hyper-util's protocol detection waits for the preface with
//!   no timer, so a socket that sends nothing would be held until the client leaves;
//! - a **deadline for the first request's head, whatever the protocol**: part of the HTTP/2
//!   preface, the preface and SETTINGS but no request, half an HTTP/1 request line: the
//!   connection is dropped when no request has arrived by then;
//! - an **idle timeout** once no request is in flight (HTTP/2 has no head timer, and pings
//!   answered by a live but silent client keep it open forever);
//! - a **whole-body deadline**: tower-http's `RequestBodyTimeout` restarts with every frame,
//!   so a body trickling in a byte at a time never trips it; here the body must be complete
//!   within the limit, else the request is answered 408 and an HTTP/1 connection closed;
//! - a **cap per client address** (IPv6: per /64), so one address cannot take every slot of
//!   `max_connections`; beyond it a connection is closed at once.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo, response::Response};
use http::{HeaderValue, StatusCode, Version};
use http_body::{Frame, SizeHint};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    time::{Instant, Sleep},
};
use tower::{BoxError, ServiceExt as _};

/// The limits of one HTTP listener. See the module docs for what each one stops.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// A connection that has sent no byte within this long after it was accepted is closed.
    pub first_byte_timeout: Duration,
    /// A connection whose first request's head (HTTP/2: preface, SETTINGS and a request's
    /// HEADERS) is not complete within this long after it was accepted is closed; on
    /// HTTP/1 every later request head gets as long again (hyper's timer).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2 with a
    /// GOAWAY; HTTP/1 keep-alive connections usually hit `header_read_timeout` first).
    pub idle_timeout: Duration,
    /// HTTP/2: a PING is sent after this long without a frame from the peer...
    pub keep_alive_interval: Duration,
    /// ...and the connection is closed if its answer takes longer than this. It is also
    /// the grace a connection closing for idleness or shutdown gets before it is dropped.
    pub keep_alive_timeout: Duration,
    /// A request's body must be complete within this long after its head arrived; a slower
    /// one is answered 408 (and its HTTP/1 connection closed).
    pub body_timeout: Duration,
    /// A request not answered within this long gets the listener's timeout answer; None
    /// for no limit (the mock card gateway, whose injected hangs are the point).
    pub request_timeout: Option<Duration>,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections served at once from one client address (IPv6: one /64); more are
    /// closed as soon as they are accepted.
    pub max_connections_per_address: usize,
    /// Addresses the per-address cap does not apply to (a trusted reverse proxy carries
    /// many clients on its own address).
    pub uncapped_addresses: Vec<IpAddr>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            first_byte_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            keep_alive_interval: Duration::from_secs(20),
            keep_alive_timeout: Duration::from_secs(20),
            body_timeout: Duration::from_secs(10),
            request_timeout: Some(Duration::from_secs(30)),
            max_connections: 10_000,
            max_connections_per_address: 1_000,
            uncapped_addresses: Vec::new(),
        }
    }
}

impl HttpLimits {
    /// A `/metrics` listener's: a scraper or two, each answered in milliseconds.
    pub fn metrics() -> Self {
        Self {
            request_timeout: Some(Duration::from_secs(10)),
            max_connections: 128,
            max_connections_per_address: 32,
            ..Self::default()
        }
    }
}

/// Which per-request limit a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// Its body did not arrive within [`HttpLimits::body_timeout`].
    Body,
    /// It was not answered within [`HttpLimits::request_timeout`].
    Request,
}

impl Exceeded {
    fn label(self) -> &'static str {
        match self {
            Self::Body => "body",
            Self::Request => "request",
        }
    }
}

/// How a listener words the answer to a request that ran into a limit.
pub type Answer = Arc<dyn Fn(Exceeded) -> Response + Send + Sync>;

/// The plain answers: 408 for a slow body, 503 for a request that took too long.
pub fn plain_answer(exceeded: Exceeded) -> Response {
    let (status, text) = match exceeded {
        Exceeded::Body => (
            StatusCode::REQUEST_TIMEOUT,
            "the request body was not sent in time",
        ),
        Exceeded::Request => (StatusCode::SERVICE_UNAVAILABLE, "the request took too long"),
    };
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
}

/// An HTTP listener's settings: its name (the `listener` label of its metrics), its limits
/// and how it answers a request that ran into one.
pub struct HttpServer {
    name: &'static str,
    limits: HttpLimits,
    answer: Answer,
}

impl HttpServer {
    pub fn new(name: &'static str, limits: HttpLimits) -> Self {
        Self {
            name,
            limits,
            answer: Arc::new(plain_answer),
        }
    }

    /// Answers requests that ran into a per-request limit with `answer` (in the API's own
    /// error format) instead of [`plain_answer`].
    pub fn answering(
        mut self,
        answer: impl Fn(Exceeded) -> Response + Send + Sync + 'static,
    ) -> Self {
        self.answer = Arc::new(answer);
        self
    }

    /// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight
    /// requests finish (each connection still bounded by its limits). Every request
    /// carries its peer's address as `ConnectInfo<SocketAddr>`; every accepted socket has
    /// TCP_NODELAY.
    pub async fn serve(
        self,
        listener: TcpListener,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let limits = &self.limits;
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let addresses = Arc::new(AddressSlots::new(
            limits.max_connections_per_address.max(1),
            &limits.uncapped_addresses,
        ));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(limits.keep_alive_interval)
            .keep_alive_timeout(limits.keep_alive_timeout);
        let shared = Arc::new(Shared {
            name: self.name,
            limits: self.limits.clone(),
            answer: self.answer,
            router,
            builder,
        });
        // Every connection task holds a receiver: when all are gone, every connection is.
        let (stop, stopped) = watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            // A slot first: at the limit, connections wait unaccepted.
            let slot = tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => match slot {
                    Ok(s) => s,
                    Err(_) => break, // never closed
                },
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little instead of
                        // spinning.
                        tracing::warn!(listener = shared.name, error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Some(address_slot) = addresses.try_acquire(peer.ip()) else {
                shared.hit("per_address");
                tracing::debug!(listener = shared.name, %peer, "connection over its address's cap closed");
                continue; // dropping the stream closes it; the slot is released
            };
            crate::net::set_nodelay(&stream);
            let shared = Arc::clone(&shared);
            let stopped = stopped.clone();
            tokio::spawn(async move {
                let name = shared.name;
                metrics::gauge!("http_connections", "listener" => name).increment(1.0);
                shared.run(stream, peer, stopped).await;
                metrics::gauge!("http_connections", "listener" => name).decrement(1.0);
                drop(address_slot);
                drop(slot);
            });
        }
        drop(listener);
        // Fails only when no connection is left to tell.
        let _ = stop.send(true);
        drop(stopped);
        stop.closed().await;
        Ok(())
    }
}

/// What every connection of one listener shares.
struct Shared {
    name: &'static str,
    limits: HttpLimits,
    answer: Answer,
    router: Router,
    builder: auto::Builder<TokioExecutor>,
}

/// Requests of one connection: how many arrived, how many are in flight (until their
/// response body is sent or dropped) and since when none is.
#[derive(Debug, Clone, Copy)]
struct Activity {
    started: u64,
    in_flight: usize,
    idle_since: Instant,
}

/// Why a connection's task is waiting for a deadline.
#[derive(Debug, Clone, Copy)]
enum Deadline {
    /// No request has arrived yet: dropped then.
    Head,
    /// No request in flight: asked to close (GOAWAY / no keep-alive) then.
    Idle,
    /// Asked to close and still open: dropped then.
    Grace,
}

impl Shared {
    fn hit(&self, limit: &'static str) {
        metrics::counter!("http_limit_hits_total", "listener" => self.name, "limit" => limit)
            .increment(1);
    }

    /// One connection from accept to close.
    async fn run(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        mut stop: watch::Receiver<bool>,
    ) {
        let accepted = Instant::now();
        // Waiting for the first byte before hyper sees the socket: its protocol detection
        // has no timer of its own.
        let mut probe = [0u8; 1];
        tokio::select! {
            peeked = tokio::time::timeout(self.limits.first_byte_timeout, stream.peek(&mut probe)) => match peeked {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Ok(_)) => return, // closed by the client
                Ok(Err(e)) => {
                    tracing::debug!(listener = self.name, %peer, error = %e, "connection failed before its first byte");
                    return;
                }
                Err(_) => {
                    self.hit("first_byte");
                    tracing::debug!(listener = self.name, %peer, "connection closed: no first byte in time");
                    return;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
        }

        let activity = Arc::new(watch::Sender::new(Activity {
            started: 0,
            in_flight: 0,
            idle_since: accepted,
        }));
        let mut seen = activity.subscribe();
        let service = {
            let shared = Arc::clone(&self);
            let activity = Arc::clone(&activity);
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let guard = InFlight::start(&activity);
                let shared = Arc::clone(&shared);
                async move {
                    let response = shared.handle(req, peer).await;
                    Ok::<_, Infallible>(response.map(|body| {
                        Body::new(Guarded {
                            body,
                            _guard: guard,
                        })
                    }))
                }
            })
        };
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let mut closing: Option<Instant> = None;
        loop {
            let now = *seen.borrow_and_update();
            let deadline = if now.started == 0 {
                Some((accepted + self.limits.header_read_timeout, Deadline::Head))
            } else if now.in_flight > 0 {
                None
            } else if let Some(since) = closing {
                Some((
                    since.max(now.idle_since) + self.limits.keep_alive_timeout,
                    Deadline::Grace,
                ))
            } else {
                Some((now.idle_since + self.limits.idle_timeout, Deadline::Idle))
            };
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(listener = self.name, %peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                // Never fails: `activity` lives as long as this loop.
                _ = seen.changed() => {}
                () = until(deadline.map(|(at, _)| at)) => match deadline.map(|(_, why)| why) {
                    Some(Deadline::Head) => {
                        self.hit("head");
                        tracing::debug!(listener = self.name, %peer, "connection closed: no complete request in time");
                        return;
                    }
                    Some(Deadline::Idle) => {
                        self.hit("idle");
                        closing = Some(Instant::now());
                        conn.as_mut().graceful_shutdown();
                    }
                    Some(Deadline::Grace) | None => {
                        tracing::debug!(listener = self.name, %peer, "connection dropped: it did not close in time");
                        return;
                    }
                },
                _ = stop.wait_for(|s| *s), if closing.is_none() => {
                    closing = Some(Instant::now());
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }

    /// One request: its body on a deadline, the whole of it on another.
    async fn handle(
        &self,
        mut req: http::Request<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> Response {
        req.extensions_mut().insert(ConnectInfo(peer));
        let http1 = req.version() < Version::HTTP_2;
        let expired = Arc::new(AtomicBool::new(false));
        let req = req.map(|body| {
            Body::new(DeadlineBody {
                body,
                deadline: tokio::time::sleep(self.limits.body_timeout),
                expired: Arc::clone(&expired),
            })
        });
        let router = self.router.clone();
        let answered = match self.limits.request_timeout {
            Some(limit) => {
                tower::timeout::Timeout::new(router, limit)
                    .oneshot(req)
                    .await
            }
            None => router.oneshot(req).await.map_err(BoxError::from),
        };
        let mut response = match answered {
            Ok(r) => r,
            Err(e) if e.is::<tower::timeout::error::Elapsed>() => self.exceeded(Exceeded::Request),
            Err(e) => {
                // A router's error type is Infallible; nothing else can fail here.
                tracing::error!(listener = self.name, error = %e, "request failed");
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                r
            }
        };
        // Whatever the handler made of the failed body read, the client sees 408.
        if expired.load(Ordering::Acquire) {
            response = self.exceeded(Exceeded::Body);
            if http1 {
                // The rest of the body is not read: the connection cannot carry another
                // request, so it is closed after this answer.
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
        }
        response
    }

    fn exceeded(&self, exceeded: Exceeded) -> Response {
        self.hit(exceeded.label());
        (self.answer)(exceeded)
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Counts one request as in flight while it lives (in its response body, so until the
/// answer is sent or dropped).
struct InFlight(Arc<watch::Sender<Activity>>);

impl InFlight {
    fn start(activity: &Arc<watch::Sender<Activity>>) -> Self {
        activity.send_modify(|a| {
            a.started += 1;
            a.in_flight += 1;
        });
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|a| {
            a.in_flight = a.in_flight.saturating_sub(1);
            if a.in_flight == 0 {
                a.idle_since = Instant::now();
            }
        });
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight.
    struct Guarded {
        #[pin]
        body: Body,
        _guard: InFlight,
    }
}

impl http_body::Body for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The error a request body yields once its deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received in time")]
pub struct BodyTimedOut;

pin_project_lite::pin_project! {
    /// A request body that fails once `deadline` has passed, however steadily bytes trickle.
    struct DeadlineBody<B> {
        #[pin]
        body: B,
        #[pin]
        deadline: Sleep,
        expired: Arc<AtomicBool>,
    }
}

impl<B> http_body::Body for DeadlineBody<B>
where
    B: http_body::Body<Data = axum::body::Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = axum::body::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        // A frame already here is taken even at the deadline.
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.poll(cx).is_ready() {
            this.expired.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    // Kept, so a Content-Length over the body limit is still refused before reading.
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Connections held per client address.
struct AddressSlots {
    cap: usize,
    uncapped: Vec<IpAddr>,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in its address's count; given back on drop.
struct AddressSlot {
    slots: Option<(Arc<AddressSlots>, IpAddr)>,
}

impl AddressSlots {
    fn new(cap: usize, uncapped: &[IpAddr]) -> Self {
        Self {
            cap,
            uncapped: uncapped
                .iter()
                .copied()
                .map(crate::net::canonical)
                .collect(),
            held: Mutex::new(HashMap::new()),
        }
    }

    fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        if self.uncapped.contains(&crate::net::canonical(ip)) {
            return Some(AddressSlot { slots: None });
        }
        let unit = crate::net::client_unit(ip);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(unit).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            slots: Some((Arc::clone(self), unit)),
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some((slots, unit)) = self.slots.take() {
            let mut held = slots.held.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = held.get_mut(&unit) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    held.remove(&unit);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn an_address_gets_its_slots_back_when_its_connections_close() {
        let slots = Arc::new(AddressSlots::new(2, &[]));
        let first = slots.try_acquire(ip("192.0.2.1")).expect("first");
        let _second = slots.try_acquire(ip("192.0.2.1")).expect("second");
        assert!(slots.try_acquire(ip("192.0.2.1")).is_none(), "over the cap");
        assert!(
            slots.try_acquire(ip("192.0.2.2")).is_some(),
            "another address"
        );
        drop(first);
        assert!(
            slots.try_acquire(ip("192.0.2.1")).is_some(),
            "a slot came back"
        );
    }

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4() {
        let slots = Arc::new(AddressSlots::new(1, &[]));
        let _held = slots.try_acquire(ip("2001:db8:1:2::1")).expect("first");
        assert!(
            slots.try_acquire(ip("2001:db8:1:2::ffff")).is_none(),
            "same /64"
        );
        assert!(
            slots.try_acquire(ip("2001:db8:1:3::1")).is_some(),
            "another /64"
        );
        let _v4 = slots.try_acquire(ip("192.0.2.7")).expect("IPv4");
        assert!(
            slots.try_acquire(ip("::ffff:192.0.2.7")).is_none(),
            "mapped"
        );
    }

    #[test]
    fn uncapped_addresses_are_never_refused() {
        let slots = Arc::new(AddressSlots::new(1, &[ip("10.0.0.9")]));
        let held: Vec<_> = (0..5)
            .map(|_| slots.try_acquire(ip("10.0.0.9")).expect("a proxy"))
            .collect();
        assert_eq!(held.len(), 5);
        assert!(
            slots
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty(),
            "not counted"
        );
    }
}
