//! ChainedCharge: the payment hop of the `chained` checkout (DESIGN.md). Prices the lines
//! with item-service, reserves the stock under the checkout's idempotency key, charges, then
//! commits the reservation (or releases it after a decline). Every item-service call carries
//! the caller's remaining deadline and trace. Every step is idempotent per key, so a caller
//! may retry the whole hop after any failure.

use platform::{CallContext, FieldError, money::Money};
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
/// caller may retry), anything else keeps its code.
fn upstream(what: &str, s: Status) -> Status {
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            Status::unavailable(format!("item-service {what}: {}", s.message()))
        }
        code => Status::new(code, format!("item-service {what}: {}", s.message())),
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
        return Err(platform::error::with_field(
            Status::not_found(format!("unknown items: {}", batch.missing_ids.join(", "))),
            "lines",
        ));
    }

    let mut priced = Vec::with_capacity(lines.len());
    let mut total: Option<Money> = None;
    for (id, qty) in &lines {
        let item = batch
            .items
            .iter()
            .find(|it| it.id.eq_ignore_ascii_case(id))
            .ok_or_else(|| Status::not_found(format!("unknown item: {id}")))?;
        let unit = Money::parse(item.price.as_ref(), "price").map_err(|e| {
            Status::internal(format!("item-service sent a bad price for {id}: {e}"))
        })?;
        let line_total = unit
            .times(i64::from(*qty))
            .ok_or_else(|| FieldError::new("lines", "total is too large"))?;
        total = Some(match total {
            None => line_total,
            Some(t) => t.plus(line_total).ok_or_else(|| {
                Status::failed_precondition(
                    "the items are priced in different currencies (or the total overflows)",
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
            return Err(Status::failed_precondition(format!(
                "not enough stock: {}",
                reservation.reason
            )));
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
                return Err(Status::failed_precondition(
                    "the stock reservation for this key was released; start a new checkout with a new key",
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
                if s.code() == Code::FailedPrecondition || s.code() == Code::NotFound {
                    // The reservation expired before the charge finished: the stock is gone,
                    // so give the money back (compensation) instead of selling it.
                    compensate(payments, &payment.id, &ctx).await?;
                    return Err(Status::aborted(
                        "the stock reservation expired before the payment completed; the payment was refunded",
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
            return Err(Status::aborted(
                "this checkout's payment was refunded (the stock reservation had expired)",
            ));
        }
        PaymentStatus::Pending => {
            return Err(Status::unavailable(
                "payment is still pending; retry with the same key",
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
