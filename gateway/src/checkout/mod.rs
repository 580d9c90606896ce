//! The checkout saga: authenticate -> price (item-service; client prices are ignored) ->
//! reserve -> charge -> commit -> record the order, with compensation when a later step
//! fails. Three strategies (docs/architecture.md) give the same result for the same input:
//! `orchestrated` and `parallel` run the steps here ([`saga`]); `chained` hands the whole
//! chain to user-service ([`chained`]); `async` records the request and lets the services
//! complete it through the event stream ([`asynchronous`]), answering 202 at once.
//!
//! Every step is keyed by the checkout's idempotency key scoped to the user
//! (`{user_id}:{key}`: the reservation id and the charge's key; the order id is
//! [`order_id_for`]), so a client that retries after a timeout converges on the first
//! outcome and is never charged or reserved twice, whichever strategy each attempt used.

mod asynchronous;
mod chained;
mod compensate;
mod pricing;
pub mod record;
mod saga;
mod strategy;

use http::StatusCode;
pub use platform::ids::{order_id_for, scoped_key};
use platform::{
    ErrorReason,
    checkout_failure::{self, CheckoutFailure},
    reason_of,
};
pub use pricing::{Priced, price};
use shop_proto::{common::v1 as common, payment::v1 as pay, user::v1 as user};
pub use strategy::Strategy;

use crate::{auth::AuthUser, error::ApiError, state::AppState};

/// A checkout parsed at the edge.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub user: AuthUser,
    /// The client's Idempotency-Key, unscoped.
    pub key: String,
    pub lines: Vec<common::ItemLine>,
    pub card: pay::Card,
}

impl Checkout {
    pub fn scoped_key(&self) -> String {
        scoped_key(self.user.user_id, &self.key)
    }

    pub fn order_id(&self) -> uuid::Uuid {
        order_id_for(self.user.user_id, &self.key)
    }
}

/// What a checkout that took the money returns: the order PLACED (201), or still PENDING
/// while the recovery completes it (202).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub order: user::Order,
    pub payment: Option<pay::Payment>,
}

/// Runs a checkout to the end in its own task: a browser that disconnects mid-way must not
/// cut the saga between charge and commit (the client's retry then finds the outcome).
pub async fn run(
    state: AppState,
    strategy: Strategy,
    checkout: Checkout,
    ctx: platform::CallContext,
) -> Result<Outcome, ApiError> {
    // `carry`: the saga's calls still count in this request's Server-Timing.
    let handle = tokio::spawn(platform::timing::carry(async move {
        let started = std::time::Instant::now();
        let result = match strategy {
            Strategy::Orchestrated | Strategy::Parallel => {
                saga::run(&state, &ctx, &checkout, strategy).await
            }
            Strategy::Chained => chained::run(&state, &ctx, &checkout).await,
            Strategy::Async => asynchronous::run(&state, &ctx, &checkout).await,
        };
        let outcome = match &result {
            Ok(o) if o.order.status() == user::OrderStatus::Placed => "ok",
            Ok(_) => "completing",
            Err(e) => e.code,
        };
        metrics::counter!("gateway_checkouts_total", "strategy" => strategy.name(), "outcome" => outcome).increment(1);
        metrics::histogram!("gateway_checkout_duration_seconds", "strategy" => strategy.name())
            .record(started.elapsed().as_secs_f64());
        result
    }));
    match handle.await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "checkout task failed");
            Err(ApiError::internal())
        }
    }
}

/// Another attempt with the same key is being processed right now: ABORTED with the
/// IN_PROGRESS reason (payment-service's charge, item-service's reservation).
pub fn is_in_progress(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Aborted && reason_of(s) == Some(ErrorReason::InProgress)
}

/// The checkout answer a downstream failure stands for, decided on its code and reason
/// (never its message, which is for people and may be reworded), the same whichever
/// strategy met it; None for a failure that is no checkout outcome (the caller maps it
/// generically).
pub fn outcome_of(s: &tonic::Status) -> Option<ApiError> {
    use ErrorReason as R;
    use tonic::Code as C;
    match (s.code(), reason_of(s)?) {
        (C::Aborted, R::InProgress) => return Some(in_progress()),
        (C::Unavailable, R::PaymentPending) => return Some(payment_pending()),
        _ => {}
    }
    checkout_failure::of_status(s).map(|f| answer(f, None, Some(s)))
}

/// Why a checkout stops going forward: the ending its record keeps and the answer this
/// request gives.
#[derive(Debug)]
pub struct Stop {
    pub failure: CheckoutFailure,
    pub answer: ApiError,
}

impl Stop {
    pub fn new(failure: CheckoutFailure) -> Self {
        Self {
            failure,
            answer: answer(failure, None, None),
        }
    }

    /// What a service's refusal ends the checkout with; a failure that is no ending of
    /// its own (unreachable, internal) stops it as SERVICE_FAILED with the generic answer.
    pub fn of_status(s: &tonic::Status) -> Self {
        match checkout_failure::of_status(s) {
            Some(failure) => Self {
                failure,
                answer: answer(failure, None, Some(s)),
            },
            None => Self {
                failure: CheckoutFailure::ServiceFailed,
                answer: outcome_of(s).unwrap_or_else(|| ApiError::from_status(s)),
            },
        }
    }
}

/// The answer for a checkout that ended with `failure`, the one place an ending becomes
/// an HTTP status and code. `payment` (when known) words a decline; `detail` (the
/// service's answer, when this request met it) adds the field and the stock shortfall.
pub fn answer(
    failure: CheckoutFailure,
    payment: Option<&pay::Payment>,
    detail: Option<&tonic::Status>,
) -> ApiError {
    use CheckoutFailure as F;
    let field = detail.and_then(platform::error::field_of);
    let with_field = |e: ApiError, default: &str| match &field {
        Some(f) => e.with_field(f.clone()),
        None => e.with_field(default),
    };
    match failure {
        F::OutOfStock => {
            let mut e = out_of_stock(detail.map_or("", relayed_message));
            e.field = field;
            e
        }
        F::ItemNotFound => with_field(
            ApiError::not_found("An item in the cart does not exist.".to_owned()),
            "lines",
        ),
        F::MixedCurrencies => with_field(
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "mixed_currencies",
                "items priced in different currencies cannot be bought in one order",
            ),
            "lines",
        ),
        F::InvalidOrder => with_field(
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_order",
                "This order cannot be placed as it is; nothing was charged.",
            ),
            "lines",
        ),
        F::CardDeclined => match payment {
            Some(p) => declined(p),
            None => ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "card_declined",
                "Your card was declined. No money was taken.",
            )
            .with_field("card"),
        },
        F::PaymentFailed => payment_failed(),
        F::ReservationExpired => reservation_expired(),
        F::PriceChanged => ApiError::new(
            StatusCode::CONFLICT,
            "price_changed",
            "A price changed while the order was being placed; your payment was refunded. Try again.",
        ),
        F::IdempotencyKeyReused => key_reused(),
        F::ServiceFailed => match detail {
            Some(s) => ApiError::from_status(s),
            None => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "The order could not be completed; nothing was kept charged. Try again.",
            ),
        },
        F::RolledBack | F::Abandoned | F::Refunded | F::Unspecified => rolled_back(),
    }
}

/// The message of a failure as its source worded it, without the "item-service <Method>: "
/// a relaying hop put in front and without "not enough stock: ". For display only.
fn relayed_message(s: &tonic::Status) -> &str {
    let inner = s
        .message()
        .split_once(": ")
        .filter(|(prefix, _)| prefix.starts_with("item-service "))
        .map_or(s.message(), |(_, rest)| rest);
    inner.strip_prefix("not enough stock: ").unwrap_or(inner)
}

pub(crate) const DUPLICATE_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Calls `f` again while a concurrent attempt with the same key holds it (a client retry
/// that overtook its first attempt), until that attempt is done or the deadline comes:
/// the keyed call then returns the first attempt's outcome.
pub async fn waiting_out_duplicates<T, F, Fut>(
    ctx: &platform::CallContext,
    mut f: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    loop {
        let r = f().await;
        match &r {
            Err(s)
                if is_in_progress(s)
                    && ctx.remaining().is_none_or(|left| left > DUPLICATE_PAUSE) =>
            {
                tokio::time::sleep(DUPLICATE_PAUSE).await;
            }
            _ => return r,
        }
    }
}

pub const IN_PROGRESS: &str = "checkout_in_progress";

/// The first attempt with this key is still running; nothing is undone for it.
pub fn in_progress() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        IN_PROGRESS,
        "A checkout with this Idempotency-Key is still being processed; retry in a moment with the same key.",
    )
}

/// The answer for a declined card, the same for every strategy.
pub fn declined(payment: &pay::Payment) -> ApiError {
    let message = match payment.decline_code.as_str() {
        "insufficient_funds" => "Your card has insufficient funds. No money was taken.",
        "expired_card" => "Your card has expired. No money was taken.",
        "incorrect_cvc" => "The card's security code is incorrect. No money was taken.",
        _ => "Your card was declined. No money was taken.",
    };
    ApiError::new(StatusCode::PAYMENT_REQUIRED, "card_declined", message).with_field("card")
}

/// "lines[0].quantity: item X has 2 left" -> "item X has 2 left": services prefix field
/// errors with the field, which the JSON error carries separately.
pub fn without_field_prefix(msg: &str) -> &str {
    match msg.split_once(": ") {
        Some((field, rest)) if !field.is_empty() && !field.contains(' ') => rest,
        _ => msg,
    }
}

pub fn out_of_stock(reason: &str) -> ApiError {
    let reason = without_field_prefix(reason);
    let msg = if reason.is_empty() {
        "Not enough stock for this order; nothing was charged.".to_owned()
    } else {
        format!("Not enough stock for this order ({reason}); nothing was charged.")
    };
    ApiError::new(StatusCode::CONFLICT, "out_of_stock", msg)
}

/// This key was used before for a different cart.
pub fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_key_reused",
        "this Idempotency-Key was already used for a different cart; use a new key",
    )
    .with_field("Idempotency-Key")
}

pub const ROLLED_BACK: &str = "checkout_rolled_back";

pub fn rolled_back() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ROLLED_BACK,
        "An earlier checkout with this Idempotency-Key failed and was rolled back (stock released, nothing kept charged). Start a new checkout with a new key.",
    )
}

/// The stock hold ran out before the payment completed; the payment was given back (only
/// said once the refund went through: see `record::refund_pending` otherwise).
pub fn reservation_expired() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "reservation_expired",
        "The stock hold expired before payment completed; your payment was refunded. Try again.",
    )
}

/// The charge's outcome is unknown; the checkout recovery settles it with the card
/// processor and then completes the order (stock still held) or gives everything back.
pub fn payment_pending() -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "payment_pending",
        "The card processor did not confirm the payment in time. Within a minute the order is either completed or cancelled with any charge refunded; retry with the same Idempotency-Key, or see the order, to learn which.",
    )
}

pub fn payment_failed() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "payment_failed",
        "The card processor failed; no money was taken. Try again.",
    )
}

#[cfg(test)]
mod tests {
    use platform::{ErrorReason as R, error::with_field, reason};
    use tonic::{Code as C, Status};

    use super::*;

    /// Every way a downstream failure reaches a checkout decision.
    fn decisions(s: &Status) -> [(&'static str, ApiError); 2] {
        [
            ("chained", chained::map_status(s)),
            (
                "orchestrated",
                outcome_of(s).unwrap_or_else(|| ApiError::from_status(s)),
            ),
        ]
    }

    /// Messages that say nothing, or say the wrong thing: only code and reason may count.
    const MESSAGES: [&str; 3] = [
        "",
        "zq-17 wibble",
        "still in progress: not enough stock, released, expired, refunded, pending, idempotency reservation",
    ];

    #[test]
    fn outcomes_follow_code_and_reason_whatever_the_message() {
        let cases = [
            (C::Aborted, R::InProgress, IN_PROGRESS),
            (C::FailedPrecondition, R::OutOfStock, "out_of_stock"),
            (
                C::FailedPrecondition,
                R::ReservationReleased,
                "checkout_rolled_back",
            ),
            (C::Aborted, R::ReservationReleased, "checkout_rolled_back"),
            (C::Aborted, R::ReservationExpired, "reservation_expired"),
            (
                C::FailedPrecondition,
                R::ReservationExpired,
                "reservation_expired",
            ),
            (C::Aborted, R::PaymentRefunded, "checkout_rolled_back"),
            (C::Unavailable, R::PaymentPending, "payment_pending"),
            (
                C::AlreadyExists,
                R::IdempotencyKeyReused,
                "idempotency_key_reused",
            ),
            (
                C::FailedPrecondition,
                R::IdempotencyKeyReused,
                "idempotency_key_reused",
            ),
        ];
        for (code, why, want) in cases {
            for msg in MESSAGES {
                let s = reason::status(code, msg, why);
                for (path, e) in decisions(&s) {
                    assert_eq!(e.code, want, "{path}: {code:?} {why:?} {msg:?}");
                }
                assert_eq!(is_in_progress(&s), want == IN_PROGRESS, "{code:?} {why:?}");
            }
        }
    }

    #[test]
    fn out_of_stock_keeps_the_line_it_names() {
        let s = with_field(
            reason::status(
                C::FailedPrecondition,
                "item-service ReserveStock: lines[1].quantity: item abc has 1 left, 2 wanted",
                R::OutOfStock,
            ),
            "lines[1].quantity",
        );
        for (path, e) in decisions(&s) {
            assert_eq!(e.code, "out_of_stock", "{path}");
            assert_eq!(e.field.as_deref(), Some("lines[1].quantity"), "{path}");
            assert!(
                e.message.contains("item abc has 1 left"),
                "{path}: {}",
                e.message
            );
        }
        assert_eq!(Stop::of_status(&s).answer.code, "out_of_stock");
    }

    #[test]
    fn the_old_wordings_without_a_reason_decide_nothing() {
        let cases = [
            (
                C::Aborted,
                "a request with idempotency key \"k\" is still in progress; retry later",
            ),
            (C::Aborted, "reservation \"k\" is still being made; retry"),
            (
                C::FailedPrecondition,
                "item-service ReserveStock: not enough stock: item x has 0 left",
            ),
            (
                C::FailedPrecondition,
                "the stock reservation for this key was released",
            ),
            (
                C::Aborted,
                "the stock reservation expired before the payment completed; the payment was refunded",
            ),
            (C::Aborted, "this checkout's payment was refunded"),
            (
                C::Unavailable,
                "payment is still pending; retry with the same key",
            ),
            (
                C::AlreadyExists,
                "reservation \"k\" was already made with different lines",
            ),
            (
                C::FailedPrecondition,
                "idempotency key \"k\" was already used with different parameters",
            ),
        ];
        for (code, msg) in cases {
            let s = Status::new(code, msg);
            assert!(!is_in_progress(&s), "{msg}");
            assert!(outcome_of(&s).is_none(), "{msg}");
            let generic = ApiError::from_status(&s).code;
            for (path, e) in decisions(&s) {
                assert_eq!(e.code, generic, "{path}: {msg}");
            }
            assert_eq!(Stop::of_status(&s).answer.code, generic, "{msg}");
        }
    }

    #[test]
    fn a_reason_under_an_unrelated_code_decides_nothing() {
        let s = reason::status(C::Internal, "boom", R::OutOfStock);
        assert!(outcome_of(&s).is_none());
        assert_eq!(chained::map_status(&s).code, "internal");
        let s = reason::status(C::Unavailable, "down", R::InProgress);
        assert!(!is_in_progress(&s));
    }
}
