//! item-service's part in the asynchronous checkout (the contract is
//! `platform::events::checkout`): on `checkout.requested` it reserves the order's lines
//! (reservation id = order id), prices them and announces `stock.reserved` or
//! `stock.refused`; on `order.completed` it commits the reservation, on `order.cancelled`
//! it releases it.
//!
//! Delivery is at least once, so every handler finds its own earlier effect in the
//! reservation document and does nothing twice: a redelivered request finds the reservation
//! decided (its event stored with the decision, same derived id) and answers
//! [`Outcome::Duplicate`]; one that finds it PENDING (the earlier delivery died half-way)
//! carries on where it stopped, since taking a line is idempotent per reservation. A bad cart
//! or a missing item is refused with `stock.refused` (the order must end), not parked; only
//! events that cannot be read, or that contradict the reservation's state, are parked.

use std::{collections::HashMap, sync::Arc, time::Duration};

use mongodb::bson::doc;
use platform::{
    ErrorReason,
    checkout_failure::{self, CheckoutFailure},
    events::{
        ConsumerSpec, Envelope, EventTasks, HandlerError, Outcome, RelayWaker,
        checkout::{
            self, CHECKOUT_REQUESTED, CheckoutRequested, ORDER_CANCELLED, ORDER_COMPLETED,
            OrderCancelled, OrderCompleted, PricedLine, Refusal, STOCK_REFUSED, STOCK_RESERVED,
            StockReserved,
        },
    },
    identity::ITEM_SERVICE,
};
use shop_proto::common::v1 as common;

use crate::{
    error::Error,
    input::{self, Line, ReservationId},
    outbox::{OutboxEvent, ReservationOutbox},
    reservations::{Begun, Decided, EXPIRED, ReservationDoc, Reservations, State},
    store::ItemStore,
};

/// Stored as the reason of a reservation released by a cancelled order.
const CANCELLED: &str = "order cancelled";

/// The handlers of the checkout events, over the service's stores.
#[derive(Clone, Debug)]
pub struct Checkout {
    reservations: Reservations,
    items: ItemStore,
    /// How long an asynchronous checkout's reservation holds stock.
    ttl: Duration,
    waker: RelayWaker,
}

/// The lines priced, ready for `stock.reserved`.
struct Priced {
    lines: Vec<PricedLine>,
    amount_cents: i64,
    currency: String,
}

enum Verdict {
    Priced(Priced),
    Refused(Refusal),
}

fn refusal(
    order_id: &str,
    reason: ErrorReason,
    field: impl Into<String>,
    message: impl Into<String>,
) -> Refusal {
    Refusal {
        order_id: order_id.to_owned(),
        failure: checkout_failure::of_reason(reason),
        field: Some(field.into()),
        message: message.into(),
    }
}

/// Store failures and races may pass: deliver again. Anything else the state rules out.
fn handler_error(e: Error) -> HandlerError {
    match e {
        Error::Mongo { .. } | Error::Aborted(..) => HandlerError::Retry(Box::new(e)),
        other => HandlerError::Reject(platform::telemetry::chain(&other)),
    }
}

fn unreadable(e: platform::events::EnvelopeError) -> HandlerError {
    HandlerError::Reject(platform::telemetry::chain(&e))
}

fn reservation_id(order_id: &str, key: &str) -> Result<ReservationId, HandlerError> {
    if order_id != key {
        return Err(HandlerError::Reject(format!(
            "event of order {key:?} carries order id {order_id:?}"
        )));
    }
    ReservationId::parse(order_id)
        .map_err(|e| HandlerError::Reject(format!("order id {order_id:?}: {e}")))
}

/// The event's lines by the same rules as ReserveStock's.
fn parse_lines(lines: &[checkout::Line]) -> Result<Vec<Line>, platform::FieldError> {
    let lines: Vec<common::ItemLine> = lines
        .iter()
        .map(|l| common::ItemLine {
            item_id: l.item_id.clone(),
            // Beyond i32 is beyond the cart's limit too, and is refused as such.
            quantity: i32::try_from(l.quantity).unwrap_or(i32::MAX),
        })
        .collect();
    input::lines(&lines)
}

/// `tasks` with one consumer per kind item-service reads, each handled by `checkout`.
pub(crate) fn consumers(
    tasks: EventTasks<ReservationOutbox>,
    checkout: &Arc<Checkout>,
) -> EventTasks<ReservationOutbox> {
    let spec = |kind| ConsumerSpec::new(ITEM_SERVICE, kind);
    let c = checkout.clone();
    let tasks = tasks.consume(
        "checkout.requested consumer",
        spec(CHECKOUT_REQUESTED),
        move |event| {
            let c = c.clone();
            async move { c.on_checkout_requested(event).await }
        },
    );
    let c = checkout.clone();
    let tasks = tasks.consume(
        "order.completed consumer",
        spec(ORDER_COMPLETED),
        move |event| {
            let c = c.clone();
            async move { c.on_order_completed(event).await }
        },
    );
    let c = checkout.clone();
    tasks.consume(
        "order.cancelled consumer",
        spec(ORDER_CANCELLED),
        move |event| {
            let c = c.clone();
            async move { c.on_order_cancelled(event).await }
        },
    )
}

impl Checkout {
    pub fn new(
        reservations: Reservations,
        items: ItemStore,
        ttl: Duration,
        waker: RelayWaker,
    ) -> Self {
        Self {
            reservations,
            items,
            ttl,
            waker,
        }
    }

    /// `checkout.requested`: reserve, price, and decide with `stock.reserved` or
    /// `stock.refused`.
    pub async fn on_checkout_requested(&self, event: Envelope) -> Result<Outcome, HandlerError> {
        let req: CheckoutRequested = checkout::data(&event).map_err(unreadable)?;
        let rid = reservation_id(&req.order_id, &event.key)?;
        let (lines, invalid) = match parse_lines(&req.lines) {
            Ok(lines) => (lines, None),
            Err(e) => (
                Vec::new(),
                Some(refusal(
                    &req.order_id,
                    ErrorReason::InvalidField,
                    e.field,
                    e.message,
                )),
            ),
        };
        let resumed = match self
            .reservations
            .begin(&rid, &lines, self.ttl)
            .await
            .map_err(handler_error)?
        {
            Begun::Fresh => false,
            Begun::Exists(doc) => {
                if let Some(outcome) = self.found(&event, &rid, &lines, *doc).await? {
                    return Ok(outcome);
                }
                true
            }
        };
        let verdict = match invalid {
            Some(refused) => Verdict::Refused(refused),
            None => self
                .price(&req.order_id, &lines)
                .await
                .map_err(handler_error)?,
        };
        let decided = match verdict {
            Verdict::Refused(refused) => {
                if resumed {
                    // The earlier delivery may have taken lines before it died.
                    self.reservations
                        .put_back_lines(&rid, &lines)
                        .await
                        .map_err(handler_error)?;
                }
                self.refuse(&event, &rid, &lines, State::Pending, refused)
                    .await?
            }
            Verdict::Priced(priced) => match self
                .reservations
                .take_lines(&rid, &lines)
                .await
                .map_err(handler_error)?
            {
                Some(short) => {
                    let reason = if short.not_found {
                        ErrorReason::ItemNotFound
                    } else {
                        ErrorReason::OutOfStock
                    };
                    let refused = refusal(&req.order_id, reason, short.field, short.message);
                    self.refuse(&event, &rid, &lines, State::Pending, refused)
                        .await?
                }
                None => {
                    let reserved = StockReserved {
                        order_id: req.order_id.clone(),
                        user_id: req.user_id,
                        reservation_id: rid.0.clone(),
                        lines: priced.lines,
                        amount_cents: priced.amount_cents,
                        currency: priced.currency,
                        card_token: req.card_token,
                    };
                    let stored = self.event(STOCK_RESERVED, &event, &reserved)?;
                    self.reservations
                        .decide(
                            &rid,
                            &lines,
                            (State::Pending, State::Reserved),
                            doc! {},
                            stored,
                        )
                        .await
                        .map_err(handler_error)?
                }
            },
        };
        Ok(self.outcome(decided))
    }

    /// A redelivered (or reused) request found its reservation: Some(outcome) when there is
    /// nothing (more) to do, None when it is PENDING and the work goes on.
    async fn found(
        &self,
        event: &Envelope,
        rid: &ReservationId,
        lines: &[Line],
        doc: ReservationDoc,
    ) -> Result<Option<Outcome>, HandlerError> {
        if doc.outbox.is_some() {
            // Decided with its event; the relay publishes it if it has not yet.
            self.waker.wake();
            return Ok(Some(Outcome::Duplicate));
        }
        match doc.status {
            State::Pending => {
                let same = doc.lines.len() == lines.len()
                    && doc
                        .lines
                        .iter()
                        .zip(lines)
                        .all(|(d, l)| d.item_id == l.item.0 && d.quantity == l.quantity);
                if same {
                    Ok(None)
                } else {
                    Err(HandlerError::Reject(format!(
                        "reservation {:?} is being made with other lines",
                        rid.0
                    )))
                }
            }
            // Expired before it was decided (every delivery failed for its whole hold): the
            // order must still end, so say why.
            State::Released if doc.reason == EXPIRED => {
                let refused = Refusal {
                    order_id: rid.0.clone(),
                    failure: CheckoutFailure::ReservationExpired,
                    field: None,
                    message: "the stock could not be reserved before the hold expired".into(),
                };
                let decided = self
                    .refuse(event, rid, lines, State::Released, refused)
                    .await?;
                Ok(Some(self.outcome(decided)))
            }
            // The order was cancelled before its stock was reserved: reserve nothing.
            State::Released => Ok(Some(Outcome::Ignored)),
            State::Reserved | State::Committed | State::Rejected => Err(HandlerError::Reject(
                format!("reservation {:?} was made by a synchronous checkout", rid.0),
            )),
        }
    }

    /// Decides `rid` as refused (from `from`), with its `stock.refused`.
    async fn refuse(
        &self,
        cause: &Envelope,
        rid: &ReservationId,
        lines: &[Line],
        from: State,
        refused: Refusal,
    ) -> Result<Decided, HandlerError> {
        let not_found = refused.failure == CheckoutFailure::ItemNotFound;
        let to = if from == State::Pending {
            State::Rejected
        } else {
            from
        };
        let extra = if to == State::Rejected {
            doc! {
                "reason": &refused.message,
                "reject_field": refused.field.clone().unwrap_or_default(),
                "reject_not_found": not_found,
                "settled": true,
            }
        } else {
            doc! {}
        };
        let stored = self.event(STOCK_REFUSED, cause, &refused)?;
        self.reservations
            .decide(rid, lines, (from, to), extra, stored)
            .await
            .map_err(handler_error)
    }

    /// The outgoing event of checkout `cause.key`, with its derived id, ready to store.
    fn event<T: serde::Serialize>(
        &self,
        kind: &str,
        cause: &Envelope,
        data: &T,
    ) -> Result<OutboxEvent, HandlerError> {
        checkout::envelope(kind, &cause.key, data, cause.traceparent.clone())
            .map(OutboxEvent::new)
            .map_err(|e| HandlerError::Reject(platform::telemetry::chain(&e)))
    }

    fn outcome(&self, decided: Decided) -> Outcome {
        match decided {
            Decided::Now(_) => {
                self.waker.wake();
                Outcome::Applied
            }
            Decided::Earlier(_) => Outcome::Duplicate,
            Decided::Released(_) => Outcome::Ignored,
        }
    }

    /// Prices the lines at the items' current prices; a missing item or a mix of
    /// currencies refuses the order.
    async fn price(&self, order_id: &str, lines: &[Line]) -> Result<Verdict, Error> {
        let ids: Vec<_> = lines.iter().map(|l| l.item).collect();
        let items = self.items.get_catalog_many(&ids).await?;
        let by_id: HashMap<_, _> = items.iter().map(|i| (i.id, i)).collect();
        let mut priced = Vec::with_capacity(lines.len());
        let mut amount_cents = 0_i64;
        let mut currency: Option<&str> = None;
        for (i, line) in lines.iter().enumerate() {
            let Some(item) = by_id.get(&line.item.0) else {
                return Ok(Verdict::Refused(refusal(
                    order_id,
                    ErrorReason::ItemNotFound,
                    format!("lines[{i}].item_id"),
                    format!("item {} not found", line.item.hex()),
                )));
            };
            match currency {
                None => currency = Some(&item.price.currency),
                Some(c) if c != item.price.currency => {
                    return Ok(Verdict::Refused(refusal(
                        order_id,
                        ErrorReason::MixedCurrencies,
                        "lines",
                        format!(
                            "items are priced in {c} and {}; one order is paid in one currency",
                            item.price.currency
                        ),
                    )));
                }
                Some(_) => {}
            }
            let Some(total) = item
                .price
                .amount_minor
                .checked_mul(i64::from(line.quantity))
                .and_then(|t| amount_cents.checked_add(t))
            else {
                return Ok(Verdict::Refused(refusal(
                    order_id,
                    ErrorReason::InvalidField,
                    "lines",
                    "the order's total is too large",
                )));
            };
            amount_cents = total;
            priced.push(PricedLine {
                item_id: line.item.hex(),
                sku: item.sku.clone(),
                name: item.name.clone(),
                quantity: u32::try_from(line.quantity).unwrap_or_default(),
                unit_price_cents: item.price.amount_minor,
            });
        }
        Ok(Verdict::Priced(Priced {
            lines: priced,
            amount_cents,
            currency: currency.unwrap_or_default().to_owned(),
        }))
    }

    /// `order.completed`: the reservation becomes a sale.
    pub async fn on_order_completed(&self, event: Envelope) -> Result<Outcome, HandlerError> {
        let done: OrderCompleted = checkout::data(&event).map_err(unreadable)?;
        let rid = reservation_id(&done.order_id, &event.key)?;
        match self.reservations.commit_applied(&rid).await {
            Ok((_, true)) => Ok(Outcome::Applied),
            Ok((_, false)) => Ok(Outcome::Duplicate),
            // Paid for, yet the stock is not held (never reserved, or released at expiry):
            // a person must look at it, so it is parked with the reason.
            Err(e @ (Error::ReservationNotFound(_) | Error::Precondition { .. })) => {
                Err(HandlerError::Reject(format!(
                    "order {:?} completed but its stock cannot be committed: {}",
                    rid.0,
                    platform::telemetry::chain(&e)
                )))
            }
            Err(e) => Err(handler_error(e)),
        }
    }

    /// `order.cancelled`: whatever is held goes back, exactly once.
    pub async fn on_order_cancelled(&self, event: Envelope) -> Result<Outcome, HandlerError> {
        let cancelled: OrderCancelled = checkout::data(&event).map_err(unreadable)?;
        let rid = reservation_id(&cancelled.order_id, &event.key)?;
        for _ in 0..2 {
            match self.reservations.release_applied(&rid, CANCELLED).await {
                Ok((_, true)) => return Ok(Outcome::Applied),
                // Refused: nothing was ever held.
                Ok((doc, false)) if doc.status == State::Rejected => return Ok(Outcome::Ignored),
                Ok((_, false)) => return Ok(Outcome::Duplicate),
                Err(Error::ReservationNotFound(_)) => {
                    // Cancelled before the request reached us: make sure it reserves nothing
                    // when it does. Lost the race to the request? Release what it made.
                    if self
                        .reservations
                        .tombstone(&rid, "order cancelled before its stock was reserved")
                        .await
                        .map_err(handler_error)?
                    {
                        return Ok(Outcome::Ignored);
                    }
                }
                Err(e) => return Err(handler_error(e)),
            }
        }
        Err(HandlerError::Retry(
            format!("reservation {:?} is changing concurrently", rid.0).into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_the_ending_their_reason_makes() {
        let r = refusal("o", ErrorReason::ItemNotFound, "lines[0].item_id", "gone");
        assert_eq!(r.failure, CheckoutFailure::ItemNotFound);
        let r = refusal("o", ErrorReason::OutOfStock, "lines[0].quantity", "short");
        assert_eq!(r.failure, CheckoutFailure::OutOfStock);
    }

    #[test]
    fn event_lines_follow_the_cart_rules() {
        let line = |item_id: &str, quantity| checkout::Line {
            item_id: item_id.into(),
            quantity,
        };
        let id = "0123456789abcdef01234567";
        assert_eq!(parse_lines(&[line(id, 2)]).map(|l| l.len()), Ok(1));
        let field = |lines: &[checkout::Line]| parse_lines(lines).map_err(|e| e.field);
        assert_eq!(field(&[line(id, 0)]), Err("lines[0].quantity".into()));
        assert_eq!(
            field(&[line(id, u32::MAX)]),
            Err("lines[0].quantity".into())
        );
        assert_eq!(
            field(&[line(id, 1), line("nope", 1)]),
            Err("lines[1].item_id".into())
        );
        assert_eq!(field(&[]), Err("lines".into()));
    }
}
