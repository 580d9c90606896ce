//! Pricing a cart with item-service's current prices (client prices are never believed).

use http::StatusCode;
use platform::{CallContext, money::Money};
use shop_proto::{common::v1 as common, item::v1 as item};

use crate::{downstream::Safety, error::ApiError, state::AppState};

/// Priced lines and their total.
pub struct Priced {
    pub lines: Vec<common::PricedLine>,
    pub total: Money,
}

/// Prices lines with item-service's current prices.
pub async fn price(
    state: &AppState,
    ctx: &CallContext,
    lines: &[common::ItemLine],
) -> Result<Priced, ApiError> {
    let ids = lines.iter().map(|l| l.item_id.clone()).collect();
    let resp = state
        .downstreams
        .item
        .call(
            ctx,
            crate::downstream::method::BATCH_GET_ITEMS,
            Safety::Idempotent,
            item::BatchGetItemsRequest { ids },
            |mut cl, r| async move { cl.batch_get_items(r).await },
        )
        .await?;
    let mut priced = Vec::with_capacity(lines.len());
    let mut total: Option<Money> = None;
    for (i, line) in lines.iter().enumerate() {
        let Some(it) = resp.items.iter().find(|it| it.id == line.item_id) else {
            return Err(
                ApiError::not_found(format!("item {} does not exist", line.item_id))
                    .with_field(format!("lines[{i}].item_id")),
            );
        };
        let unit = Money::parse(it.price.as_ref(), "price").map_err(|e| {
            tracing::error!(item = %it.id, error = %e, "item-service returned a bad price");
            ApiError::internal()
        })?;
        let line_total = unit.times(i64::from(line.quantity)).ok_or_else(|| {
            ApiError::bad_request(
                format!("lines[{i}].quantity"),
                "the line total is too large",
            )
        })?;
        total = Some(match total {
            None => line_total,
            Some(t) => t.plus(line_total).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "mixed_currencies",
                    "items priced in different currencies cannot be bought in one order",
                )
                .with_field(format!("lines[{i}].item_id"))
            })?,
        });
        priced.push(common::PricedLine {
            item_id: it.id.clone(),
            sku: it.sku.clone(),
            name: it.name.clone(),
            quantity: line.quantity,
            unit_price: Some(unit.into()),
            line_total: Some(line_total.into()),
        });
    }
    let total = total.ok_or_else(|| ApiError::bad_request("lines", "the cart is empty"))?;
    Ok(Priced {
        lines: priced,
        total,
    })
}
