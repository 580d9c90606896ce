//! A picture for every catalog item, drawn by the shop itself (no outside photo service):
//! an SVG whose colour comes from the item's id, with the initials of its name and its
//! category. `/img/items/{id}.svg?v={version}` is immutable (a changed item has a new
//! version, hence a new URL); without `v` the browser revalidates with the ETag.

use axum::{
    extract::{Path, Query, State},
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use shop_proto::item::v1 as pb;

use crate::{downstream::Safety, error::ApiError, state::AppState};

#[derive(Debug, Deserialize)]
pub struct ImageQuery {
    /// The item's version; present: the URL is immutable.
    pub v: Option<i64>,
}

/// FNV-1a, 64 bits: stable across builds and platforms (colour and ETag).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn xml(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// The initials of the last two words before a comma: the thing, not its style
/// ("Classic Cutting Board, Black" -> "CB").
fn initials(name: &str) -> String {
    let head = name.split(',').next().unwrap_or_default();
    let words: Vec<char> = head
        .split_whitespace()
        .filter_map(|w| w.chars().next())
        .filter(|c| c.is_alphanumeric())
        .collect();
    let s: String = words[words.len().saturating_sub(2)..]
        .iter()
        .flat_map(|c| c.to_uppercase())
        .collect();
    if s.is_empty() { "?".to_owned() } else { s }
}

/// The picture of one item: deterministic in its id, name and category.
pub fn svg(id: &str, name: &str, category: &str) -> String {
    let h = fnv(id.as_bytes());
    let hue = h % 360;
    let hue2 = (hue + 40) % 360;
    let category: String = category.chars().take(24).collect();
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="400" height="300" viewBox="0 0 400 300" role="img" aria-label="{label}">
<defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1"><stop offset="0" stop-color="hsl({hue},55%,55%)"/><stop offset="1" stop-color="hsl({hue2},60%,38%)"/></linearGradient></defs>
<rect width="400" height="300" fill="url(#g)"/>
<circle cx="330" cy="60" r="90" fill="#fff" fill-opacity="0.08"/>
<text x="200" y="170" text-anchor="middle" font-family="sans-serif" font-size="110" font-weight="700" fill="#fff" fill-opacity="0.92">{initials}</text>
<text x="200" y="260" text-anchor="middle" font-family="sans-serif" font-size="22" letter-spacing="3" fill="#fff" fill-opacity="0.85">{category}</text>
</svg>
"##,
        label = xml(name),
        initials = xml(&initials(name)),
        category = xml(&category.to_uppercase()),
    )
}

pub async fn item_image(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(file): Path<String>,
    Query(q): Query<ImageQuery>,
) -> Result<Response, ApiError> {
    let id = file.strip_suffix(".svg").unwrap_or_default();
    if id.len() != 24 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::not_found("no such image"));
    }
    let ctx = state.budgets.read_ctx(&headers);
    let resp = state
        .downstreams
        .item
        .call(
            &ctx,
            crate::downstream::method::GET_ITEM,
            Safety::Idempotent,
            pb::GetItemRequest {
                id: id.to_ascii_lowercase(),
            },
            |mut c, r| async move { c.get_item(r).await },
        )
        .await?;
    let item = resp.item.ok_or_else(ApiError::internal)?;
    let body = svg(&item.id, &item.name, &item.category);
    let etag = format!("\"{:016x}\"", fnv(body.as_bytes()));
    let cache = if q.v.is_some() {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=0, must-revalidate"
    };
    let mut out = HeaderMap::new();
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        out.insert(header::ETAG, v);
    }
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, out).into_response());
    }
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("image/svg+xml"),
    );
    Ok((out, body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_picture_is_deterministic_and_escaped() {
        let a = svg(
            "65f0c0ffee0000000000beef",
            "Classic Tea <Pot>, Red",
            "kitchen",
        );
        assert_eq!(
            a,
            svg(
                "65f0c0ffee0000000000beef",
                "Classic Tea <Pot>, Red",
                "kitchen"
            )
        );
        assert!(a.contains(">CT<"), "{a}");
        assert!(svg("x", "Classic Cutting Board, Black", "k").contains(">CB<"));
        assert!(a.contains("&lt;Pot&gt;"));
        assert!(!a.contains("http://") || a.contains("xmlns=\"http://www.w3.org/2000/svg\""));
        assert_ne!(
            a,
            svg(
                "65f0c0ffee0000000000beee",
                "Classic Tea <Pot>, Red",
                "kitchen"
            )
        );
    }
}
