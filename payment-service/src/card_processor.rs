//! HTTP client for the card processor (the `card-gateway`). Every create carries an Idempotency-Key (the payment's
//! or refund's own id), which makes retrying a failed attempt safe. A charge is of a card
//! (the synchronous checkouts) or of a token the shop's edge made (the asynchronous one).

use platform::timing::StoreOp as _;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use http::StatusCode;
use platform::money::Currency;
use secrecy::{ExposeSecret as _, SecretString};

use card_gateway::api::{self, CardDetails, CreateCharge, CreateRefund, ErrorBody};

use crate::card::Card;

/// Attempts per create (the first plus retries), all within one time budget.
const ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("card gateway did not answer in time")]
    Timeout,
    #[error("card gateway: another request with this idempotency key is in progress")]
    InProgress,
    #[error("card gateway refused the idempotency key: {0}")]
    KeyReused(String),
    #[error("card gateway unavailable: {0}")]
    Unavailable(String),
    #[error("card gateway sent an unexpected answer: {0}")]
    Protocol(String),
    #[error("card gateway calls are refused for now (circuit open)")]
    CircuitOpen,
}

impl ProcessorError {
    /// What a caller may be told (details such as addresses stay in the logs).
    pub fn summary(&self) -> &'static str {
        match self {
            Self::Timeout => "did not answer in time",
            Self::InProgress => "is still processing an earlier attempt",
            Self::KeyReused(_) => "refused the idempotency key",
            Self::Unavailable(_) => "is unavailable",
            Self::Protocol(_) => "sent an unexpected answer",
            Self::CircuitOpen => "is failing (circuit open)",
        }
    }

    /// Whether the gateway looked unhealthy (for the breaker), as opposed to answering: the
    /// rule every breaker in the shop shares ([`platform::shedding`]). Each attempt is given
    /// the whole configured gateway timeout, never a caller's leftover, so a timeout here is
    /// always the processor's.
    pub fn is_failure(&self) -> bool {
        let code = match self {
            Self::Timeout => tonic::Code::DeadlineExceeded,
            Self::Unavailable(_) => tonic::Code::Unavailable,
            Self::Protocol(_) => tonic::Code::Unknown,
            Self::InProgress | Self::KeyReused(_) | Self::CircuitOpen => return false,
        };
        let attempt = platform::shedding::Attempt {
            budget_at_send: None,
            ample: Duration::ZERO,
            reached: true,
            relays: false,
        };
        platform::shedding::classify_code(code, &attempt).counts_against()
    }
}

/// What the gateway decided about a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Succeeded {
        charge_id: String,
        /// The card as the charge shows it (brand, last four), when the answer had it: what
        /// a payment by token learns of its card.
        card: Option<api::CardSummary>,
    },
    Declined {
        charge_id: String,
        code: String,
        card: Option<api::CardSummary>,
    },
    /// Refused before any money moved (bad request).
    Rejected { code: String },
}

impl ChargeOutcome {
    pub fn from_charge(c: &api::Charge) -> Self {
        if c.status == "succeeded" {
            Self::Succeeded {
                charge_id: c.id.clone(),
                card: Some(c.payment_method_details.card.clone()),
            }
        } else {
            Self::Declined {
                charge_id: c.id.clone(),
                code: c.decline_code(),
                card: Some(c.payment_method_details.card.clone()),
            }
        }
    }

    pub fn card(&self) -> Option<&api::CardSummary> {
        match self {
            Self::Succeeded { card, .. } | Self::Declined { card, .. } => card.as_ref(),
            Self::Rejected { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    Succeeded { refund_id: String },
    Rejected { code: String },
}

/// What is charged: the card itself, or a token standing for it (`tok_...`).
#[derive(Debug, Clone, Copy)]
pub enum ChargeSource<'a> {
    Card(&'a Card),
    Token(&'a str),
}

pub struct ChargeParams<'a> {
    pub amount_minor: i64,
    pub currency: Currency,
    pub description: &'a str,
    pub source: ChargeSource<'a>,
}

/// The processor's answer to `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenAnswer {
    Token(api::Token),
    /// The card was refused (invalid number, expiry or CVC; a missing card): why.
    Refused(api::ApiError),
}

#[derive(Clone)]
pub struct ProcessorClient {
    http: reqwest::Client,
    base: String,
    api_key: SecretString,
}

fn classify(e: reqwest::Error) -> ProcessorError {
    if e.is_timeout() {
        ProcessorError::Timeout
    } else {
        ProcessorError::Unavailable(platform::telemetry::chain(&e))
    }
}

/// Sends one request to the card gateway's `route`: timed as a card-gateway round trip, in
/// an HTTP client span (when traces are on) whose id goes out in `traceparent`, so the card
/// gateway's own span is its child.
async fn traced(
    req: reqwest::RequestBuilder,
    method: &str,
    route: &str,
    url: &str,
) -> Result<reqwest::Response, reqwest::Error> {
    let (span, traceparent) = platform::telemetry::http_client_span(method, url, route);
    let req = match traceparent {
        Some(tp) => req.header(platform::context::TRACEPARENT, tp),
        None => req,
    };
    let res = req
        .send()
        .store_op("card_gateway", "http")
        .instrument(span.clone())
        .await;
    match &res {
        Ok(r) => platform::telemetry::record_http_status(&span, r.status()),
        Err(_) => platform::telemetry::fail(&span, "transport error"),
    }
    res
}

fn error_body(body: &[u8]) -> Option<api::ApiError> {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error)
}

impl ProcessorClient {
    /// A client of the processor at `base_url` calling with `api_key` (payment-service's
    /// secret key; tests tokenizing as the shop's edge pass the publishable key).
    pub fn new(base_url: &str, api_key: SecretString) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            // Explicit (reqwest's default today): a request is a few small writes.
            .tcp_nodelay(true)
            // Under the card gateway's close of idle HTTP/1 connections (its 10 s header
            // read timeout runs between requests too): the client drops an idle connection
            // first, so a charge is never written to one the server is closing.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            api_key,
        })
    }

    async fn post(
        &self,
        path: &str,
        key: &str,
        body: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<(StatusCode, Vec<u8>), ProcessorError> {
        let url = format!("{}{path}", self.base);
        let req = self
            .http
            .post(&url)
            .bearer_auth(self.api_key.expose_secret())
            .header(api::IDEMPOTENCY_KEY, key)
            .json(body)
            .timeout(timeout);
        let resp = traced(req, "POST", path, &url).await.map_err(classify)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(classify)?;
        Ok((status, body.to_vec()))
    }

    /// Runs `attempt` until it gives a definite answer, retrying transport failures and 5xx
    /// (safe: same idempotency key) while the budget lasts.
    async fn with_retries<T, F, Fut>(
        &self,
        budget: Duration,
        mut attempt: F,
    ) -> Result<T, ProcessorError>
    where
        F: FnMut(Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, ProcessorError>>,
    {
        let deadline = Instant::now() + budget;
        let mut backoff = Duration::from_millis(25);
        let mut tries = 0;
        loop {
            tries += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProcessorError::Timeout);
            }
            match attempt(left).await {
                Err(ProcessorError::Unavailable(why)) if tries < ATTEMPTS => {
                    tracing::debug!(%why, tries, "card gateway attempt failed; retrying");
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left <= backoff {
                        return Err(ProcessorError::Unavailable(why));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                other => return other,
            }
        }
    }

    pub async fn create_charge(
        &self,
        key: &str,
        p: &ChargeParams<'_>,
        budget: Duration,
    ) -> Result<ChargeOutcome, ProcessorError> {
        let (card, token) = match p.source {
            ChargeSource::Card(card) => (
                Some(CardDetails {
                    number: card.number().to_owned(),
                    exp_month: i64::from(card.exp_month()),
                    exp_year: i64::from(card.exp_year()),
                    cvc: card.cvc().to_owned(),
                }),
                None,
            ),
            ChargeSource::Token(token) => (None, Some(token.to_owned())),
        };
        let body = CreateCharge {
            amount: Some(p.amount_minor),
            currency: Some(p.currency.code().to_ascii_lowercase()),
            description: (!p.description.is_empty()).then(|| p.description.to_owned()),
            card,
            token,
        };
        let body = &body;
        self.with_retries(budget, |left| async move {
            let (status, body) = self.post("/v1/charges", key, body, left).await?;
            charge_answer(status, &body)
        })
        .await
    }

    /// Tokenises `card` (`POST /v1/tokens`, which the publishable key opens): what the
    /// shop's edge does with the card the customer typed (tests use it so). Retried like a create, under `key`.
    pub async fn create_token(
        &self,
        key: &str,
        card: &CardDetails,
        budget: Duration,
    ) -> Result<TokenAnswer, ProcessorError> {
        let body = &api::CreateToken {
            card: Some(card.clone()),
        };
        self.with_retries(budget, |left| async move {
            let (status, body) = self.post("/v1/tokens", key, body, left).await?;
            match status {
                StatusCode::OK => serde_json::from_slice::<api::Token>(&body)
                    .map(TokenAnswer::Token)
                    .map_err(|e| ProcessorError::Protocol(e.to_string())),
                s if s.is_client_error() && s != StatusCode::CONFLICT => error_body(&body)
                    .filter(|e| e.kind != "idempotency_error")
                    .map(TokenAnswer::Refused)
                    .ok_or_else(|| other_answer(s, &body)),
                s => Err(other_answer(s, &body)),
            }
        })
        .await
    }

    /// The charge a create with `key` made: None if no such request executed.
    pub async fn find_charge(
        &self,
        key: &str,
        timeout: Duration,
    ) -> Result<Option<api::Charge>, ProcessorError> {
        let url = format!("{}/v1/charges", self.base);
        let req = self
            .http
            .get(&url)
            .bearer_auth(self.api_key.expose_secret())
            .query(&[("idempotency_key", key)])
            .timeout(timeout);
        let resp = traced(req, "GET", "/v1/charges", &url)
            .await
            .map_err(classify)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(classify)?;
        match status {
            StatusCode::OK => serde_json::from_slice::<api::List<api::Charge>>(&body)
                .map(|l| l.data.into_iter().next())
                .map_err(|e| ProcessorError::Protocol(e.to_string())),
            StatusCode::CONFLICT => Err(ProcessorError::InProgress),
            s if s.is_server_error() => Err(ProcessorError::Unavailable(format!("HTTP {s}"))),
            s => Err(ProcessorError::Protocol(format!("HTTP {s}"))),
        }
    }

    pub async fn create_refund(
        &self,
        key: &str,
        charge_id: &str,
        amount_minor: i64,
        budget: Duration,
    ) -> Result<RefundOutcome, ProcessorError> {
        let body = CreateRefund {
            charge: Some(charge_id.to_owned()),
            amount: Some(amount_minor),
            reason: None,
        };
        let body = &body;
        self.with_retries(budget, |left| async move {
            let (status, body) = self.post("/v1/refunds", key, body, left).await?;
            refund_answer(status, &body)
        })
        .await
    }
}

fn charge_answer(status: StatusCode, body: &[u8]) -> Result<ChargeOutcome, ProcessorError> {
    match status {
        StatusCode::OK => serde_json::from_slice::<api::Charge>(body)
            .map(|c| ChargeOutcome::from_charge(&c))
            .map_err(|e| ProcessorError::Protocol(e.to_string())),
        StatusCode::PAYMENT_REQUIRED => {
            let err =
                error_body(body).ok_or_else(|| ProcessorError::Protocol("HTTP 402".into()))?;
            Ok(match err.charge.clone() {
                Some(charge_id) => ChargeOutcome::Declined {
                    charge_id,
                    card: None,
                    code: err.best_code(),
                },
                // Card errors without a charge never reached the issuer.
                None => ChargeOutcome::Rejected {
                    code: err.best_code(),
                },
            })
        }
        // A plain 4xx is a definite refusal; 409, idempotency errors and 5xx are not.
        s => match other_answer(s, body) {
            ProcessorError::Protocol(code) if s.is_client_error() => {
                Ok(ChargeOutcome::Rejected { code })
            }
            e => Err(e),
        },
    }
}

fn refund_answer(status: StatusCode, body: &[u8]) -> Result<RefundOutcome, ProcessorError> {
    match status {
        StatusCode::OK => serde_json::from_slice::<api::Refund>(body)
            .map(|r| RefundOutcome::Succeeded { refund_id: r.id })
            .map_err(|e| ProcessorError::Protocol(e.to_string())),
        // A plain 4xx is a definite refusal; 409, idempotency errors and 5xx are not.
        s => match other_answer(s, body) {
            ProcessorError::Protocol(code) if s.is_client_error() => {
                Ok(RefundOutcome::Rejected { code })
            }
            e => Err(e),
        },
    }
}

/// Non-success answers: 409 in progress, 400 idempotency error, 5xx unavailable; any other
/// answer is Protocol(code), which the callers turn into a rejection for a 4xx.
fn other_answer(status: StatusCode, body: &[u8]) -> ProcessorError {
    let err = error_body(body);
    if status == StatusCode::CONFLICT {
        return ProcessorError::InProgress;
    }
    // A refused API key (or a rate limit) says nothing about the card: nothing was
    // charged, and the payment must wait for a fixed configuration, not fail.
    if status.is_server_error()
        || matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
        )
    {
        return ProcessorError::Unavailable(format!("HTTP {status}"));
    }
    match err {
        Some(e) if e.kind == "idempotency_error" => ProcessorError::KeyReused(e.message),
        Some(e) => ProcessorError::Protocol(e.best_code()),
        None => ProcessorError::Protocol(format!("HTTP {status}")),
    }
}
