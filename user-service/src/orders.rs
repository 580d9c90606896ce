//! Order history: what RecordOrder accepts, how orders are stored and shown, and the
//! ListOrders cursor.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use platform::{
    FieldError,
    checkout_failure::{self, CheckoutFailure},
    money::{Currency, Money},
};
use serde::{Deserialize, Serialize};
use shop_proto::{common::v1 as common, user::v1 as pb};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{domain::UserId, store::OrderRow};

pub const MAX_LINES: usize = platform::cart::MAX_LINES;

/// A priced line as stored (prices as they were at checkout). A chained checkout's record
/// stores item_id and quantity only until payment-service has priced them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLine {
    pub item_id: String,
    #[serde(default)]
    pub sku: String,
    #[serde(default)]
    pub name: String,
    pub quantity: i32,
    #[serde(default)]
    pub unit_price_minor: i64,
    #[serde(default)]
    pub line_total_minor: i64,
}

impl StoredLine {
    /// A line before pricing.
    pub fn unpriced(item_id: &str, quantity: i32) -> Self {
        Self {
            item_id: item_id.to_owned(),
            sku: String::new(),
            name: String::new(),
            quantity,
            unit_price_minor: 0,
            line_total_minor: 0,
        }
    }
}

/// A validated order to record.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub order_id: Uuid,
    pub user_id: UserId,
    pub lines: Vec<StoredLine>,
    pub total: Money,
    pub payment_id: String,
    pub reservation_id: String,
    pub status: &'static str,
}

fn bounded(value: &str, field: &str, max: usize) -> Result<String, FieldError> {
    let v = value.trim();
    if v.is_empty() || v.chars().count() > max {
        return Err(FieldError::new(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    Ok(v.to_owned())
}

impl NewOrder {
    /// Checks an order as checkout sends it: ids, 1..=50 lines, every line's total equal to
    /// unit price x quantity, one currency, and the order total equal to the sum.
    pub fn parse(order: Option<pb::Order>) -> Result<Self, FieldError> {
        let o = order.ok_or_else(|| FieldError::new("order", "is required"))?;
        let order_id = parse_order_id(&o.order_id, "order.order_id")?;
        let user_id = UserId::parse(&o.user_id, "order.user_id")?;
        let (lines, total) = parse_priced(o.lines, o.total.as_ref(), "order.")?;
        let status = match pb::OrderStatus::try_from(o.status) {
            Ok(pb::OrderStatus::Refunded) => "refunded",
            _ => "placed",
        };
        Ok(Self {
            order_id,
            user_id,
            lines,
            total,
            payment_id: bounded(&o.payment_id, "order.payment_id", 64)?,
            reservation_id: bounded(&o.reservation_id, "order.reservation_id", 255)?,
            status,
        })
    }
}

pub fn parse_order_id(value: &str, field: &str) -> Result<Uuid, FieldError> {
    Uuid::parse_str(value.trim()).map_err(|_| FieldError::new(field, "must be a UUID"))
}

pub fn parse_reservation_id(value: &str, field: &str) -> Result<String, FieldError> {
    bounded(value, field, 255)
}

pub fn parse_payment_id(value: &str, field: &str) -> Result<String, FieldError> {
    bounded(value, field, 64)
}

/// 1..=50 priced lines, each total = unit price x quantity, one currency, and `total` the
/// sum. `prefix` goes before the field names ("order." or "").
pub fn parse_priced(
    lines: Vec<common::PricedLine>,
    total: Option<&common::Money>,
    prefix: &str,
) -> Result<(Vec<StoredLine>, Money), FieldError> {
    if lines.is_empty() || lines.len() > MAX_LINES {
        return Err(FieldError::new(
            format!("{prefix}lines"),
            format!("must have 1 to {MAX_LINES} lines"),
        ));
    }
    let total = Money::parse(total, &format!("{prefix}total"))?;
    let mut sum = Money::zero(total.currency());
    let mut stored = Vec::with_capacity(lines.len());
    for (i, l) in lines.into_iter().enumerate() {
        let field = |f: &str| format!("{prefix}lines[{i}].{f}");
        let line = parse_line(l, total.currency())
            .map_err(|e| FieldError::new(field(e.field.as_str()), e.message))?;
        sum = Money::new(line.line_total_minor, total.currency())
            .ok()
            .and_then(|t| sum.plus(t))
            .ok_or_else(|| FieldError::new(field("line_total"), "overflows"))?;
        stored.push(line);
    }
    if sum != total {
        return Err(FieldError::new(
            format!("{prefix}total"),
            format!(
                "must equal the sum of the lines ({} {})",
                sum.amount_minor(),
                sum.currency()
            ),
        ));
    }
    Ok((stored, total))
}

fn parse_line(l: common::PricedLine, currency: Currency) -> Result<StoredLine, FieldError> {
    if !(1..=1000).contains(&l.quantity) {
        return Err(FieldError::new("quantity", "must be 1 to 1000"));
    }
    let unit = Money::parse(l.unit_price.as_ref(), "unit_price")?;
    let total = Money::parse(l.line_total.as_ref(), "line_total")?;
    if unit.currency() != currency || total.currency() != currency {
        return Err(FieldError::new(
            "unit_price",
            "must be in the order's currency",
        ));
    }
    if unit.times(i64::from(l.quantity)) != Some(total) {
        return Err(FieldError::new(
            "line_total",
            "must equal unit_price x quantity",
        ));
    }
    Ok(StoredLine {
        item_id: bounded(&l.item_id, "item_id", 64)?,
        sku: bounded(&l.sku, "sku", 64)?,
        name: bounded(&l.name, "name", 200)?,
        quantity: l.quantity,
        unit_price_minor: unit.amount_minor(),
        line_total_minor: total.amount_minor(),
    })
}

pub fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

impl OrderRow {
    pub fn status(&self) -> pb::OrderStatus {
        match self.status.as_str() {
            "pending" => pb::OrderStatus::Pending,
            "cancelling" => pb::OrderStatus::Cancelling,
            "cancelled" => pb::OrderStatus::Cancelled,
            "refunded" => pb::OrderStatus::Refunded,
            _ => pb::OrderStatus::Placed,
        }
    }

    /// The (item, quantity) pairs, sorted: what a retry with the same key must ask for again.
    pub fn cart(&self) -> Vec<(String, i32)> {
        let mut cart: Vec<_> = self
            .lines
            .0
            .iter()
            .map(|l| (l.item_id.to_ascii_lowercase(), l.quantity))
            .collect();
        cart.sort();
        cart
    }
}

impl From<OrderRow> for pb::Order {
    fn from(r: OrderRow) -> Self {
        let currency = r.currency.clone().unwrap_or_default();
        let money = |amount_minor| common::Money {
            amount_minor,
            currency: currency.clone(),
        };
        let priced = r.priced;
        pb::Order {
            order_id: r.order_id.to_string(),
            user_id: r.user_id.to_string(),
            lines: r
                .lines
                .0
                .iter()
                .map(|l| common::PricedLine {
                    item_id: l.item_id.clone(),
                    sku: l.sku.clone(),
                    name: l.name.clone(),
                    quantity: l.quantity,
                    unit_price: priced.then(|| money(l.unit_price_minor)),
                    line_total: priced.then(|| money(l.line_total_minor)),
                })
                .collect(),
            total: r.total_minor.filter(|_| priced).map(money),
            payment_id: r.payment_id.clone().unwrap_or_default(),
            reservation_id: r.reservation_id.clone(),
            status: r.status() as i32,
            created_at: Some(timestamp(r.created_at)),
            failure: r
                .failure
                .as_deref()
                .map_or(CheckoutFailure::Unspecified, checkout_failure::from_stored)
                .into(),
            updated_at: Some(timestamp(r.updated_at)),
            priced,
        }
    }
}

/// ListOrders cursor: the (created_at, order_id) of the last order on the previous page.
pub fn encode_cursor(at: OffsetDateTime, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{id}", at.unix_timestamp_nanos()))
}

pub fn decode_cursor(token: &str) -> Result<(OffsetDateTime, Uuid), FieldError> {
    let bad = || FieldError::new("page.page_token", "is not a valid page token");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (nanos, id) = text.split_once(':').ok_or_else(bad)?;
    let nanos: i128 = nanos.parse().map_err(|_| bad())?;
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| bad())?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok((at, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let at = OffsetDateTime::now_utc();
        let id = Uuid::new_v4();
        assert_eq!(decode_cursor(&encode_cursor(at, id)), Ok((at, id)));
        assert!(decode_cursor("!!!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("12:nope")).is_err());
    }
}
