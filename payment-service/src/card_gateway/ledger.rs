//! The mock gateway's in-memory books: charges, refunds, idempotency records and counters.
//! Everything here runs under one mutex, in short synchronous sections.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use http::StatusCode;
use rand::{Rng, distr::Alphanumeric};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::api::{self, CardSummary, Charge, Outcome, PaymentMethodDetails, Refund, Stats};

/// How long an idempotency record is kept (Stripe: at least 24 hours).
const KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// A create request that passed parameter validation.
#[derive(Clone)]
pub struct ValidCharge {
    pub amount: i64,
    pub currency: String,
    pub description: Option<String>,
    pub digits: String,
    pub exp_month: i64,
    pub exp_year: i64,
    pub brand: &'static str,
}

#[derive(Debug, Clone)]
pub struct ValidRefund {
    pub charge: String,
    pub amount: Option<i64>,
    pub reason: Option<String>,
}

/// What a stored idempotency record says about a new request with its key.
pub enum Begin {
    /// No record: this request executes (the key is now held as in flight).
    Started,
    /// The first request's stored answer.
    Replay(StatusCode, Value),
    /// Same key, other parameters or endpoint.
    Mismatch,
    /// Another request with this key is executing.
    InFlight,
}

enum KeyState {
    InFlight,
    Done { status: StatusCode, body: Value },
}

struct KeyEntry {
    fingerprint: [u8; 32],
    state: KeyState,
    charge_id: Option<String>,
    created: Instant,
}

/// The answer to "what happened to the request with this key?".
pub enum KeyLookup {
    Unknown,
    InFlight,
    Charge(Box<Charge>),
    /// Executed, but it created no charge (e.g. a refund key).
    NoCharge,
}

/// The result of executing a request: HTTP status, body, and the charge it created, if any.
pub struct Executed {
    pub status: StatusCode,
    pub body: Value,
    pub charge_id: Option<String>,
}

#[derive(Default)]
pub struct Ledger {
    charges: HashMap<String, Charge>,
    /// Charge ids in creation order, for listing.
    order: Vec<String>,
    refunds: HashMap<String, Refund>,
    keys: HashMap<String, KeyEntry>,
    pub stats: Stats,
    inserts_since_prune: u32,
}

pub fn fingerprint(route: &str, params: &impl serde::Serialize) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update([0]);
    // Serialising the typed request gives one canonical form whatever the JSON key order was.
    h.update(serde_json::to_vec(params).unwrap_or_default());
    h.finalize().into()
}

fn random_id(prefix: &str) -> String {
    let tail: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}_{tail}")
}

fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

pub fn error_body(
    kind: &str,
    code: Option<&str>,
    decline_code: Option<&str>,
    message: &str,
    param: Option<&str>,
    charge: Option<&str>,
) -> Value {
    serde_json::to_value(api::ErrorBody {
        error: api::ApiError {
            kind: kind.to_owned(),
            code: code.map(str::to_owned),
            decline_code: decline_code.map(str::to_owned),
            message: message.to_owned(),
            param: param.map(str::to_owned),
            charge: charge.map(str::to_owned),
        },
    })
    .unwrap_or(Value::Null)
}

/// How the "issuer" answers a card number, after Stripe's documented test cards:
/// (failure code, decline reason, message). None means approved.
fn issuer_answer(digits: &str) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match digits {
        "4000000000000002" => (
            "card_declined",
            "generic_decline",
            "Your card was declined.",
        ),
        "4000000000009995" => (
            "card_declined",
            "insufficient_funds",
            "Your card has insufficient funds.",
        ),
        "4000000000009987" => ("card_declined", "lost_card", "Your card was declined."),
        "4000000000009979" => ("card_declined", "stolen_card", "Your card was declined."),
        "4000000000000069" => ("expired_card", "expired_card", "Your card has expired."),
        "4000000000000127" => (
            "incorrect_cvc",
            "incorrect_cvc",
            "Your card's security code is incorrect.",
        ),
        "4000000000000119" => (
            "processing_error",
            "processing_error",
            "An error occurred while processing your card. Try again in a little bit.",
        ),
        _ => return None,
    })
}

impl Ledger {
    /// Claims `key` for a request with `fingerprint`, or says why not.
    pub fn begin(&mut self, key: &str, fingerprint: [u8; 32]) -> Begin {
        self.prune();
        if let Some(e) = self.keys.get(key) {
            if e.fingerprint != fingerprint {
                return Begin::Mismatch;
            }
            return match &e.state {
                KeyState::InFlight => {
                    self.stats.idempotency_conflicts += 1;
                    Begin::InFlight
                }
                KeyState::Done { status, body } => {
                    let replay = Begin::Replay(*status, body.clone());
                    self.stats.idempotent_replays += 1;
                    metrics::counter!("card_gateway_idempotent_replays_total").increment(1);
                    replay
                }
            };
        }
        self.keys.insert(
            key.to_owned(),
            KeyEntry {
                fingerprint,
                state: KeyState::InFlight,
                charge_id: None,
                created: Instant::now(),
            },
        );
        self.inserts_since_prune += 1;
        Begin::Started
    }

    /// Stores the answer for `key` so retries replay it.
    pub fn finish(&mut self, key: &str, executed: &Executed) {
        if let Some(e) = self.keys.get_mut(key) {
            e.state = KeyState::Done {
                status: executed.status,
                body: executed.body.clone(),
            };
            e.charge_id.clone_from(&executed.charge_id);
        }
    }

    /// Forgets an in-flight key whose request never executed (injected error or hang), so a
    /// retry executes, as Stripe does for requests that fail before they start.
    pub fn abandon(&mut self, key: &str) {
        if matches!(
            self.keys.get(key).map(|e| &e.state),
            Some(KeyState::InFlight)
        ) {
            self.keys.remove(key);
        }
    }

    pub fn lookup_key(&self, key: &str) -> KeyLookup {
        match self.keys.get(key) {
            None => KeyLookup::Unknown,
            Some(KeyEntry {
                state: KeyState::InFlight,
                ..
            }) => KeyLookup::InFlight,
            Some(e) => match e.charge_id.as_ref().and_then(|id| self.charges.get(id)) {
                Some(c) => KeyLookup::Charge(Box::new(c.clone())),
                None => KeyLookup::NoCharge,
            },
        }
    }

    fn prune(&mut self) {
        if self.inserts_since_prune < 1000 {
            return;
        }
        self.inserts_since_prune = 0;
        self.keys
            .retain(|_, e| matches!(e.state, KeyState::InFlight) || e.created.elapsed() < KEY_TTL);
    }

    pub fn charge(&self, id: &str) -> Option<Charge> {
        self.charges.get(id).cloned()
    }

    /// Newest first.
    pub fn recent_charges(&self, limit: usize) -> Vec<Charge> {
        self.order
            .iter()
            .rev()
            .take(limit)
            .filter_map(|id| self.charges.get(id).cloned())
            .collect()
    }

    pub fn execute_charge(&mut self, c: &ValidCharge) -> Executed {
        let id = random_id("ch");
        let last4 = c.digits[c.digits.len().saturating_sub(4)..].to_owned();
        let answer = issuer_answer(&c.digits);
        let (status, paid, failure_code, failure_message, outcome) = match answer {
            None => (
                "succeeded",
                true,
                None,
                None,
                Outcome {
                    kind: "authorized".into(),
                    network_status: "approved_by_network".into(),
                    reason: None,
                    seller_message: "Payment complete.".into(),
                },
            ),
            Some((code, reason, message)) => (
                "failed",
                false,
                Some(code.to_owned()),
                Some(message.to_owned()),
                Outcome {
                    kind: "issuer_declined".into(),
                    network_status: "declined_by_network".into(),
                    reason: Some(reason.to_owned()),
                    seller_message: format!("The bank returned the decline code `{reason}`."),
                },
            ),
        };
        let charge = Charge {
            id: id.clone(),
            object: "charge".into(),
            amount: c.amount,
            amount_refunded: 0,
            currency: c.currency.clone(),
            description: c.description.clone(),
            status: status.into(),
            paid,
            captured: paid,
            refunded: false,
            failure_code,
            failure_message,
            outcome,
            payment_method_details: PaymentMethodDetails {
                kind: "card".into(),
                card: CardSummary {
                    brand: c.brand.into(),
                    last4,
                    exp_month: c.exp_month,
                    exp_year: c.exp_year,
                },
            },
            created: unix_now(),
            livemode: false,
        };
        self.stats.charges_created += 1;
        metrics::counter!("card_gateway_charges_total", "status" => status).increment(1);
        self.charges.insert(id.clone(), charge.clone());
        self.order.push(id.clone());
        tracing::info!(
            charge = %id,
            amount = c.amount,
            currency = %c.currency,
            status,
            "charge created"
        );
        match answer {
            None => {
                self.stats.charges_succeeded += 1;
                Executed {
                    status: StatusCode::OK,
                    body: serde_json::to_value(&charge).unwrap_or(Value::Null),
                    charge_id: Some(id),
                }
            }
            Some((code, reason, message)) => {
                self.stats.charges_failed += 1;
                let decline = (code == "card_declined").then_some(reason);
                Executed {
                    status: StatusCode::PAYMENT_REQUIRED,
                    body: error_body("card_error", Some(code), decline, message, None, Some(&id)),
                    charge_id: Some(id),
                }
            }
        }
    }

    pub fn execute_refund(&mut self, r: &ValidRefund) -> Executed {
        let invalid = |status: StatusCode, code: &str, message: &str| Executed {
            status,
            body: error_body(
                "invalid_request_error",
                Some(code),
                None,
                message,
                None,
                None,
            ),
            charge_id: None,
        };
        let Some(charge) = self.charges.get_mut(&r.charge) else {
            return invalid(
                StatusCode::NOT_FOUND,
                "resource_missing",
                &format!("No such charge: '{}'", r.charge),
            );
        };
        if charge.status != "succeeded" {
            return invalid(
                StatusCode::BAD_REQUEST,
                "charge_not_refundable",
                "This charge failed and cannot be refunded.",
            );
        }
        let left = charge.amount - charge.amount_refunded;
        if left == 0 {
            return invalid(
                StatusCode::BAD_REQUEST,
                "charge_already_refunded",
                &format!("Charge {} has already been refunded.", r.charge),
            );
        }
        let amount = r.amount.unwrap_or(left);
        if amount > left {
            return invalid(
                StatusCode::BAD_REQUEST,
                "amount_too_large",
                &format!(
                    "Refund amount ({amount}) is greater than unrefunded amount on charge ({left})"
                ),
            );
        }
        charge.amount_refunded += amount;
        charge.refunded = charge.amount_refunded == charge.amount;
        let refund = Refund {
            id: random_id("re"),
            object: "refund".into(),
            amount,
            charge: r.charge.clone(),
            currency: charge.currency.clone(),
            reason: r.reason.clone(),
            status: "succeeded".into(),
            created: unix_now(),
        };
        self.stats.refunds_created += 1;
        metrics::counter!("card_gateway_refunds_total").increment(1);
        tracing::info!(refund = %refund.id, charge = %r.charge, amount, "refund created");
        self.refunds.insert(refund.id.clone(), refund.clone());
        Executed {
            status: StatusCode::OK,
            body: serde_json::to_value(&refund).unwrap_or(Value::Null),
            charge_id: None,
        }
    }
}
