//! Catalog: list/search/get for everyone; create/update/delete for admins.

use axum::{
    Json,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
};
use http::{HeaderMap, StatusCode};
use shop_proto::{common::v1::PageRequest, item::v1 as pb};

use super::model::{CreateItemRequest, Item, ItemPage, ItemQuery, UpdateItemRequest};
use crate::{
    auth::AdminUser,
    downstream::Safety,
    error::{ApiError, ErrorBody},
    state::AppState,
};

/// Service field names -> the REST names the client sent.
fn rest_field(e: ApiError) -> ApiError {
    let field = e.field.clone();
    match field.as_deref() {
        Some("page.page_size") => e.with_field("page_size"),
        Some("page.page_token") => e.with_field("page_token"),
        Some("query") => e.with_field("q"),
        _ => e,
    }
}

fn item_id(raw: &str) -> Result<String, ApiError> {
    let id = raw.trim();
    if id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(ApiError::not_found("no such item").with_field("id"))
    }
}

#[utoipa::path(get, path = "/api/items", tag = "items", params(ItemQuery),
    responses(
        (status = 200, description = "A page of items", body = ItemPage),
        (status = 400, description = "Invalid filter or page", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ItemQuery>, QueryRejection>,
) -> Result<Json<ItemPage>, ApiError> {
    let Query(q) = q?;
    let ctx = state.budgets.read_ctx(&headers);
    let req = pb::ListItemsRequest {
        category: q.category.unwrap_or_default(),
        query: q.q.unwrap_or_default(),
        sort: pb::ItemSort::from(q.sort.unwrap_or_default()) as i32,
        page: Some(PageRequest {
            page_size: q.page_size.unwrap_or(0),
            page_token: q.page_token.unwrap_or_default(),
        }),
    };
    let resp = state
        .downstreams
        .item
        .call(
            &ctx,
            crate::downstream::method::LIST_ITEMS,
            Safety::Idempotent,
            req,
            |mut c, r| async move { c.list_items(r).await },
        )
        .await
        .map_err(|s| rest_field(ApiError::from_status(&s)))?;
    Ok(Json(ItemPage {
        items: resp.items.iter().map(Item::from).collect(),
        next_page_token: resp
            .page
            .map(|p| p.next_page_token)
            .filter(|t| !t.is_empty()),
    }))
}

#[utoipa::path(get, path = "/api/items/{id}", tag = "items",
    params(("id" = String, Path, description = "Item id (24 hex digits)")),
    responses(
        (status = 200, description = "The item", body = Item),
        (status = 404, description = "No such item", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Item>, ApiError> {
    let Path(id) = id?;
    let id = item_id(&id)?;
    let ctx = state.budgets.read_ctx(&headers);
    let resp = state
        .downstreams
        .item
        .call(
            &ctx,
            crate::downstream::method::GET_ITEM,
            Safety::Idempotent,
            pb::GetItemRequest { id },
            |mut c, r| async move { c.get_item(r).await },
        )
        .await?;
    resp.item
        .as_ref()
        .map(|i| Json(Item::from(i)))
        .ok_or_else(ApiError::internal)
}

#[utoipa::path(post, path = "/api/items", tag = "admin", request_body = CreateItemRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = Item),
        (status = 400, description = "A field is invalid", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "SKU already exists", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    admin: AdminUser,
    body: Result<Json<CreateItemRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Item>), ApiError> {
    let Json(b) = body?;
    let ctx = state
        .budgets
        .checkout_ctx(&headers)
        .for_user(Some(admin.0.assertion()));
    let req = pb::CreateItemRequest {
        sku: b.sku,
        name: b.name,
        description: b.description,
        category: b.category,
        price: Some((&b.price).into()),
        stock: b.stock,
        image_url: b.image_url,
    };
    let resp = state
        .downstreams
        .item
        .call(
            &ctx,
            crate::downstream::method::CREATE_ITEM,
            Safety::Once,
            req,
            |mut c, r| async move { c.create_item(r).await },
        )
        .await?;
    let item = resp
        .item
        .as_ref()
        .map(Item::from)
        .ok_or_else(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(item)))
}

#[utoipa::path(patch, path = "/api/items/{id}", tag = "admin", request_body = UpdateItemRequest,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Item id")),
    responses(
        (status = 200, description = "Updated", body = Item),
        (status = 400, description = "A field is invalid", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such item", body = ErrorBody),
        (status = 409, description = "expected_version is stale", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    admin: AdminUser,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<UpdateItemRequest>, JsonRejection>,
) -> Result<Json<Item>, ApiError> {
    let Path(id) = id?;
    let id = item_id(&id)?;
    let Json(b) = body?;
    let ctx = state
        .budgets
        .checkout_ctx(&headers)
        .for_user(Some(admin.0.assertion()));
    let req = pb::UpdateItemRequest {
        id,
        expected_version: b.expected_version,
        name: b.name,
        description: b.description,
        category: b.category,
        price: b.price.as_ref().map(Into::into),
        stock: b.stock,
        image_url: b.image_url,
    };
    let resp = state
        .downstreams
        .item
        .call(
            &ctx,
            crate::downstream::method::UPDATE_ITEM,
            Safety::Once,
            req,
            |mut c, r| async move { c.update_item(r).await },
        )
        .await?;
    resp.item
        .as_ref()
        .map(|i| Json(Item::from(i)))
        .ok_or_else(ApiError::internal)
}

#[utoipa::path(delete, path = "/api/items/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "Item id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such item", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    admin: AdminUser,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    let id = item_id(&id)?;
    let ctx = state
        .budgets
        .checkout_ctx(&headers)
        .for_user(Some(admin.0.assertion()));
    state
        .downstreams
        .item
        .call(
            &ctx,
            crate::downstream::method::DELETE_ITEM,
            Safety::Once,
            pb::DeleteItemRequest { id },
            |mut c, r| async move { c.delete_item(r).await },
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
