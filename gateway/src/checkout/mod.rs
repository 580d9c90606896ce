//! The checkout saga: authenticate -> price (item-service; client prices are ignored) ->
//! reserve -> charge -> commit -> record the order, with compensation when a later step
//! fails. Three strategies (DESIGN.md) give the same result for the same input:
//! `orchestrated` and `parallel` run the steps here ([`saga`]); `chained` hands the whole
//! chain to user-service ([`chained`]).
//!
//! Every step is keyed by the checkout's idempotency key scoped to the user
//! (`{user_id}:{key}`: the reservation id and the charge's key; the order id is
//! [`order_id_for`]), so a client that retries after a timeout converges on the first
//! outcome and is never charged or reserved twice, whichever strategy each attempt used.

mod chained;
mod compensate;
mod saga;

use http::StatusCode;
pub use platform::ids::{order_id_for, scoped_key};
pub use saga::{Priced, price};
use shop_proto::{common::v1 as common, payment::v1 as pay, user::v1 as user};

use crate::{
    api::model::{CheckoutRequest, Strategy},
    auth::AuthUser,
    error::ApiError,
    state::AppState,
};

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
    pub fn parse(
        user: AuthUser,
        key: Option<&str>,
        req: &CheckoutRequest,
    ) -> Result<Self, ApiError> {
        let key = key.ok_or_else(|| {
            ApiError::bad_request(
                "Idempotency-Key",
                "the Idempotency-Key header is required (any unique string per checkout, e.g. a UUID)",
            )
        })?;
        platform::ids::validate_idempotency_key(key, "Idempotency-Key")?;
        let lines = parse_lines(&req.lines)?;
        Ok(Self {
            user,
            key: key.to_owned(),
            lines,
            card: (&req.card).into(),
        })
    }

    pub fn scoped_key(&self) -> String {
        scoped_key(self.user.user_id, &self.key)
    }

    pub fn order_id(&self) -> uuid::Uuid {
        order_id_for(self.user.user_id, &self.key)
    }
}

/// Cart lines: the shared cart rules ([`platform::cart`]), reported like every other bad
/// field (the message without the field prefix the services' statuses carry).
pub fn parse_lines(
    lines: &[crate::api::model::CartLine],
) -> Result<Vec<common::ItemLine>, ApiError> {
    platform::cart::validate(lines.iter().map(|l| (l.item_id.as_str(), l.quantity)))
        .map_err(|e| ApiError::bad_request(e.field, e.message))
}

/// What a successful checkout returns.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub order: user::Order,
    pub payment: pay::Payment,
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
            Strategy::Orchestrated => saga::run(&state, &ctx, &checkout, false).await,
            Strategy::Parallel => saga::run(&state, &ctx, &checkout, true).await,
            Strategy::Chained => chained::run(&state, &ctx, &checkout).await,
        };
        let outcome = match &result {
            Ok(_) => "ok",
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

/// Another attempt with the same key is being processed right now (payment-service:
/// ABORTED "still in progress"; item-service: ABORTED "still being made").
pub fn is_in_progress(s: &tonic::Status) -> bool {
    let m = s.message().to_ascii_lowercase();
    s.code() == tonic::Code::Aborted
        && (m.contains("in progress") || m.contains("still being made"))
}

const DUPLICATE_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

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

pub fn rolled_back() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "checkout_rolled_back",
        "An earlier checkout with this Idempotency-Key failed and was rolled back (stock released, nothing kept charged). Start a new checkout with a new key.",
    )
}

pub fn payment_failed() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "payment_failed",
        "The card processor failed; no money was taken. Try again.",
    )
}
