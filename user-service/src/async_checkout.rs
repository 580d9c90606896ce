//! The asynchronous checkout, user-service's part (docs/architecture.md, "asynchronous
//! checkout"): it owns the order's state. RequestCheckout records the order PENDING with its
//! `checkout.requested` event in one transaction; then this service follows the other
//! services' events and moves the order on, each move written with the event it announces:
//!
//! - `stock.reserved`    -> the order is priced (still PENDING: "stock reserved")
//! - `payment.succeeded` -> PLACED, and `order.completed` (item-service commits the stock)
//! - `stock.refused` | `payment.declined` -> CANCELLED with the failure, and `order.cancelled`
//!   (item-service releases whatever it holds)
//!
//! Every move is a conditional UPDATE from the state it expects, so a redelivered event finds
//! it done and changes nothing (its outgoing event, having a derived id, is not written twice).
//! Asynchronous orders have no lease: the checkout recovery leaves them to the stream.

use platform::{
    FieldError, checkout_failure,
    events::{
        Envelope, HandlerError, Outcome,
        checkout::{self as ev, PaymentSucceeded, Refusal, StockReserved},
    },
    money::{Currency, Money},
};
use shop_proto::user::v1 as pb;
use sqlx::types::Json;
use uuid::Uuid;

use crate::{
    checkout_record::{self, RecordError},
    domain::UserId,
    orders::{self, StoredLine},
    outbox,
    store::{ORDER_COLUMNS, OrderRow, Store, StoreError},
};

pub const STRATEGY: &str = "async";

/// A RequestCheckout, parsed.
#[derive(Debug, Clone)]
pub struct AsyncCheckout {
    pub order_id: Uuid,
    pub user_id: UserId,
    pub lines: Vec<StoredLine>,
    pub card_token: CardToken,
}

/// The card processor's token for a card (`tok_` and up to 60 more letters, digits, `_`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardToken(String);

impl CardToken {
    pub fn parse(raw: &str, field: &str) -> Result<Self, FieldError> {
        let rest = raw.strip_prefix("tok_").unwrap_or("");
        if !rest.is_empty()
            && rest.len() <= 60
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            Ok(Self(raw.to_owned()))
        } else {
            Err(FieldError::new(
                field,
                "must be a card token from the card processor (tok_...)",
            ))
        }
    }
}

impl AsyncCheckout {
    pub fn parse(req: pb::RequestCheckoutRequest) -> Result<Self, FieldError> {
        Ok(Self {
            order_id: orders::parse_order_id(&req.order_id, "order_id")?,
            user_id: UserId::parse(&req.user_id, "user_id")?,
            lines: checkout_record::unpriced(&req.lines, "lines")?,
            card_token: CardToken::parse(&req.card_token, "card_token")?,
        })
    }

    fn cart(&self) -> Vec<(String, i32)> {
        let mut cart: Vec<_> = self
            .lines
            .iter()
            .map(|l| (l.item_id.to_ascii_lowercase(), l.quantity))
            .collect();
        cart.sort();
        cart
    }

    fn requested(&self) -> ev::CheckoutRequested {
        ev::CheckoutRequested {
            order_id: self.order_id.to_string(),
            user_id: self.user_id.0.to_string(),
            lines: self
                .lines
                .iter()
                .map(|l| ev::Line {
                    item_id: l.item_id.clone(),
                    quantity: u32::try_from(l.quantity).unwrap_or(0),
                })
                .collect(),
            card_token: self.card_token.0.clone(),
        }
    }
}

/// An event this service cannot write (a bug, not a state): the transaction is not committed.
fn envelope<T: serde::Serialize>(
    kind: &str,
    order_id: Uuid,
    data: &T,
    traceparent: Option<String>,
) -> Result<Envelope, StoreError> {
    ev::envelope(kind, &order_id.to_string(), data, traceparent)
        .map_err(|e| StoreError::Event(e.to_string()))
}

impl Store {
    /// Records the order PENDING and its `checkout.requested` event together, or returns the
    /// order an earlier call with the same id made (created = false).
    pub async fn request_checkout(
        &self,
        c: &AsyncCheckout,
        trace_id: &str,
        traceparent: Option<String>,
    ) -> Result<(OrderRow, bool), RecordError> {
        use platform::timing::StoreOp as _;
        let event = envelope(
            ev::CHECKOUT_REQUESTED,
            c.order_id,
            &c.requested(),
            traceparent,
        )?;
        let mut tx = platform::sql::begin(&self.pool).await?;
        let sql = format!(
            "INSERT INTO orders (order_id, user_id, lines, priced, total_minor, currency, \
             payment_id, reservation_id, status, strategy, trace_id, lease_token, created_at, \
             updated_at) \
             VALUES ($1, $2, $3, false, NULL, NULL, NULL, $4, 'pending', $5, $6, NULL, now(), now()) \
             ON CONFLICT (order_id) DO NOTHING RETURNING {ORDER_COLUMNS}"
        );
        let inserted = sqlx::query_as::<_, OrderRow>(&sql)
            .bind(c.order_id)
            .bind(c.user_id.0)
            .bind(Json(&c.lines))
            // The reservation of an asynchronous checkout is named by its order id.
            .bind(c.order_id.to_string())
            .bind(STRATEGY)
            .bind(trace_id)
            .fetch_optional(&mut *tx)
            .store_op("postgres", "request_checkout")
            .await
            .map_err(checkout_record::inserting)?;
        if let Some(row) = inserted {
            outbox::write(&mut tx, &event).await?;
            tx.commit().await?;
            return Ok((row, true));
        }
        tx.rollback().await?;
        let existing = self.same_checkout(c.order_id, c.user_id, &c.cart()).await?;
        if existing.strategy != STRATEGY {
            // The key was used for a synchronous checkout of the same cart.
            return Err(RecordError::OtherCart);
        }
        Ok((existing, false))
    }

    /// `stock.reserved`: the order takes the prices item-service reserved at.
    pub async fn on_stock_reserved(&self, e: &Envelope) -> Result<Outcome, HandlerError> {
        let data: StockReserved = ev::data(e).map_err(|err| reject(&err))?;
        let order_id = order_id_of(&data.order_id)?;
        let (lines, total) = priced(&data).map_err(|err| HandlerError::Reject(err.to_string()))?;
        let sql = format!(
            "UPDATE orders SET lines = $2, priced = true, total_minor = $3, currency = $4, \
             updated_at = now() \
             WHERE order_id = $1 AND strategy = 'async' AND status = 'pending' AND NOT priced \
             RETURNING {ORDER_COLUMNS}"
        );
        let moved = sqlx::query_as::<_, OrderRow>(&sql)
            .bind(order_id)
            .bind(Json(&lines))
            .bind(total.amount_minor())
            .bind(total.currency().code())
            .fetch_optional(&self.pool)
            .await
            .map_err(retry)?;
        if moved.is_some() {
            return Ok(Outcome::Applied);
        }
        match self.async_order(order_id).await? {
            row if row.priced => Ok(Outcome::Duplicate),
            // Cancelled before the reservation reached us (cannot happen in order, but an
            // operator may have cancelled it): item-service releases on order.cancelled.
            _ => Ok(Outcome::Ignored),
        }
    }

    /// `payment.succeeded`: PLACED, with `order.completed` for item-service.
    pub async fn on_payment_succeeded(&self, e: &Envelope) -> Result<Outcome, HandlerError> {
        let data: PaymentSucceeded = ev::data(e).map_err(|err| reject(&err))?;
        let order_id = order_id_of(&data.order_id)?;
        let completed = envelope(
            ev::ORDER_COMPLETED,
            order_id,
            &ev::OrderCompleted {
                order_id: data.order_id.clone(),
            },
            e.traceparent.clone(),
        )
        .map_err(retry)?;
        let mut tx = platform::sql::begin(&self.pool).await.map_err(retry)?;
        let sql = format!(
            "UPDATE orders SET status = 'placed', payment_id = $2, updated_at = now() \
             WHERE order_id = $1 AND strategy = 'async' AND status = 'pending' AND priced \
             RETURNING {ORDER_COLUMNS}"
        );
        let moved = sqlx::query_as::<_, OrderRow>(&sql)
            .bind(order_id)
            .bind(&data.payment_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(retry)?;
        if let Some(row) = moved {
            outbox::write(&mut tx, &completed).await.map_err(retry)?;
            tx.commit().await.map_err(retry)?;
            tracing::info!(order_id = %row.order_id, trace_id = %row.trace_id, payment_id = %data.payment_id, "asynchronous checkout placed");
            return Ok(Outcome::Applied);
        }
        tx.rollback().await.map_err(retry)?;
        let row = self.async_order(order_id).await?;
        match row.status.as_str() {
            "placed" if row.payment_id.as_deref() == Some(data.payment_id.as_str()) => {
                Ok(Outcome::Duplicate)
            }
            // The prices come with stock.reserved, read by another consumer: wait for it.
            "pending" => Err(HandlerError::Retry("the order is not priced yet".into())),
            other => Err(HandlerError::Reject(format!(
                "payment {} succeeded for an order that is {other}: needs a refund",
                data.payment_id
            ))),
        }
    }

    /// `stock.refused` / `payment.declined`: CANCELLED, with `order.cancelled`.
    pub async fn on_refusal(&self, e: &Envelope) -> Result<Outcome, HandlerError> {
        let data: Refusal = ev::data(e).map_err(|err| reject(&err))?;
        let order_id = order_id_of(&data.order_id)?;
        let failure = data.failure;
        let cancelled = envelope(
            ev::ORDER_CANCELLED,
            order_id,
            &ev::OrderCancelled {
                order_id: data.order_id.clone(),
                failure,
            },
            e.traceparent.clone(),
        )
        .map_err(retry)?;
        let mut tx = platform::sql::begin(&self.pool).await.map_err(retry)?;
        let sql = format!(
            "UPDATE orders SET status = 'cancelled', failure = $2, updated_at = now() \
             WHERE order_id = $1 AND strategy = 'async' AND status = 'pending' \
             RETURNING {ORDER_COLUMNS}"
        );
        let moved = sqlx::query_as::<_, OrderRow>(&sql)
            .bind(order_id)
            .bind(checkout_failure::code(failure))
            .fetch_optional(&mut *tx)
            .await
            .map_err(retry)?;
        if let Some(row) = moved {
            outbox::write(&mut tx, &cancelled).await.map_err(retry)?;
            tx.commit().await.map_err(retry)?;
            tracing::info!(order_id = %row.order_id, trace_id = %row.trace_id, failure = checkout_failure::code(failure), "asynchronous checkout cancelled");
            return Ok(Outcome::Applied);
        }
        tx.rollback().await.map_err(retry)?;
        let row = self.async_order(order_id).await?;
        match row.status.as_str() {
            "cancelled" => Ok(Outcome::Duplicate),
            other => Err(HandlerError::Reject(format!(
                "{} for an order that is {other}",
                e.kind
            ))),
        }
    }

    /// The asynchronous order `order_id`; an event about any other is poison.
    async fn async_order(&self, order_id: Uuid) -> Result<OrderRow, HandlerError> {
        match self.checkout(order_id).await.map_err(retry)? {
            Some(row) if row.strategy == STRATEGY => Ok(row),
            Some(_) => Err(HandlerError::Reject(format!(
                "order {order_id} is not an asynchronous checkout"
            ))),
            None => Err(HandlerError::Reject(format!("no order {order_id}"))),
        }
    }
}

fn retry(e: impl std::error::Error + Send + Sync + 'static) -> HandlerError {
    HandlerError::Retry(Box::new(e))
}

fn reject(e: &(dyn std::error::Error + 'static)) -> HandlerError {
    HandlerError::Reject(platform::telemetry::chain(e))
}

fn order_id_of(raw: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(raw)
        .map_err(|_| HandlerError::Reject(format!("order_id {raw:?} is not a UUID")))
}

/// The priced lines and total of a reservation, checked: positive quantities and prices, a
/// known currency, and a total that is the sum of the lines.
fn priced(r: &StockReserved) -> Result<(Vec<StoredLine>, Money), FieldError> {
    let currency = Currency::parse(&r.currency)
        .ok_or_else(|| FieldError::new("currency", "is not a supported currency"))?;
    let mut lines = Vec::with_capacity(r.lines.len());
    let mut sum: i64 = 0;
    for (i, l) in r.lines.iter().enumerate() {
        let quantity = i32::try_from(l.quantity)
            .ok()
            .filter(|q| *q > 0)
            .ok_or_else(|| FieldError::new(format!("lines[{i}].quantity"), "must be positive"))?;
        let line_total = l
            .unit_price_cents
            .checked_mul(i64::from(quantity))
            .filter(|t| *t >= 0 && l.unit_price_cents >= 0)
            .ok_or_else(|| FieldError::new(format!("lines[{i}].unit_price"), "is out of range"))?;
        sum = sum
            .checked_add(line_total)
            .ok_or_else(|| FieldError::new("amount", "is out of range"))?;
        lines.push(StoredLine {
            item_id: l.item_id.clone(),
            sku: l.sku.clone(),
            name: l.name.clone(),
            quantity,
            unit_price_minor: l.unit_price_cents,
            line_total_minor: line_total,
        });
    }
    if lines.is_empty() || sum != r.amount_cents {
        return Err(FieldError::new("amount", "is not the sum of the lines"));
    }
    let total = Money::new(sum, currency)?;
    Ok((lines, total))
}
