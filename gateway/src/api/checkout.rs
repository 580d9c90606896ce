//! Cart pricing and checkout.

use axum::{
    Json,
    extract::{
        Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
};
use http::{HeaderMap, StatusCode};
use shop_proto::common::v1 as common;

use super::model::{
    CartLine, CartRequest, CheckoutQuery, CheckoutRequest, CheckoutResponse, Money, Order, Payment,
    PricedCart, PricedLine,
};
use crate::{
    auth::AuthUser,
    checkout::{self, Checkout},
    error::{ApiError, ErrorBody},
    state::AppState,
};

#[utoipa::path(post, path = "/api/cart/price", tag = "checkout", request_body = CartRequest,
    responses(
        (status = 200, description = "The cart at current prices", body = PricedCart),
        (status = 400, description = "A line is invalid", body = ErrorBody),
        (status = 404, description = "An item does not exist (error.field names the line)", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn price(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<CartRequest>, JsonRejection>,
) -> Result<Json<PricedCart>, ApiError> {
    let Json(body) = body?;
    let lines = parse_lines(&body.lines)?;
    let ctx = state.budgets.read_ctx(&headers);
    let priced = checkout::price(&state, &ctx, &lines).await?;
    Ok(Json(PricedCart {
        lines: priced.lines.iter().map(PricedLine::from).collect(),
        total: {
            let total: shop_proto::common::v1::Money = priced.total.into();
            Money::from(Some(&total))
        },
    }))
}

/// Places an order: prices the lines (client prices are ignored), reserves the stock,
/// charges the card, commits the reservation and records the order. Retrying with the same
/// Idempotency-Key returns the first outcome; nothing is charged or reserved twice.
#[utoipa::path(post, path = "/api/checkout", tag = "checkout", request_body = CheckoutRequest,
    security(("bearer" = [])),
    params(
        CheckoutQuery,
        ("Idempotency-Key" = String, Header, description = "Unique per checkout (1..=200 printable ASCII); a retry with the same key returns the first outcome"),
    ),
    responses(
        (status = 201, description = "Order placed and paid", body = CheckoutResponse),
        (status = 202, description = "Paid; the order is being completed in the background (status pending)", body = CheckoutResponse),
        (status = 400, description = "Invalid cart, card or key (error.field)", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 402, description = "Card declined (code card_declined); nothing charged, stock released", body = ErrorBody),
        (status = 404, description = "An item does not exist", body = ErrorBody),
        (status = 409, description = "Out of stock, or the key belongs to another cart or a rolled-back checkout", body = ErrorBody),
        (status = 503, description = "A service is unavailable; nothing kept charged", body = ErrorBody),
        (status = 504, description = "The deadline passed", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn checkout(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    query: Result<Query<CheckoutQuery>, QueryRejection>,
    body: Result<Json<CheckoutRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<CheckoutResponse>), ApiError> {
    let Query(query) = query?;
    let Json(body) = body?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key", "must be printable ASCII"))?,
        ),
    };
    let asserted = user.assertion();
    let c = parse_checkout(user, key, &body)?;
    let strategy = query.strategy.unwrap_or_default();
    let ctx = state
        .budgets
        .checkout_ctx(&headers)
        .for_user(Some(asserted));
    let out = checkout::run(state.clone(), strategy, c, ctx).await?;
    let status = if out.order.status() == shop_proto::user::v1::OrderStatus::Pending {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(CheckoutResponse {
            order: Order::from(&out.order),
            payment: out.payment.as_ref().map(Payment::from),
        }),
    ))
}

/// The checkout a request asks for, parsed at the edge.
fn parse_checkout(
    user: AuthUser,
    key: Option<&str>,
    req: &CheckoutRequest,
) -> Result<Checkout, ApiError> {
    let key = key.ok_or_else(|| {
        ApiError::bad_request(
            "Idempotency-Key",
            "the Idempotency-Key header is required (any unique string per checkout, e.g. a UUID)",
        )
    })?;
    platform::ids::validate_idempotency_key(key, "Idempotency-Key")?;
    let lines = parse_lines(&req.lines)?;
    Ok(Checkout {
        user,
        key: key.to_owned(),
        lines,
        card: (&req.card).into(),
    })
}

/// Cart lines: the shared cart rules ([`platform::cart`]), reported like every other bad
/// field (the message without the field prefix the services' statuses carry).
fn parse_lines(lines: &[CartLine]) -> Result<Vec<common::ItemLine>, ApiError> {
    platform::cart::validate(lines.iter().map(|l| (l.item_id.as_str(), l.quantity)))
        .map_err(|e| ApiError::bad_request(e.field, e.message))
}
