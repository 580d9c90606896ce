//! `card-gateway`: a mock card processor with an HTTP JSON API shaped like Stripe's charges,
//! refunds and tokens, Stripe's test cards, Stripe's idempotency rules, and injectable
//! latency, HTTP 500s and hangs. In memory; tests run it in-process on port 0.
//!
//! Routes: `POST /v1/tokens`, `POST /v1/charges`, `GET /v1/charges/{id}`,
//! `GET /v1/charges?idempotency_key=`, `POST /v1/refunds`, `GET /health`, `GET /admin/stats`,
//! `GET|PUT /admin/faults`, `GET|PUT /admin/hangs`, `GET /metrics` (Prometheus).
//!
//! **Tokens** (the asynchronous checkout's card handling): the shop's edge (the gateway)
//! sends the card the customer typed to `POST /v1/tokens` and gets `{"id": "tok_...", ..}`
//! back; from then on only the token travels (the checkout request, the event stream, the
//! payment row), and payment-service charges it with `POST /v1/charges` and
//! `{"token": "tok_..."}` in place of `card`. Like Stripe's token endpoint (called with the
//! publishable key, straight from the customer's browser) it is the processor's *public*
//! API: no operator token, no shop identity, only the card validation. HTTP contract:
//!
//! ```text
//! POST /v1/tokens   {"card": {"number": "4242424242424242", "exp_month": 12,
//!                             "exp_year": 2034, "cvc": "123"}}
//!   200 {"id": "tok_...", "object": "token", "card": {"brand", "last4", "exp_month",
//!        "exp_year"}, "created": <unix s>, "livemode": false}
//!   402 {"error": {"type": "card_error", "code": "incorrect_number", "param": "card[number]", ..}}
//!       (invalid number, expiry or CVC: the same answers as a charge's card)
//!   400 {"error": {"type": "invalid_request_error", "code": "parameter_missing", "param": "card"}}
//!   500 injected fault (route key "POST /v1/tokens"); an Idempotency-Key header is honoured.
//! POST /v1/charges  {"amount": 1999, "currency": "usd", "token": "tok_..."}
//!   as a charge of the token's card (the decline test numbers decline); an unknown token:
//!   400 {"error": {"type": "invalid_request_error", "code": "resource_missing", "param": "token"}}
//! ```
//!
//! Tokens are reusable, kept (and journaled, with their card) like charges, and dropped
//! oldest first past `max_entries`.

pub mod api;
mod journal;
mod ledger;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use platform::{
    faults::{FaultInjector, FaultRule, Verdict},
    http_server::{Exceeded, HttpLimits, HttpServer},
    identity::Trust,
};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::{net::TcpListener, sync::watch};
use tracing::Instrument as _;

use crate::card::{self, Brand, CardProblem};
use ledger::{
    Begin, Executed, KeyLookup, Ledger, TokenCharge, ValidCharge, ValidRefund, VaultCard,
    error_body,
};

/// Fault-rule keys (`method` in a rule) of the routes faults apply to.
pub const ROUTE_CREATE_CHARGE: &str = "POST /v1/charges";
pub const ROUTE_GET_CHARGE: &str = "GET /v1/charges/{id}";
pub const ROUTE_LIST_CHARGES: &str = "GET /v1/charges";
pub const ROUTE_CREATE_REFUND: &str = "POST /v1/refunds";
pub const ROUTE_CREATE_TOKEN: &str = "POST /v1/tokens";

/// A hang lasts this long at most (or until shutdown): far past any sane caller timeout.
const HANG: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "card-gateway",
    about = "Mock card gateway with a Stripe-like JSON API"
)]
pub struct Config {
    /// HTTP listen address; port 0 picks a free port.
    #[arg(long, env = "CARD_GATEWAY_ADDR", default_value = "127.0.0.1:8081")]
    pub addr: String,
    /// Injected latency and HTTP 500s: JSON list of platform fault rules whose `method` is a
    /// route key ("POST /v1/charges", "POST /v1/refunds", "POST /v1/tokens",
    /// "GET /v1/charges/{id}", "GET /v1/charges") or "*". Example:
    /// [{"method":"POST /v1/charges","latency":{"kind":"fixed","ms":200},"error_rate":0.1}]
    #[arg(long, env = "CARD_GATEWAY_FAULTS", default_value = "")]
    pub faults: String,
    /// Injected hangs: same format; `error_rate` is the probability that a request is never
    /// answered (and never executed).
    #[arg(long, env = "CARD_GATEWAY_HANGS", default_value = "")]
    pub hangs: String,
    /// Charges, refunds, tokens and idempotency records kept in memory, each; past that the
    /// oldest finished ones are dropped.
    #[arg(long, env = "CARD_GATEWAY_MAX_ENTRIES", default_value_t = DEFAULT_MAX_ENTRIES)]
    pub max_entries: usize,
    /// Keep the books in this file too (JSON lines, synced per change) and load it at
    /// start, so a killed and restarted gateway still knows its charges, as a real card
    /// processor would. Unset: memory only.
    #[arg(long, env = "CARD_GATEWAY_JOURNAL")]
    pub journal: Option<std::path::PathBuf>,
    /// Log as JSON lines.
    #[arg(long, env = "LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// `/admin/*` exists only with SHOP_FAULT_ADMIN=on, and then needs an operator token
    /// (audience `card-gateway`) in `x-shop-caller`, checked against SHOP_TRUSTED_KEYS_FILE.
    #[command(flatten)]
    pub identity: platform::identity::IdentitySettings,
}

/// The audience of operator tokens for the card gateway's admin API.
pub const AUDIENCE: &str = "card-gateway";

/// Default of [`Config::max_entries`].
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

impl Config {
    /// Defaults with the given listen address (tests use "127.0.0.1:0").
    pub fn on(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            faults: String::new(),
            hangs: String::new(),
            max_entries: DEFAULT_MAX_ENTRIES,
            journal: None,
            log_json: false,
            identity: platform::identity::IdentitySettings::default(),
        }
    }
}

/// Handle on a running gateway's state (clonable; tests use it to read counters and set
/// faults without HTTP).
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Shared>,
}

struct Shared {
    ledger: Mutex<Ledger>,
    faults: FaultInjector,
    hangs: FaultInjector,
    stop: watch::Sender<bool>,
}

impl Gateway {
    fn new(faults: FaultInjector, hangs: FaultInjector, ledger: Ledger) -> Self {
        Self {
            inner: Arc::new(Shared {
                ledger: Mutex::new(ledger),
                faults,
                hangs,
                stop: watch::channel(false).0,
            }),
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner
            .ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn stats(&self) -> api::Stats {
        self.ledger().stats.clone()
    }

    pub fn faults(&self) -> &FaultInjector {
        &self.inner.faults
    }

    pub fn hangs(&self) -> &FaultInjector {
        &self.inner.hangs
    }

    /// Faults, then hang, then `exec` under the ledger lock; the key is stored or abandoned.
    async fn process(
        &self,
        route: &'static str,
        key: Option<String>,
        exec: impl FnOnce(&mut Ledger) -> Executed,
    ) -> Processed {
        let abandon = |gw: &Self| {
            if let Some(k) = &key {
                gw.ledger().abandon(k);
            }
        };
        if self.inner.faults.inject(route).await == Verdict::Fail {
            abandon(self);
            self.ledger().stats.injected_errors += 1;
            metrics::counter!("card_gateway_injected_total", "kind" => "error").increment(1);
            return Processed::Error;
        }
        if self.inner.hangs.inject(route).await == Verdict::Fail {
            abandon(self);
            self.ledger().stats.injected_hangs += 1;
            metrics::counter!("card_gateway_injected_total", "kind" => "hang").increment(1);
            return Processed::Hang;
        }
        let mut ledger = self.ledger();
        let executed = exec(&mut ledger);
        if let Some(k) = &key {
            ledger.finish(k, &executed);
        }
        Processed::Done(executed)
    }

    async fn hang(&self) {
        let mut stop = self.inner.stop.subscribe();
        tokio::select! {
            () = tokio::time::sleep(HANG) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

enum Processed {
    Done(Executed),
    Error,
    Hang,
}

/// A bound, not yet running gateway.
pub struct CardGateway {
    listener: TcpListener,
    gateway: Gateway,
    admin: Option<Trust>,
}

impl CardGateway {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let faults = FaultInjector::from_json(&config.faults)
            .map_err(|e| anyhow::anyhow!("CARD_GATEWAY_FAULTS: {e}"))?;
        let hangs = FaultInjector::from_json(&config.hangs)
            .map_err(|e| anyhow::anyhow!("CARD_GATEWAY_HANGS: {e}"))?;
        let listener = TcpListener::bind(&config.addr)
            .await
            .with_context(|| format!("binding CARD_GATEWAY_ADDR {}", config.addr))?;
        let admin = if config.identity.fault_admin() {
            Some(
                config
                    .identity
                    .trust()
                    .context("SHOP_FAULT_ADMIN=on: the admin API needs the operator's key")?,
            )
        } else {
            None
        };
        let ledger = match &config.journal {
            Some(path) => Ledger::with_journal(config.max_entries, path)
                .with_context(|| format!("CARD_GATEWAY_JOURNAL {}", path.display()))?,
            None => Ledger::new(config.max_entries),
        };
        Ok(Self {
            listener,
            gateway: Gateway::new(faults, hangs, ledger),
            admin,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn handle(&self) -> Gateway {
        self.gateway.clone()
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = self.gateway.inner.stop.clone();
        HttpServer::new("card-gateway", http_limits())
            .answering(limit_answer)
            .serve(
                self.listener,
                router(self.gateway, self.admin),
                async move {
                    shutdown.await;
                    // Wake hanging requests so shutdown does not wait for them.
                    let _ = stop.send(true);
                },
            )
            .await
            .context("serving card-gateway")
    }
}

/// The shared connection limits, without a request timeout: an injected hang must stay a
/// hang (never answered) for the callers it is meant to test.
fn http_limits() -> HttpLimits {
    HttpLimits {
        request_timeout: None,
        ..HttpLimits::default()
    }
}

/// A body sent too slowly, in the processor's error format.
fn limit_answer(exceeded: Exceeded) -> Response {
    match exceeded {
        Exceeded::Body => json_response(
            StatusCode::REQUEST_TIMEOUT,
            error_body(
                "invalid_request_error",
                Some("request_timeout"),
                None,
                "The request body was not sent in time.",
                None,
                None,
            ),
        ),
        Exceeded::Request => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            error_body(
                "api_error",
                Some("request_timeout"),
                None,
                "The request took too long.",
                None,
                None,
            ),
        ),
    }
}

/// The gateway's routes over `gateway`'s state; `/admin/*` only when `admin` names whom
/// to trust for the operator's token.
pub fn router(gateway: Gateway, admin: Option<Trust>) -> Router {
    let mut routes = Router::new()
        .route("/v1/tokens", post(create_token))
        .route("/v1/charges", post(create_charge).get(list_charges))
        .route("/v1/charges/{id}", get(get_charge))
        .route("/v1/refunds", post(create_refund))
        // A server span per API call, child of the payment service's client span.
        .route_layer(axum::middleware::from_fn(platform::telemetry::trace_http))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }));
    if let Some(trust) = admin {
        let admin_routes = Router::new()
            .route("/admin/stats", get(stats))
            .route("/admin/faults", get(get_faults).put(put_faults))
            .route("/admin/hangs", get(get_hangs).put(put_hangs))
            .route_layer(axum::middleware::from_fn(move |req, next| {
                operator_only(trust.clone(), req, next)
            }));
        routes = routes.merge(admin_routes);
    }
    routes
        .with_state(gateway)
        .merge(platform::metrics::router())
}

/// Lets a request through only with a valid operator token for the card gateway.
async fn operator_only(
    trust: Trust,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let token = req
        .headers()
        .get(platform::identity::CALLER_HEADER)
        .and_then(|v| v.to_str().ok());
    let Some(token) = token else {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"type": "authentication_error", "message": "missing x-shop-caller operator token"}}),
        );
    };
    match trust.verify(token, &[AUDIENCE], req.uri().path()) {
        Ok(caller) if caller.is(platform::identity::OPERATOR) => next.run(req).await,
        Ok(caller) => json_response(
            StatusCode::FORBIDDEN,
            json!({"error": {"type": "permission_error", "message": format!("{} may not use the admin API", caller.service)}}),
        ),
        Err(e) => json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"type": "authentication_error", "message": e.to_string()}}),
        ),
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// An error answer; small, so `Result`s carrying it stay small.
struct Reject {
    status: StatusCode,
    body: Value,
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        json_response(self.status, self.body)
    }
}

fn invalid_request(code: &str, message: &str, param: Option<&str>) -> Reject {
    Reject {
        status: StatusCode::BAD_REQUEST,
        body: error_body(
            "invalid_request_error",
            Some(code),
            None,
            message,
            param,
            None,
        ),
    }
}

fn api_error() -> Response {
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        error_body(
            "api_error",
            None,
            None,
            "An unknown error occurred while processing the request.",
            None,
            None,
        ),
    )
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Reject> {
    let Some(v) = headers.get(api::IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 => Ok(Some(k.to_owned())),
        _ => Err(invalid_request(
            "idempotency_key_invalid",
            "Idempotency-Key must be 1 to 255 printable ASCII characters.",
            None,
        )),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Reject> {
    serde_json::from_slice(body).map_err(|e| {
        invalid_request(
            "parameter_invalid",
            &format!("Invalid request body: {e}"),
            None,
        )
    })
}

fn card_error(problem: CardProblem) -> Reject {
    let (code, message, param) = match problem {
        CardProblem::NumberCharacters | CardProblem::NumberLength => (
            "invalid_number",
            "The card number is not a valid credit card number.",
            "card[number]",
        ),
        CardProblem::NumberLuhn => (
            "incorrect_number",
            "Your card number is incorrect.",
            "card[number]",
        ),
        CardProblem::ExpMonth => (
            "invalid_expiry_month",
            "Your card's expiration month is invalid.",
            "card[exp_month]",
        ),
        CardProblem::ExpYear | CardProblem::Expired => (
            "invalid_expiry_year",
            "Your card's expiration year is invalid.",
            "card[exp_year]",
        ),
        CardProblem::Cvc => (
            "invalid_cvc",
            "Your card's security code is invalid.",
            "card[cvc]",
        ),
    };
    Reject {
        status: StatusCode::PAYMENT_REQUIRED,
        body: error_body("card_error", Some(code), None, message, Some(param), None),
    }
}

/// Parameter checks; failures here are not stored under the idempotency key (Stripe does not
/// store requests that fail validation).
/// A charge's card or token, validated.
enum Validated {
    Card(ValidCharge),
    Token(TokenCharge),
}

/// The card checks of a charge and of a token: number (Luhn), expiry, CVC.
fn validate_card(c: Option<&api::CardDetails>, now: OffsetDateTime) -> Result<VaultCard, Reject> {
    let c = c.ok_or_else(|| {
        invalid_request(
            "parameter_missing",
            "Missing required param: card.",
            Some("card"),
        )
    })?;
    let digits =
        card::check(&c.number, c.exp_month, c.exp_year, &c.cvc, now).map_err(card_error)?;
    Ok(VaultCard {
        digits,
        exp_month: c.exp_month,
        exp_year: c.exp_year,
    })
}

fn validate_charge(p: &api::CreateCharge, now: OffsetDateTime) -> Result<Validated, Reject> {
    let amount = p.amount.ok_or_else(|| {
        invalid_request(
            "parameter_missing",
            "Missing required param: amount.",
            Some("amount"),
        )
    })?;
    if amount < 1 {
        return Err(invalid_request(
            "amount_too_small",
            "Amount must be at least 1 minor unit.",
            Some("amount"),
        ));
    }
    if amount > 99_999_999 {
        return Err(invalid_request(
            "amount_too_large",
            "Amount must be no more than 99999999 minor units.",
            Some("amount"),
        ));
    }
    let currency = p.currency.as_deref().ok_or_else(|| {
        invalid_request(
            "parameter_missing",
            "Missing required param: currency.",
            Some("currency"),
        )
    })?;
    let currency = platform::money::Currency::parse(currency).ok_or_else(|| {
        invalid_request("parameter_invalid", "Invalid currency.", Some("currency"))
    })?;
    let card = match (&p.card, &p.token) {
        (Some(_), Some(_)) => {
            return Err(invalid_request(
                "parameter_invalid",
                "Provide either card or token, not both.",
                Some("token"),
            ));
        }
        (None, Some(t)) if t.is_empty() || t.len() > 255 => {
            return Err(invalid_request(
                "parameter_invalid",
                "token must be 1 to 255 characters.",
                Some("token"),
            ));
        }
        (None, Some(_)) => None,
        (card, None) => Some(validate_card(card.as_ref(), now)?),
    };
    if p.description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 1000)
    {
        return Err(invalid_request(
            "parameter_invalid",
            "description must be at most 1000 characters.",
            Some("description"),
        ));
    }
    let currency = currency.code().to_ascii_lowercase();
    Ok(match (card, &p.token) {
        (Some(card), _) => Validated::Card(ValidCharge {
            amount,
            currency,
            description: p.description.clone(),
            brand: Brand::of(&card.digits).as_str(),
            digits: card.digits,
            exp_month: card.exp_month,
            exp_year: card.exp_year,
        }),
        (None, token) => Validated::Token(TokenCharge {
            token: token.clone().unwrap_or_default(),
            amount,
            currency,
            description: p.description.clone(),
        }),
    })
}

/// Shared tail of the create endpoints: idempotency, then the work in a task of its own,
/// so a caller that gives up (timeout, disconnect) does not cancel a charge half-way; the
/// gateway finishes it, as a real processor would.
async fn create(
    gw: Gateway,
    route: &'static str,
    key: Option<String>,
    fingerprint: [u8; 32],
    exec: impl FnOnce(&mut Ledger) -> Executed + Send + 'static,
) -> Response {
    if let Some(k) = &key {
        match gw.ledger().begin(k, fingerprint) {
            Begin::Started => {}
            Begin::Replay(status, body) => {
                let mut resp = json_response(status, body);
                resp.headers_mut()
                    .insert(api::IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
                return resp;
            }
            Begin::Mismatch => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    error_body(
                        "idempotency_error",
                        Some("idempotency_key_reused"),
                        None,
                        "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                        None,
                        None,
                    ),
                );
            }
            Begin::InFlight => {
                return json_response(
                    StatusCode::CONFLICT,
                    error_body(
                        "idempotency_error",
                        Some("idempotency_key_in_use"),
                        None,
                        "There is currently another in-progress request using this Idempotency-Key. Please try again later.",
                        None,
                        None,
                    ),
                );
            }
        }
    }
    let worker = gw.clone();
    let task =
        tokio::spawn(async move { worker.process(route, key, exec).await }.in_current_span());
    match task.await {
        Ok(Processed::Done(e)) => json_response(e.status, e.body),
        Ok(Processed::Error) | Err(_) => api_error(),
        Ok(Processed::Hang) => {
            gw.hang().await;
            api_error()
        }
    }
}

async fn create_charge(State(gw): State<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
    let params: api::CreateCharge = match parse_json(&body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let valid = match validate_charge(&params, OffsetDateTime::now_utc()) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    let fp = ledger::fingerprint(ROUTE_CREATE_CHARGE, &params);
    // The token is looked up when the charge executes (after the idempotency check), so a
    // retry of an executed charge replays even if its token was forgotten since.
    create(gw, ROUTE_CREATE_CHARGE, key, fp, move |l| match &valid {
        Validated::Card(c) => l.execute_charge(c),
        Validated::Token(t) => l.execute_token_charge(t),
    })
    .await
}

/// `POST /v1/tokens`: the processor's public API (see the module docs); the card is
/// checked like a charge's.
async fn create_token(State(gw): State<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
    let params: api::CreateToken = match parse_json(&body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let card = match validate_card(params.card.as_ref(), OffsetDateTime::now_utc()) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    let fp = ledger::fingerprint(ROUTE_CREATE_TOKEN, &params);
    create(gw, ROUTE_CREATE_TOKEN, key, fp, move |l| {
        l.execute_token(&card)
    })
    .await
}

async fn create_refund(State(gw): State<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
    let params: api::CreateRefund = match parse_json(&body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let Some(charge) = params.charge.clone().filter(|c| !c.is_empty()) else {
        return invalid_request(
            "parameter_missing",
            "Missing required param: charge.",
            Some("charge"),
        )
        .into_response();
    };
    if params.amount.is_some_and(|a| a < 1) {
        return invalid_request(
            "parameter_invalid_integer",
            "Amount must be a positive integer.",
            Some("amount"),
        )
        .into_response();
    }
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    let valid = ValidRefund {
        charge,
        amount: params.amount,
        reason: params.reason.clone(),
    };
    let fp = ledger::fingerprint(ROUTE_CREATE_REFUND, &params);
    create(gw, ROUTE_CREATE_REFUND, key, fp, move |l| {
        l.execute_refund(&valid)
    })
    .await
}

/// Faults for the read endpoints: latency, then 500 or hang.
async fn read_faults(gw: &Gateway, route: &'static str) -> Option<Response> {
    if gw.inner.faults.inject(route).await == Verdict::Fail {
        gw.ledger().stats.injected_errors += 1;
        return Some(api_error());
    }
    if gw.inner.hangs.inject(route).await == Verdict::Fail {
        gw.ledger().stats.injected_hangs += 1;
        gw.hang().await;
        return Some(api_error());
    }
    None
}

async fn get_charge(State(gw): State<Gateway>, Path(id): Path<String>) -> Response {
    if let Some(r) = read_faults(&gw, ROUTE_GET_CHARGE).await {
        return r;
    }
    let charge = gw.ledger().charge(&id);
    match charge {
        Some(c) => Json(c).into_response(),
        None => json_response(
            StatusCode::NOT_FOUND,
            error_body(
                "invalid_request_error",
                Some("resource_missing"),
                None,
                &format!("No such charge: '{id}'"),
                Some("id"),
                None,
            ),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    idempotency_key: Option<String>,
    limit: Option<usize>,
}

/// Lists charges, newest first; `?idempotency_key=` finds the charge a create request with
/// that key made (empty list: no request with the key executed; 409 while one is executing).
async fn list_charges(State(gw): State<Gateway>, Query(q): Query<ListQuery>) -> Response {
    if let Some(r) = read_faults(&gw, ROUTE_LIST_CHARGES).await {
        return r;
    }
    let data = match q.idempotency_key.as_deref() {
        Some(key) => {
            let found = {
                let mut ledger = gw.ledger();
                ledger.stats.key_lookups += 1;
                ledger.lookup_key(key)
            };
            match found {
                KeyLookup::Unknown | KeyLookup::NoCharge => vec![],
                KeyLookup::Charge(c) => vec![*c],
                KeyLookup::InFlight => {
                    return json_response(
                        StatusCode::CONFLICT,
                        error_body(
                            "idempotency_error",
                            Some("idempotency_key_in_use"),
                            None,
                            "A request with this Idempotency-Key is still in progress.",
                            None,
                            None,
                        ),
                    );
                }
            }
        }
        None => gw
            .ledger()
            .recent_charges(q.limit.unwrap_or(10).clamp(1, 100)),
    };
    Json(api::List {
        object: "list".into(),
        data,
        has_more: false,
        url: "/v1/charges".into(),
    })
    .into_response()
}

async fn stats(State(gw): State<Gateway>) -> Json<api::Stats> {
    Json(gw.stats())
}

async fn get_faults(State(gw): State<Gateway>) -> Json<Vec<FaultRule>> {
    Json(gw.inner.faults.rules())
}

async fn get_hangs(State(gw): State<Gateway>) -> Json<Vec<FaultRule>> {
    Json(gw.inner.hangs.rules())
}

fn set_rules(injector: &FaultInjector, what: &str, rules: Vec<FaultRule>) -> Response {
    match injector.set(rules) {
        Ok(()) => {
            tracing::info!(rules = ?injector.rules(), "{what} changed");
            Json(injector.rules()).into_response()
        }
        Err(e) => {
            invalid_request("parameter_invalid", &e.to_string(), Some(&e.field)).into_response()
        }
    }
}

async fn put_faults(State(gw): State<Gateway>, Json(rules): Json<Vec<FaultRule>>) -> Response {
    set_rules(&gw.inner.faults, "fault rules", rules)
}

async fn put_hangs(State(gw): State<Gateway>, Json(rules): Json<Vec<FaultRule>>) -> Response {
    set_rules(&gw.inner.hangs, "hang rules", rules)
}
