//! Who may call what. Each service declares a static allow-list (method -> calling
//! services); a server's [`AuthLayer`] verifies the caller's token (trusted key, audience,
//! expiry), checks the list and puts the verified [`Caller`] into the request extensions.
//! The client side, [`sign`], puts a fresh token on every outgoing call of a transport
//! (socket or in-process alike), for the method it calls and with the end user from the
//! call's context.
//!
//! Health and reflection stay open; the operator may call everything; a method a service
//! does not list is refused (so a new RPC is closed until somebody decides who calls it).

use std::{
    collections::HashMap,
    sync::Arc,
    task::{Context, Poll},
};

use http::HeaderValue;
use tonic::body::Body;
use tower::{ServiceExt as _, util::BoxCloneSyncService};

use crate::{
    identity::{CALLER_HEADER, Caller, OPERATOR, Signer, Trust, UserAssertion},
    transport::GrpcTransport,
};

/// One RPC and the services that may call it.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The method name within the service ("Refund").
    pub method: &'static str,
    pub callers: &'static [&'static str],
}

/// A gRPC service's allow-list.
#[derive(Debug, Clone, Copy)]
pub struct ServicePolicy {
    /// Fully-qualified gRPC service name ("shop.payment.v1.PaymentService").
    pub service: &'static str,
    /// The identity tokens to it are addressed to ("payment-service"); None for the admin
    /// services every server hosts (any of the server's identities).
    pub audience: Option<&'static str>,
    pub rules: &'static [Rule],
}

/// The audience a token for the admin services (Echo, FaultAdmin) may name instead of the
/// server's own identity: what an operator addresses to "whichever Shop server this is".
pub const ANY_SERVER: &str = "shop";

/// Any authenticated caller.
pub const ANY_SERVICE: &[&str] = &["*"];

/// The fault admin: the operator (who is allowed everything anyway) and, when the server
/// says so ([`FaultAdminCallers::LabToo`]), the web shop's lab (see [`Guard::check`]).
pub const FAULT_ADMIN: ServicePolicy = ServicePolicy {
    service: "shop.admin.v1.FaultAdmin",
    audience: None,
    rules: &[],
};

/// The echo floor: any authenticated caller (the load test's calibration uses it).
pub const ECHO: ServicePolicy = ServicePolicy {
    service: "shop.admin.v1.Echo",
    audience: None,
    rules: &[Rule {
        method: "Echo",
        callers: ANY_SERVICE,
    }],
};

/// Who may change a server's fault rules through `shop.admin.v1.FaultAdmin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultAdminCallers {
    /// The operator only (grpcurl, the load test).
    #[default]
    Operator,
    /// Also the gateway acting for an end user whose admin role it asserts: the web shop's
    /// lab relaying an admin's rules (only where SHOP_FAULT_ADMIN=on serves FaultAdmin).
    /// Not another service, whatever end user it names ([`Caller::admin_user`]), and not the
    /// gateway on its own account.
    LabToo,
}

/// Open to anyone: health checks and reflection (what `grpcurl list` needs).
fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// What a server checks: whom it trusts, which identities it is, and its allow-lists.
#[derive(Clone, Debug)]
pub struct Guard(Arc<GuardInner>);

#[derive(Debug)]
struct GuardInner {
    trust: Trust,
    audiences: Vec<&'static str>,
    services: HashMap<&'static str, ServicePolicy>,
    fault_admin: FaultAdminCallers,
}

impl Guard {
    pub fn new(trust: Trust, policies: &[ServicePolicy], fault_admin: FaultAdminCallers) -> Self {
        let mut audiences: Vec<&'static str> = policies.iter().filter_map(|p| p.audience).collect();
        audiences.sort_unstable();
        audiences.dedup();
        let services = policies
            .iter()
            .chain([&FAULT_ADMIN, &ECHO])
            .map(|p| (p.service, *p))
            .collect();
        Self(Arc::new(GuardInner {
            trust,
            audiences,
            services,
            fault_admin,
        }))
    }

    /// Decides one call to `path` with the `token` it carries.
    pub fn check(&self, path: &str, token: Option<&str>) -> Result<Caller, tonic::Status> {
        let token = token
            .ok_or_else(|| tonic::Status::unauthenticated("missing x-shop-caller service token"))?;
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        let policy = self.0.services.get(service);
        let audiences: Vec<&str> = match policy.and_then(|p| p.audience) {
            Some(aud) => vec![aud],
            None => self
                .0
                .audiences
                .iter()
                .copied()
                .chain([ANY_SERVER])
                .collect(),
        };
        let caller = self
            .0
            .trust
            .verify(token, &audiences, path)
            .map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
        if caller.is(OPERATOR) {
            return Ok(caller);
        }
        if service == FAULT_ADMIN.service
            && self.0.fault_admin == FaultAdminCallers::LabToo
            && caller.admin_user().is_some()
        {
            return Ok(caller);
        }
        // Unknown services go on to the router (UNIMPLEMENTED), but only authenticated.
        let Some(policy) = policy else {
            return Ok(caller);
        };
        let allowed = policy
            .rules
            .iter()
            .find(|r| r.method == method)
            .is_some_and(|r| r.callers.iter().any(|c| *c == "*" || *c == caller.service));
        if allowed {
            Ok(caller)
        } else {
            Err(tonic::Status::permission_denied(format!(
                "{} may not call {path}",
                caller.service
            )))
        }
    }
}

/// Server side: verifies every call against the [`Guard`].
#[derive(Clone, Debug)]
pub struct AuthLayer(pub Guard);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            guard: self.0.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    guard: Guard,
}

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        std::future::Ready<Result<http::Response<Body>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // Only what this layer verified counts: never an identity the request came with
        // (in-process calls share extensions with their caller).
        req.extensions_mut().remove::<Caller>();
        req.extensions_mut().remove::<UserAssertion>();
        let path = req.uri().path().to_owned();
        if is_open(&path) {
            return futures::future::Either::Left(self.inner.call(req));
        }
        let token = req
            .headers()
            .get(CALLER_HEADER)
            .and_then(|v| v.to_str().ok());
        match self.guard.check(&path, token) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                futures::future::Either::Left(self.inner.call(req))
            }
            Err(status) => {
                tracing::info!(method = %path, code = ?status.code(), reason = status.message(), "call refused");
                futures::future::Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Client side: every call through the result carries a fresh token of `signer` addressed
/// to `audience`, with the end user of its [`UserAssertion`] extension (which
/// [`crate::CallContext::request`] sets) as `act`.
pub fn sign(transport: GrpcTransport, signer: &Signer, audience: &str) -> GrpcTransport {
    let signer = signer.clone();
    let audience = audience.to_owned();
    BoxCloneSyncService::new(transport.map_request(move |mut req: http::Request<Body>| {
        let user = req.extensions_mut().remove::<UserAssertion>();
        match signer.mint(&audience, req.uri().path(), user) {
            Ok(token) => match HeaderValue::try_from(token) {
                Ok(v) => {
                    req.headers_mut().insert(CALLER_HEADER, v);
                }
                Err(e) => tracing::error!(error = %e, "service token is not a header value"),
            },
            // The call goes out unsigned and the callee refuses it: loud, not silent.
            Err(e) => {
                tracing::error!(error = %crate::telemetry::chain(&e), "signing a call failed")
            }
        }
        req
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{GATEWAY, ITEM_SERVICE, PAYMENT_SERVICE, USER_SERVICE};

    const PAYMENT: ServicePolicy = ServicePolicy {
        service: "shop.payment.v1.PaymentService",
        audience: Some(PAYMENT_SERVICE),
        rules: &[
            Rule {
                method: "Refund",
                callers: &[GATEWAY, USER_SERVICE],
            },
            Rule {
                method: "ChainedCharge",
                callers: &[USER_SERVICE],
            },
        ],
    };

    fn setup() -> (Guard, Signer, Signer, Signer) {
        let gw = Signer::ephemeral(GATEWAY).expect("key");
        let item = Signer::ephemeral(ITEM_SERVICE).expect("key");
        let op = Signer::ephemeral(OPERATOR).expect("key");
        let guard = Guard::new(
            Trust::of(&[&gw, &item, &op]),
            &[PAYMENT],
            FaultAdminCallers::Operator,
        );
        (guard, gw, item, op)
    }

    #[test]
    fn the_allow_list_decides_after_the_token() {
        let (guard, gw, item, op) = setup();
        let refund = "/shop.payment.v1.PaymentService/Refund";
        let code = |r: Result<Caller, tonic::Status>| r.map(|c| c.service).map_err(|s| s.code());
        let mint = |s: &Signer, aud: &str, path: &str| s.mint(aud, path, None).expect("mint");
        assert_eq!(
            code(guard.check(refund, None)),
            Err(tonic::Code::Unauthenticated)
        );
        let t = mint(&gw, PAYMENT_SERVICE, refund);
        assert_eq!(code(guard.check(refund, Some(&t))), Ok(GATEWAY.into()));
        let chained = "/shop.payment.v1.PaymentService/ChainedCharge";
        let t = mint(&gw, PAYMENT_SERVICE, chained);
        assert_eq!(
            code(guard.check(chained, Some(&t))),
            Err(tonic::Code::PermissionDenied)
        );
        let t = mint(&item, PAYMENT_SERVICE, refund);
        assert_eq!(
            code(guard.check(refund, Some(&t))),
            Err(tonic::Code::PermissionDenied)
        );
        // A method the list does not name is closed.
        let unlisted = "/shop.payment.v1.PaymentService/Charge";
        let t = mint(&gw, PAYMENT_SERVICE, unlisted);
        assert_eq!(
            code(guard.check(unlisted, Some(&t))),
            Err(tonic::Code::PermissionDenied)
        );
        // A token for another service does not open this one.
        let t = mint(&gw, ITEM_SERVICE, refund);
        assert_eq!(
            code(guard.check(refund, Some(&t))),
            Err(tonic::Code::Unauthenticated)
        );
        // The operator may do everything, the fault admin included; others may not.
        let t = mint(&op, PAYMENT_SERVICE, chained);
        assert_eq!(code(guard.check(chained, Some(&t))), Ok(OPERATOR.into()));
        let faults = "/shop.admin.v1.FaultAdmin/SetFaults";
        let t = mint(&op, PAYMENT_SERVICE, faults);
        assert_eq!(code(guard.check(faults, Some(&t))), Ok(OPERATOR.into()));
        let t = mint(&gw, PAYMENT_SERVICE, faults);
        assert_eq!(
            code(guard.check(faults, Some(&t))),
            Err(tonic::Code::PermissionDenied)
        );
        let echo = "/shop.admin.v1.Echo/Echo";
        let t = mint(&gw, PAYMENT_SERVICE, echo);
        assert_eq!(code(guard.check(echo, Some(&t))), Ok(GATEWAY.into()));
    }

    #[test]
    fn a_token_opens_only_the_method_it_was_minted_for() {
        let (guard, gw, _, op) = setup();
        let code = |r: Result<Caller, tonic::Status>| r.map(|c| c.service).map_err(|s| s.code());
        let refund = "/shop.payment.v1.PaymentService/Refund";
        let echo = "/shop.admin.v1.Echo/Echo";
        // A sniffed token of an allowed call, re-aimed at another method both allow.
        let t = gw.mint(PAYMENT_SERVICE, echo, None).expect("mint");
        assert_eq!(code(guard.check(echo, Some(&t))), Ok(GATEWAY.into()));
        assert_eq!(
            code(guard.check(refund, Some(&t))),
            Err(tonic::Code::Unauthenticated)
        );
        // A service's token that names no method opens nothing; the operator's session
        // token (grpcurl) may.
        let any = gw
            .mint_for(PAYMENT_SERVICE, None, None, crate::identity::TOKEN_TTL)
            .expect("mint");
        assert_eq!(
            code(guard.check(refund, Some(&any))),
            Err(tonic::Code::Unauthenticated)
        );
        let session = op
            .mint_for(PAYMENT_SERVICE, None, None, crate::identity::TOKEN_TTL)
            .expect("mint");
        assert_eq!(
            code(guard.check(refund, Some(&session))),
            Ok(OPERATOR.into())
        );
    }
}
