//! The asynchronous checkout's events: the contract between the services, as the protobuf
//! files are for the synchronous calls. Each kind has exactly one writer.
//!
//! ```text
//! gateway --RequestCheckout--> user-service   [order PENDING + checkout.requested]
//! item-service    on checkout.requested -> reserve -> stock.reserved | stock.refused
//! payment-service on stock.reserved     -> charge  -> payment.succeeded | payment.declined
//! user-service    on stock.refused | payment.declined -> order CANCELLED + order.cancelled
//! user-service    on payment.succeeded  -> order PLACED + order.completed
//! item-service    on order.completed -> commit the reservation
//! item-service    on order.cancelled -> release the reservation (stock back)
//! ```
//!
//! The reservation of an asynchronous checkout is named by its order id, so whoever knows the
//! order knows the reservation.
//!
//! Every event of one checkout has the order id as its key, and its id is derived from
//! (order id, kind): a checkout has at most one event of each kind, so writing it twice
//! (a redelivered trigger, a replayed step) produces the same id, which the outboxes, the
//! broker and the consumers all recognise.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::envelope::{Envelope, EnvelopeError};
use crate::checkout_failure::CheckoutFailure;

pub const CHECKOUT_REQUESTED: &str = "checkout.requested";
pub const STOCK_RESERVED: &str = "stock.reserved";
pub const STOCK_REFUSED: &str = "stock.refused";
pub const PAYMENT_SUCCEEDED: &str = "payment.succeeded";
pub const PAYMENT_DECLINED: &str = "payment.declined";
pub const ORDER_COMPLETED: &str = "order.completed";
pub const ORDER_CANCELLED: &str = "order.cancelled";

/// Namespace of the derived event ids (a fixed random UUID).
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6c1b_3a5e_2f0d_4b8e_9a47_1d2c_8e5f_0b93);

/// The id of the `kind` event of checkout `order_id`: the same however often it is written.
pub fn event_id(order_id: &str, kind: &str) -> Uuid {
    Uuid::new_v5(&EVENT_ID_NAMESPACE, format!("{order_id}/{kind}").as_bytes())
}

/// Builds the envelope of a checkout event with its derived id.
pub fn envelope<T: Serialize>(
    kind: &str,
    order_id: &str,
    data: &T,
    traceparent: Option<String>,
) -> Result<Envelope, EnvelopeError> {
    let data = serde_json::to_value(data).map_err(EnvelopeError::Decode)?;
    let mut e = Envelope::new(kind, order_id, data)?.with_traceparent(traceparent);
    e.id = event_id(order_id, kind);
    Ok(e)
}

/// Reads an envelope's data as `T` (a malformed event can never apply: park it).
pub fn data<T: for<'de> Deserialize<'de>>(e: &Envelope) -> Result<T, EnvelopeError> {
    serde_json::from_value(e.data.clone()).map_err(EnvelopeError::Decode)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub item_id: String,
    pub quantity: u32,
}

/// The customer asked to buy; the order is recorded PENDING.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutRequested {
    pub order_id: String,
    pub user_id: String,
    pub lines: Vec<Line>,
    /// The card as the card processor tokenised it at the edge: no card number ever enters
    /// a database or the event stream.
    pub card_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    pub item_id: String,
    /// As the catalog showed them when the stock was reserved (the order keeps them).
    #[serde(default)]
    pub sku: String,
    #[serde(default)]
    pub name: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

/// Stock is held for the order, priced; payment may go ahead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReserved {
    pub order_id: String,
    pub user_id: String,
    pub reservation_id: String,
    pub lines: Vec<PricedLine>,
    pub amount_cents: i64,
    pub currency: String,
    pub card_token: String,
}

/// Why the checkout cannot go on, as data: the ending it makes and the field it concerns,
/// never a message to parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub order_id: String,
    #[serde(with = "crate::checkout_failure::as_code")]
    pub failure: CheckoutFailure,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For people reading the order: never decided on.
    pub message: String,
}

/// The card was charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentSucceeded {
    pub order_id: String,
    pub payment_id: String,
    pub amount_cents: i64,
    pub currency: String,
}

/// The order is placed: the reservation becomes a sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCompleted {
    pub order_id: String,
}

/// The order will not happen: whatever is held is given back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order_id: String,
    /// Why, as the order shows it.
    #[serde(with = "crate::checkout_failure::as_code")]
    pub failure: CheckoutFailure,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_id_per_checkout_and_kind() {
        assert_eq!(
            event_id("o-1", STOCK_RESERVED),
            event_id("o-1", STOCK_RESERVED)
        );
        assert_ne!(
            event_id("o-1", STOCK_RESERVED),
            event_id("o-1", STOCK_REFUSED)
        );
        assert_ne!(
            event_id("o-1", STOCK_RESERVED),
            event_id("o-2", STOCK_RESERVED)
        );
        let e = envelope(
            ORDER_COMPLETED,
            "o-1",
            &OrderCompleted {
                order_id: "o-1".into(),
            },
            None,
        )
        .unwrap();
        assert_eq!(e.id, event_id("o-1", ORDER_COMPLETED));
        let back: OrderCompleted = data(&e).unwrap();
        assert_eq!(back.order_id, "o-1");
        assert!(data::<StockReserved>(&e).is_err());
    }
}
