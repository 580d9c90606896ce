//! `chained`: one call to user-service, which calls payment-service, which calls
//! item-service; each hop waits on the next and passes on what is left of the deadline.
//! The outcome is mapped to exactly the answers the orchestrated saga gives.

use platform::CallContext;
use shop_proto::{payment::v1 as pay, user::v1 as user};

use super::{Checkout, Outcome, payment_pending, record};
use crate::{downstream::Safety, error::ApiError, state::AppState};

pub async fn run(state: &AppState, ctx: &CallContext, c: &Checkout) -> Result<Outcome, ApiError> {
    let resp = super::waiting_out_duplicates(ctx, || {
        state.downstreams.user.call(
            ctx,
            crate::downstream::method::CHAINED_CHECKOUT,
            // Not retried: the hop writes its checkout record first, and a repeat would only
            // find that record (driven by the first call, or handed to the recovery).
            Safety::Once,
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
    .map_err(|s| {
        let e = map_status(&s);
        // No answer from the chain: user-service's record lets the recovery finish it.
        if matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        ) && !crate::downstream::never_sent(&s)
        {
            e.with_order(c.order_id().to_string())
        } else {
            e
        }
    })?;
    let Some(order) = resp.order else {
        return Err(ApiError::internal());
    };
    // A pending payment: the record was handed to the recovery.
    if order.status() == user::OrderStatus::Pending
        && resp
            .payment
            .as_ref()
            .is_none_or(|p| p.status() != pay::PaymentStatus::Succeeded)
    {
        return Err(payment_pending().with_order(order.order_id));
    }
    record::settled(state, ctx, order, resp.payment).await
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
