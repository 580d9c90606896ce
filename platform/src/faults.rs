//! Fault and latency injection, one mechanism for every server: a tower layer for gRPC, a
//! method for HTTP handlers (card gateway, gateway), and the `shop.admin.v1.FaultAdmin`
//! service that changes the rules at run time. Off by default; when off, the cost is one
//! relaxed atomic load per request.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use rand::Rng;
use serde::{Deserialize, Serialize};
use shop_proto::admin::v1 as pb;
use tonic::{Request, Response, Status};

use crate::FieldError;

/// Added latency.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Latency {
    Fixed {
        ms: u32,
    },
    Uniform {
        min_ms: u32,
        max_ms: u32,
    },
    /// With probability `probability`, wait `delay_ms`; otherwise no delay.
    Tail {
        probability: f64,
        delay_ms: u32,
    },
}

impl Latency {
    fn sample(&self) -> Duration {
        let mut rng = rand::rng();
        let ms = match *self {
            Self::Fixed { ms } => ms,
            Self::Uniform { min_ms, max_ms } => rng.random_range(min_ms..=max_ms),
            Self::Tail {
                probability,
                delay_ms,
            } => {
                if rng.random::<f64>() < probability {
                    delay_ms
                } else {
                    0
                }
            }
        };
        Duration::from_millis(u64::from(ms))
    }
}

/// One rule: which calls, how slow, how often failing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    /// gRPC method path, HTTP route key, or "*".
    pub method: String,
    #[serde(default)]
    pub latency: Option<Latency>,
    #[serde(default)]
    pub error_rate: f64,
}

const MAX_MS: u32 = 60_000;

impl FaultRule {
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.method.is_empty() || self.method.len() > 200 {
            return Err(FieldError::new("method", "must be \"*\" or a method path"));
        }
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(FieldError::new("error_rate", "must be between 0.0 and 1.0"));
        }
        match self.latency {
            Some(Latency::Fixed { ms }) if ms > MAX_MS => {
                Err(FieldError::new("latency.fixed_ms", "must be at most 60000"))
            }
            Some(Latency::Uniform { min_ms, max_ms }) if min_ms > max_ms || max_ms > MAX_MS => Err(
                FieldError::new("latency.uniform", "needs min_ms <= max_ms <= 60000"),
            ),
            Some(Latency::Tail {
                probability,
                delay_ms,
            }) if !(0.0..=1.0).contains(&probability) || delay_ms > MAX_MS => Err(FieldError::new(
                "latency.tail",
                "needs 0 <= probability <= 1, delay_ms <= 60000",
            )),
            _ => Ok(()),
        }
    }

    fn matches(&self, method: &str) -> bool {
        self.method == "*" || self.method == method
    }
}

/// What an injected fault decided for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Proceed,
    Fail,
}

/// Shared, run-time changeable fault rules.
#[derive(Debug, Clone, Default)]
pub struct FaultInjector {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    active: AtomicBool,
    rules: RwLock<Vec<FaultRule>>,
}

impl FaultInjector {
    pub fn new(rules: Vec<FaultRule>) -> Result<Self, FieldError> {
        let f = Self::default();
        f.set(rules)?;
        Ok(f)
    }

    /// Parses rules from JSON (the `*_FAULTS` settings): a list of [`FaultRule`].
    pub fn from_json(json: &str) -> Result<Self, FieldError> {
        if json.trim().is_empty() {
            return Ok(Self::default());
        }
        let rules: Vec<FaultRule> = serde_json::from_str(json)
            .map_err(|e| FieldError::new("faults", format!("invalid JSON: {e}")))?;
        Self::new(rules)
    }

    pub fn set(&self, rules: Vec<FaultRule>) -> Result<(), FieldError> {
        for (i, r) in rules.iter().enumerate() {
            r.validate().map_err(|e| e.within(&format!("rules[{i}]")))?;
        }
        let active = !rules.is_empty();
        match self.inner.rules.write() {
            Ok(mut g) => *g = rules,
            Err(poisoned) => *poisoned.into_inner() = rules,
        }
        self.inner.active.store(active, Ordering::Relaxed);
        Ok(())
    }

    pub fn rules(&self) -> Vec<FaultRule> {
        match self.inner.rules.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether any rule is set (the cheap test before looking a key up).
    pub fn is_active(&self) -> bool {
        self.inner.active.load(Ordering::Relaxed)
    }

    /// Whether a rule names `method` itself (not through "*"): how an injected hang knows it
    /// is still wanted.
    pub fn names(&self, method: &str) -> bool {
        if !self.is_active() {
            return false;
        }
        let rules = match self.inner.rules.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        rules.iter().any(|r| r.method == method)
    }

    /// Applies the first matching rule to a call of `method`: sleeps the sampled latency,
    /// then decides whether the call fails.
    pub async fn inject(&self, method: &str) -> Verdict {
        self.inject_by(method, |r| r.matches(method)).await
    }

    /// [`FaultInjector::inject`] with only a rule naming `key` itself ("*" is for calls):
    /// the event flow's points (crate::events::fault_points).
    pub async fn inject_named(&self, key: &str) -> Verdict {
        self.inject_by(key, |r| r.method == key).await
    }

    async fn inject_by(&self, method: &str, applies: impl Fn(&FaultRule) -> bool) -> Verdict {
        if !self.inner.active.load(Ordering::Relaxed) {
            return Verdict::Proceed;
        }
        let rule = {
            let rules = match self.inner.rules.read() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            rules.iter().find(|r| applies(r)).cloned()
        };
        let Some(rule) = rule else {
            return Verdict::Proceed;
        };
        if let Some(l) = rule.latency {
            let d = l.sample();
            if !d.is_zero() {
                tokio::time::sleep(d).await;
            }
        }
        if rule.error_rate > 0.0 && rand::rng().random::<f64>() < rule.error_rate {
            metrics::counter!("faults_injected_total", "method" => method.to_owned()).increment(1);
            Verdict::Fail
        } else {
            Verdict::Proceed
        }
    }
}

/// Methods that faults never touch: you must always be able to check health, reflect,
/// and turn faults off again.
fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.") || path.starts_with("/shop.admin.v1.")
}

/// Tower layer applying a [`FaultInjector`] to gRPC calls.
#[derive(Clone)]
pub struct FaultLayer(pub FaultInjector);

impl<S> tower::Layer<S> for FaultLayer {
    type Service = FaultService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        FaultService {
            inner,
            faults: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct FaultService<S> {
    inner: S,
    faults: FaultInjector,
}

impl<S, B> tower::Service<http::Request<B>> for FaultService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Take the service that was driven to readiness; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !self.faults.inner.active.load(Ordering::Relaxed) || exempt(req.uri().path()) {
            return Box::pin(inner.call(req));
        }
        let faults = self.faults.clone();
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            match faults.inject(&path).await {
                Verdict::Proceed => inner.call(req).await,
                Verdict::Fail => Ok(Status::unavailable("injected fault").into_http()),
            }
        })
    }
}

/// `shop.admin.v1.FaultAdmin` over a [`FaultInjector`].
#[derive(Clone)]
pub struct FaultAdminService(pub FaultInjector);

/// A rule as `shop.admin.v1` carries it.
pub fn rule_to_pb(r: &FaultRule) -> pb::FaultRule {
    use pb::latency_spec::{Kind, Tail, Uniform};
    pb::FaultRule {
        method: r.method.clone(),
        latency: r.latency.map(|l| pb::LatencySpec {
            kind: Some(match l {
                Latency::Fixed { ms } => Kind::FixedMs(ms),
                Latency::Uniform { min_ms, max_ms } => Kind::Uniform(Uniform { min_ms, max_ms }),
                Latency::Tail {
                    probability,
                    delay_ms,
                } => Kind::Tail(Tail {
                    probability,
                    delay_ms,
                }),
            }),
        }),
        error_rate: r.error_rate,
    }
}

/// A rule from `shop.admin.v1`.
pub fn rule_from_pb(r: pb::FaultRule) -> FaultRule {
    use pb::latency_spec::Kind;
    FaultRule {
        method: r.method,
        latency: r.latency.and_then(|l| l.kind).map(|k| match k {
            Kind::FixedMs(ms) => Latency::Fixed { ms },
            Kind::Uniform(u) => Latency::Uniform {
                min_ms: u.min_ms,
                max_ms: u.max_ms,
            },
            Kind::Tail(t) => Latency::Tail {
                probability: t.probability,
                delay_ms: t.delay_ms,
            },
        }),
        error_rate: r.error_rate,
    }
}

#[tonic::async_trait]
impl pb::fault_admin_server::FaultAdmin for FaultAdminService {
    async fn set_faults(
        &self,
        request: Request<pb::SetFaultsRequest>,
    ) -> Result<Response<pb::SetFaultsResponse>, Status> {
        let rules = request
            .into_inner()
            .rules
            .into_iter()
            .map(rule_from_pb)
            .collect();
        self.0.set(rules)?;
        tracing::info!(rules = ?self.0.rules(), "fault rules changed");
        Ok(Response::new(pb::SetFaultsResponse {
            rules: self.0.rules().iter().map(rule_to_pb).collect(),
        }))
    }

    async fn get_faults(
        &self,
        _request: Request<pb::GetFaultsRequest>,
    ) -> Result<Response<pb::GetFaultsResponse>, Status> {
        Ok(Response::new(pb::GetFaultsResponse {
            rules: self.0.rules().iter().map(rule_to_pb).collect(),
        }))
    }
}

/// `shop.admin.v1.Echo`: the floor of one tonic hop.
#[derive(Clone, Default)]
pub struct EchoService;

#[tonic::async_trait]
impl pb::echo_server::Echo for EchoService {
    async fn echo(
        &self,
        request: Request<pb::EchoRequest>,
    ) -> Result<Response<pb::EchoResponse>, Status> {
        Ok(Response::new(pb::EchoResponse {
            payload: request.into_inner().payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn off_by_default_and_error_rate_one_always_fails() {
        let f = FaultInjector::default();
        assert_eq!(f.inject("/x").await, Verdict::Proceed);
        f.set(vec![FaultRule {
            method: "/x".into(),
            latency: None,
            error_rate: 1.0,
        }])
        .expect("valid");
        assert_eq!(f.inject("/x").await, Verdict::Fail);
        assert_eq!(f.inject("/y").await, Verdict::Proceed);
        f.set(vec![]).expect("valid");
        assert_eq!(f.inject("/x").await, Verdict::Proceed);
    }

    #[tokio::test]
    async fn named_points_ignore_the_wildcard() {
        let f = FaultInjector::default();
        assert!(!f.names("relay:x:before-mark"));
        f.set(vec![FaultRule {
            method: "*".into(),
            latency: None,
            error_rate: 1.0,
        }])
        .expect("valid");
        // "*" is for calls: an experiment failing every call leaves the event flow alone.
        assert_eq!(f.inject("/x").await, Verdict::Fail);
        assert_eq!(
            f.inject_named("relay:x:before-mark").await,
            Verdict::Proceed
        );
        assert!(!f.names("relay:x:before-mark"));
        f.set(vec![FaultRule {
            method: "relay:x:before-mark".into(),
            latency: None,
            error_rate: 1.0,
        }])
        .expect("valid");
        assert!(f.names("relay:x:before-mark"));
        assert_eq!(f.inject_named("relay:x:before-mark").await, Verdict::Fail);
    }

    #[test]
    fn rejects_out_of_range_rules() {
        let bad = FaultRule {
            method: "*".into(),
            latency: None,
            error_rate: 1.5,
        };
        assert!(FaultInjector::new(vec![bad]).is_err());
        assert!(
            FaultInjector::from_json(r#"[{"method":"*","latency":{"kind":"fixed","ms":5}}]"#)
                .is_ok()
        );
        assert!(FaultInjector::from_json("not json").is_err());
    }
}
