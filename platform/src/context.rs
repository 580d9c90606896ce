//! The request context that follows a call through every hop: W3C `traceparent`, a
//! request id, and the caller's deadline (from `grpc-timeout`). Servers read it in the
//! observe layer; handlers that call further pass it on with [`CallContext::request`], so the
//! next hop gets what is left of the budget, not a fresh one.

use std::time::{Duration, Instant};

use http::HeaderMap;
use tonic::metadata::MetadataValue;

use crate::identity::{Caller, UserAssertion};

pub const TRACEPARENT: &str = "traceparent";
pub const REQUEST_ID: &str = "x-request-id";
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// W3C trace context of the current hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// 16 lower-case hex digits: this hop's span.
    pub span_id: String,
    pub request_id: String,
}

impl TraceContext {
    /// A new trace (the edge of the system).
    pub fn new_root() -> Self {
        let trace_id = random_hex(16);
        Self {
            request_id: trace_id.clone(),
            trace_id,
            span_id: random_hex(8),
        }
    }

    /// Continues the caller's trace from `traceparent` and `x-request-id`, or starts one.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let parsed = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let request_id = headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.is_ascii())
            .map(str::to_owned);
        match parsed {
            Some(trace_id) => Self {
                request_id: request_id.unwrap_or_else(|| trace_id.clone()),
                trace_id,
                span_id: random_hex(8),
            },
            None => {
                let mut root = Self::new_root();
                if let Some(id) = request_id {
                    root.request_id = id;
                }
                root
            }
        }
    }

    /// The context of this hop as an edge put it in the request's own `traceparent` (the
    /// gateway's edge names its HTTP span there, see `gateway::api::edge`): the same trace
    /// and span id, where [`TraceContext::from_headers`] would start a new span.
    pub fn of_this_hop(headers: &HeaderMap) -> Self {
        let mut trace = Self::from_headers(headers);
        if let Some(tp) = Traceparent::from_headers(headers) {
            trace.span_id = tp.span_id;
        }
        trace
    }

    /// The `traceparent` value to send to the next hop (this hop's span is the parent).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

/// A parsed W3C `traceparent`: the caller's trace and span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traceparent {
    /// 32 lower-case hex digits, not all zero.
    pub trace_id: String,
    /// 16 lower-case hex digits, not all zero: the caller's span.
    pub span_id: String,
}

impl Traceparent {
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(Self::parse)
    }

    pub fn parse(v: &str) -> Option<Self> {
        let mut parts = v.trim().split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let parent = parts.next()?;
        let _flags = parts.next()?;
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(version, 2) || !hex(trace_id, 32) || !hex(parent, 16) {
            return None;
        }
        let zero = |s: &str| s.bytes().all(|b| b == b'0');
        if zero(trace_id) || zero(parent) {
            return None;
        }
        Some(Self {
            trace_id: trace_id.to_ascii_lowercase(),
            span_id: parent.to_ascii_lowercase(),
        })
    }
}

fn parse_traceparent(v: &str) -> Option<String> {
    Traceparent::parse(v).map(|t| t.trace_id)
}

fn random_hex(bytes: usize) -> String {
    use rand::Rng;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rng = rand::rng();
    let mut out = String::with_capacity(bytes * 2);
    for _ in 0..bytes {
        let b: u8 = rng.random();
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// Marks the headers whose value is new on every call (trace, request id, deadline) as
/// never to be indexed by HTTP/2's header compression. Indexed, each call's values would
/// push the repeated ones (the service token, content type) out of the connection's
/// 4 KB table, and those would then travel and be decoded in full on every call.
pub fn never_index_per_call_headers(headers: &mut HeaderMap) {
    for name in [TRACEPARENT, REQUEST_ID, "grpc-timeout"] {
        if let Some(v) = headers.get_mut(name) {
            v.set_sensitive(true);
        }
    }
}

/// Parses a `grpc-timeout` header value ("250m", "2S", "100u").
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// When the caller stops waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

impl Deadline {
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        headers
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|d| Self(Instant::now() + d))
    }
}

/// Trace and deadline of the call being served, to pass on to downstream calls.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub trace: TraceContext,
    pub deadline: Option<Instant>,
    /// The end user the call is made for, asserted to the next hop (see
    /// [`crate::identity`]); None for calls a service makes on its own.
    pub user: Option<UserAssertion>,
}

impl CallContext {
    /// A new root context with a deadline budget (the gateway's edge).
    pub fn root(budget: Option<Duration>) -> Self {
        Self {
            trace: TraceContext::new_root(),
            deadline: budget.map(|b| Instant::now() + b),
            user: None,
        }
    }

    /// The context of an incoming gRPC request (set by the observe layer; read from
    /// metadata when a handler is called without it, e.g. in unit tests).
    pub fn from_request<T>(req: &tonic::Request<T>) -> Self {
        let trace = req
            .extensions()
            .get::<TraceContext>()
            .cloned()
            .unwrap_or_else(|| TraceContext::from_headers(&req.metadata().clone().into_headers()));
        let deadline = req
            .extensions()
            .get::<Deadline>()
            .copied()
            .or_else(|| Deadline::from_headers(&req.metadata().clone().into_headers()))
            .map(|d| d.0);
        // The user the verified caller acts for travels on to the next hop.
        let user = Caller::of(req).and_then(|c| c.user);
        Self {
            trace,
            deadline,
            user,
        }
    }

    /// The same context, made on behalf of `user`.
    pub fn for_user(mut self, user: Option<UserAssertion>) -> Self {
        self.user = user;
        self
    }

    /// Time left before the caller gives up; None means no deadline was set.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// True when the deadline has passed: calling further is pointless.
    pub fn expired(&self) -> bool {
        self.remaining().is_some_and(|r| r.is_zero())
    }

    /// A downstream request carrying the trace and what is left of the deadline, capped
    /// at `cap` when given (so one hop cannot eat the whole budget).
    pub fn request<T>(&self, message: T, cap: Option<Duration>) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        let timeout = match (self.remaining(), cap) {
            (Some(r), Some(c)) => Some(r.min(c)),
            (r, c) => r.or(c),
        };
        if let Some(t) = timeout {
            // A zero timeout would be sent as "0n"; give the hop at least a millisecond to
            // answer DEADLINE_EXCEEDED itself.
            req.set_timeout(t.max(Duration::from_millis(1)));
        }
        if let Some(user) = self.user {
            req.extensions_mut().insert(user);
        }
        let md = req.metadata_mut();
        if let Ok(v) = MetadataValue::try_from(self.trace.traceparent()) {
            md.insert(TRACEPARENT, v);
        }
        if let Ok(v) = MetadataValue::try_from(self.trace.request_id.as_str()) {
            md.insert(REQUEST_ID, v);
        }
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn new_ids_are_lower_case_hex_of_their_length_and_differ() {
        let a = TraceContext::new_root();
        let b = TraceContext::new_root();
        assert_eq!(a.trace_id.len(), 32);
        assert_eq!(a.span_id.len(), 16);
        assert!(
            (a.trace_id.clone() + &a.span_id)
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
        assert_ne!(a.trace_id, b.trace_id);
        assert!(Traceparent::parse(&a.traceparent()).is_some());
    }

    #[test]
    fn only_the_per_call_headers_are_kept_out_of_the_compression_table() {
        let req = CallContext::root(Some(Duration::from_secs(2))).request((), None);
        let mut http = req.metadata().clone().into_headers();
        http.insert("grpc-timeout", HeaderValue::from_static("1999m"));
        http.insert("x-shop-caller", HeaderValue::from_static("token"));
        never_index_per_call_headers(&mut http);
        for name in [TRACEPARENT, REQUEST_ID, "grpc-timeout"] {
            assert!(http[name].is_sensitive(), "{name}");
        }
        assert!(!http["x-shop-caller"].is_sensitive());
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout("12q"), None);
    }

    #[test]
    fn continues_a_valid_traceparent_and_rejects_garbage() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .expect("header"),
        );
        let t = TraceContext::from_headers(&h);
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(t.span_id, "00f067aa0ba902b7");

        h.insert(TRACEPARENT, "garbage".parse().expect("header"));
        let t2 = TraceContext::from_headers(&h);
        assert_eq!(t2.trace_id.len(), 32);
        assert_ne!(t2.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn this_hop_keeps_the_span_its_edge_named_and_a_zero_parent_is_refused() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"
                .parse()
                .expect("header"),
        );
        let hop = TraceContext::of_this_hop(&h);
        assert_eq!(hop.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hop.span_id, "00f067aa0ba902b7");
        assert_eq!(hop.request_id, hop.trace_id);
        assert_eq!(
            hop.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(
            Traceparent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            None
        );
    }

    #[test]
    fn downstream_request_carries_remaining_budget() {
        let ctx = CallContext::root(Some(Duration::from_millis(500)));
        let req = ctx.request((), Some(Duration::from_millis(100)));
        let headers = req.metadata().clone().into_headers();
        let sent = headers
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .expect("timeout set");
        assert!(sent <= Duration::from_millis(100));
        assert!(headers.get(TRACEPARENT).is_some());
    }
}
