//! `orchestrated` and `parallel`: the gateway drives each step itself.

use http::StatusCode;
use platform::{CallContext, money::Money};
use shop_proto::{common::v1 as common, item::v1 as item, payment::v1 as pay, user::v1 as user};

use super::{
    Checkout, Outcome, compensate, declined, out_of_stock, outcome_of, payment_failed,
    payment_pending, reservation_expired, rolled_back,
};
use crate::{downstream::Safety, error::ApiError, state::AppState};

/// Priced lines and their total.
pub struct Priced {
    pub lines: Vec<common::PricedLine>,
    pub total: Money,
}

pub async fn run(
    state: &AppState,
    ctx: &CallContext,
    c: &Checkout,
    parallel: bool,
) -> Result<Outcome, ApiError> {
    // 1 + 2: the user lookup and the pricing do not depend on each other.
    let priced = if parallel {
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
    if !state.downstreams.payment.admits() {
        return Err(ApiError::from_status(&crate::downstream::circuit_open(
            state.downstreams.payment.name,
        )));
    }

    // 3: reserve.
    reserve(state, ctx, c, &scoped).await?;

    // 4: charge; compensation = release.
    let payment = match charge(state, ctx, c, &scoped, &priced).await {
        Ok(p) => p,
        // A concurrent attempt with this key owns the reservation: leave it alone.
        Err(e) if e.code == super::IN_PROGRESS => return Err(e),
        Err(e) => {
            compensate::release(state, ctx, &scoped).await;
            return Err(e);
        }
    };

    // 5: commit; compensation = refund + release.
    let committed = state
        .downstreams
        .item
        .call(
            ctx,
            "CommitReservation",
            Safety::Idempotent,
            item::CommitReservationRequest {
                reservation_id: scoped.clone(),
            },
            |mut cl, r| async move { cl.commit_reservation(r).await },
        )
        .await;
    let commit_err = match committed {
        Ok(resp) => match resp.reservation.map(|r| r.status()) {
            Some(item::ReservationStatus::Committed) => None,
            other => {
                tracing::warn!(?other, "commit did not commit the reservation");
                Some(reservation_expired())
            }
        },
        Err(s) => Some(outcome_of(&s).unwrap_or_else(|| ApiError::from_status(&s))),
    };
    if let Some(e) = commit_err {
        compensate::refund_and_release(state, ctx, &scoped, &payment).await;
        return Err(refunded(e));
    }

    // 6: record the order; compensation = refund + release.
    let order = user::Order {
        order_id: c.order_id().to_string(),
        user_id: c.user.user_id.to_string(),
        lines: priced.lines,
        total: Some(priced.total.into()),
        payment_id: payment.payment_id.clone(),
        reservation_id: scoped.clone(),
        status: user::OrderStatus::Placed as i32,
        created_at: None,
    };
    let recorded = state
        .downstreams
        .user
        .call(
            ctx,
            "RecordOrder",
            Safety::Idempotent,
            user::RecordOrderRequest { order: Some(order) },
            |mut cl, r| async move { cl.record_order(r).await },
        )
        .await;
    match recorded {
        Ok(resp) => match resp.order {
            Some(order) => Ok(Outcome { order, payment }),
            None => {
                compensate::refund_and_release(state, ctx, &scoped, &payment).await;
                Err(ApiError::internal())
            }
        },
        Err(s) => {
            compensate::refund_and_release(state, ctx, &scoped, &payment).await;
            Err(refunded(ApiError::from_status(&s)))
        }
    }
}

/// A failure after the charge: the refund has been issued, say so.
fn refunded(mut e: ApiError) -> ApiError {
    e.message = format!("{} Your payment has been refunded.", e.message);
    e
}

/// Asks user-service whether the token's user is (still) valid.
async fn validate_user(state: &AppState, ctx: &CallContext, c: &Checkout) -> Result<(), ApiError> {
    let resp = state
        .downstreams
        .user
        .call(
            ctx,
            "ValidateToken",
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

/// Prices lines with item-service's current prices.
pub async fn price(
    state: &AppState,
    ctx: &CallContext,
    lines: &[common::ItemLine],
) -> Result<Priced, ApiError> {
    let ids = lines.iter().map(|l| l.item_id.clone()).collect();
    let resp = state
        .downstreams
        .item
        .call(
            ctx,
            "BatchGetItems",
            Safety::Idempotent,
            item::BatchGetItemsRequest { ids },
            |mut cl, r| async move { cl.batch_get_items(r).await },
        )
        .await?;
    let mut priced = Vec::with_capacity(lines.len());
    let mut total: Option<Money> = None;
    for (i, line) in lines.iter().enumerate() {
        let Some(it) = resp.items.iter().find(|it| it.id == line.item_id) else {
            return Err(
                ApiError::not_found(format!("item {} does not exist", line.item_id))
                    .with_field(format!("lines[{i}].item_id")),
            );
        };
        let unit = Money::parse(it.price.as_ref(), "price").map_err(|e| {
            tracing::error!(item = %it.id, error = %e, "item-service returned a bad price");
            ApiError::internal()
        })?;
        let line_total = unit.times(i64::from(line.quantity)).ok_or_else(|| {
            ApiError::bad_request(
                format!("lines[{i}].quantity"),
                "the line total is too large",
            )
        })?;
        total = Some(match total {
            None => line_total,
            Some(t) => t.plus(line_total).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "mixed_currencies",
                    "items priced in different currencies cannot be bought in one order",
                )
                .with_field(format!("lines[{i}].item_id"))
            })?,
        });
        priced.push(common::PricedLine {
            item_id: it.id.clone(),
            sku: it.sku.clone(),
            name: it.name.clone(),
            quantity: line.quantity,
            unit_price: Some(unit.into()),
            line_total: Some(line_total.into()),
        });
    }
    let total = total.ok_or_else(|| ApiError::bad_request("lines", "the cart is empty"))?;
    Ok(Priced {
        lines: priced,
        total,
    })
}

async fn reserve(
    state: &AppState,
    ctx: &CallContext,
    c: &Checkout,
    scoped: &str,
) -> Result<(), ApiError> {
    let resp = super::waiting_out_duplicates(ctx, || {
        state.downstreams.item.call(
            ctx,
            "ReserveStock",
            Safety::Idempotent,
            item::ReserveStockRequest {
                reservation_id: scoped.to_owned(),
                lines: c.lines.clone(),
            },
            |mut cl, r| async move { cl.reserve_stock(r).await },
        )
    })
    .await;
    let reservation = match resp {
        Ok(r) => r.reservation,
        Err(s) => {
            // The reservation may have been made with the answer lost: let it go.
            if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            ) {
                compensate::release(state, ctx, scoped).await;
            }
            return Err(reserve_error(&s));
        }
    };
    let Some(reservation) = reservation else {
        return Err(ApiError::internal());
    };
    if !same_lines(&reservation.lines, &c.lines) {
        return Err(key_reused());
    }
    match reservation.status() {
        item::ReservationStatus::Reserved | item::ReservationStatus::Committed => Ok(()),
        item::ReservationStatus::Rejected => Err(out_of_stock(&reservation.reason)),
        item::ReservationStatus::Released => Err(earlier_outcome(state, ctx, c).await),
        item::ReservationStatus::Unspecified => Err(ApiError::internal()),
    }
}

/// A retry of a checkout that failed and was rolled back: answer what the first attempt
/// answered when its payment tells (a declined card stays declined), else say it was
/// rolled back. Never charges: a released reservation cannot be sold.
async fn earlier_outcome(state: &AppState, ctx: &CallContext, c: &Checkout) -> ApiError {
    let order_id = c.order_id().to_string();
    let listed = state
        .downstreams
        .payment
        .call(
            ctx,
            "ListPayments",
            Safety::Idempotent,
            pay::ListPaymentsRequest {
                user_id: c.user.user_id.to_string(),
                page: Some(common::PageRequest {
                    page_size: 100,
                    page_token: String::new(),
                }),
            },
            |mut cl, r| async move { cl.list_payments(r).await },
        )
        .await;
    let first = listed
        .ok()
        .and_then(|l| l.payments.into_iter().find(|p| p.order_id == order_id));
    match first.as_ref().map(|p| (p, p.status())) {
        Some((p, pay::PaymentStatus::Declined)) => declined(p),
        Some((_, pay::PaymentStatus::Failed)) => payment_failed(),
        _ => rolled_back(),
    }
}

/// item-service answers a shortfall with FAILED_PRECONDITION + OUT_OF_STOCK naming the
/// line, and a key reused for other lines with ALREADY_EXISTS + IDEMPOTENCY_KEY_REUSED.
pub fn reserve_error(s: &tonic::Status) -> ApiError {
    outcome_of(s).unwrap_or_else(|| ApiError::from_status(s))
}

pub fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_key_reused",
        "this Idempotency-Key was already used for a different cart; use a new key",
    )
    .with_field("Idempotency-Key")
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
) -> Result<pay::Payment, ApiError> {
    let order_id = c.order_id().to_string();
    let resp = super::waiting_out_duplicates(ctx, || {
        state.downstreams.payment.call(
            ctx,
            "Charge",
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
        Ok(r) => r.payment.ok_or_else(ApiError::internal)?,
        Err(s) => {
            // A call our breaker refused never left: there is nothing to settle.
            if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            ) && !crate::downstream::is_circuit_open(&s)
            {
                // The charge may have gone through with the answer lost: find it later and
                // refund it, so no money is kept for an order that does not exist.
                compensate::settle_unknown_charge(
                    state,
                    ctx,
                    c.user.user_id,
                    order_id,
                    scoped.to_owned(),
                );
            }
            // In progress, key reused, pending: the same answers as the chained strategy.
            return Err(outcome_of(&s).unwrap_or_else(|| ApiError::from_status(&s)));
        }
    };
    let payment = if payment.status() == pay::PaymentStatus::Pending {
        compensate::reconcile(state, ctx, &payment).await
    } else {
        payment
    };
    match payment.status() {
        pay::PaymentStatus::Succeeded => Ok(payment),
        pay::PaymentStatus::Declined => Err(declined(&payment)),
        pay::PaymentStatus::Failed => Err(payment_failed()),
        pay::PaymentStatus::Refunded => Err(rolled_back()),
        pay::PaymentStatus::Pending | pay::PaymentStatus::Unspecified => {
            compensate::settle_unknown_charge(
                state,
                ctx,
                c.user.user_id,
                order_id,
                scoped.to_owned(),
            );
            Err(payment_pending())
        }
    }
}
