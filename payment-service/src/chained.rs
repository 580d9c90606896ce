//! ChainedCharge: the payment hop of the `chained` checkout (docs/architecture.md). Prices the lines
//! with item-service, reserves the stock under the checkout's idempotency key, charges, then
//! commits the reservation (or releases it after a decline). Every item-service call carries
//! the caller's remaining deadline and trace. Every step is idempotent per key, so a caller
//! may retry the whole hop after any failure; an order that already has a payment (its key
//! purged) gets that payment back without reserving or charging again.

use platform::{
    CallContext, ErrorReason, FieldError,
    money::Money,
    reason::{self, reason_of, with_reason},
};
use shop_proto::{
    common::v1::{ItemLine, PricedLine},
    item::v1::{
        BatchGetItemsRequest, ReleaseReservationRequest, ReservationStatus, ReserveStockRequest,
    },
    payment::v1 as pb,
};
use time::OffsetDateTime;
use tonic::{Code, Request, Status};
use uuid::Uuid;

use crate::{
    card::Card,
    error::Error,
    fingerprint,
    ids::{self, IdempotencyKey},
    payment::{PaymentRow, Status as PaymentStatus},
    service::{ChargeCommand, Payments, RefundCommand},
};

/// Item-service failures as this hop reports them: transport trouble is UNAVAILABLE (the
/// caller may retry), anything else keeps its code. The message says which call failed;
/// the metadata (reason, field) is item-service's, so callers decide on it unchanged.
fn upstream(what: &str, s: Status) -> Status {
    let message = format!("item-service {what}: {}", s.message());
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            reason::restate(&s, Code::Unavailable, message)
        }
        code => reason::restate(&s, code, message),
    }
}

/// The shared cart rules ([`platform::cart`]); ids come back lower-cased.
fn parse_lines(lines: &[ItemLine]) -> Result<Vec<(String, i32)>, FieldError> {
    let lines = platform::cart::validate(lines.iter().map(|l| (l.item_id.as_str(), l.quantity)))?;
    Ok(lines.into_iter().map(|l| (l.item_id, l.quantity)).collect())
}

pub async fn chained_charge(
    payments: &Payments,
    request: Request<pb::ChainedChargeRequest>,
) -> Result<pb::ChainedChargeResponse, Status> {
    let ctx = CallContext::from_request(&request);
    let r = request.into_inner();
    let key = IdempotencyKey::parse(&r.idempotency_key, "idempotency_key")?;
    let user_id = ids::uuid(&r.user_id, "user_id")?;
    let order_id = ids::uuid(&r.order_id, "order_id")?;
    let lines = parse_lines(&r.lines)?;
    let card = Card::parse(r.card.as_ref(), "card", OffsetDateTime::now_utc())?;
    let settings = payments.settings().clone();
    let cap = Some(settings.item_timeout);
    let mut items = payments.items();

    if ctx.expired() {
        return Err(Status::deadline_exceeded("deadline expired before pricing"));
    }
    let batch = items
        .batch_get_items(ctx.request(
            BatchGetItemsRequest {
                ids: lines.iter().map(|(id, _)| id.clone()).collect(),
            },
            cap,
        ))
        .await
        .map_err(|s| upstream("BatchGetItems", s))?
        .into_inner();
    if !batch.missing_ids.is_empty() {
        return Err(with_reason(
            platform::error::with_field(
                Status::not_found(format!("unknown items: {}", batch.missing_ids.join(", "))),
                "lines",
            ),
            ErrorReason::ItemNotFound,
        ));
    }

    let mut priced = Vec::with_capacity(lines.len());
    let mut total: Option<Money> = None;
    for (id, qty) in &lines {
        let item = batch
            .items
            .iter()
            .find(|it| it.id.eq_ignore_ascii_case(id))
            .ok_or_else(|| {
                reason::status(
                    Code::NotFound,
                    format!("unknown item: {id}"),
                    ErrorReason::ItemNotFound,
                )
            })?;
        let unit = Money::parse(item.price.as_ref(), "price").map_err(|e| {
            Status::internal(format!("item-service sent a bad price for {id}: {e}"))
        })?;
        let line_total = unit
            .times(i64::from(*qty))
            .ok_or_else(|| FieldError::new("lines", "total is too large"))?;
        total = Some(match total {
            None => line_total,
            Some(t) => t.plus(line_total).ok_or_else(|| {
                reason::status(
                    Code::FailedPrecondition,
                    "the items are priced in different currencies (or the total overflows)",
                    ErrorReason::MixedCurrencies,
                )
            })?,
        });
        priced.push(PricedLine {
            item_id: item.id.clone(),
            sku: item.sku.clone(),
            name: item.name.clone(),
            quantity: *qty,
            unit_price: Some(unit.into()),
            line_total: Some(line_total.into()),
        });
    }
    let total = total.ok_or_else(|| FieldError::new("lines", "must not be empty"))?;
    if total.amount_minor() <= 0 || total.amount_minor() > settings.max_amount_minor {
        return Err(FieldError::new(
            "lines",
            format!(
                "order total must be between 1 and {} minor units",
                settings.max_amount_minor
            ),
        )
        .into());
    }

    // An order that already has a payment (made under a key since purged, or under another
    // key) is answered with that payment before anything is reserved or charged: a replay
    // never takes stock or money twice.
    let order = order_id.to_string();
    let prior = if payments
        .store()
        .key_exists(key.as_str())
        .await
        .map_err(Error::from)?
    {
        None
    } else {
        payments
            .store()
            .payment_by_order(&order)
            .await
            .map_err(Error::from)?
    };
    let (payment, total) = match prior {
        Some(existing) => {
            let same = existing.user_id == user_id.to_string();
            let payment = payments.replay_order(existing, same, &key, &ctx).await?;
            // What was charged, whatever the items cost today.
            let charged = payment.to_pb().amount;
            (payment, charged)
        }
        None => {
            let cmd = ChargeCommand {
                fingerprint: fingerprint::chained(key.as_str(), user_id, order_id, &lines, &card),
                reservation_id: Some(key.as_str().to_owned()),
                key: key.clone(),
                user_id,
                order_id,
                amount: total,
                card,
                description: format!("order {order_id}"),
            };
            let payment = reserve_and_charge(payments, &ctx, &lines, cmd).await?;
            (payment, Some(total.into()))
        }
    };

    match payment.status() {
        PaymentStatus::Succeeded => {
            if let Some(s) = payments.finish_reservation(&payment, &ctx).await {
                if reservation_lost(&s) {
                    // The reservation expired before the charge finished: the stock is gone,
                    // so give the money back (compensation) instead of selling it.
                    compensate(payments, &payment.id, &ctx).await?;
                    return Err(reason::status(
                        Code::Aborted,
                        "the stock reservation expired before the payment completed; the payment was refunded",
                        ErrorReason::ReservationExpired,
                    ));
                }
                return Err(upstream("CommitReservation", s));
            }
        }
        PaymentStatus::Declined | PaymentStatus::Failed => {
            // Best effort: an unreleased reservation expires by itself.
            let _ = payments.finish_reservation(&payment, &ctx).await;
        }
        PaymentStatus::Refunded => {
            return Err(reason::status(
                Code::Aborted,
                "this checkout's payment was refunded (the stock reservation had expired)",
                ErrorReason::PaymentRefunded,
            ));
        }
        PaymentStatus::Pending => {
            return Err(reason::status(
                Code::Unavailable,
                "payment is still pending; retry with the same key",
                ErrorReason::PaymentPending,
            ));
        }
    }

    Ok(pb::ChainedChargeResponse {
        payment: Some(payment.to_pb()),
        lines: priced,
        total,
        reservation_id: payment
            .reservation_id
            .clone()
            .unwrap_or_else(|| key.as_str().to_owned()),
    })
}

/// Reserves the stock under the checkout's key, then charges (once per key and per order).
async fn reserve_and_charge(
    payments: &Payments,
    ctx: &CallContext,
    lines: &[(String, i32)],
    cmd: ChargeCommand,
) -> Result<PaymentRow, Status> {
    let key = &cmd.key;
    let order_id = cmd.order_id.to_string();
    let cap = Some(payments.settings().item_timeout);
    let mut items = payments.items();
    // Reserving stock that cannot be paid for would only hold it up.
    payments.refuse_while_gateway_fails(key, &order_id).await?;

    let reservation = items
        .reserve_stock(
            ctx.request(
                ReserveStockRequest {
                    reservation_id: key.as_str().to_owned(),
                    lines: lines
                        .iter()
                        .map(|(id, q)| ItemLine {
                            item_id: id.clone(),
                            quantity: *q,
                        })
                        .collect(),
                },
                cap,
            ),
        )
        .await
        .map_err(|s| upstream("ReserveStock", s))?
        .into_inner()
        .reservation
        .ok_or_else(|| {
            Status::internal("item-service ReserveStock answered without a reservation")
        })?;
    match ReservationStatus::try_from(reservation.status) {
        Ok(ReservationStatus::Reserved | ReservationStatus::Committed) => {}
        Ok(ReservationStatus::Rejected) => {
            return Err(reason::status(
                Code::FailedPrecondition,
                format!("not enough stock: {}", reservation.reason),
                ErrorReason::OutOfStock,
            ));
        }
        // Released: only a retry of a checkout that already finished gets here; the charge
        // below replays that checkout's payment (or, with no payment, refuses to charge).
        Ok(ReservationStatus::Released) => {
            if !payments
                .store()
                .key_exists(key.as_str())
                .await
                .map_err(Error::from)?
            {
                return Err(reason::status(
                    Code::FailedPrecondition,
                    "the stock reservation for this key was released; start a new checkout with a new key",
                    ErrorReason::ReservationReleased,
                ));
            }
        }
        _ => {
            return Err(Status::internal(
                "item-service sent an unknown reservation status",
            ));
        }
    }

    // An unknown outcome (gateway timeout) keeps the reservation: user-service's checkout
    // recovery commits or releases it once the payment is reconciled.
    let key = key.as_str().to_owned();
    let charged = payments.charge(cmd, ctx).await;
    let paid_by_another = match &charged {
        Ok(p) => p.reservation_id.as_deref() != Some(key.as_str()),
        Err(e) => matches!(e, Error::OrderTaken { .. }),
    };
    if paid_by_another {
        // A concurrent request for the order under another key paid it first: this request
        // charged nothing, so the stock it reserved goes back (best effort; it expires anyway).
        let _ = payments
            .items()
            .release_reservation(ctx.request(
                ReleaseReservationRequest {
                    reservation_id: key,
                },
                cap,
            ))
            .await;
    }
    Ok(charged?)
}

/// Whether a failed CommitReservation says the stock is no longer held for this payment
/// (expired and released, or never there), so the money must go back.
fn reservation_lost(s: &Status) -> bool {
    matches!(
        (s.code(), reason_of(s)),
        (
            Code::FailedPrecondition,
            Some(
                ErrorReason::ReservationExpired
                    | ErrorReason::ReservationReleased
                    | ErrorReason::ReservationRejected
            )
        ) | (Code::NotFound, Some(ErrorReason::ReservationNotFound))
    )
}

async fn compensate(
    payments: &Payments,
    payment_id: &str,
    ctx: &CallContext,
) -> Result<(), Status> {
    let id = Uuid::parse_str(payment_id).map_err(|_| Status::internal("bad payment id"))?;
    let key = IdempotencyKey::parse(&format!("compensate:{payment_id}"), "idempotency_key")?;
    let cmd = RefundCommand {
        fingerprint: fingerprint::refund(key.as_str(), id, None),
        key,
        payment_id: id,
        amount: None,
    };
    payments
        .refund(cmd, ctx)
        .await
        .map(drop)
        .map_err(Status::from)
}
