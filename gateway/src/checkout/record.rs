//! The checkout's durable record in user-service (its order, created PENDING before the
//! first side effect): beginning it, moving it on while this request holds its lease, and
//! turning a record an earlier attempt settled into the answer it stands for.
//!
//! Rule: a step that changes what the customer keeps (compensation) starts only after the
//! record says so. If the record cannot be written, the step is left to user-service's
//! checkout recovery, which finishes the checkout when this request's lease runs out.

use http::StatusCode;
use platform::{CallContext, ErrorReason, checkout_failure::CheckoutFailure, reason_of};
use shop_proto::{payment::v1 as pay, user::v1 as user};

use super::{Checkout, DUPLICATE_PAUSE, Outcome, Priced, Strategy, answer, in_progress};
use crate::{downstream::Safety, error::ApiError, state::AppState};

/// A record this request drives.
#[derive(Debug, Clone)]
pub struct Lease {
    pub order_id: String,
    pub token: String,
}

pub enum Begun {
    /// This request drives the checkout.
    Drive(Lease),
    /// An earlier attempt with this key settled it: its answer.
    Settled(Box<Result<Outcome, ApiError>>),
}

/// Creates the record (or finds the earlier attempt's), waiting out an attempt that is
/// still driving it while the deadline allows.
pub async fn begin(
    state: &AppState,
    ctx: &CallContext,
    c: &Checkout,
    priced: &Priced,
    strategy: Strategy,
) -> Result<Begun, ApiError> {
    let order = user::Order {
        order_id: c.order_id().to_string(),
        user_id: c.user.user_id.to_string(),
        lines: priced.lines.clone(),
        total: Some(priced.total.into()),
        reservation_id: c.scoped_key(),
        ..Default::default()
    };
    let lease_ms = u32::try_from(state.budgets.lease.as_millis()).unwrap_or(u32::MAX);
    // Ours, so a retried BeginCheckout whose first answer was lost still gets the lease.
    let own_token = uuid::Uuid::new_v4().to_string();
    loop {
        let resp = state
            .downstreams
            .user
            .call(
                ctx,
                crate::downstream::method::BEGIN_CHECKOUT,
                Safety::Idempotent,
                user::BeginCheckoutRequest {
                    order: Some(order.clone()),
                    lease_ms,
                    strategy: strategy.name().into(),
                    lease_token: own_token.clone(),
                },
                |mut cl, r| async move { cl.begin_checkout(r).await },
            )
            .await
            .map_err(|s| match reason_of(&s) {
                Some(ErrorReason::IdempotencyKeyReused) => super::key_reused(),
                _ => ApiError::from_status(&s),
            })?;
        let record = resp.order.ok_or_else(ApiError::internal)?;
        if !resp.lease_token.is_empty() {
            return Ok(Begun::Drive(Lease {
                order_id: record.order_id,
                token: resp.lease_token,
            }));
        }
        if record.status() == user::OrderStatus::Pending {
            // Another attempt drives it (or just handed it to the recovery).
            if ctx.remaining().is_none_or(|left| left > DUPLICATE_PAUSE) {
                tokio::time::sleep(DUPLICATE_PAUSE).await;
                continue;
            }
            return Err(in_progress());
        }
        return Ok(Begun::Settled(Box::new(
            settled(state, ctx, record, None).await,
        )));
    }
}

impl Lease {
    async fn advance(
        &self,
        state: &AppState,
        ctx: &CallContext,
        to: user::OrderStatus,
        payment_id: &str,
        failure: CheckoutFailure,
    ) -> Result<user::Order, tonic::Status> {
        let resp = state
            .downstreams
            .user
            .call(
                ctx,
                crate::downstream::method::ADVANCE_CHECKOUT,
                Safety::Idempotent,
                user::AdvanceCheckoutRequest {
                    order_id: self.order_id.clone(),
                    lease_token: self.token.clone(),
                    to: to as i32,
                    payment_id: payment_id.to_owned(),
                    failure: failure.into(),
                    lines: Vec::new(),
                    total: None,
                },
                |mut cl, r| async move { cl.advance_checkout(r).await },
            )
            .await?;
        resp.order
            .ok_or_else(|| tonic::Status::internal("user-service returned no order"))
    }

    /// The order exists: paid and committed.
    pub async fn place(
        &self,
        state: &AppState,
        ctx: &CallContext,
        payment_id: &str,
    ) -> Result<user::Order, tonic::Status> {
        self.advance(
            state,
            ctx,
            user::OrderStatus::Placed,
            payment_id,
            CheckoutFailure::Unspecified,
        )
        .await
    }

    /// The decision to go backward, written before any refund or release. False when it
    /// could not be written: then nothing may be undone here (the recovery will).
    pub async fn cancelling(
        &self,
        state: &AppState,
        ctx: &CallContext,
        failure: CheckoutFailure,
    ) -> bool {
        self.log(
            "cancelling",
            self.advance(state, ctx, user::OrderStatus::Cancelling, "", failure)
                .await,
        )
    }

    /// Everything given back.
    pub async fn cancelled(
        &self,
        state: &AppState,
        ctx: &CallContext,
        failure: CheckoutFailure,
    ) -> bool {
        self.log(
            "cancelled",
            self.advance(state, ctx, user::OrderStatus::Cancelled, "", failure)
                .await,
        )
    }

    /// This request stops here: the recovery finishes the checkout, asking the services
    /// what happened (an unknown charge outcome, an unknown commit).
    pub async fn hand_over(&self, state: &AppState, ctx: &CallContext) -> bool {
        self.log(
            "handed to the recovery",
            self.advance(
                state,
                ctx,
                user::OrderStatus::Pending,
                "",
                CheckoutFailure::Unspecified,
            )
            .await,
        )
    }

    fn log(&self, what: &str, r: Result<user::Order, tonic::Status>) -> bool {
        match r {
            Ok(_) => true,
            Err(s) => {
                metrics::counter!("gateway_checkout_record_failures_total", "step" => what.to_owned()).increment(1);
                tracing::warn!(order_id = %self.order_id, step = what, code = ?s.code(), message = s.message(), "checkout record not moved on; the recovery finishes the checkout");
                false
            }
        }
    }
}

/// The answer a record stands for, when an earlier attempt (or the recovery) settled it.
pub async fn settled(
    state: &AppState,
    ctx: &CallContext,
    order: user::Order,
    payment: Option<pay::Payment>,
) -> Result<Outcome, ApiError> {
    let payment = match payment {
        Some(p) => Some(p),
        None => payment_of(state, ctx, &order).await,
    };
    match order.status() {
        user::OrderStatus::Placed
        | user::OrderStatus::Refunded
        | user::OrderStatus::Pending
        | user::OrderStatus::Unspecified => Ok(Outcome { order, payment }),
        user::OrderStatus::Cancelling => Err(being_undone(&order, payment.as_ref())),
        user::OrderStatus::Cancelled => Err(answer(order.failure(), payment.as_ref(), None)),
    }
}

/// The checkout's payment, if payment-service has one and can say so now (by its id once
/// the order names it, else by the order's id).
pub async fn payment_of(
    state: &AppState,
    ctx: &CallContext,
    order: &user::Order,
) -> Option<pay::Payment> {
    state
        .downstreams
        .payment
        .call(
            ctx,
            crate::downstream::method::GET_PAYMENT,
            Safety::Idempotent,
            pay::GetPaymentRequest {
                payment_id: order.payment_id.clone(),
                order_id: if order.payment_id.is_empty() {
                    order.order_id.clone()
                } else {
                    String::new()
                },
            },
            |mut cl, r| async move { cl.get_payment(r).await },
        )
        .await
        .ok()
        .and_then(|r| r.payment)
}

/// A checkout going backward whose refund has not gone through yet.
pub fn being_undone(order: &user::Order, payment: Option<&pay::Payment>) -> ApiError {
    let charged = payment.is_some_and(|p| p.status() == pay::PaymentStatus::Succeeded);
    if !charged {
        return answer(order.failure(), payment, None);
    }
    refund_pending(&order.order_id)
}

/// The checkout failed after the charge and the refund has not gone through yet: say
/// what will happen, never "refunded".
pub fn refund_pending(order_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "refund_pending",
        format!(
            "The order could not be completed. Your payment will be refunded automatically; GET /api/orders/{order_id} shows when."
        ),
    )
    .with_order(order_id)
}
