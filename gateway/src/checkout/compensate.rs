//! Compensation: undo what a failed checkout did. These run with a fresh budget of their
//! own (the request's may be spent by the failure that brought us here) and never fail the
//! caller: what they cannot undo is logged and counted, and reservations expire by themselves.

use platform::CallContext;
use shop_proto::{item::v1 as item, payment::v1 as pay};
use uuid::Uuid;

use crate::{downstream::Safety, state::AppState};

pub async fn release(state: &AppState, ctx: &CallContext, scoped: &str) {
    let ctx = state.budgets.compensation_ctx(ctx);
    let r = state
        .downstreams
        .item
        .call(
            &ctx,
            "ReleaseReservation",
            Safety::Idempotent,
            item::ReleaseReservationRequest {
                reservation_id: scoped.to_owned(),
            },
            |mut cl, r| async move { cl.release_reservation(r).await },
        )
        .await;
    match r {
        Ok(_) => metrics::counter!("gateway_compensations_total", "action" => "release", "result" => "ok").increment(1),
        // Nothing was reserved: nothing to release.
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => {
            metrics::counter!("gateway_compensations_total", "action" => "release", "result" => "failed").increment(1);
            tracing::error!(reservation = scoped, code = ?s.code(), message = s.message(), "release failed; the reservation will expire by itself");
        }
    }
}

pub async fn refund(state: &AppState, ctx: &CallContext, scoped: &str, payment: &pay::Payment) {
    let ctx = state.budgets.compensation_ctx(ctx);
    let r = state
        .downstreams
        .payment
        .call(
            &ctx,
            "Refund",
            Safety::Idempotent,
            pay::RefundRequest {
                payment_id: payment.payment_id.clone(),
                amount: None,
                idempotency_key: format!("{scoped}:refund"),
                reason: "checkout could not be completed".into(),
            },
            |mut cl, r| async move { cl.refund(r).await },
        )
        .await;
    match r {
        Ok(_) => {
            metrics::counter!("gateway_compensations_total", "action" => "refund", "result" => "ok")
                .increment(1)
        }
        Err(s) => {
            metrics::counter!("gateway_compensations_total", "action" => "refund", "result" => "failed").increment(1);
            tracing::error!(payment = %payment.payment_id, code = ?s.code(), message = s.message(), "REFUND FAILED: needs manual attention");
        }
    }
}

/// After a successful charge, a later step failed: give the money back and the stock.
pub async fn refund_and_release(
    state: &AppState,
    ctx: &CallContext,
    scoped: &str,
    payment: &pay::Payment,
) {
    refund(state, ctx, scoped, payment).await;
    release(state, ctx, scoped).await;
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
            "Reconcile",
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

/// The charge's outcome is unknown (no answer, or PENDING): in the background, look for the
/// payment of this order and refund it if it went through. A client retry with the same key
/// meanwhile finds the reservation released and is told to start over, so no order can
/// exist for this money.
pub fn settle_unknown_charge(
    state: &AppState,
    ctx: &CallContext,
    user_id: Uuid,
    order_id: String,
    scoped: String,
) {
    let state = state.clone();
    let ctx = ctx.clone();
    tokio::spawn(async move {
        for delay_ms in [200u64, 1000, 5000] {
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            let cctx = state.budgets.compensation_ctx(&ctx);
            let listed = state
                .downstreams
                .payment
                .call(
                    &cctx,
                    "ListPayments",
                    Safety::Idempotent,
                    pay::ListPaymentsRequest {
                        user_id: user_id.to_string(),
                        page: Some(shop_proto::common::v1::PageRequest {
                            page_size: 50,
                            page_token: String::new(),
                        }),
                    },
                    |mut cl, r| async move { cl.list_payments(r).await },
                )
                .await;
            let Ok(listed) = listed else { continue };
            let Some(p) = listed.payments.into_iter().find(|p| p.order_id == order_id) else {
                // Never reached payment-service (or not yet visible): check again later.
                continue;
            };
            let p = if p.status() == pay::PaymentStatus::Pending {
                reconcile(&state, &cctx, &p).await
            } else {
                p
            };
            match p.status() {
                pay::PaymentStatus::Succeeded => {
                    refund(&state, &cctx, &scoped, &p).await;
                    return;
                }
                pay::PaymentStatus::Pending => continue,
                _ => return,
            }
        }
        tracing::warn!(%order_id, "could not settle a charge of unknown outcome; Reconcile will");
    });
}
