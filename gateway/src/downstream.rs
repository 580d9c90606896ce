//! Clients of the three services, generic over the transport: a tonic `Channel` for the
//! distributed deployment, or the services' tonic servers called in-process (the `shop`
//! monolith: no sockets, no HTTP/2). Every call goes through [`Downstream::call`], which
//! applies the deadline, the bulkhead and circuit breaker of the call's kind, and the retry
//! policy in one place.
//!
//! Each service has one lane per [`CallKind`] (read, write, auth), each with its own
//! breaker and concurrency limit: saturated writes cannot open the circuit for reads, and
//! a login flood cannot take the slots the other pages need.

use platform::{
    identity::{ITEM_SERVICE, PAYMENT_SERVICE, Signer, USER_SERVICE},
    policy::sign,
    shedding::{self, Attempt},
};
use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use platform::{CallContext, endpoints::ServiceUrls, tls::ClientTls};
use serde::Serialize;
use shop_proto::{
    item::v1::item_service_client::ItemServiceClient,
    payment::v1::payment_service_client::PaymentServiceClient,
    user::v1::user_service_client::UserServiceClient,
};
use tokio::sync::Semaphore;
use tonic::{Code, Status};

use platform::breaker::{BreakerConfig, BreakerSnapshot, CircuitBreaker};

use crate::{
    config::Config,
    retry::{RetryBudget, RetryPolicy},
};

/// What the generated clients are built on: a tonic `Channel` or an in-process server.
pub type Transport = platform::transport::GrpcTransport;

pub type UserClient = UserServiceClient<Transport>;
pub type ItemClient = ItemServiceClient<Transport>;
pub type PaymentClient = PaymentServiceClient<Transport>;

/// Lazily connecting channels to every replica `urls` names, balanced per call: the
/// gateway starts (and serves whatever does not need a missing service) even when a
/// service is down.
pub fn channel(
    service: &'static str,
    urls: &ServiceUrls,
    config: &Config,
    tls: Option<&ClientTls>,
) -> anyhow::Result<Transport> {
    platform::transport::balanced(
        service,
        urls,
        config.connect_timeout(),
        &config.balance,
        tls,
    )
    .map_err(|e| anyhow::Error::new(e).context(format!("service URL {urls}")))
}

/// The kind of a call, which decides the breaker and concurrency limit it goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    /// Answers from stored data, no effect (catalog, orders, profile, token checks).
    Read,
    /// Changes state (stock, payments, checkout records, catalog edits).
    Write,
    /// Hashes a password (login, registration): slow by design, bounded by the callee.
    Auth,
}

impl CallKind {
    pub const ALL: [CallKind; 3] = [CallKind::Read, CallKind::Write, CallKind::Auth];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Auth => "auth",
        }
    }
}

/// A downstream method as a call site names it: its name (for metrics and logs) and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    pub name: &'static str,
    pub kind: CallKind,
    /// The callee calls further services before answering (the chained checkout): an
    /// UNAVAILABLE it answers with speaks for those, not for itself.
    pub relays: bool,
}

impl Method {
    const fn new(name: &'static str, kind: CallKind) -> Self {
        Self {
            name,
            kind,
            relays: false,
        }
    }
}

/// Every method the gateway calls, with its kind: the one table call sites take them from.
pub mod method {
    use super::{CallKind::*, Method};

    // user-service
    pub const REGISTER: Method = Method::new("Register", Auth);
    pub const LOGIN: Method = Method::new("Login", Auth);
    pub const GET_USER: Method = Method::new("GetUser", Read);
    pub const VALIDATE_TOKEN: Method = Method::new("ValidateToken", Read);
    pub const LIST_ORDERS: Method = Method::new("ListOrders", Read);
    pub const GET_ORDER: Method = Method::new("GetOrder", Read);
    pub const BEGIN_CHECKOUT: Method = Method::new("BeginCheckout", Write);
    pub const ADVANCE_CHECKOUT: Method = Method::new("AdvanceCheckout", Write);
    pub const REQUEST_CHECKOUT: Method = Method::new("RequestCheckout", Write);
    pub const CHAINED_CHECKOUT: Method = Method {
        relays: true,
        ..Method::new("ChainedCheckout", Write)
    };
    // item-service
    pub const LIST_ITEMS: Method = Method::new("ListItems", Read);
    pub const GET_ITEM: Method = Method::new("GetItem", Read);
    pub const BATCH_GET_ITEMS: Method = Method::new("BatchGetItems", Read);
    pub const CREATE_ITEM: Method = Method::new("CreateItem", Write);
    pub const UPDATE_ITEM: Method = Method::new("UpdateItem", Write);
    pub const DELETE_ITEM: Method = Method::new("DeleteItem", Write);
    pub const RESERVE_STOCK: Method = Method::new("ReserveStock", Write);
    pub const COMMIT_RESERVATION: Method = Method::new("CommitReservation", Write);
    pub const RELEASE_RESERVATION: Method = Method::new("ReleaseReservation", Write);
    // payment-service
    pub const GET_PAYMENT: Method = Method::new("GetPayment", Read);
    pub const CHARGE: Method = Method::new("Charge", Write);
    pub const REFUND: Method = Method::new("Refund", Write);
    pub const RECONCILE: Method = Method::new("Reconcile", Write);
}

/// One kind of call to one service: its breaker and its concurrency limit (bulkhead).
struct Lane {
    breaker: CircuitBreaker,
    slots: Arc<Semaphore>,
    limit: usize,
}

impl Lane {
    fn new(service: &'static str, kind: CallKind, limit: usize, breaker: BreakerConfig) -> Self {
        let limit = limit.max(1);
        Self {
            breaker: CircuitBreaker::for_kind("gateway", service, kind.as_str(), breaker),
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    fn in_flight(&self) -> usize {
        self.limit.saturating_sub(self.slots.available_permits())
    }
}

struct Lanes {
    read: Lane,
    write: Lane,
    auth: Lane,
}

impl Lanes {
    fn of(&self, kind: CallKind) -> &Lane {
        match kind {
            CallKind::Read => &self.read,
            CallKind::Write => &self.write,
            CallKind::Auth => &self.auth,
        }
    }
}

/// One downstream service: its client, a lane (breaker + bulkhead) per kind of call, and
/// its retry budget.
#[derive(Clone)]
pub struct Downstream<C> {
    pub name: &'static str,
    pub target: String,
    client: C,
    lanes: Arc<Lanes>,
    budget: Arc<RetryBudget>,
    policy: RetryPolicy,
    /// A timeout counts against a breaker only when the call was sent with this much left.
    ample: Duration,
}

/// Whether a call may be repeated without changing its effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Safety {
    /// Reads, and writes that carry an idempotency key (or are idempotent by id).
    Idempotent,
    /// Everything else: tried once.
    Once,
}

/// Marks a refusal by our own breaker: the call was never sent.
const CIRCUIT_OPEN: &str = "x-shop-circuit-open";
/// Marks a refusal by our own bulkhead (the kind's concurrency limit): never sent.
const BULKHEAD_FULL: &str = "x-shop-bulkhead-full";

/// What a client is told to wait after a full bulkhead: slots free within a call's time.
const BULKHEAD_RETRY_AFTER: Duration = Duration::from_secs(1);

fn marked(status: Status, marker: &'static str, retry_after: Duration) -> Status {
    let mut s = shedding::mark_shed(status, retry_after);
    s.metadata_mut()
        .insert(marker, tonic::metadata::MetadataValue::from_static("1"));
    s
}

/// UNAVAILABLE for a call the breaker refused; `retry_after`: until it lets a probe through.
pub fn circuit_open(service: &str, retry_after: Duration) -> Status {
    marked(
        Status::unavailable(format!("{service} is unavailable (circuit open)")),
        CIRCUIT_OPEN,
        retry_after,
    )
}

/// UNAVAILABLE for a call the kind's concurrency limit refused.
pub fn bulkhead_full(service: &str, kind: CallKind) -> Status {
    marked(
        Status::unavailable(format!(
            "{service} is busy ({} calls at their limit)",
            kind.as_str()
        )),
        BULKHEAD_FULL,
        BULKHEAD_RETRY_AFTER,
    )
}

/// Whether `s` is our breaker's refusal.
pub fn is_circuit_open(s: &Status) -> bool {
    s.metadata().contains_key(CIRCUIT_OPEN)
}

/// Whether `s` is our bulkhead's refusal.
pub fn is_bulkhead_full(s: &Status) -> bool {
    s.metadata().contains_key(BULKHEAD_FULL)
}

/// Whether `s` is a refusal of ours (breaker or bulkhead): nothing reached the service, as
/// opposed to a failure whose effect is unknown.
pub fn never_sent(s: &Status) -> bool {
    is_circuit_open(s) || is_bulkhead_full(s)
}

impl<C: Clone> Downstream<C> {
    fn new(name: &'static str, target: String, client: C, config: &Config) -> Self {
        let breaker = BreakerConfig {
            enabled: config.breakers,
            failure_threshold: config.breaker_failures,
            min_failure_span: Duration::from_millis(config.breaker_min_span_ms),
            open_for: Duration::from_millis(config.breaker_open_ms),
            max_open_for: Duration::from_millis(config.breaker_max_open_ms),
            half_open_probes: config.breaker_half_open_probes,
        };
        let this = Self {
            name,
            target,
            client,
            lanes: Arc::new(Lanes {
                read: Lane::new(name, CallKind::Read, config.read_concurrency, breaker),
                write: Lane::new(name, CallKind::Write, config.write_concurrency, breaker),
                // The same limit as the gateway admits logins and registrations with
                // (`admission`): that refusal (429) comes first, this one backs it.
                auth: Lane::new(name, CallKind::Auth, config.auth_concurrency, breaker),
            }),
            budget: Arc::new(RetryBudget::new(
                config.retry_budget_tokens,
                config.retry_token_ratio,
            )),
            policy: RetryPolicy {
                enabled: config.retries,
                max_attempts: config.retry_max_attempts.max(1),
                base_backoff: Duration::from_millis(config.retry_base_ms),
                max_backoff: Duration::from_millis(config.retry_max_backoff_ms),
            },
            ample: Duration::from_millis(config.breaker_timeout_floor_ms),
        };
        this.publish_budget();
        this
    }

    /// The retry budget's tokens as a gauge, so a dashboard sees retries being throttled
    /// (at or below half the bucket) before the service's errors reach the customers.
    fn publish_budget(&self) {
        metrics::gauge!("gateway_retry_budget_tokens", "service" => self.name)
            .set(self.budget.tokens());
    }

    /// Calls `method` with `msg`: builds each attempt's request from `ctx` (trace + what is
    /// left of the deadline as grpc-timeout), stops waiting when the deadline passes, fails
    /// fast while the method kind's bulkhead is full or its breaker open, and retries
    /// UNAVAILABLE when `safety` allows and the retry budget has tokens.
    pub async fn call<M, T, F, Fut>(
        &self,
        ctx: &CallContext,
        method: Method,
        safety: Safety,
        msg: M,
        f: F,
    ) -> Result<T, Status>
    where
        M: Clone,
        F: Fn(C, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let lane = self.lanes.of(method.kind);
        let kind = method.kind.as_str();
        let name = method.name;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            if ctx.expired() {
                return Err(Status::deadline_exceeded(format!(
                    "deadline passed before calling {}",
                    self.name
                )));
            }
            // The slot first: a probe permit taken and then dropped for want of a slot
            // would count as a failed probe.
            let Ok(slot) = Arc::clone(&lane.slots).try_acquire_owned() else {
                metrics::counter!("gateway_downstream_requests_total", "service" => self.name, "method" => name, "code" => "BulkheadFull").increment(1);
                return Err(bulkhead_full(self.name, method.kind));
            };
            let Some(permit) = lane.breaker.try_acquire() else {
                metrics::counter!("gateway_downstream_requests_total", "service" => self.name, "method" => name, "code" => "CircuitOpen").increment(1);
                let wait = Duration::from_millis(lane.breaker.snapshot().retry_in_ms);
                return Err(circuit_open(self.name, wait));
            };
            let start = Instant::now();
            let budget_at_send = ctx.remaining();
            let fut = f(self.client.clone(), ctx.request(msg.clone(), None));
            // The service enforces grpc-timeout too; this bound also covers a connection
            // that never answers and the in-process transport, which has no timer.
            let result = match budget_at_send {
                Some(left) => match tokio::time::timeout(left, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "{} did not answer within the deadline",
                        self.name
                    ))),
                },
                None => fut.await,
            };
            // Free the slot now, not after a retry's backoff.
            drop(slot);
            let code = match &result {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            };
            let symptom = shedding::classify(
                result.as_ref().err(),
                &Attempt {
                    budget_at_send,
                    ample: self.ample,
                    // A status the transport made carries its cause; an answer has none.
                    reached: result
                        .as_ref()
                        .err()
                        .is_some_and(|s| std::error::Error::source(s).is_none()),
                    relays: method.relays,
                },
            );
            lane.breaker.record(permit, symptom.counts_against());
            if symptom == shedding::Symptom::Shed {
                metrics::counter!("gateway_downstream_shed_total", "service" => self.name, "kind" => kind, "code" => format!("{code:?}")).increment(1);
            }
            metrics::counter!("gateway_downstream_requests_total", "service" => self.name, "method" => name, "code" => format!("{code:?}")).increment(1);
            metrics::histogram!("gateway_downstream_request_duration_seconds", "service" => self.name, "method" => name).record(start.elapsed().as_secs_f64());
            match result {
                Ok(resp) => {
                    self.budget.on_success();
                    self.publish_budget();
                    return Ok(resp.into_inner());
                }
                Err(status) => {
                    if !RetryPolicy::retryable(status.code()) {
                        return Err(status);
                    }
                    self.budget.on_failure();
                    self.publish_budget();
                    let may_retry = self.policy.enabled
                        && safety == Safety::Idempotent
                        && attempt < self.policy.max_attempts
                        && self.budget.allows_retry();
                    if !may_retry {
                        return Err(status);
                    }
                    let pause = self.policy.backoff(attempt);
                    if ctx.remaining().is_some_and(|left| left <= pause) {
                        return Err(status);
                    }
                    metrics::counter!("gateway_retries_total", "service" => self.name, "method" => name).increment(1);
                    tracing::debug!(
                        service = self.name,
                        method = name,
                        attempt,
                        ?pause,
                        "retrying"
                    );
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Whether the breaker of `kind` would let a call through now (no permit taken).
    pub fn admits(&self, kind: CallKind) -> bool {
        self.lanes.of(kind).breaker.admits()
    }

    /// Our refusal for a `kind` call now, as [`Downstream::call`] would answer it.
    pub fn circuit_open(&self, kind: CallKind) -> Status {
        let wait = self.lanes.of(kind).breaker.snapshot().retry_in_ms;
        circuit_open(self.name, Duration::from_millis(wait))
    }

    pub fn snapshot(&self) -> DownstreamSnapshot {
        DownstreamSnapshot {
            service: self.name.to_owned(),
            target: self.target.clone(),
            kinds: CallKind::ALL
                .iter()
                .map(|&kind| {
                    let lane = self.lanes.of(kind);
                    LaneSnapshot {
                        kind,
                        breaker: lane.breaker.snapshot(),
                        in_flight: lane.in_flight(),
                        limit: lane.limit,
                    }
                })
                .collect(),
            retries_enabled: self.policy.enabled,
            retry_tokens: self.budget.tokens(),
        }
    }
}

/// One downstream as the operator's GET /debug/downstreams shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DownstreamSnapshot {
    pub service: String,
    /// URL, or "in-process" in the monolith.
    pub target: String,
    /// Read, write and auth calls: each kind's breaker and concurrency.
    pub kinds: Vec<LaneSnapshot>,
    pub retries_enabled: bool,
    /// Retry-budget tokens left (retries stop at half the bucket).
    pub retry_tokens: f64,
}

/// One kind of call to one service.
#[derive(Debug, Clone, Serialize)]
pub struct LaneSnapshot {
    pub kind: CallKind,
    pub breaker: BreakerSnapshot,
    /// Calls of this kind under way now.
    pub in_flight: usize,
    /// Calls of this kind allowed at once; more are refused at once (503, Retry-After).
    pub limit: usize,
}

/// The three services.
#[derive(Clone)]
pub struct Downstreams {
    pub user: Downstream<UserClient>,
    pub item: Downstream<ItemClient>,
    pub payment: Downstream<PaymentClient>,
}

/// Where each service is reached.
pub struct Transports {
    pub user: (String, Transport),
    pub item: (String, Transport),
    pub payment: (String, Transport),
}

impl Transports {
    /// Channels to the URLs in `config`.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let tls = config.tls.load()?;
        let tls = tls.as_ref();
        Ok(Self {
            user: (
                config.user_service_url.to_string(),
                channel(USER_SERVICE, &config.user_service_url, config, tls)?,
            ),
            item: (
                config.item_service_url.to_string(),
                channel(ITEM_SERVICE, &config.item_service_url, config, tls)?,
            ),
            payment: (
                config.payment_service_url.to_string(),
                channel(PAYMENT_SERVICE, &config.payment_service_url, config, tls)?,
            ),
        })
    }

    /// The same transports, every call signed as `signer` for the service it goes to.
    pub fn signed(self, signer: &Signer) -> Self {
        let sign = |(name, t): (String, Transport), aud: &str| (name, sign(t, signer, aud));
        Self {
            user: sign(self.user, USER_SERVICE),
            item: sign(self.item, ITEM_SERVICE),
            payment: sign(self.payment, PAYMENT_SERVICE),
        }
    }

    /// All three served by one in-process router (the monolith).
    pub fn in_process(transport: Transport) -> Self {
        Self {
            user: ("in-process".into(), transport.clone()),
            item: ("in-process".into(), transport.clone()),
            payment: ("in-process".into(), transport),
        }
    }
}

impl Downstreams {
    pub fn new(transports: Transports, config: &Config) -> Self {
        let Transports {
            user,
            item,
            payment,
        } = transports;
        Self {
            user: Downstream::new(
                "user-service",
                user.0,
                UserServiceClient::new(user.1),
                config,
            ),
            item: Downstream::new(
                "item-service",
                item.0,
                ItemServiceClient::new(item.1),
                config,
            ),
            payment: Downstream::new(
                "payment-service",
                payment.0,
                PaymentServiceClient::new(payment.1),
                config,
            ),
        }
    }

    pub fn snapshot(&self) -> Vec<DownstreamSnapshot> {
        vec![
            self.user.snapshot(),
            self.item.snapshot(),
            self.payment.snapshot(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use clap::Parser as _;
    use platform::breaker::BreakerState;
    use shop_proto::item::v1::{GetItemRequest, ReserveStockRequest};
    use tower::util::BoxCloneSyncService;

    use super::*;

    /// A transport whose every call fails with `code`, counting the calls that reach it.
    fn failing(code: Code, calls: Arc<AtomicUsize>) -> Transport {
        BoxCloneSyncService::new(tower::service_fn(
            move |_req: http::Request<tonic::body::Body>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    Ok::<_, platform::transport::TransportError>(
                        Status::new(code, "boom").into_http(),
                    )
                }
            },
        ))
    }

    fn config(retries: bool, breaker_failures: u32) -> Config {
        let mut c = Config::parse_from(["gateway", "--jwt-secret", "0123456789abcdef0123"]);
        c.retries = retries;
        c.retry_base_ms = 1;
        c.retry_max_backoff_ms = 2;
        c.breaker_failures = breaker_failures;
        c.breaker_min_span_ms = 0;
        c.breaker_open_ms = 60_000;
        c
    }

    fn item(code: Code, cfg: &Config) -> (Downstream<ItemClient>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let d = Downstream::new(
            "item-service",
            "test".into(),
            ItemServiceClient::new(failing(code, calls.clone())),
            cfg,
        );
        (d, calls)
    }

    fn lane(d: &Downstream<ItemClient>, kind: CallKind) -> LaneSnapshot {
        d.snapshot()
            .kinds
            .into_iter()
            .find(|l| l.kind == kind)
            .expect("every kind has a lane")
    }

    fn read_state(d: &Downstream<ItemClient>) -> BreakerState {
        lane(d, CallKind::Read).breaker.state
    }

    /// A transport that answers each method path as `answer` says, counting the calls
    /// per path; `hold` (if set) never answers the calls of that path.
    fn routed(
        answer: fn(&str) -> Code,
        hold: Option<&'static str>,
        calls: Arc<std::sync::Mutex<Vec<String>>>,
        reached: Arc<tokio::sync::Notify>,
    ) -> Transport {
        BoxCloneSyncService::new(tower::service_fn(
            move |req: http::Request<tonic::body::Body>| {
                let path = req.uri().path().to_owned();
                if let Ok(mut g) = calls.lock() {
                    g.push(path.clone());
                }
                reached.notify_one();
                let held = hold.is_some_and(|h| path.ends_with(h));
                let code = answer(&path);
                async move {
                    if held {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, platform::transport::TransportError>(
                        Status::new(code, "answer").into_http(),
                    )
                }
            },
        ))
    }

    async fn call_item(
        d: &Downstream<ItemClient>,
        m: Method,
        budget: std::time::Duration,
    ) -> Result<(), Status> {
        let ctx = CallContext::root(Some(budget));
        if m.kind == CallKind::Read {
            d.call(
                &ctx,
                m,
                Safety::Once,
                GetItemRequest { id: "x".into() },
                |mut c, r| async move { c.get_item(r).await },
            )
            .await
            .map(drop)
        } else {
            d.call(
                &ctx,
                m,
                Safety::Once,
                ReserveStockRequest::default(),
                |mut c, r| async move { c.reserve_stock(r).await },
            )
            .await
            .map(drop)
        }
    }

    const AMPLE: std::time::Duration = std::time::Duration::from_secs(5);

    #[tokio::test]
    async fn resource_exhausted_never_opens_the_breaker() {
        let (d, calls) = item(Code::ResourceExhausted, &config(false, 2));
        for _ in 0..6 {
            assert_eq!(get(&d, Safety::Idempotent).await, Code::ResourceExhausted);
        }
        assert_eq!(read_state(&d), BreakerState::Closed);
        assert_eq!(calls.load(Ordering::SeqCst), 6, "every call was sent");
    }

    #[tokio::test]
    async fn a_timeout_the_callers_budget_caused_does_not_open_the_breaker() {
        // Sent with 50 ms left (the floor is 200 ms): the caller's budget ran out.
        for code in [Code::DeadlineExceeded, Code::Cancelled] {
            let (d, calls) = item(code, &config(false, 2));
            for _ in 0..6 {
                let r = call_item(&d, method::GET_ITEM, std::time::Duration::from_millis(50));
                assert_eq!(r.await.map_err(|s| s.code()), Err(code));
            }
            assert_eq!(read_state(&d), BreakerState::Closed, "{code:?}");
            assert_eq!(calls.load(Ordering::SeqCst), 6);
        }
        // Sent with ample time: the service should have answered, so it counts.
        let (d, calls) = item(Code::DeadlineExceeded, &config(false, 2));
        for _ in 0..6 {
            let _ = call_item(&d, method::GET_ITEM, AMPLE).await;
        }
        assert_eq!(read_state(&d), BreakerState::Open);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failing_writes_leave_the_read_breaker_closed() {
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let transport = routed(
            |path| {
                if path.ends_with("/ReserveStock") {
                    Code::Unavailable
                } else {
                    Code::NotFound
                }
            },
            None,
            calls.clone(),
            Arc::new(tokio::sync::Notify::new()),
        );
        let d = Downstream::new(
            "item-service",
            "test".into(),
            ItemServiceClient::new(transport),
            &config(false, 2),
        );
        for _ in 0..5 {
            let _ = call_item(&d, method::RESERVE_STOCK, AMPLE).await;
        }
        assert_eq!(lane(&d, CallKind::Write).breaker.state, BreakerState::Open);
        let refused = call_item(&d, method::RESERVE_STOCK, AMPLE)
            .await
            .expect_err("the write circuit is open");
        assert!(is_circuit_open(&refused) && never_sent(&refused));
        assert!(platform::shedding::retry_after(&refused).is_some());
        // Reads still reach the service and get its answer.
        for _ in 0..5 {
            let r = call_item(&d, method::GET_ITEM, AMPLE).await;
            assert_eq!(r.map_err(|s| s.code()), Err(Code::NotFound));
        }
        assert_eq!(read_state(&d), BreakerState::Closed);
        let seen = calls.lock().map(|g| g.clone()).unwrap_or_default();
        assert_eq!(seen.iter().filter(|p| p.ends_with("/GetItem")).count(), 5);
        assert_eq!(
            seen.iter().filter(|p| p.ends_with("/ReserveStock")).count(),
            2
        );
    }

    #[tokio::test]
    async fn a_full_bulkhead_fails_fast_without_sending() {
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reached = Arc::new(tokio::sync::Notify::new());
        let transport = routed(
            |_| Code::NotFound,
            Some("/ReserveStock"),
            calls.clone(),
            reached.clone(),
        );
        let mut cfg = config(false, 2);
        cfg.write_concurrency = 1;
        let d = Downstream::new(
            "item-service",
            "test".into(),
            ItemServiceClient::new(transport),
            &cfg,
        );
        // One write holds the only write slot (its service never answers).
        let holder = tokio::spawn({
            let d = d.clone();
            async move { call_item(&d, method::RESERVE_STOCK, AMPLE).await }
        });
        reached.notified().await;
        assert_eq!(lane(&d, CallKind::Write).in_flight, 1);
        let refused = call_item(&d, method::RESERVE_STOCK, AMPLE)
            .await
            .expect_err("no write slot free");
        assert_eq!(refused.code(), Code::Unavailable);
        assert!(is_bulkhead_full(&refused) && never_sent(&refused));
        assert!(platform::shedding::is_shed(&refused));
        assert!(platform::shedding::retry_after(&refused).is_some());
        let seen = calls.lock().map(|g| g.clone()).unwrap_or_default();
        assert_eq!(seen.len(), 1, "the refused write was never sent: {seen:?}");
        // Reads have their own slots, and a refusal is no failure of the service.
        let r = call_item(&d, method::GET_ITEM, AMPLE).await;
        assert_eq!(r.map_err(|s| s.code()), Err(Code::NotFound));
        assert_eq!(lane(&d, CallKind::Write).breaker.consecutive_failures, 0);
        holder.abort();
        let _ = holder.await;
        assert_eq!(
            lane(&d, CallKind::Write).in_flight,
            0,
            "the slot is free again"
        );
    }

    async fn get(d: &Downstream<ItemClient>, safety: Safety) -> Code {
        let ctx = CallContext::root(Some(std::time::Duration::from_secs(5)));
        d.call(
            &ctx,
            method::GET_ITEM,
            safety,
            GetItemRequest { id: "x".into() },
            |mut c, r| async move { c.get_item(r).await },
        )
        .await
        .map_or_else(|s| s.code(), |_| Code::Ok)
    }

    #[tokio::test]
    async fn retries_only_safe_calls_and_only_when_enabled() {
        let cfg = config(true, 1000);
        let (d, calls) = item(Code::Unavailable, &cfg);
        assert_eq!(get(&d, Safety::Idempotent).await, Code::Unavailable);
        assert_eq!(calls.load(Ordering::SeqCst), 3, "max_attempts = 3");
        calls.store(0, Ordering::SeqCst);
        assert_eq!(get(&d, Safety::Once).await, Code::Unavailable);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "unsafe calls are never repeated"
        );

        let (d, calls) = item(Code::Unavailable, &config(false, 1000));
        get(&d, Safety::Idempotent).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "GATEWAY_RETRIES=off");

        // Answers are not retried.
        let (d, calls) = item(Code::NotFound, &cfg);
        assert_eq!(get(&d, Safety::Idempotent).await, Code::NotFound);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_retry_budget_caps_the_extra_load() {
        let (d, calls) = item(Code::Unavailable, &config(true, 1000));
        for _ in 0..20 {
            get(&d, Safety::Idempotent).await;
        }
        // Without a budget: 60 calls. The bucket (10 tokens, retries while > 5) allows only a
        // few retries before every call is tried once.
        let n = calls.load(Ordering::SeqCst);
        assert!(n < 30, "{n} calls");
        assert!(n >= 20);
    }

    #[tokio::test]
    async fn an_open_breaker_fails_fast_without_calling() {
        let (d, calls) = item(Code::Unavailable, &config(false, 3));
        for _ in 0..3 {
            get(&d, Safety::Idempotent).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(get(&d, Safety::Idempotent).await, Code::Unavailable);
        assert_eq!(calls.load(Ordering::SeqCst), 3, "rejected by the breaker");
        assert_eq!(read_state(&d), BreakerState::Open);

        // Business errors do not open it.
        let (d, _) = item(Code::InvalidArgument, &config(false, 2));
        for _ in 0..5 {
            get(&d, Safety::Idempotent).await;
        }
        assert_eq!(read_state(&d), BreakerState::Closed);
    }

    #[tokio::test]
    async fn every_attempt_carries_what_is_left_of_the_deadline() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let transport: Transport = BoxCloneSyncService::new(tower::service_fn(
            move |req: http::Request<tonic::body::Body>| {
                let timeout = req
                    .headers()
                    .get("grpc-timeout")
                    .and_then(|v| v.to_str().ok())
                    .and_then(platform::context::parse_grpc_timeout);
                let traced = req.headers().contains_key("traceparent");
                if let Ok(mut g) = record.lock() {
                    g.push((timeout, traced));
                }
                async move {
                    Ok::<_, platform::transport::TransportError>(
                        Status::unavailable("down").into_http(),
                    )
                }
            },
        ));
        let d = Downstream::new(
            "item-service",
            "test".into(),
            ItemServiceClient::new(transport),
            &config(true, 1000),
        );
        let budget = std::time::Duration::from_millis(800);
        let ctx = CallContext::root(Some(budget));
        let _ = d
            .call(
                &ctx,
                method::GET_ITEM,
                Safety::Idempotent,
                GetItemRequest { id: "x".into() },
                |mut c, r| async move { c.get_item(r).await },
            )
            .await;
        let seen = seen.lock().map(|g| g.clone()).unwrap_or_default();
        assert_eq!(seen.len(), 3);
        let mut last = budget;
        for (timeout, traced) in seen {
            let t = timeout.expect("grpc-timeout sent");
            assert!(t <= last, "the budget only shrinks: {t:?} > {last:?}");
            assert!(traced, "traceparent sent");
            last = t;
        }
    }
}
