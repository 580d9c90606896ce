//! The REST API's JSON shapes, converted from the services' protobuf messages. They are
//! also the OpenAPI schemas, so the document and the real responses cannot drift apart.

use platform::checkout_failure::{self, CheckoutFailure};
use serde::{Deserialize, Serialize};
use shop_proto::{common::v1 as common, item::v1 as item, payment::v1 as pay, user::v1 as user};
use utoipa::{IntoParams, ToSchema};

pub use crate::checkout::Strategy;

/// RFC 3339 UTC timestamp, or "" when unknown.
pub fn timestamp(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|t| {
        let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
    })
    .and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_default()
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Money {
    /// Amount in minor units (cents).
    pub amount_minor: i64,
    /// ISO 4217 code, e.g. "USD".
    pub currency: String,
}

impl From<Option<&common::Money>> for Money {
    fn from(m: Option<&common::Money>) -> Self {
        match m {
            Some(m) => Self {
                amount_minor: m.amount_minor,
                currency: m.currency.clone(),
            },
            None => Self {
                amount_minor: 0,
                currency: String::new(),
            },
        }
    }
}

impl From<&Money> for common::Money {
    fn from(m: &Money) -> Self {
        Self {
            amount_minor: m.amount_minor,
            currency: m.currency.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    pub display_name: String,
    /// "customer" or "admin".
    pub role: String,
    pub created_at: String,
}

pub fn role_name(r: i32) -> String {
    match user::Role::try_from(r) {
        Ok(user::Role::Admin) => "admin",
        _ => "customer",
    }
    .to_owned()
}

impl From<&user::User> for User {
    fn from(u: &user::User) -> Self {
        Self {
            id: u.user_id.clone(),
            email: u.email.clone(),
            display_name: u.display_name.clone(),
            role: role_name(u.role),
            created_at: timestamp(u.created_at.as_ref()),
        }
    }
}

/// What a redacted field shows in `Debug` (passwords, tokens, card number and CVC).
const REDACTED: &str = "[redacted]";

#[derive(Clone, Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// An email address; trimmed and lower-cased by the service.
    #[schema(format = "email", max_length = 254)]
    pub email: String,
    /// 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    /// 1 to 64 characters.
    #[schema(min_length = 1, max_length = 64)]
    pub display_name: String,
}

impl std::fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("email", &self.email)
            .field("password", &REDACTED)
            .field("display_name", &self.display_name)
            .finish()
    }
}

#[derive(Clone, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("email", &self.email)
            .field("password", &REDACTED)
            .finish()
    }
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    /// Send as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Always "Bearer".
    pub token_type: String,
    pub expires_in_seconds: i64,
    pub user: User,
}

impl std::fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("access_token", &REDACTED)
            .field("token_type", &self.token_type)
            .field("expires_in_seconds", &self.expires_in_seconds)
            .field("user", &self.user)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Item {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price: Money,
    /// Units available (not reserved).
    pub stock: i64,
    pub image_url: String,
    pub created_at: String,
    pub updated_at: String,
    /// Send back as `expected_version` when updating.
    pub version: i64,
}

impl From<&item::Item> for Item {
    fn from(i: &item::Item) -> Self {
        Self {
            id: i.id.clone(),
            sku: i.sku.clone(),
            name: i.name.clone(),
            description: i.description.clone(),
            category: i.category.clone(),
            price: i.price.as_ref().into(),
            stock: i.stock,
            // The shop draws a picture for every item (`/img/items/{id}.svg`) unless one
            // was given.
            image_url: if i.image_url.is_empty() {
                format!("/img/items/{}.svg?v={}", i.id, i.version)
            } else {
                i.image_url.clone()
            },
            created_at: timestamp(i.created_at.as_ref()),
            updated_at: timestamp(i.updated_at.as_ref()),
            version: i.version,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ItemPage {
    pub items: Vec<Item>,
    /// Pass as `page_token` for the next page; null on the last page.
    pub next_page_token: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum ItemSort {
    #[default]
    NameAsc,
    PriceAsc,
    PriceDesc,
    Newest,
}

impl From<ItemSort> for item::ItemSort {
    fn from(s: ItemSort) -> Self {
        match s {
            ItemSort::NameAsc => Self::NameAsc,
            ItemSort::PriceAsc => Self::PriceAsc,
            ItemSort::PriceDesc => Self::PriceDesc,
            ItemSort::Newest => Self::Newest,
        }
    }
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ItemQuery {
    /// Case-insensitive substring of the name.
    pub q: Option<String>,
    /// Exact category.
    pub category: Option<String>,
    pub sort: Option<ItemSort>,
    /// 1..=100, default 20.
    pub page_size: Option<i32>,
    pub page_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1..=100, default 20.
    pub page_size: Option<i32>,
    pub page_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CreateItemRequest {
    pub sku: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub category: String,
    pub price: Money,
    pub stock: i64,
    #[serde(default)]
    pub image_url: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct UpdateItemRequest {
    /// The `version` you last read; a stale one is 409.
    pub expected_version: i64,
    pub name: Option<String>,
    pub description: Option<String>,
    pub category: Option<String>,
    pub price: Option<Money>,
    pub stock: Option<i64>,
    pub image_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CartLine {
    /// Item id (24 hex digits).
    pub item_id: String,
    /// 1..=1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i32,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CartRequest {
    /// 1..=50 lines, each item at most once. Prices sent by clients are ignored.
    #[schema(min_items = 1, max_items = 50)]
    pub lines: Vec<CartLine>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PricedLine {
    pub item_id: String,
    pub sku: String,
    pub name: String,
    pub quantity: i32,
    pub unit_price: Money,
    pub line_total: Money,
}

impl From<&common::PricedLine> for PricedLine {
    fn from(l: &common::PricedLine) -> Self {
        Self {
            item_id: l.item_id.clone(),
            sku: l.sku.clone(),
            name: l.name.clone(),
            quantity: l.quantity,
            unit_price: l.unit_price.as_ref().into(),
            line_total: l.line_total.as_ref().into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PricedCart {
    pub lines: Vec<PricedLine>,
    pub total: Money,
}

#[derive(Clone, Deserialize, ToSchema)]
pub struct Card {
    /// Test cards: 4242 4242 4242 4242 succeeds, 4000 0000 0000 0002 is declined,
    /// 4000 0000 0000 9995 has insufficient funds.
    pub number: String,
    pub exp_month: i32,
    pub exp_year: i32,
    pub cvc: String,
}

impl std::fmt::Debug for Card {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Card")
            .field("number", &REDACTED)
            .field("exp_month", &self.exp_month)
            .field("exp_year", &self.exp_year)
            .field("cvc", &REDACTED)
            .finish()
    }
}

impl From<&Card> for pay::Card {
    fn from(c: &Card) -> Self {
        Self {
            number: c.number.clone(),
            exp_month: c.exp_month,
            exp_year: c.exp_year,
            cvc: c.cvc.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CheckoutRequest {
    /// 1..=50 lines, each item at most once.
    pub lines: Vec<CartLine>,
    pub card: Card,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CheckoutQuery {
    /// orchestrated (default), parallel, chained or async.
    pub strategy: Option<Strategy>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Order {
    pub id: String,
    pub user_id: String,
    pub lines: Vec<PricedLine>,
    pub total: Money,
    pub payment_id: String,
    pub reservation_id: String,
    /// "placed" or "refunded"; for a checkout still being settled "pending" (being
    /// completed) or "cancelling" (refund and stock release under way); "cancelled" when it
    /// ended with nothing kept.
    pub status: String,
    /// Why a cancelling/cancelled checkout went backward (e.g. "out_of_stock",
    /// "card_declined", "reservation_expired", "abandoned"); null otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// False while the lines have no prices yet (a chained or asynchronous checkout before
    /// the stock was reserved): lines then carry item and quantity only, total is empty.
    #[serde(default = "priced_default")]
    pub priced: bool,
    pub created_at: String,
}

fn priced_default() -> bool {
    true
}

impl From<&user::Order> for Order {
    fn from(o: &user::Order) -> Self {
        let status = match user::OrderStatus::try_from(o.status) {
            Ok(user::OrderStatus::Refunded) => "refunded",
            Ok(user::OrderStatus::Pending) => "pending",
            Ok(user::OrderStatus::Cancelling) => "cancelling",
            Ok(user::OrderStatus::Cancelled) => "cancelled",
            _ => "placed",
        };
        Self {
            id: o.order_id.clone(),
            user_id: o.user_id.clone(),
            lines: o.lines.iter().map(PricedLine::from).collect(),
            total: o.total.as_ref().into(),
            payment_id: o.payment_id.clone(),
            reservation_id: o.reservation_id.clone(),
            status: status.to_owned(),
            failure: match o.failure() {
                CheckoutFailure::Unspecified => None,
                f => Some(checkout_failure::code(f).to_owned()),
            },
            priced: o.priced,
            created_at: timestamp(o.created_at.as_ref()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Payment {
    pub id: String,
    pub order_id: String,
    pub amount: Money,
    pub amount_refunded: Money,
    /// "pending", "succeeded", "declined", "failed" or "refunded".
    pub status: String,
    /// e.g. "card_declined", "insufficient_funds"; "" otherwise.
    pub decline_code: String,
    pub card_brand: String,
    pub card_last4: String,
    pub created_at: String,
}

pub fn payment_status_name(s: i32) -> &'static str {
    match pay::PaymentStatus::try_from(s) {
        Ok(pay::PaymentStatus::Pending) => "pending",
        Ok(pay::PaymentStatus::Succeeded) => "succeeded",
        Ok(pay::PaymentStatus::Declined) => "declined",
        Ok(pay::PaymentStatus::Failed) => "failed",
        Ok(pay::PaymentStatus::Refunded) => "refunded",
        _ => "unknown",
    }
}

impl From<&pay::Payment> for Payment {
    fn from(p: &pay::Payment) -> Self {
        Self {
            id: p.payment_id.clone(),
            order_id: p.order_id.clone(),
            amount: p.amount.as_ref().into(),
            amount_refunded: p.amount_refunded.as_ref().into(),
            status: payment_status_name(p.status).to_owned(),
            decline_code: p.decline_code.clone(),
            card_brand: p.card_brand.clone(),
            card_last4: p.card_last4.clone(),
            created_at: timestamp(p.created_at.as_ref()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckoutResponse {
    /// status "placed" (201), or "pending" (202) while the checkout recovery completes a
    /// paid order: GET /api/orders/{id} shows it placed shortly.
    pub order: Order,
    pub payment: Option<Payment>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderPage {
    pub orders: Vec<Order>,
    /// null on the last page.
    pub next_page_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderDetail {
    pub order: Order,
    /// null when payment-service could not be asked in time (the order itself is certain).
    pub payment: Option<Payment>,
    /// True while the order is not priced yet (an asynchronous or chained checkout before
    /// its stock is reserved): its lines' names and prices are the catalog's now, looked
    /// up for display; the order's own prices are fixed when the stock is reserved.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lines_from_catalog: bool,
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    const PAN: &str = "4242424242424242";
    const CVC: &str = "987";
    const PASSWORD: &str = "correct horse battery";
    const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";

    fn card() -> Card {
        Card {
            number: PAN.into(),
            exp_month: 12,
            exp_year: 2031,
            cvc: CVC.into(),
        }
    }

    fn assert_hidden(shown: &str) {
        for secret in [PAN, CVC, PASSWORD, TOKEN] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains(REDACTED), "{shown}");
    }

    #[test]
    fn debug_of_cards_passwords_and_tokens_hides_them() {
        assert_hidden(&format!("{:?}", card()));
        assert_hidden(&format!(
            "{:#?}",
            CheckoutRequest {
                lines: Vec::new(),
                card: card(),
            }
        ));
        assert_hidden(&format!(
            "{:?}",
            RegisterRequest {
                email: "a@b.co".into(),
                password: PASSWORD.into(),
                display_name: "Ada".into(),
            }
        ));
        assert_hidden(&format!(
            "{:?}",
            LoginRequest {
                email: "a@b.co".into(),
                password: PASSWORD.into(),
            }
        ));
        let response = LoginResponse {
            access_token: TOKEN.into(),
            token_type: "Bearer".into(),
            expires_in_seconds: 3600,
            user: User {
                id: "u".into(),
                email: "a@b.co".into(),
                display_name: "Ada".into(),
                role: "customer".into(),
                created_at: "2026-01-01T00:00:00Z".into(),
            },
        };
        let shown = format!("{response:?}");
        assert_hidden(&shown);
        assert!(shown.contains("a@b.co"), "non-secret fields still show");
    }
}
