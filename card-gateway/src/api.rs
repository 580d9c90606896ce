//! Wire types of the mock card gateway, shaped after the public Stripe charges, refunds and
//! tokens API (JSON bodies instead of form encoding). Shared by the mock and by
//! payment-service's client so the two cannot drift apart.

use serde::{Deserialize, Serialize};

/// Header carrying the client's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on a response that replays a stored result.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// `POST /v1/charges` body: exactly one of `card` and `token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCharge {
    /// Minor units, >= 1.
    pub amount: Option<i64>,
    /// ISO 4217, any case (answers use lower case, like Stripe).
    pub currency: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub card: Option<CardDetails>,
    /// A token from `POST /v1/tokens` (`tok_...`) instead of the card. Left out of the JSON
    /// when absent, so card charges fingerprint as they always did (journaled keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `POST /v1/tokens` body: the card as the customer typed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateToken {
    pub card: Option<CardDetails>,
}

/// A card token (`POST /v1/tokens` answer): stands for the card in charges
/// (`"token": "tok_..."`), so whoever holds it never holds the card number. Charged once,
/// by the account that made it, within its time to live (see `tokens`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// `tok_...`
    pub id: String,
    pub object: String,
    /// What may be shown of the card.
    pub card: CardSummary,
    /// Unix seconds.
    pub created: i64,
    pub livemode: bool,
}

/// Raw card fields (in a charge, or once in `POST /v1/tokens` to get a token for them).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardDetails {
    pub number: String,
    pub exp_month: i64,
    pub exp_year: i64,
    pub cvc: String,
}

impl std::fmt::Debug for CardDetails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardDetails { .. }")
    }
}

/// `POST /v1/refunds` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRefund {
    /// Charge id (`ch_...`).
    pub charge: Option<String>,
    /// Minor units; absent refunds everything that is left.
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// "authorized", "issuer_declined", "invalid".
    #[serde(rename = "type")]
    pub kind: String,
    pub network_status: String,
    /// Decline reason ("generic_decline", "insufficient_funds", ...); null when authorized.
    pub reason: Option<String>,
    pub seller_message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardSummary {
    pub brand: String,
    pub last4: String,
    pub exp_month: i64,
    pub exp_year: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentMethodDetails {
    #[serde(rename = "type")]
    pub kind: String,
    pub card: CardSummary,
}

/// A charge object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub id: String,
    pub object: String,
    pub amount: i64,
    pub amount_refunded: i64,
    pub currency: String,
    pub description: Option<String>,
    /// "succeeded" or "failed".
    pub status: String,
    pub paid: bool,
    pub captured: bool,
    pub refunded: bool,
    /// "card_declined" etc. when failed.
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub outcome: Outcome,
    pub payment_method_details: PaymentMethodDetails,
    /// Unix seconds.
    pub created: i64,
    pub livemode: bool,
}

impl Charge {
    /// The code to record for a failed charge: the specific decline reason when there is one
    /// ("insufficient_funds"), else the failure code ("card_declined").
    pub fn decline_code(&self) -> String {
        match (&self.outcome.reason, &self.failure_code) {
            (Some(r), _) if r != "generic_decline" => r.clone(),
            (_, Some(c)) => c.clone(),
            _ => "card_declined".to_owned(),
        }
    }
}

/// A refund object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub object: String,
    pub amount: i64,
    pub charge: String,
    pub currency: String,
    pub reason: Option<String>,
    /// "succeeded".
    pub status: String,
    pub created: i64,
}

/// A list answer (`GET /v1/charges`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct List<T> {
    pub object: String,
    pub data: Vec<T>,
    pub has_more: bool,
    pub url: String,
}

/// Error envelope: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// "card_error", "invalid_request_error", "idempotency_error", "api_error".
    #[serde(rename = "type")]
    pub kind: String,
    pub code: Option<String>,
    pub decline_code: Option<String>,
    pub message: String,
    pub param: Option<String>,
    /// The failed charge's id, for declines.
    pub charge: Option<String>,
}

impl ApiError {
    /// The most specific code: decline reason, else the error code, else the type.
    pub fn best_code(&self) -> String {
        match (&self.decline_code, &self.code) {
            (Some(d), _) if d != "generic_decline" => d.clone(),
            (_, Some(c)) => c.clone(),
            _ => self.kind.clone(),
        }
    }
}

/// `GET /admin/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Charge objects created (succeeded + failed): each is one executed charge attempt.
    pub charges_created: u64,
    /// Tokens made by `POST /v1/tokens`.
    #[serde(default)]
    pub tokens_created: u64,
    /// Token requests refused because the vault was full of pending tokens.
    #[serde(default)]
    pub tokens_refused: u64,
    /// Charges that moved money.
    pub charges_succeeded: u64,
    /// Charges the "issuer" declined.
    pub charges_failed: u64,
    pub refunds_created: u64,
    /// Requests answered from the idempotency store.
    pub idempotent_replays: u64,
    /// Requests refused with 409 because another request with the key was in flight.
    pub idempotency_conflicts: u64,
    /// Injected HTTP 500s.
    pub injected_errors: u64,
    /// Injected hangs.
    pub injected_hangs: u64,
    /// Charges looked up by Idempotency-Key (`GET /v1/charges?idempotency_key=`): what
    /// reconciling a PENDING payment asks.
    #[serde(default)]
    pub key_lookups: u64,
}
