//! The mock gateway's in-memory books: charges, refunds, tokens (with the cards they stand
//! for: the processor's vault), idempotency records and counters.
//! Everything here runs under one mutex, in short synchronous sections.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    time::{Duration, Instant},
};

use http::StatusCode;
use rand::{Rng, distr::Alphanumeric};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{
    api::{self, CardSummary, Charge, Outcome, PaymentMethodDetails, Refund, Stats, Token},
    journal::{self, Entry, Journal},
    tokens::{AccountId, Refusal, Stored, Vault},
};

/// Default of how long a token can be charged (seconds).
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;

/// How long an idempotency record is kept (Stripe: at least 24 hours).
const KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// A card that passed validation: what the processor charges, and keeps for a token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultCard {
    pub digits: String,
    pub exp_month: i64,
    pub exp_year: i64,
}

impl fmt::Debug for VaultCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VaultCard { .. }")
    }
}

impl VaultCard {
    fn summary(&self) -> CardSummary {
        CardSummary {
            brand: crate::card::Brand::of(&self.digits).as_str().into(),
            last4: self.digits[self.digits.len().saturating_sub(4)..].to_owned(),
            exp_month: self.exp_month,
            exp_year: self.exp_year,
        }
    }
}

/// What a charge by token needs besides the token. No `Debug`: the token is a bearer
/// credential for a card and must not reach a log line.
#[derive(Clone)]
pub struct TokenCharge {
    pub token: String,
    /// The account (key pair) charging: only its own tokens are found.
    pub account: AccountId,
    pub amount: i64,
    pub currency: String,
    pub description: Option<String>,
}

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

/// The books are bounded: at most `max_entries` charges, as many refunds and as many
/// idempotency records are kept. Past that the oldest go first (charges and refunds are
/// final as soon as they are made; a record still in flight is never dropped), so a long
/// run or a flood of requests cannot grow the process without end.
pub struct Ledger {
    max_entries: usize,
    charges: HashMap<String, Charge>,
    /// Charge ids in creation order, for listing and eviction.
    order: VecDeque<String>,
    refunds: HashMap<String, Refund>,
    /// Refund ids in creation order, for eviction.
    refund_order: VecDeque<String>,
    keys: HashMap<String, KeyEntry>,
    /// Keys with their creation time in insertion order, for eviction. An entry whose key
    /// is gone or was created again since is stale and skipped.
    key_order: VecDeque<(String, Instant)>,
    /// Tokens and the cards they stand for.
    tokens: Vault,
    pub stats: Stats,
    inserts_since_prune: u32,
    /// Where the books survive a crash, when configured.
    journal: Option<Journal>,
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

/// The answer to a token request while the vault is full of pending tokens.
pub fn tokens_full() -> Value {
    error_body(
        "rate_limit_error",
        Some("too_many_pending_tokens"),
        None,
        "Too many tokens are waiting to be charged; try again later.",
        None,
        None,
    )
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
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries: max_entries.max(1),
            charges: HashMap::new(),
            order: VecDeque::new(),
            refunds: HashMap::new(),
            refund_order: VecDeque::new(),
            keys: HashMap::new(),
            key_order: VecDeque::new(),
            tokens: Vault::new(DEFAULT_TOKEN_TTL_SECS, max_entries),
            stats: Stats::default(),
            inserts_since_prune: 0,
            journal: None,
        }
    }

    /// At most `capacity` tokens, each chargeable for `ttl_secs`.
    pub fn token_limits(mut self, ttl_secs: u64, capacity: usize) -> Self {
        self.tokens = Vault::new(ttl_secs, capacity);
        self
    }

    /// Books kept in the journal at `path` too: what it holds is loaded first.
    pub fn with_journal(max_entries: usize, path: &std::path::Path) -> std::io::Result<Self> {
        Self::new(max_entries).journaled(path)
    }

    /// These books kept in the journal at `path` too: what it holds is loaded first.
    pub fn journaled(self, path: &std::path::Path) -> std::io::Result<Self> {
        let (journal, entries) = Journal::open(path)?;
        let mut ledger = self;
        let replayed = entries.len();
        for e in entries {
            ledger.replay(e);
        }
        ledger.evict();
        ledger.journal = Some(journal);
        tracing::info!(path = %path.display(), entries = replayed, "card gateway journal loaded");
        Ok(ledger)
    }

    fn replay(&mut self, e: Entry) {
        match e {
            Entry::Charge { charge } => {
                if self
                    .charges
                    .insert(charge.id.clone(), (*charge).clone())
                    .is_none()
                {
                    self.order.push_back(charge.id);
                }
            }
            Entry::Refund { refund } => {
                if self
                    .refunds
                    .insert(refund.id.clone(), refund.clone())
                    .is_none()
                {
                    self.refund_order.push_back(refund.id);
                }
            }
            Entry::Token {
                token,
                card,
                account,
            } => self.tokens.insert(Stored {
                token,
                card,
                account,
                used: false,
            }),
            Entry::TokenUsed { id } => self.tokens.mark_used(&id),
            Entry::Key {
                key,
                fingerprint,
                status,
                body,
                charge_id,
            } => {
                let (Some(fingerprint), Ok(status)) =
                    (journal::unhex(&fingerprint), StatusCode::from_u16(status))
                else {
                    return;
                };
                let created = Instant::now();
                self.keys.insert(
                    key.clone(),
                    KeyEntry {
                        fingerprint,
                        state: KeyState::Done { status, body },
                        charge_id,
                        created,
                    },
                );
                self.key_order.push_back((key, created));
            }
        }
    }

    /// Writes a change through to the journal (if any) before the answer leaves.
    fn record(&mut self, entry: Entry) {
        if let Some(j) = self.journal.as_mut()
            && let Err(e) = j.append(&entry)
        {
            metrics::counter!("card_gateway_journal_errors_total").increment(1);
            tracing::error!(error = %e, "card gateway journal: write failed; this change is lost on a crash");
        }
    }

    /// How many charges, refunds and idempotency records are held now.
    #[cfg(test)]
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.charges.len(), self.refunds.len(), self.keys.len())
    }

    /// Drops the oldest charges, refunds and finished idempotency records beyond the cap.
    fn evict(&mut self) {
        let mut evicted = 0u64;
        while self.order.len() > self.max_entries {
            if let Some(id) = self.order.pop_front() {
                self.charges.remove(&id);
                evicted += 1;
            }
        }
        while self.refund_order.len() > self.max_entries {
            if let Some(id) = self.refund_order.pop_front() {
                self.refunds.remove(&id);
                evicted += 1;
            }
        }
        // In-flight records go to the back; at most one pass over the queue.
        let mut budget = self.key_order.len();
        while self.key_order.len() > self.max_entries && budget > 0 {
            budget -= 1;
            let Some((key, created)) = self.key_order.pop_front() else {
                break;
            };
            match self.keys.get(&key) {
                Some(e) if e.created == created => {
                    if matches!(e.state, KeyState::InFlight) {
                        self.key_order.push_back((key, created));
                    } else {
                        self.keys.remove(&key);
                        evicted += 1;
                    }
                }
                // Stale: the key was abandoned, pruned or created again.
                _ => {}
            }
        }
        if evicted > 0 {
            metrics::counter!("card_gateway_evicted_total").increment(evicted);
        }
    }

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
        let created = Instant::now();
        self.keys.insert(
            key.to_owned(),
            KeyEntry {
                fingerprint,
                state: KeyState::InFlight,
                charge_id: None,
                created,
            },
        );
        self.key_order.push_back((key.to_owned(), created));
        self.inserts_since_prune += 1;
        self.evict();
        Begin::Started
    }

    /// Stores the answer for `key` so retries replay it.
    pub fn finish(&mut self, key: &str, executed: &Executed) {
        let Some(e) = self.keys.get_mut(key) else {
            return;
        };
        e.state = KeyState::Done {
            status: executed.status,
            body: executed.body.clone(),
        };
        e.charge_id.clone_from(&executed.charge_id);
        let entry = Entry::Key {
            key: key.to_owned(),
            fingerprint: journal::hex(&e.fingerprint),
            status: executed.status.as_u16(),
            body: executed.body.clone(),
            charge_id: executed.charge_id.clone(),
        };
        self.record(entry);
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

    /// Whether a new token fits (expired and used tokens make room; pending ones never).
    pub fn token_room(&mut self) -> bool {
        self.tokens.make_room(unix_now())
    }

    /// Makes a token of `account` for `card` (kept, and journaled, like a charge); refused
    /// (429) while the vault is full of pending tokens.
    pub fn execute_token(&mut self, card: &VaultCard, account: AccountId) -> Executed {
        if !self.token_room() {
            self.stats.tokens_refused += 1;
            metrics::counter!("card_gateway_tokens_refused_total").increment(1);
            return Executed {
                status: StatusCode::TOO_MANY_REQUESTS,
                body: tokens_full(),
                charge_id: None,
            };
        }
        let token = Token {
            id: random_id("tok"),
            object: "token".into(),
            card: card.summary(),
            created: unix_now(),
            livemode: false,
        };
        self.stats.tokens_created += 1;
        metrics::counter!("card_gateway_tokens_total").increment(1);
        self.tokens.insert(Stored {
            token: token.clone(),
            card: card.clone(),
            account,
            used: false,
        });
        self.record(Entry::Token {
            token: token.clone(),
            card: card.clone(),
            account,
        });
        // Brand only: the token is a bearer credential for the card.
        tracing::info!(brand = %token.card.brand, "token created");
        Executed {
            status: StatusCode::OK,
            body: serde_json::to_value(&token).unwrap_or(Value::Null),
            charge_id: None,
        }
    }

    /// Charges the card behind a token exactly as a charge of that card, and uses the token
    /// up. An unknown, expired or other account's token is a 400 `resource_missing` on
    /// `token`; a used one a 400 `token_already_used`; never a decline.
    pub fn execute_token_charge(&mut self, t: &TokenCharge) -> Executed {
        let card = match self.tokens.take(&t.token, t.account, unix_now()) {
            Ok(card) => card,
            Err(refusal) => {
                let (code, message) = match refusal {
                    Refusal::Missing => ("resource_missing", "No such token."),
                    Refusal::Used => (
                        "token_already_used",
                        "You cannot use a token more than once.",
                    ),
                };
                return Executed {
                    status: StatusCode::BAD_REQUEST,
                    body: error_body(
                        "invalid_request_error",
                        Some(code),
                        None,
                        message,
                        Some("token"),
                        None,
                    ),
                    charge_id: None,
                };
            }
        };
        self.record(Entry::TokenUsed {
            id: t.token.clone(),
        });
        let charge = ValidCharge {
            amount: t.amount,
            currency: t.currency.clone(),
            description: t.description.clone(),
            brand: crate::card::Brand::of(&card.digits).as_str(),
            digits: card.digits.clone(),
            exp_month: card.exp_month,
            exp_year: card.exp_year,
        };
        self.execute_charge(&charge)
    }

    #[cfg(test)]
    pub fn token_count(&self) -> usize {
        self.tokens.len()
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
        self.order.push_back(id.clone());
        self.record(Entry::Charge {
            charge: Box::new(charge.clone()),
        });
        self.evict();
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
        let charge_now = charge.clone();
        self.stats.refunds_created += 1;
        metrics::counter!("card_gateway_refunds_total").increment(1);
        tracing::info!(refund = %refund.id, charge = %r.charge, amount, "refund created");
        self.refunds.insert(refund.id.clone(), refund.clone());
        self.refund_order.push_back(refund.id.clone());
        self.record(Entry::Charge {
            charge: Box::new(charge_now),
        });
        self.record(Entry::Refund {
            refund: refund.clone(),
        });
        self.evict();
        Executed {
            status: StatusCode::OK,
            body: serde_json::to_value(&refund).unwrap_or(Value::Null),
            charge_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visa(amount: i64) -> ValidCharge {
        ValidCharge {
            amount,
            currency: "usd".into(),
            description: None,
            digits: "4242424242424242".into(),
            exp_month: 12,
            exp_year: 2034,
            brand: "visa",
        }
    }

    /// A charge made the way the API makes one: key claimed, executed, answer stored.
    fn keyed_charge(ledger: &mut Ledger, key: &str, amount: i64) -> Executed {
        assert!(matches!(
            ledger.begin(key, [amount as u8; 32]),
            Begin::Started
        ));
        let executed = ledger.execute_charge(&visa(amount));
        ledger.finish(key, &executed);
        executed
    }

    /// A gateway killed and started again on its journal still knows its charges, replays
    /// its keys and refunds what it charged (what the crash test's card-gateway kills need).
    #[test]
    fn a_journal_brings_the_books_back_after_a_restart() {
        let path = std::env::temp_dir().join(format!("card-journal-{}.jsonl", random_id("t")));
        let charge_id = {
            let mut ledger = Ledger::with_journal(100, &path).expect("journal");
            let executed = keyed_charge(&mut ledger, "k1", 700);
            executed.charge_id.expect("a charge")
            // Dropped without any shutdown: what SIGKILL leaves is what was synced.
        };
        let mut ledger = Ledger::with_journal(100, &path).expect("reopen");
        assert_eq!(ledger.charge(&charge_id).map(|c| c.amount), Some(700));
        assert!(matches!(
            ledger.begin("k1", [700u16 as u8; 32]),
            Begin::Replay(StatusCode::OK, _)
        ));
        assert!(matches!(ledger.lookup_key("k1"), KeyLookup::Charge(_)));
        let refund = ledger.execute_refund(&ValidRefund {
            charge: charge_id.clone(),
            amount: None,
            reason: None,
        });
        assert_eq!(refund.status, StatusCode::OK);
        drop(ledger);
        let ledger = Ledger::with_journal(100, &path).expect("reopen again");
        let charge = ledger.charge(&charge_id).expect("charge");
        assert!(charge.refunded);
        assert_eq!(charge.amount_refunded, 700);
        assert_eq!(ledger.sizes().1, 1, "the refund came back too");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn charges_refunds_and_keys_stay_under_the_cap_oldest_dropped_first() {
        let mut ledger = Ledger::new(10);
        let mut ids = Vec::new();
        for i in 0..1000 {
            let executed = keyed_charge(&mut ledger, &format!("k{i}"), 100 + i);
            let id = executed.charge_id.expect("a charge");
            let refund = ledger.execute_refund(&ValidRefund {
                charge: id.clone(),
                amount: Some(1),
                reason: None,
            });
            assert_eq!(refund.status, StatusCode::OK);
            ids.push(id);
            let (charges, refunds, keys) = ledger.sizes();
            assert!(
                charges <= 10 && refunds <= 10 && keys <= 10,
                "{:?}",
                ledger.sizes()
            );
        }
        assert!(ledger.charge(&ids[0]).is_none(), "the oldest went");
        assert!(ledger.charge(&ids[999]).is_some(), "the newest stays");
        let recent: Vec<_> = ledger
            .recent_charges(100)
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(recent.len(), 10);
        assert_eq!(recent[0], ids[999]);
        assert!(matches!(ledger.lookup_key("k999"), KeyLookup::Charge(_)));
        assert!(matches!(ledger.lookup_key("k0"), KeyLookup::Unknown));
        // A recent key still replays.
        assert!(matches!(
            ledger.begin("k999", [(100 + 999) as u8; 32]),
            Begin::Replay(..)
        ));
    }

    fn token_of(executed: &Executed) -> String {
        assert_eq!(executed.status, StatusCode::OK, "{}", executed.body);
        executed.body["id"].as_str().expect("token id").to_owned()
    }

    fn token_charge(token: &str) -> TokenCharge {
        TokenCharge {
            token: token.to_owned(),
            account: 0,
            amount: 500,
            currency: "usd".into(),
            description: None,
        }
    }

    /// A token charges like its card (decline numbers decline) once, outlives a restart on
    /// the journal (used ones stay used), and past the cap new ones are refused; an unknown
    /// token is a 400, not a decline.
    #[test]
    fn tokens_charge_like_their_card_once_survive_a_restart_and_stay_under_the_cap() {
        let path = std::env::temp_dir().join(format!("card-journal-{}.jsonl", random_id("t")));
        let card = |digits: &str| VaultCard {
            digits: digits.into(),
            exp_month: 12,
            exp_year: 2034,
        };
        let (ok, declined) = {
            let mut ledger = Ledger::with_journal(2, &path).expect("journal");
            let ok = token_of(&ledger.execute_token(&card("4242424242424242"), 0));
            let declined = token_of(&ledger.execute_token(&card("4000000000000002"), 0));
            (ok, declined)
        };
        assert!(ok.starts_with("tok_") && ok != declined);
        let mut ledger = Ledger::with_journal(2, &path).expect("reopen");
        let paid = ledger.execute_token_charge(&token_charge(&ok));
        assert_eq!(paid.status, StatusCode::OK);
        assert_eq!(paid.body["payment_method_details"]["card"]["last4"], "4242");
        let refused = ledger.execute_token_charge(&token_charge(&declined));
        assert_eq!(refused.status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(refused.body["error"]["code"], "card_declined");
        let unknown = ledger.execute_token_charge(&token_charge("tok_nope"));
        assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
        assert_eq!(unknown.body["error"]["code"], "resource_missing");
        assert_eq!(unknown.body["error"]["param"], "token");
        assert!(unknown.charge_id.is_none());

        let again = ledger.execute_token_charge(&token_charge(&ok));
        assert_eq!(again.body["error"]["code"], "token_already_used");
        drop(ledger);
        let mut ledger = Ledger::with_journal(2, &path).expect("reopen again");
        let after_restart = ledger.execute_token_charge(&token_charge(&ok));
        assert_eq!(after_restart.body["error"]["code"], "token_already_used");

        // Both are used: they make room; two pending fill the vault and a third is refused.
        let pending = token_of(&ledger.execute_token(&card("5555555555554444"), 0));
        token_of(&ledger.execute_token(&card("5555555555554444"), 0));
        let refused = ledger.execute_token(&card("5555555555554444"), 0);
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(ledger.token_count(), 2);
        let paid = ledger.execute_token_charge(&token_charge(&pending));
        assert_eq!(paid.status, StatusCode::OK, "the pending token stayed");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn keys_in_flight_are_never_dropped() {
        let mut ledger = Ledger::new(2);
        for key in ["a", "b", "c"] {
            assert!(matches!(ledger.begin(key, [1; 32]), Begin::Started));
        }
        assert_eq!(ledger.sizes().2, 3, "all three still executing");
        assert!(matches!(ledger.begin("b", [1; 32]), Begin::InFlight));
        let executed = ledger.execute_charge(&visa(5));
        for key in ["a", "b", "c"] {
            ledger.finish(key, &executed);
        }
        keyed_charge(&mut ledger, "d", 7);
        assert!(ledger.sizes().2 <= 2, "{:?}", ledger.sizes());
        assert!(matches!(ledger.lookup_key("d"), KeyLookup::Charge(_)));
    }
}
