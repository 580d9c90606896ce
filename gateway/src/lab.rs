//! The web shop's lab (`PUT /api/admin/faults`, admins, only with SHOP_FAULT_ADMIN=on):
//! each rule goes to the process it names, and `GET` gathers the rules from all of them.
//!
//! - a gateway route key ("POST /api/checkout") or "*": the gateway's own rules;
//! - a gRPC method path ("/shop.item.v1.ItemService/ReserveStock") or an event fault point
//!   ("event:item-service:...", "relay:user-service:..."): that service's rules. In the
//!   monolith they are the injector its in-process services share
//!   ([`crate::Application::attach_service_faults`]); in the distributed shop the gateway
//!   relays them to each replica's `shop.admin.v1.FaultAdmin`, with its own service token
//!   for that method and the admin as its end user (`act`). Services admit that and only
//!   that besides the operator (platform's `FaultAdminCallers::LabToo`);
//! - "card-gateway:" plus a route key ("card-gateway:POST /v1/charges"): the card
//!   processor's rules, relayed to its `/admin/faults` the same way (it admits the
//!   gateway's token acting for an admin on that route alone). The gateway holds no
//!   operator key: it can change fault rules for an admin and nothing else.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use futures::future::join_all;
use http::StatusCode;
use platform::{
    FieldError,
    faults::{FaultInjector, FaultRule},
    identity::{ITEM_SERVICE, PAYMENT_SERVICE, Signer, USER_SERVICE, UserAssertion},
};
use shop_proto::admin::v1::{self as pb, fault_admin_client::FaultAdminClient};

use crate::{config::Config, downstream::Transport, error::ApiError};

/// The prefix naming a card processor rule in the lab.
pub const CARD_PREFIX: &str = "card-gateway:";
/// The card processor's name in the lab's answers.
pub const CARD_GATEWAY: &str = "card-gateway";
/// The card processor's admin route for fault rules (and the audience of tokens to it).
const CARD_FAULTS_PATH: &str = "/admin/faults";
const CARD_AUDIENCE: &str = "card-gateway";
/// How long one relayed call may take: an admin waits for the answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The services, and the gRPC package of their methods.
const SERVICES: [(&str, &str); 3] = [
    (USER_SERVICE, "/shop.user.v1."),
    (ITEM_SERVICE, "/shop.item.v1."),
    (PAYMENT_SERVICE, "/shop.payment.v1."),
];

/// Where a rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Gateway,
    Service(&'static str),
    CardProcessor,
}

/// A rule the lab cannot place, or a process that did not take its rules.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{0}")]
    Invalid(#[from] FieldError),
    #[error("{targets:?} cannot be reached")]
    Unavailable { targets: Vec<String> },
    #[error("{target} refused the rules: {why}")]
    Refused { target: String, why: String },
}

impl From<LabError> for ApiError {
    fn from(e: LabError) -> Self {
        match e {
            LabError::Invalid(f) => f.into(),
            LabError::Unavailable { targets } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "target_unavailable",
                format!(
                    "{} cannot be reached; rules there are unchanged or unknown. Try again \
                     when it is up",
                    targets.join(", ")
                ),
            )
            .with_targets(targets),
            LabError::Refused { target, why } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "target_refused",
                format!("{target} refused the lab's call: {why}"),
            )
            .with_targets(vec![target]),
        }
    }
}

/// Which process `rule` is for; a method naming no part of this shop is a 400.
pub fn target_of(rule: &FaultRule) -> Result<Target, FieldError> {
    let m = rule.method.as_str();
    if m.starts_with(CARD_PREFIX) {
        return Ok(Target::CardProcessor);
    }
    if m.starts_with('/') {
        return SERVICES
            .iter()
            .find(|(_, package)| m.starts_with(package))
            .map(|(name, _)| Target::Service(name))
            .ok_or_else(|| {
                FieldError::new(
                    "method",
                    "names no method of user-, item- or payment-service",
                )
            });
    }
    if let Some(rest) = m
        .strip_prefix("event:")
        .or_else(|| m.strip_prefix("relay:"))
    {
        let service = rest.split(':').next().unwrap_or_default();
        return SERVICES
            .iter()
            .find(|(name, _)| *name == service)
            .map(|(name, _)| Target::Service(name))
            .ok_or_else(|| {
                FieldError::new(
                    "method",
                    "an event fault point names user-, item- or payment-service",
                )
            });
    }
    Ok(Target::Gateway)
}

/// One replica's FaultAdmin.
#[derive(Clone)]
struct Remote {
    service: &'static str,
    /// Where, for the error naming it.
    url: String,
    client: FaultAdminClient<Transport>,
}

/// The processes whose rules the lab changes besides the gateway's own.
#[derive(Clone)]
pub struct Lab(Arc<Inner>);

struct Inner {
    /// The monolith's in-process services' injector, once attached.
    local: OnceLock<FaultInjector>,
    /// The monolith's hosted card processor's injector, once attached.
    local_card: OnceLock<FaultInjector>,
    remotes: Vec<Remote>,
    http: reqwest::Client,
    card_faults_url: String,
    signer: Signer,
}

impl Lab {
    /// Lazily connecting channels to every replica each `*_SERVICE_URL` names (a rule must
    /// reach each of them; a name resolving to several addresses reaches one of those per
    /// call), and the card processor's admin URL; calls signed as `signer`.
    pub fn new(config: &Config, signer: &Signer) -> anyhow::Result<Self> {
        let tls = config.tls.load()?;
        let mut remotes = Vec::new();
        for (service, urls) in [
            (USER_SERVICE, &config.user_service_url),
            (ITEM_SERVICE, &config.item_service_url),
            (PAYMENT_SERVICE, &config.payment_service_url),
        ] {
            for target in urls.targets() {
                let url = format!("{}://{}", urls.scheme(), target.authority());
                let one = platform::endpoints::ServiceUrls::parse(&url)
                    .map_err(|e| anyhow::anyhow!("{service} URL {url}: {e}"))?;
                let transport = platform::transport::balanced(
                    service,
                    &one,
                    config.connect_timeout(),
                    &config.balance,
                    tls.as_ref(),
                )
                .map_err(|e| anyhow::anyhow!("{service} URL {url}: {e}"))?;
                remotes.push(Remote {
                    service,
                    url,
                    client: FaultAdminClient::new(platform::policy::sign(
                        transport, signer, service,
                    )),
                });
            }
        }
        let http = reqwest::Client::builder().timeout(CALL_TIMEOUT).build()?;
        Ok(Self(Arc::new(Inner {
            local: OnceLock::new(),
            local_card: OnceLock::new(),
            remotes,
            http,
            card_faults_url: format!(
                "{}{CARD_FAULTS_PATH}",
                config.card_gateway_url.trim_end_matches('/')
            ),
            signer: signer.clone(),
        })))
    }

    /// Hands over the in-process services' injector (once; later calls are ignored).
    pub fn attach_services(&self, faults: &FaultInjector) {
        let _ = self.0.local.set(faults.clone());
    }

    /// Hands over the in-process card processor's injector (once).
    pub fn attach_card(&self, faults: &FaultInjector) {
        let _ = self.0.local_card.set(faults.clone());
    }

    /// Every service's and the card processor's rules, for `admin`: services in their
    /// order, each replica's rules once, then the card processor's (prefixed).
    pub async fn rules(&self, admin: UserAssertion) -> Result<Vec<FaultRule>, LabError> {
        let services = async {
            match self.0.local.get() {
                Some(local) => Ok(local.rules()),
                None => {
                    let calls = self.0.remotes.iter().map(|r| r.get(admin));
                    let mut rules: Vec<FaultRule> = Vec::new();
                    for got in gather(join_all(calls).await)? {
                        for rule in got {
                            if !rules.contains(&rule) {
                                rules.push(rule);
                            }
                        }
                    }
                    Ok(rules)
                }
            }
        };
        let (services, card) = futures::join!(services, self.card_rules(admin));
        let mut failed = Vec::new();
        let mut rules = Vec::new();
        for part in [services, card] {
            match part {
                Ok(r) => rules.extend(r),
                Err(LabError::Unavailable { targets }) => failed.extend(targets),
                Err(e) => return Err(e),
            }
        }
        if failed.is_empty() {
            Ok(rules)
        } else {
            Err(LabError::Unavailable { targets: failed })
        }
    }

    /// Replaces the services' and the card processor's rules with those of `rules` that
    /// are theirs (every process gets its set; none given clears it). All are checked
    /// before any is sent.
    pub async fn set(&self, rules: Vec<FaultRule>, admin: UserAssertion) -> Result<(), LabError> {
        let mut by_service: Vec<(&str, Vec<FaultRule>)> = SERVICES
            .iter()
            .map(|(name, _)| (*name, Vec::new()))
            .collect();
        let mut card = Vec::new();
        let mut all_services = Vec::new();
        for (i, rule) in rules.into_iter().enumerate() {
            rule.validate()
                .map_err(|e| e.within(&format!("rules[{i}]")))?;
            match target_of(&rule).map_err(|e| e.within(&format!("rules[{i}]")))? {
                Target::Gateway => {}
                Target::CardProcessor => {
                    let route = rule.method[CARD_PREFIX.len()..].to_owned();
                    card.push(FaultRule {
                        method: route,
                        ..rule
                    });
                }
                Target::Service(name) => {
                    all_services.push(rule.clone());
                    if let Some((_, set)) = by_service.iter_mut().find(|(n, _)| *n == name) {
                        set.push(rule);
                    }
                }
            }
        }
        let services = async {
            match self.0.local.get() {
                Some(local) => local.set(all_services).map_err(LabError::from),
                None => {
                    let calls = self.0.remotes.iter().map(|r| {
                        let set = by_service
                            .iter()
                            .find(|(n, _)| *n == r.service)
                            .map(|(_, s)| s.clone())
                            .unwrap_or_default();
                        r.set(set, admin)
                    });
                    gather(join_all(calls).await).map(|_| ())
                }
            }
        };
        let (services, card) = futures::join!(services, self.set_card(card, admin));
        let mut failed = Vec::new();
        for part in [services, card] {
            match part {
                Ok(()) => {}
                Err(LabError::Unavailable { targets }) => failed.extend(targets),
                Err(e) => return Err(e),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(LabError::Unavailable { targets: failed })
        }
    }

    async fn card_rules(&self, admin: UserAssertion) -> Result<Vec<FaultRule>, LabError> {
        let rules = match self.0.local_card.get() {
            Some(local) => local.rules(),
            None => self.card_call(reqwest::Method::GET, None, admin).await?,
        };
        Ok(rules
            .into_iter()
            .map(|r| FaultRule {
                method: format!("{CARD_PREFIX}{}", r.method),
                ..r
            })
            .collect())
    }

    async fn set_card(&self, rules: Vec<FaultRule>, admin: UserAssertion) -> Result<(), LabError> {
        match self.0.local_card.get() {
            Some(local) => Ok(local.set(rules)?),
            None => self
                .card_call(reqwest::Method::PUT, Some(rules), admin)
                .await
                .map(|_| ()),
        }
    }

    /// GET or PUT the card processor's `/admin/faults`, as the gateway acting for `admin`.
    async fn card_call(
        &self,
        method: reqwest::Method,
        body: Option<Vec<FaultRule>>,
        admin: UserAssertion,
    ) -> Result<Vec<FaultRule>, LabError> {
        let refused = |why: String| LabError::Refused {
            target: CARD_GATEWAY.into(),
            why,
        };
        let token = self
            .0
            .signer
            .mint(CARD_AUDIENCE, CARD_FAULTS_PATH, Some(admin))
            .map_err(|e| refused(format!("signing the call failed: {e}")))?;
        let mut req = self
            .0
            .http
            .request(method, &self.0.card_faults_url)
            .header(platform::identity::CALLER_HEADER, token);
        if let Some(rules) = &body {
            req = req.json(rules);
        }
        let resp = req.send().await.map_err(|e| {
            tracing::warn!(error = %e, url = %self.0.card_faults_url, "lab: card processor unreachable");
            LabError::Unavailable {
                targets: vec![CARD_GATEWAY.into()],
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .json()
                .await
                .map_err(|e| refused(format!("unreadable answer: {e}")));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::GATEWAY_TIMEOUT {
            return Err(LabError::Unavailable {
                targets: vec![CARD_GATEWAY.into()],
            });
        }
        // 404: its admin API is off (SHOP_FAULT_ADMIN); 401/403: it does not trust us.
        Err(refused(format!("HTTP {}", status.as_u16())))
    }
}

/// The answers of every replica, or which of them failed (unreachable ones all named).
fn gather<T>(results: Vec<Result<T, LabError>>) -> Result<Vec<T>, LabError> {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(LabError::Unavailable { targets }) => failed.extend(targets),
            Err(e) => return Err(e),
        }
    }
    failed.dedup();
    if failed.is_empty() {
        Ok(ok)
    } else {
        Err(LabError::Unavailable { targets: failed })
    }
}

impl Remote {
    fn request<T>(&self, message: T, admin: UserAssertion) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.set_timeout(CALL_TIMEOUT);
        // The signing layer puts the admin into the token's `act` claim.
        req.extensions_mut().insert(admin);
        req
    }

    fn failed(&self, status: tonic::Status) -> LabError {
        use tonic::Code;
        tracing::warn!(service = self.service, url = %self.url, code = ?status.code(), message = status.message(), "lab: relaying fault rules failed");
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => LabError::Unavailable {
                targets: vec![self.service.into()],
            },
            Code::Unimplemented => LabError::Refused {
                target: self.service.into(),
                why: "its fault admin is off (SHOP_FAULT_ADMIN)".into(),
            },
            code => LabError::Refused {
                target: self.service.into(),
                why: format!("{code:?}"),
            },
        }
    }

    async fn get(&self, admin: UserAssertion) -> Result<Vec<FaultRule>, LabError> {
        let resp = self
            .client
            .clone()
            .get_faults(self.request(pb::GetFaultsRequest {}, admin))
            .await
            .map_err(|s| self.failed(s))?;
        Ok(resp
            .into_inner()
            .rules
            .into_iter()
            .map(platform::faults::rule_from_pb)
            .collect())
    }

    async fn set(&self, rules: Vec<FaultRule>, admin: UserAssertion) -> Result<(), LabError> {
        let rules = rules.iter().map(platform::faults::rule_to_pb).collect();
        self.client
            .clone()
            .set_faults(self.request(pb::SetFaultsRequest { rules }, admin))
            .await
            .map_err(|s| self.failed(s))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(method: &str) -> FaultRule {
        FaultRule {
            method: method.into(),
            latency: None,
            error_rate: 1.0,
        }
    }

    #[test]
    fn each_rule_goes_to_the_process_it_names() {
        let t = |m: &str| target_of(&rule(m)).map_err(|e| e.field);
        assert_eq!(t("POST /api/checkout"), Ok(Target::Gateway));
        assert_eq!(t("*"), Ok(Target::Gateway));
        assert_eq!(
            t("/shop.item.v1.ItemService/ReserveStock"),
            Ok(Target::Service(ITEM_SERVICE))
        );
        assert_eq!(
            t("event:payment-service:stock.reserved:before-ack:hang"),
            Ok(Target::Service(PAYMENT_SERVICE))
        );
        assert_eq!(
            t("relay:user-service:before-mark"),
            Ok(Target::Service(USER_SERVICE))
        );
        assert_eq!(
            t("card-gateway:POST /v1/charges"),
            Ok(Target::CardProcessor)
        );
        assert_eq!(t("/shop.admin.v1.Echo/Echo"), Err("method".into()));
        assert_eq!(t("event:nobody:x:before-ack"), Err("method".into()));
    }
}
