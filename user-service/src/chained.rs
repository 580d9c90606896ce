//! The user-service hop of the `chained` checkout (docs/architecture.md, strategy 3): gateway ->
//! user-service -> payment-service -> item-service, each hop waiting on the next. This hop
//! authenticates, hands the cart to payment-service (which prices, reserves, charges and
//! commits), then records the order. Every downstream call carries what is left of the
//! caller's deadline.

use std::time::Duration;

use platform::{CallContext, FieldError, ids};
use shop_proto::{
    payment::v1::{ChainedChargeRequest, PaymentStatus},
    user::v1 as pb,
};

use crate::{error::Error, orders::NewOrder, service::UserGrpc};

/// Cap on the payment hop, so a stuck downstream cannot eat a caller's longer budget.
const PAYMENT_HOP_CAP: Duration = Duration::from_secs(10);

pub async fn checkout(
    svc: &UserGrpc,
    ctx: &CallContext,
    req: pb::ChainedCheckoutRequest,
) -> Result<pb::ChainedCheckoutResponse, Error> {
    let (user, _role) = svc.authenticate(&req.access_token)?;
    ids::validate_idempotency_key(&req.idempotency_key, "idempotency_key")?;
    // The shared cart rules, checked here too so a bad cart costs no payment hop.
    let lines =
        platform::cart::validate(req.lines.iter().map(|l| (l.item_id.as_str(), l.quantity)))?;
    if req.card.is_none() {
        return Err(FieldError::new("card", "is required").into());
    }
    let order_id = ids::order_id_for(user.0, &req.idempotency_key);
    let scoped = ids::scoped_key(user.0, &req.idempotency_key);

    let charge = svc
        .payment
        .clone()
        .chained_charge(ctx.request(
            ChainedChargeRequest {
                idempotency_key: scoped.clone(),
                user_id: user.to_string(),
                order_id: order_id.to_string(),
                lines,
                card: req.card,
            },
            Some(PAYMENT_HOP_CAP),
        ))
        .await
        .map_err(Error::Downstream)?
        .into_inner();

    let payment = charge.payment.ok_or_else(|| {
        Error::Downstream(tonic::Status::internal(
            "payment-service returned no payment",
        ))
    })?;
    // A declined or failed card is an answer, not an error: payment-service has already
    // released the reservation; no order is recorded.
    if payment.status != PaymentStatus::Succeeded as i32 {
        return Ok(pb::ChainedCheckoutResponse {
            order: None,
            payment: Some(payment),
        });
    }

    let order = NewOrder::parse(Some(pb::Order {
        order_id: order_id.to_string(),
        user_id: user.to_string(),
        lines: charge.lines,
        total: charge.total,
        payment_id: payment.payment_id.clone(),
        reservation_id: if charge.reservation_id.is_empty() {
            scoped
        } else {
            charge.reservation_id
        },
        status: pb::OrderStatus::Placed as i32,
        created_at: None,
    }))
    .map_err(|e| {
        // payment-service gave us lines we cannot record: a contract bug, not user input.
        tracing::error!(error = %e, "chained checkout: unrecordable order from payment-service");
        Error::Downstream(tonic::Status::internal("inconsistent checkout result"))
    })?;
    // Recording is local and idempotent: if it fails, the client's retry with the same key
    // gets the same payment back from payment-service and records it then.
    let (row, _) = svc.record(&order).await?;
    Ok(pb::ChainedCheckoutResponse {
        order: Some(row.into()),
        payment: Some(payment),
    })
}
