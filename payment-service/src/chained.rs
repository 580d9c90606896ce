//! ChainedCharge: the payment hop of the `chained` checkout (docs/architecture.md). Prices the lines
//! with item-service, reserves the stock under the checkout's idempotency key, charges, then
//! commits the reservation (or releases it after a decline). Every item-service call carries
//! the caller's remaining deadline and trace. Every step is idempotent per key, so a caller
//! may retry the whole hop after any failure.

use platform::{
    CallContext, ErrorReason, FieldError,
    money::Money,
    reason::{self, reason_of, with_reason},
};
use shop_proto::{
    common::v1::{ItemLine, PricedLine},
    item::v1::{BatchGetItemsRequest, ReservationStatus, ReserveStockRequest},
    payment::v1 as pb,
};
use time::OffsetDateTime;
use tonic::{Code, Request, Status};
use uuid::Uuid;

use crate::{
    card::Card,
    fingerprint,
    ids::{self, IdempotencyKey},
    payment::Status as PaymentStatus,
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

    // Reserving stock that cannot be paid for would only hold it up.
    payments.refuse_while_gateway_fails(&key).await?;

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
                .map_err(crate::error::Error::from)?
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
    // An unknown outcome (gateway timeout) keeps the reservation: reconciling the payment
    // commits or releases it.
    let payment = payments.charge(cmd, &ctx).await?;

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
        total: Some(total.into()),
        reservation_id: key.as_str().to_owned(),
    })
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
