//! `chained`: one call to user-service, which calls payment-service, which calls
//! item-service; each hop waits on the next and passes on what is left of the deadline.
//! The outcome is mapped to exactly the answers the orchestrated saga gives.

use platform::CallContext;
use shop_proto::{payment::v1 as pay, user::v1 as user};

use super::{Checkout, Outcome, declined, payment_failed, payment_pending, rolled_back};
use crate::{downstream::Safety, error::ApiError, state::AppState};

pub async fn run(state: &AppState, ctx: &CallContext, c: &Checkout) -> Result<Outcome, ApiError> {
    let resp = super::waiting_out_duplicates(ctx, || {
        state.downstreams.user.call(
            ctx,
            "ChainedCheckout",
            Safety::Idempotent,
            user::ChainedCheckoutRequest {
                access_token: c.user.token.clone(),
                idempotency_key: c.key.clone(),
                lines: c.lines.clone(),
                card: Some(c.card.clone()),
            },
            |mut cl, r| async move { cl.chained_checkout(r).await },
        )
    })
    .await
    .map_err(|s| map_status(&s))?;
    let payment = resp.payment.ok_or_else(ApiError::internal)?;
    match (resp.order, payment.status()) {
        (Some(order), pay::PaymentStatus::Succeeded) => Ok(Outcome { order, payment }),
        (_, pay::PaymentStatus::Declined) => Err(declined(&payment)),
        (_, pay::PaymentStatus::Failed) => Err(payment_failed()),
        (_, pay::PaymentStatus::Refunded) => Err(rolled_back()),
        (_, pay::PaymentStatus::Pending) => Err(payment_pending()),
        _ => Err(ApiError::internal()),
    }
}

/// The chain reports the inner hops' business outcomes as statuses whose reason (and
/// field) each hop keeps; turn them into the same errors the orchestrated saga produces.
/// Decided on code and reason only: the messages are for people.
pub(super) fn map_status(s: &tonic::Status) -> ApiError {
    if let Some(e) = super::outcome_of(s) {
        return e;
    }
    let mut e = ApiError::from_status(s);
    if e.field.as_deref() == Some("idempotency_key") {
        e.field = Some("Idempotency-Key".into());
    }
    if s.code() == tonic::Code::NotFound {
        e.message = super::relayed_message(s).to_owned();
    }
    e
}
