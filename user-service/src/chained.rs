//! The user-service hop of the `chained` checkout (docs/architecture.md, strategy 3): gateway ->
//! user-service -> payment-service -> item-service, each hop waiting on the next. This hop
//! authenticates, writes the checkout record, hands the cart to payment-service (which
//! prices, reserves, charges and commits), then places the order. If this process dies in
//! between, the checkout recovery finishes it from the record. Every downstream call carries what is left of the
//! caller's deadline.

use std::time::Duration;

use platform::{
    CallContext, FieldError,
    checkout_failure::{self, CheckoutFailure},
    ids,
};
use shop_proto::{
    payment::v1::{ChainedChargeRequest, GetPaymentRequest, PaymentStatus},
    user::v1 as pb,
};

use crate::{
    checkout_record::{Begun, NewCheckout, RecordError, Target, Transition},
    error::Error,
    orders::{StoredLine, parse_priced},
    service::Users,
    store::OrderRow,
};

/// Cap on the payment hop, so a stuck downstream cannot eat a caller's longer budget.
const PAYMENT_HOP_CAP: Duration = Duration::from_secs(10);
/// How long this hop drives its checkout record before the recovery may take it: longer
/// than any call it makes for it.
const LEASE: Duration = Duration::from_secs(15);

pub async fn checkout(
    svc: &Users,
    ctx: &CallContext,
    asserted: Option<platform::identity::UserAssertion>,
    req: pb::ChainedCheckoutRequest,
) -> Result<pb::ChainedCheckoutResponse, Error> {
    let (user, role) = svc.authenticate(&req.access_token)?;
    // The caller's word about the user must agree with the token; the next hops are told
    // about the user this hop verified itself.
    if asserted.is_some_and(|a| a.user_id != user.0) {
        return Err(Error::NotYourCheckout);
    }
    let ctx = &ctx
        .clone()
        .for_user(Some(crate::access::assertion(user.0, role)));
    ids::validate_idempotency_key(&req.idempotency_key, "idempotency_key")?;
    // The shared cart rules, checked here too so a bad cart costs no payment hop.
    let lines =
        platform::cart::validate(req.lines.iter().map(|l| (l.item_id.as_str(), l.quantity)))?;
    if req.card.is_none() {
        return Err(FieldError::new("card", "is required").into());
    }
    let order_id = ids::order_id_for(user.0, &req.idempotency_key);
    let scoped = ids::scoped_key(user.0, &req.idempotency_key);

    // The durable record first: payment-service prices the lines later, so it starts unpriced.
    let new = NewCheckout {
        order_id,
        user_id: user,
        reservation_id: scoped.clone(),
        lines: lines
            .iter()
            .map(|l| StoredLine::unpriced(&l.item_id, l.quantity))
            .collect(),
        total: None,
        lease: LEASE,
        token: None,
        strategy: "chained".into(),
        trace_id: ctx.trace.trace_id.clone(),
    };
    let token = match svc.begin(&new).await? {
        Begun::Created(_, token) | Begun::Held(_, token) => token,
        Begun::Existing(row) => return settled(svc, ctx, row).await,
    };
    let moved = |to| Transition {
        order_id,
        token,
        to,
    };

    let charged = svc
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
        .await;
    let charge = match charged {
        Ok(r) => r.into_inner(),
        Err(s) => {
            match checkout_failure::of_status(&s) {
                // The chain gave everything back itself: the checkout is over.
                Some(failure) => {
                    svc.advance(&moved(Target::Cancelled(failure))).await?;
                }
                // Unknown what the chain did (a timeout, a crash behind us): the recovery
                // asks payment-service and item-service and finishes it.
                None => hand_over(svc, &moved(Target::Handover)).await,
            }
            return Err(Error::Downstream(s));
        }
    };

    let payment = charge.payment.ok_or_else(|| {
        Error::Downstream(tonic::Status::internal(
            "payment-service returned no payment",
        ))
    })?;
    let to = match payment.status() {
        PaymentStatus::Succeeded => {
            let priced = parse_priced(charge.lines, charge.total.as_ref(), "").map_err(|e| {
                // payment-service gave us lines we cannot record: a contract bug, not user
                // input. The recovery settles the checkout from what the services hold.
                tracing::error!(error = %e, "chained checkout: unrecordable order from payment-service");
                Error::Downstream(tonic::Status::internal("inconsistent checkout result"))
            });
            match priced {
                Ok(priced) => Target::Placed {
                    payment_id: payment.payment_id.clone(),
                    priced: Some(priced),
                },
                Err(e) => {
                    hand_over(svc, &moved(Target::Handover)).await;
                    return Err(e);
                }
            }
        }
        // payment-service released the reservation after a decline or failure, and refunded
        // a charge whose stock hold expired.
        PaymentStatus::Declined => Target::Cancelled(CheckoutFailure::CardDeclined),
        PaymentStatus::Failed => Target::Cancelled(CheckoutFailure::PaymentFailed),
        PaymentStatus::Refunded => Target::Cancelled(CheckoutFailure::ReservationExpired),
        // The card processor has not answered: the recovery settles it.
        PaymentStatus::Pending | PaymentStatus::Unspecified => Target::Handover,
    };
    let row = match &to {
        Target::Handover => {
            hand_over(svc, &moved(to)).await;
            svc.store.checkout(order_id).await.map_err(Error::from)?
        }
        _ => match svc.advance(&moved(to)).await {
            Ok(row) => Some(row),
            // The recovery took over meanwhile: it finishes; show where it stands.
            Err(Error::Record(RecordError::TakenOver)) => {
                svc.store.checkout(order_id).await.map_err(Error::from)?
            }
            Err(e) => return Err(e),
        },
    };
    Ok(pb::ChainedCheckoutResponse {
        order: row.map(Into::into),
        payment: Some(payment),
    })
}

/// A retry of a checkout another attempt drives or has finished: its record, and its
/// payment when it has one.
async fn settled(
    svc: &Users,
    ctx: &CallContext,
    row: OrderRow,
) -> Result<pb::ChainedCheckoutResponse, Error> {
    if row.status == "pending" {
        return Err(Error::Downstream(platform::reason::status(
            tonic::Code::Aborted,
            "a checkout with this idempotency key is still in progress; retry in a moment",
            platform::ErrorReason::InProgress,
        )));
    }
    let payment = svc
        .payment
        .clone()
        .get_payment(ctx.request(
            GetPaymentRequest {
                payment_id: String::new(),
                order_id: row.order_id.to_string(),
            },
            Some(PAYMENT_HOP_CAP),
        ))
        .await
        .ok()
        .and_then(|r| r.into_inner().payment);
    Ok(pb::ChainedCheckoutResponse {
        order: Some(row.into()),
        payment,
    })
}

/// Gives the checkout to the recovery; if even that fails, its lease runs out by itself.
async fn hand_over(svc: &Users, t: &Transition) {
    if let Err(e) = svc.advance(t).await {
        tracing::warn!(order_id = %t.order_id, error = %e, "chained checkout: could not hand over; the lease runs out by itself");
    }
}
