//! Request fields parsed at the edge into values that are valid by construction.

use std::collections::HashSet;

use mongodb::bson::oid::ObjectId;
use platform::{FieldError, money::Money};
use shop_proto::common::v1 as common;

pub const MAX_STOCK: i64 = 1_000_000_000;
pub const MAX_BATCH_IDS: usize = 100;

/// A MongoDB ObjectId given as 24 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ItemId(pub ObjectId);

impl ItemId {
    pub fn parse(s: &str, field: &str) -> Result<Self, FieldError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(FieldError::new(field, "is required"));
        }
        if s.len() != 24 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FieldError::new(field, "must be 24 hex digits"));
        }
        ObjectId::parse_str(s)
            .map(Self)
            .map_err(|_| FieldError::new(field, "must be 24 hex digits"))
    }

    pub fn hex(&self) -> String {
        self.0.to_hex()
    }
}

/// Upper-cased SKU: 1..=64 of A-Z, 0-9, '-', '_'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sku(pub String);

impl Sku {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let s = s.trim().to_ascii_uppercase();
        if s.is_empty() {
            return Err(FieldError::new("sku", "is required"));
        }
        if s.len() > 64 {
            return Err(FieldError::new("sku", "must be at most 64 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(FieldError::new(
                "sku",
                "may hold only A-Z, 0-9, '-' and '_'",
            ));
        }
        Ok(Self(s))
    }
}

/// Trimmed text of `min..=max` characters without control characters (newlines and tabs
/// allowed where `multiline`).
fn text(
    s: &str,
    field: &str,
    min: usize,
    max: usize,
    multiline: bool,
) -> Result<String, FieldError> {
    let s = s.trim();
    let n = s.chars().count();
    if n < min {
        return Err(FieldError::new(field, "is required"));
    }
    if n > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if s.chars()
        .any(|c| c.is_control() && !(multiline && (c == '\n' || c == '\t' || c == '\r')))
    {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(s.to_owned())
}

pub fn name(s: &str) -> Result<String, FieldError> {
    let name = text(s, "name", 1, 200, false)?;
    if platform::text::has_invisible_format(&name) {
        return Err(FieldError::new(
            "name",
            "must not contain bidirectional-override or zero-width characters",
        ));
    }
    Ok(name)
}

pub fn description(s: &str) -> Result<String, FieldError> {
    text(s, "description", 0, 5000, true)
}

/// Lower-cased category, 1..=64 characters (0 allowed where `optional`, e.g. a list filter).
pub fn category(s: &str, optional: bool) -> Result<String, FieldError> {
    text(s, "category", usize::from(!optional), 64, false).map(|c| c.to_lowercase())
}

/// Case-insensitive name search text, 0..=100 characters.
pub fn query(s: &str) -> Result<String, FieldError> {
    text(s, "query", 0, 100, false).map(|q| q.to_lowercase())
}

/// Empty, or an http(s) URL of at most 2048 characters.
pub fn image_url(s: &str) -> Result<String, FieldError> {
    let s = text(s, "image_url", 0, 2048, false)?;
    if s.is_empty() {
        return Ok(s);
    }
    let lower = s.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    match rest {
        Some(host)
            if !host.is_empty() && !host.starts_with('/') && !s.contains(char::is_whitespace) =>
        {
            Ok(s)
        }
        _ => Err(FieldError::new("image_url", "must be an http(s) URL")),
    }
}

pub fn stock(n: i64) -> Result<i64, FieldError> {
    if n < 0 {
        return Err(FieldError::new("stock", "must not be negative"));
    }
    if n > MAX_STOCK {
        return Err(FieldError::new(
            "stock",
            format!("must be at most {MAX_STOCK}"),
        ));
    }
    Ok(n)
}

pub fn price(m: Option<&common::Money>) -> Result<Money, FieldError> {
    Money::parse(m, "price")
}

/// A valid new item.
#[derive(Debug, Clone)]
pub struct NewItem {
    pub sku: Sku,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price: Money,
    pub stock: i64,
    pub image_url: String,
}

impl NewItem {
    pub fn parse(r: &shop_proto::item::v1::CreateItemRequest) -> Result<Self, FieldError> {
        Ok(Self {
            sku: Sku::parse(&r.sku)?,
            name: name(&r.name)?,
            description: description(&r.description)?,
            category: category(&r.category, false)?,
            price: price(r.price.as_ref())?,
            stock: stock(r.stock)?,
            image_url: image_url(&r.image_url)?,
        })
    }
}

/// A valid UpdateItem: which item, which version the caller saw, what changes.
#[derive(Debug, Clone)]
pub struct ItemPatch {
    pub id: ItemId,
    pub expected_version: i64,
    pub name: Option<String>,
    pub description: Option<String>,
    pub category: Option<String>,
    pub price: Option<Money>,
    pub stock: Option<i64>,
    pub image_url: Option<String>,
}

impl ItemPatch {
    pub fn parse(r: &shop_proto::item::v1::UpdateItemRequest) -> Result<Self, FieldError> {
        let id = ItemId::parse(&r.id, "id")?;
        if r.expected_version < 1 {
            return Err(FieldError::new(
                "expected_version",
                "must be the item's current version (>= 1)",
            ));
        }
        Ok(Self {
            id,
            expected_version: r.expected_version,
            name: r.name.as_deref().map(name).transpose()?,
            description: r.description.as_deref().map(description).transpose()?,
            category: r
                .category
                .as_deref()
                .map(|c| category(c, false))
                .transpose()?,
            price: r.price.as_ref().map(|p| price(Some(p))).transpose()?,
            stock: r.stock.map(stock).transpose()?,
            image_url: r.image_url.as_deref().map(image_url).transpose()?,
        })
    }
}

/// BatchGetItems ids: 1..=100, duplicates dropped, first-mention order kept.
pub fn batch_ids(ids: &[String]) -> Result<Vec<ItemId>, FieldError> {
    if ids.is_empty() {
        return Err(FieldError::new("ids", "at least one id is required"));
    }
    if ids.len() > MAX_BATCH_IDS {
        return Err(FieldError::new(
            "ids",
            format!("at most {MAX_BATCH_IDS} ids per call"),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(ids.len());
    for (i, s) in ids.iter().enumerate() {
        let id = ItemId::parse(s, &format!("ids[{i}]"))?;
        if seen.insert(id) {
            out.push(id);
        }
    }
    Ok(out)
}

/// Caller-chosen reservation id: 1..=255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReservationId(pub String);

impl ReservationId {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        if s.is_empty() {
            return Err(FieldError::new("reservation_id", "is required"));
        }
        if s.len() > 255 {
            return Err(FieldError::new(
                "reservation_id",
                "must be at most 255 characters",
            ));
        }
        if !s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(FieldError::new("reservation_id", "must be printable ASCII"));
        }
        Ok(Self(s.to_owned()))
    }
}

/// One reservation line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    pub item: ItemId,
    pub quantity: i32,
}

/// The shared cart rules ([`platform::cart`]), with the ids parsed as ObjectIds.
pub fn lines(lines: &[common::ItemLine]) -> Result<Vec<Line>, FieldError> {
    platform::cart::validate(lines.iter().map(|l| (l.item_id.as_str(), l.quantity)))?
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            Ok(Line {
                item: ItemId::parse(&l.item_id, &format!("lines[{i}].item_id"))?,
                quantity: l.quantity,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sku_is_upper_cased_and_restricted() {
        assert_eq!(Sku::parse(" ab-1_x ").map(|s| s.0), Ok("AB-1_X".to_owned()));
        assert!(Sku::parse("").is_err());
        assert!(Sku::parse("a b").is_err());
        assert!(Sku::parse(&"A".repeat(65)).is_err());
    }

    #[test]
    fn ids_and_urls() {
        assert!(ItemId::parse("0123456789abcdef01234567", "id").is_ok());
        assert_eq!(
            ItemId::parse("xyz", "ids[3]").map_err(|e| e.field),
            Err("ids[3]".to_owned())
        );
        assert!(image_url("https://img.example/x.png").is_ok());
        assert!(image_url("").is_ok());
        assert!(image_url("ftp://x").is_err());
        assert!(image_url("https://").is_err());
    }

    #[test]
    fn lines_reject_duplicates_and_bad_quantities() {
        let l = |id: &str, q| common::ItemLine {
            item_id: id.into(),
            quantity: q,
        };
        let a = "0123456789abcdef01234567";
        let b = "0123456789abcdef01234568";
        assert!(lines(&[l(a, 1), l(b, 1000)]).is_ok());
        assert_eq!(
            lines(&[l(a, 1), l(a, 2)]).map_err(|e| e.field),
            Err("lines[1].item_id".to_owned())
        );
        assert_eq!(
            lines(&[l(a, 0)]).map_err(|e| e.field),
            Err("lines[0].quantity".to_owned())
        );
        assert!(lines(&[]).is_err());
    }
}
