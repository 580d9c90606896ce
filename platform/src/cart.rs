//! The cart rules every hop of a checkout enforces (gateway, user-service's chained hop,
//! payment-service's ChainedCharge, item-service's ReserveStock), kept here so they cannot
//! drift apart: 1..=50 lines, quantity 1..=1000, each item once, ids of 24 hex digits.

use std::collections::HashSet;

use shop_proto::common::v1::ItemLine;

use crate::FieldError;

/// Most lines one cart (order, reservation) may have.
pub const MAX_LINES: usize = 50;
/// Largest quantity of one line.
pub const MAX_QUANTITY: i32 = 1000;

/// Bounds of the lease a checkout's driver may hold on its durable record (user-service
/// refuses others; the gateway checks its own at start, so a long budget fails there and not
/// on every checkout).
pub const MIN_CHECKOUT_LEASE: std::time::Duration = std::time::Duration::from_millis(1000);
pub const MAX_CHECKOUT_LEASE: std::time::Duration = std::time::Duration::from_millis(120_000);

/// Checks cart lines given as (item id, quantity) and returns them normalised: ids trimmed
/// and lower-cased, so the same item written twice in different case counts as a duplicate.
/// The first broken rule is reported, naming `lines`, `lines[i].item_id` or
/// `lines[i].quantity`.
pub fn validate<'a, I>(lines: I) -> Result<Vec<ItemLine>, FieldError>
where
    I: IntoIterator<Item = (&'a str, i32)>,
    I::IntoIter: ExactSizeIterator,
{
    let lines = lines.into_iter();
    if lines.len() == 0 {
        return Err(FieldError::new("lines", "the cart is empty"));
    }
    if lines.len() > MAX_LINES {
        return Err(FieldError::new(
            "lines",
            format!("at most {MAX_LINES} lines per order"),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(lines.len());
    for (i, (item_id, quantity)) in lines.enumerate() {
        let item_id = parse_item_id(item_id).map_err(|e| e.within(&format!("lines[{i}]")))?;
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(FieldError::new(
                format!("lines[{i}].quantity"),
                format!("must be between 1 and {MAX_QUANTITY}"),
            ));
        }
        if !seen.insert(item_id.clone()) {
            return Err(FieldError::new(
                format!("lines[{i}].item_id"),
                "appears twice; put the total quantity on one line",
            ));
        }
        out.push(ItemLine { item_id, quantity });
    }
    Ok(out)
}

/// An item id: 24 hex digits (a MongoDB ObjectId), returned trimmed and lower-cased.
fn parse_item_id(id: &str) -> Result<String, FieldError> {
    let id = id.trim();
    if id.is_empty() {
        return Err(FieldError::new("item_id", "is required"));
    }
    if id.len() != 24 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(FieldError::new("item_id", "must be 24 hex digits"));
    }
    Ok(id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef01234567";
    const B: &str = "0123456789abcdef01234568";

    fn field(lines: &[(&str, i32)]) -> Option<String> {
        validate(lines.iter().copied()).err().map(|e| e.field)
    }

    #[test]
    fn good_lines_come_back_trimmed_and_lower_cased() {
        let upper = format!(" {} ", A.to_ascii_uppercase());
        let out = validate([(upper.as_str(), 1), (B, MAX_QUANTITY)]).expect("valid");
        assert_eq!(
            out,
            vec![
                ItemLine {
                    item_id: A.into(),
                    quantity: 1
                },
                ItemLine {
                    item_id: B.into(),
                    quantity: MAX_QUANTITY
                },
            ]
        );
    }

    #[test]
    fn line_count_is_one_to_fifty() {
        assert_eq!(field(&[]).as_deref(), Some("lines"));
        let ids: Vec<String> = (0..=MAX_LINES).map(|i| format!("{i:024x}")).collect();
        let many: Vec<(&str, i32)> = ids.iter().map(|id| (id.as_str(), 1)).collect();
        assert_eq!(field(&many).as_deref(), Some("lines"));
        assert_eq!(field(&many[..MAX_LINES]), None);
    }

    #[test]
    fn each_broken_rule_names_its_line_and_field() {
        assert_eq!(
            field(&[(A, 1), (B, 0)]).as_deref(),
            Some("lines[1].quantity")
        );
        assert_eq!(
            field(&[(A, MAX_QUANTITY + 1)]).as_deref(),
            Some("lines[0].quantity")
        );
        assert_eq!(field(&[(A, -1)]).as_deref(), Some("lines[0].quantity"));
        assert_eq!(
            field(&[(A, 1), ("", 1)]).as_deref(),
            Some("lines[1].item_id")
        );
        assert_eq!(field(&[("xyz", 1)]).as_deref(), Some("lines[0].item_id"));
        assert_eq!(
            field(&[("0123456789abcdef0123456g", 1)]).as_deref(),
            Some("lines[0].item_id")
        );
        let upper = A.to_ascii_uppercase();
        assert_eq!(
            field(&[(A, 1), (upper.as_str(), 2)]).as_deref(),
            Some("lines[1].item_id")
        );
    }
}
