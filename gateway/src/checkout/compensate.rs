//! Compensation: undo what a failed checkout did. The caller gives them a fresh budget (the
//! request's may be spent by the failure that brought us here) after writing the decision
//! to the checkout record; they report whether they succeeded, and what they could not undo
//! is logged, counted and left to the checkout recovery.

use platform::CallContext;
use shop_proto::{item::v1 as item, payment::v1 as pay};

use crate::{downstream::Safety, state::AppState};

/// Gives the stock back; true when it is back (or was never held).
pub async fn release(state: &AppState, ctx: &CallContext, scoped: &str) -> bool {
    let r = state
        .downstreams
        .item
        .call(
            ctx,
            crate::downstream::method::RELEASE_RESERVATION,
            Safety::Idempotent,
            item::ReleaseReservationRequest {
                reservation_id: scoped.to_owned(),
            },
            |mut cl, r| async move { cl.release_reservation(r).await },
        )
        .await;
    match r {
        Ok(_) => {
            metrics::counter!("gateway_compensations_total", "action" => "release", "result" => "ok").increment(1);
            true
        }
        // Nothing was reserved: nothing to release.
        Err(s) if s.code() == tonic::Code::NotFound => true,
        Err(s) => {
            metrics::counter!("gateway_compensations_total", "action" => "release", "result" => "failed").increment(1);
            tracing::warn!(reservation = scoped, code = ?s.code(), message = s.message(), "release failed; the recovery retries it");
            false
        }
    }
}

/// Gives the money back; true once the refund went through.
pub async fn refund(
    state: &AppState,
    ctx: &CallContext,
    scoped: &str,
    payment: &pay::Payment,
) -> bool {
    let r = state
        .downstreams
        .payment
        .call(
            // A compensation, made by the gateway itself: no end user (a refund for a user
            // would need an admin).
            &ctx.clone().for_user(None),
            crate::downstream::method::REFUND,
            Safety::Idempotent,
            pay::RefundRequest {
                payment_id: payment.payment_id.clone(),
                amount: None,
                idempotency_key: platform::ids::refund_key(scoped),
                reason: "checkout could not be completed".into(),
            },
            |mut cl, r| async move { cl.refund(r).await },
        )
        .await;
    match r {
        Ok(resp) => {
            let done = resp.refund.is_some()
                || resp
                    .payment
                    .is_some_and(|p| p.status() == pay::PaymentStatus::Refunded);
            metrics::counter!("gateway_compensations_total", "action" => "refund", "result" => if done { "ok" } else { "pending" }).increment(1);
            done
        }
        Err(s) => {
            metrics::counter!("gateway_compensations_total", "action" => "refund", "result" => "failed").increment(1);
            tracing::warn!(payment = %payment.payment_id, code = ?s.code(), message = s.message(), "refund failed; the recovery retries it");
            false
        }
    }
}

/// Asks payment-service to settle a PENDING payment with the card gateway.
pub async fn reconcile(
    state: &AppState,
    ctx: &CallContext,
    payment: &pay::Payment,
) -> pay::Payment {
    let r = state
        .downstreams
        .payment
        .call(
            ctx,
            crate::downstream::method::RECONCILE,
            Safety::Idempotent,
            pay::ReconcileRequest {
                payment_id: payment.payment_id.clone(),
            },
            |mut cl, r| async move { cl.reconcile(r).await },
        )
        .await;
    match r {
        Ok(resp) => resp
            .payments
            .into_iter()
            .find(|p| p.payment_id == payment.payment_id)
            .unwrap_or_else(|| payment.clone()),
        Err(_) => payment.clone(),
    }
}
