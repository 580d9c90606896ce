//! The caller's order history.

use axum::{
    Json,
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
};
use http::HeaderMap;
use platform::CallContext;
use shop_proto::{common::v1::PageRequest, item::v1 as item_pb, user::v1 as pb};

use super::model::{Money, Order, OrderDetail, OrderPage, PageQuery, Payment, PricedLine};
use crate::{
    auth::AuthUser,
    downstream::Safety,
    error::{ApiError, ErrorBody},
    state::AppState,
};

#[utoipa::path(get, path = "/api/orders", tag = "orders", params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Your orders, newest first", body = OrderPage),
        (status = 400, description = "Invalid page", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<OrderPage>, ApiError> {
    let Query(q) = q?;
    let ctx = state
        .budgets
        .read_ctx(&headers)
        .for_user(Some(user.assertion()));
    let req = pb::ListOrdersRequest {
        user_id: user.user_id.to_string(),
        page: Some(PageRequest {
            page_size: q.page_size.unwrap_or(0),
            page_token: q.page_token.unwrap_or_default(),
        }),
    };
    let resp = state
        .downstreams
        .user
        .call(
            &ctx,
            crate::downstream::method::LIST_ORDERS,
            Safety::Idempotent,
            req,
            |mut c, r| async move { c.list_orders(r).await },
        )
        .await
        .map_err(|s| {
            let e = ApiError::from_status(&s);
            match e.field.as_deref() {
                Some("page.page_size") => e.with_field("page_size"),
                Some("page.page_token") => e.with_field("page_token"),
                _ => e,
            }
        })?;
    Ok(Json(OrderPage {
        orders: resp.orders.iter().map(Order::from).collect(),
        next_page_token: resp
            .page
            .map(|p| p.next_page_token)
            .filter(|t| !t.is_empty()),
    }))
}

#[utoipa::path(get, path = "/api/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = String, Path, description = "Order id (UUID)")),
    responses(
        (status = 200, description = "The order with its payment", body = OrderDetail),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 404, description = "No such order of yours", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<OrderDetail>, ApiError> {
    let Path(id) = id?;
    let id = uuid::Uuid::parse_str(id.trim())
        .map_err(|_| ApiError::not_found("no such order").with_field("id"))?;
    let ctx = state
        .budgets
        .read_ctx(&headers)
        .for_user(Some(user.assertion()));
    let resp = state
        .downstreams
        .user
        .call(
            &ctx,
            crate::downstream::method::GET_ORDER,
            Safety::Idempotent,
            pb::GetOrderRequest {
                order_id: id.to_string(),
                user_id: user.user_id.to_string(),
            },
            |mut c, r| async move { c.get_order(r).await },
        )
        .await?;
    let order = resp.order.ok_or_else(ApiError::internal)?;
    // The payment is a detail: without payment-service the order still shows. A checkout
    // still being settled may have a payment before its order records it.
    let payment = if order.payment_id.is_empty()
        && !matches!(
            order.status(),
            pb::OrderStatus::Pending | pb::OrderStatus::Cancelling | pb::OrderStatus::Cancelled
        ) {
        None
    } else {
        crate::checkout::record::payment_of(&state, &ctx, &order)
            .await
            .filter(|p| p.user_id.is_empty() || p.user_id == user.user_id.to_string())
    };
    let mut shown = Order::from(&order);
    let lines_from_catalog = !shown.priced && name_lines(&state, &ctx, &mut shown.lines).await;
    Ok(Json(OrderDetail {
        order: shown,
        payment: payment.as_ref().map(Payment::from),
        lines_from_catalog,
    }))
}

/// Fills an unpriced order's lines (item and quantity only, as accepted) with the names and
/// current prices of the catalog, so a pending order shows what was bought. Best effort:
/// false (lines unchanged) when item-service cannot say.
async fn name_lines(state: &AppState, ctx: &CallContext, lines: &mut [PricedLine]) -> bool {
    if lines.is_empty() {
        return false;
    }
    let ids = lines.iter().map(|l| l.item_id.clone()).collect();
    let Ok(resp) = state
        .downstreams
        .item
        .call(
            ctx,
            crate::downstream::method::BATCH_GET_ITEMS,
            Safety::Idempotent,
            item_pb::BatchGetItemsRequest { ids },
            |mut c, r| async move { c.batch_get_items(r).await },
        )
        .await
    else {
        return false;
    };
    let mut named = false;
    for line in lines.iter_mut() {
        if let Some(it) = resp.items.iter().find(|it| it.id == line.item_id) {
            let unit = Money::from(it.price.as_ref());
            line.sku = it.sku.clone();
            line.name = it.name.clone();
            line.line_total = Money {
                amount_minor: unit.amount_minor.saturating_mul(i64::from(line.quantity)),
                currency: unit.currency.clone(),
            };
            line.unit_price = unit;
            named = true;
        }
    }
    named
}
