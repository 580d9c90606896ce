//! `async`: the checkout as events (docs/architecture.md, "asynchronous checkout"). The
//! gateway swaps the card for the processor's token, asks user-service to record the order
//! with its `checkout.requested` event, and answers 202 with the order PENDING at once;
//! item-, payment- and user-service complete it through the event stream, and the client
//! follows it on `GET /api/orders/{id}`. Nothing else here: no saga, no lease, no
//! compensation in the request path.

use platform::{CallContext, ErrorReason, reason_of};
use shop_proto::user::v1 as user;

use super::{Checkout, Outcome, record};
use crate::{downstream::Safety, error::ApiError, state::AppState};

pub async fn run(state: &AppState, ctx: &CallContext, c: &Checkout) -> Result<Outcome, ApiError> {
    let card_token = state.card_tokens.tokenize(&c.card).await?;
    let resp = state
        .downstreams
        .user
        .call(
            ctx,
            crate::downstream::method::REQUEST_CHECKOUT,
            // Keyed by the order id: a repeat finds the first call's order.
            Safety::Idempotent,
            user::RequestCheckoutRequest {
                order_id: c.order_id().to_string(),
                user_id: c.user.user_id.to_string(),
                lines: c
                    .lines
                    .iter()
                    .map(|l| shop_proto::common::v1::PricedLine {
                        item_id: l.item_id.clone(),
                        quantity: l.quantity,
                        ..Default::default()
                    })
                    .collect(),
                card_token,
            },
            |mut cl, r| async move { cl.request_checkout(r).await },
        )
        .await
        .map_err(|s| match reason_of(&s) {
            Some(ErrorReason::IdempotencyKeyReused) => super::key_reused(),
            _ => ApiError::from_status(&s),
        })?;
    let order = resp.order.ok_or_else(ApiError::internal)?;
    if order.status() == user::OrderStatus::Pending {
        return Ok(Outcome {
            order,
            payment: None,
        });
    }
    // A repeat after the checkout finished: the answer its ending stands for.
    record::settled(state, ctx, order, None).await
}
