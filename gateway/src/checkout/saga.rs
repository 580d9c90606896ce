//! `orchestrated` and `parallel`: the gateway drives each step itself.

use platform::CallContext;
use shop_proto::{common::v1 as common, item::v1 as item, payment::v1 as pay, user::v1 as user};

use platform::checkout_failure::{self, CheckoutFailure};

use super::{
    Checkout, Outcome, Priced, Stop, Strategy, answer, compensate, out_of_stock, payment_pending,
    price,
    record::{self, Begun},
};
use crate::{downstream::Safety, error::ApiError, state::AppState};

pub async fn run(
    state: &AppState,
    ctx: &CallContext,
    c: &Checkout,
    strategy: Strategy,
) -> Result<Outcome, ApiError> {
    // 1 + 2: the user lookup and the pricing do not depend on each other.
    let priced = if strategy == Strategy::Parallel {
        let (valid, priced) =
            tokio::join!(validate_user(state, ctx, c), price(state, ctx, &c.lines));
        valid?;
        priced?
    } else {
        validate_user(state, ctx, c).await?;
        price(state, ctx, &c.lines).await?
    };
    let scoped = c.scoped_key();

    // While payment-service's breaker refuses calls the checkout cannot finish: answer now
    // instead of holding stock (and the client) through a reserve and a release.
    let charge_kind = crate::downstream::method::CHARGE.kind;
    if !state.downstreams.payment.admits(charge_kind) {
        return Err(ApiError::from_status(
            &state.downstreams.payment.circuit_open(charge_kind),
        ));
    }

    // 3: the durable record, before anything is reserved or charged.
    let lease = match record::begin(state, ctx, c, &priced, strategy).await? {
        Begun::Drive(lease) => lease,
        Begun::Settled(answer) => return *answer,
    };

    // 4: reserve, then 5: charge.
    let (reserved, charged) = match reserve(state, ctx, c, &scoped).await {
        Ok(()) => (Ok(()), charge(state, ctx, c, &scoped, &priced).await),
        Err(e) => (
            Err(e),
            Err(Failed::NotCharged(Stop::new(
                CheckoutFailure::ServiceFailed,
            ))),
        ),
    };
    let payment = match (reserved, charged) {
        (Ok(()), Ok(p)) => p,
        (_, Err(Failed::Unknown(e))) => {
            // Whether the card was charged is unknown: never guess. The recovery asks
            // payment-service (which settles with the card processor) and then either
            // completes the order or gives everything back.
            lease.hand_over(state, ctx).await;
            return Err(e.with_order(&lease.order_id));
        }
        (Err(e), Ok(p)) => {
            // Charged, but the stock could not be held.
            return Err(undo(state, ctx, &lease, &scoped, Some(&p), e).await);
        }
        (Err(e), Err(Failed::NotCharged(_))) | (Ok(()), Err(Failed::NotCharged(e))) => {
            return Err(undo(state, ctx, &lease, &scoped, None, e).await);
        }
    };

    // 6: commit.
    let committed = state
        .downstreams
        .item
        .call(
            ctx,
            crate::downstream::method::COMMIT_RESERVATION,
            Safety::Idempotent,
            item::CommitReservationRequest {
                reservation_id: scoped.clone(),
            },
            |mut cl, r| async move { cl.commit_reservation(r).await },
        )
        .await;
    match committed {
        Ok(resp) => match resp.reservation.map(|r| r.status()) {
            Some(item::ReservationStatus::Committed) => {}
            other => {
                tracing::warn!(?other, "commit did not commit the reservation");
                let stop = Stop::new(CheckoutFailure::ReservationExpired);
                return Err(undo(state, ctx, &lease, &scoped, Some(&payment), stop).await);
            }
        },
        Err(s) => match checkout_failure::of_status(&s) {
            // The stock hold is gone: give the money back.
            Some(_) => {
                let stop = Stop::of_status(&s);
                return Err(undo(state, ctx, &lease, &scoped, Some(&payment), stop).await);
            }
            // Unknown whether it committed: the recovery finds out and completes the order
            // (the money was taken and the stock may still be held).
            None => {
                lease.hand_over(state, ctx).await;
                return Ok(being_completed(c, &priced, &scoped, payment));
            }
        },
    }

    // 7: the order exists. If this write fails the recovery places it (paid and committed).
    let comp = state.budgets.compensation_ctx(ctx);
    match lease.place(state, &comp, &payment.payment_id).await {
        Ok(order) => Ok(Outcome {
            order,
            payment: Some(payment),
        }),
        Err(s) => {
            tracing::warn!(order_id = %lease.order_id, code = ?s.code(), message = s.message(), "placing the order failed; the recovery places it");
            Ok(being_completed(c, &priced, &scoped, payment))
        }
    }
}

/// Why a charge did not give a SUCCEEDED payment.
enum Failed {
    /// Definitely nothing charged (declined, failed, refused before sending, rolled back).
    NotCharged(Stop),
    /// Maybe charged: no answer, or the card processor has not confirmed.
    Unknown(ApiError),
}

/// Goes backward: records the decision, gives back the money (if charged) and the stock,
/// then records the end, and says truthfully what happened to the money. A step whose
/// record cannot be written is left to the recovery, and the answer says so.
async fn undo(
    state: &AppState,
    ctx: &CallContext,
    lease: &record::Lease,
    scoped: &str,
    payment: Option<&pay::Payment>,
    stop: Stop,
) -> ApiError {
    let Stop { failure, answer: e } = stop;
    // One fresh budget for the whole way back: the request's may be spent.
    let comp = state.budgets.compensation_ctx(ctx);
    let charged = payment.is_some();
    if !lease.cancelling(state, &comp, failure).await {
        return if charged {
            record::refund_pending(&lease.order_id)
        } else {
            e.with_order(&lease.order_id)
        };
    }
    let refunded = match payment {
        Some(p) => compensate::refund(state, &comp, scoped, p).await,
        None => true,
    };
    let released = compensate::release(state, &comp, scoped).await;
    if !refunded {
        return record::refund_pending(&lease.order_id);
    }
    if released {
        lease.cancelled(state, &comp, failure).await;
    } else {
        // The recovery retries the release (the stock also comes back when the hold expires).
        lease.hand_over(state, &comp).await;
    }
    if charged {
        refunded_answer(failure, e)
    } else {
        e
    }
}

/// The answer while the recovery completes a paid order: 202 with the order as recorded
/// so far (PENDING); GET /api/orders/{id} shows it placed shortly.
fn being_completed(c: &Checkout, priced: &Priced, scoped: &str, payment: pay::Payment) -> Outcome {
    Outcome {
        order: user::Order {
            order_id: c.order_id().to_string(),
            user_id: c.user.user_id.to_string(),
            lines: priced.lines.clone(),
            total: Some(priced.total.into()),
            payment_id: payment.payment_id.clone(),
            reservation_id: scoped.to_owned(),
            status: user::OrderStatus::Pending as i32,
            priced: true,
            ..Default::default()
        },
        payment: Some(payment),
    }
}

/// A failure after the charge whose refund went through: say so.
fn refunded_answer(failure: CheckoutFailure, mut e: ApiError) -> ApiError {
    // The reservation_expired answer says so itself.
    if failure != CheckoutFailure::ReservationExpired {
        e.message = format!("{} Your payment has been refunded.", e.message);
    }
    e
}

/// Asks user-service whether the token's user is (still) valid.
async fn validate_user(state: &AppState, ctx: &CallContext, c: &Checkout) -> Result<(), ApiError> {
    let resp = state
        .downstreams
        .user
        .call(
            ctx,
            crate::downstream::method::VALIDATE_TOKEN,
            Safety::Idempotent,
            user::ValidateTokenRequest {
                access_token: c.user.token.clone(),
            },
            |mut cl, r| async move { cl.validate_token(r).await },
        )
        .await?;
    if resp.user_id != c.user.user_id.to_string() {
        return Err(ApiError::unauthenticated("the access token is invalid"));
    }
    Ok(())
}

async fn reserve(
    state: &AppState,
    ctx: &CallContext,
    c: &Checkout,
    scoped: &str,
) -> Result<(), Stop> {
    let resp = super::waiting_out_duplicates(ctx, || {
        state.downstreams.item.call(
            ctx,
            crate::downstream::method::RESERVE_STOCK,
            Safety::Idempotent,
            item::ReserveStockRequest {
                reservation_id: scoped.to_owned(),
                lines: c.lines.clone(),
            },
            |mut cl, r| async move { cl.reserve_stock(r).await },
        )
    })
    .await;
    // On failure the reservation may exist with the answer lost: the caller releases it.
    let reservation = match resp {
        Ok(r) => r.reservation,
        Err(s) => return Err(Stop::of_status(&s)),
    };
    let internal = || Stop {
        failure: CheckoutFailure::ServiceFailed,
        answer: ApiError::internal(),
    };
    let Some(reservation) = reservation else {
        return Err(internal());
    };
    if !same_lines(&reservation.lines, &c.lines) {
        return Err(Stop::new(CheckoutFailure::IdempotencyKeyReused));
    }
    match reservation.status() {
        item::ReservationStatus::Reserved | item::ReservationStatus::Committed => Ok(()),
        item::ReservationStatus::Rejected => Err(Stop {
            failure: CheckoutFailure::OutOfStock,
            answer: out_of_stock(&reservation.reason),
        }),
        // This key's earlier attempt was rolled back (or its hold expired): never sold again.
        item::ReservationStatus::Released => Err(Stop::new(CheckoutFailure::RolledBack)),
        item::ReservationStatus::Unspecified => Err(internal()),
    }
}

fn same_lines(a: &[common::ItemLine], b: &[common::ItemLine]) -> bool {
    if a.is_empty() {
        // A service that does not echo the lines cannot be checked.
        return true;
    }
    let mut a: Vec<_> = a
        .iter()
        .map(|l| (l.item_id.to_ascii_lowercase(), l.quantity))
        .collect();
    let mut b: Vec<_> = b
        .iter()
        .map(|l| (l.item_id.to_ascii_lowercase(), l.quantity))
        .collect();
    a.sort();
    b.sort();
    a == b
}

/// Charges the total; Ok only for a SUCCEEDED payment.
async fn charge(
    state: &AppState,
    ctx: &CallContext,
    c: &Checkout,
    scoped: &str,
    priced: &Priced,
) -> Result<pay::Payment, Failed> {
    let order_id = c.order_id().to_string();
    let resp = super::waiting_out_duplicates(ctx, || {
        state.downstreams.payment.call(
            ctx,
            crate::downstream::method::CHARGE,
            Safety::Idempotent,
            pay::ChargeRequest {
                idempotency_key: scoped.to_owned(),
                user_id: c.user.user_id.to_string(),
                order_id: order_id.clone(),
                amount: Some(priced.total.into()),
                card: Some(c.card.clone()),
                description: format!("Shop order {order_id}"),
            },
            |mut cl, r| async move { cl.charge(r).await },
        )
    })
    .await;
    let payment = match resp {
        Ok(r) => r
            .payment
            .ok_or_else(|| Failed::Unknown(ApiError::internal()))?,
        Err(s) => {
            return Err(if definitely_not_charged(&s) {
                Failed::NotCharged(Stop::of_status(&s))
            } else {
                Failed::Unknown(unknown_charge(&s))
            });
        }
    };
    let payment = if payment.status() == pay::PaymentStatus::Pending {
        compensate::reconcile(state, ctx, &payment).await
    } else {
        payment
    };
    match payment.status() {
        pay::PaymentStatus::Succeeded => Ok(payment),
        pay::PaymentStatus::Declined => Err(Failed::NotCharged(Stop {
            failure: CheckoutFailure::CardDeclined,
            answer: answer(CheckoutFailure::CardDeclined, Some(&payment), None),
        })),
        pay::PaymentStatus::Failed => Err(Failed::NotCharged(Stop::new(
            CheckoutFailure::PaymentFailed,
        ))),
        pay::PaymentStatus::Refunded => {
            Err(Failed::NotCharged(Stop::new(CheckoutFailure::RolledBack)))
        }
        pay::PaymentStatus::Pending | pay::PaymentStatus::Unspecified => {
            Err(Failed::Unknown(payment_pending()))
        }
    }
}

/// A failed Charge that certainly took no money: refused by our breaker or bulkhead (never sent),
/// refused before anything was written (bad input, credentials, payment-service's own
/// card-gateway breaker), or an answer whose reason says so (the key's earlier attempt was rolled back, the
/// key belongs to another cart). Anything else (no answer, an unexpected code) may have
/// charged: never guess; the recovery asks payment-service.
fn definitely_not_charged(s: &tonic::Status) -> bool {
    use tonic::Code;
    crate::downstream::never_sent(s)
        // Refused before anything was written.
        || matches!(
            s.code(),
            Code::InvalidArgument | Code::Unauthenticated | Code::PermissionDenied
        )
        || platform::reason_of(s) == Some(platform::ErrorReason::CardGatewayFailing)
        || matches!(
            checkout_failure::of_status(s),
            Some(CheckoutFailure::RolledBack | CheckoutFailure::IdempotencyKeyReused)
        )
}

/// The answer when the charge's outcome is unknown: the checkout is settled in the background.
fn unknown_charge(s: &tonic::Status) -> ApiError {
    if super::is_in_progress(s) {
        return super::in_progress();
    }
    payment_pending()
}
