//! Clients of the three services, generic over the transport: a tonic `Channel` for the
//! distributed deployment, or the services' tonic servers called in-process (the `shop`
//! monolith: no sockets, no HTTP/2). Every call goes through [`Downstream::call`], which
//! applies the deadline, the circuit breaker and the retry policy in one place.

use platform::{
    identity::{ITEM_SERVICE, PAYMENT_SERVICE, Signer, USER_SERVICE},
    policy::sign,
};
use std::{future::Future, sync::Arc, time::Instant};

use platform::{CallContext, endpoints::ServiceUrls};
use serde::Serialize;
use shop_proto::{
    item::v1::item_service_client::ItemServiceClient,
    payment::v1::payment_service_client::PaymentServiceClient,
    user::v1::user_service_client::UserServiceClient,
};
use tonic::{Code, Status};
use utoipa::ToSchema;

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
) -> anyhow::Result<Transport> {
    platform::transport::balanced(service, urls, config.connect_timeout(), &config.balance)
        .map_err(|e| anyhow::anyhow!("invalid service URL {urls}: {e}"))
}

/// One downstream service: its client, breaker and retry budget.
#[derive(Clone)]
pub struct Downstream<C> {
    pub name: &'static str,
    pub target: String,
    client: C,
    breaker: Arc<CircuitBreaker>,
    budget: Arc<RetryBudget>,
    policy: RetryPolicy,
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

/// UNAVAILABLE for a call the breaker refused.
pub fn circuit_open(service: &str) -> Status {
    let mut s = Status::unavailable(format!("{service} is unavailable (circuit open)"));
    s.metadata_mut().insert(
        CIRCUIT_OPEN,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    s
}

/// Whether `s` is our breaker's refusal (nothing reached the service), as opposed to a
/// failure whose effect is unknown.
pub fn is_circuit_open(s: &Status) -> bool {
    s.metadata().contains_key(CIRCUIT_OPEN)
}

/// Methods whose callee calls further services before answering.
const CHAIN_ENTRIES: &[&str] = &["ChainedCheckout"];

/// Failures that say the service is unhealthy (for the breaker), as opposed to answers.
fn is_health_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::ResourceExhausted
            // tonic's client answers CANCELLED "Timeout expired" when its own timer (the
            // grpc-timeout we set) fires first: a slow dependency, like DEADLINE_EXCEEDED.
            | Code::Cancelled
    )
}

impl<C: Clone> Downstream<C> {
    fn new(name: &'static str, target: String, client: C, config: &Config) -> Self {
        let this = Self {
            name,
            target,
            client,
            breaker: Arc::new(CircuitBreaker::new(
                "gateway",
                name,
                BreakerConfig {
                    enabled: config.breakers,
                    failure_threshold: config.breaker_failures,
                    open_for: std::time::Duration::from_millis(config.breaker_open_ms),
                    half_open_probes: config.breaker_half_open_probes,
                },
            )),
            budget: Arc::new(RetryBudget::new(
                config.retry_budget_tokens,
                config.retry_token_ratio,
            )),
            policy: RetryPolicy {
                enabled: config.retries,
                max_attempts: config.retry_max_attempts.max(1),
                base_backoff: std::time::Duration::from_millis(config.retry_base_ms),
                max_backoff: std::time::Duration::from_millis(config.retry_max_backoff_ms),
            },
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
    /// fast while the breaker is open, and retries UNAVAILABLE when `safety` allows and the
    /// retry budget has tokens.
    pub async fn call<M, T, F, Fut>(
        &self,
        ctx: &CallContext,
        method: &'static str,
        safety: Safety,
        msg: M,
        f: F,
    ) -> Result<T, Status>
    where
        M: Clone,
        F: Fn(C, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            if ctx.expired() {
                return Err(Status::deadline_exceeded(format!(
                    "deadline passed before calling {}",
                    self.name
                )));
            }
            let Some(permit) = self.breaker.try_acquire() else {
                metrics::counter!("gateway_downstream_requests_total", "service" => self.name, "method" => method, "code" => "CircuitOpen").increment(1);
                return Err(circuit_open(self.name));
            };
            let start = Instant::now();
            let fut = f(self.client.clone(), ctx.request(msg.clone(), None));
            // The service enforces grpc-timeout too; this bound also covers a connection
            // that never answers and the in-process transport, which has no timer.
            let result = match ctx.remaining() {
                Some(left) => match tokio::time::timeout(left, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "{} did not answer within the deadline",
                        self.name
                    ))),
                },
                None => fut.await,
            };
            let code = match &result {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            };
            // A chain entry (ChainedCheckout) relays the health of the hops behind it: an
            // UNAVAILABLE it answers with says payment- or item-service is down, not that
            // user-service is, so only failures to reach it at all count against it.
            let reached = result
                .as_ref()
                .err()
                .is_some_and(|s| std::error::Error::source(s).is_none());
            let health_failure = is_health_failure(code)
                && !(CHAIN_ENTRIES.contains(&method) && reached && code != Code::DeadlineExceeded);
            self.breaker.record(permit, health_failure);
            metrics::counter!("gateway_downstream_requests_total", "service" => self.name, "method" => method, "code" => format!("{code:?}")).increment(1);
            metrics::histogram!("gateway_downstream_request_duration_seconds", "service" => self.name, "method" => method).record(start.elapsed().as_secs_f64());
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
                    metrics::counter!("gateway_retries_total", "service" => self.name, "method" => method).increment(1);
                    tracing::debug!(service = self.name, method, attempt, ?pause, "retrying");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Whether the breaker would let a call through now (no permit taken).
    pub fn admits(&self) -> bool {
        self.breaker.admits()
    }

    pub fn snapshot(&self) -> DownstreamSnapshot {
        DownstreamSnapshot {
            service: self.name.to_owned(),
            target: self.target.clone(),
            breaker: self.breaker.snapshot(),
            retries_enabled: self.policy.enabled,
            retry_tokens: self.budget.tokens(),
        }
    }
}

/// One downstream as GET /debug/downstreams shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DownstreamSnapshot {
    pub service: String,
    /// URL, or "in-process" in the monolith.
    pub target: String,
    pub breaker: BreakerSnapshot,
    pub retries_enabled: bool,
    /// Retry-budget tokens left (retries stop at half the bucket).
    pub retry_tokens: f64,
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
        Ok(Self {
            user: (
                config.user_service_url.to_string(),
                channel(USER_SERVICE, &config.user_service_url, config)?,
            ),
            item: (
                config.item_service_url.to_string(),
                channel(ITEM_SERVICE, &config.item_service_url, config)?,
            ),
            payment: (
                config.payment_service_url.to_string(),
                channel(PAYMENT_SERVICE, &config.payment_service_url, config)?,
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
    use shop_proto::item::v1::GetItemRequest;
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

    async fn get(d: &Downstream<ItemClient>, safety: Safety) -> Code {
        let ctx = CallContext::root(Some(std::time::Duration::from_secs(5)));
        d.call(
            &ctx,
            "GetItem",
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
        assert_eq!(
            d.snapshot().breaker.state,
            platform::breaker::BreakerState::Open
        );

        // Business errors do not open it.
        let (d, _) = item(Code::InvalidArgument, &config(false, 2));
        for _ in 0..5 {
            get(&d, Safety::Idempotent).await;
        }
        assert_eq!(
            d.snapshot().breaker.state,
            platform::breaker::BreakerState::Closed
        );
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
                "GetItem",
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
