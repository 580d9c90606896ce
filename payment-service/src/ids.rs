//! Identifiers parsed at the edge.

use platform::FieldError;
use uuid::Uuid;

/// A client-chosen idempotency key: 1..=255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str, field: &str) -> Result<Self, FieldError> {
        if raw.is_empty() || raw.len() > 255 {
            return Err(FieldError::new(field, "must be 1 to 255 characters"));
        }
        if !raw.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(FieldError::new(field, "must be printable ASCII"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Parses a UUID field.
pub fn uuid(raw: &str, field: &str) -> Result<Uuid, FieldError> {
    if raw.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    Uuid::parse_str(raw).map_err(|_| FieldError::new(field, "must be a UUID"))
}

/// Free text of at most `max` characters.
pub fn text(raw: &str, field: &str, max: usize) -> Result<String, FieldError> {
    if raw.chars().count() > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_ascii_up_to_255() {
        assert!(IdempotencyKey::parse("order-1", "k").is_ok());
        assert!(IdempotencyKey::parse("", "k").is_err());
        assert!(IdempotencyKey::parse(&"a".repeat(256), "k").is_err());
        assert!(IdempotencyKey::parse("tab\there", "k").is_err());
        assert!(IdempotencyKey::parse("é", "k").is_err());
    }
}
