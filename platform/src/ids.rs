//! Ids that several services must derive the same way, so a retried checkout converges on
//! the same order, reservation and charge whichever strategy runs it.

use uuid::Uuid;

/// Namespace for order ids (UUIDv5). Changing it would break idempotency across versions.
const ORDER_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a4e_9b7d_4c3a_8e55_0d9a_1b2c_3d4e);

/// A checkout's idempotency key scoped to its user, so two users' keys never collide.
/// Used as the reservation id and the charge's idempotency key.
pub fn scoped_key(user_id: Uuid, idempotency_key: &str) -> String {
    format!("{user_id}:{idempotency_key}")
}

/// The idempotency key of the refund that compensates the checkout with this scoped key:
/// the same whoever issues it (the request, or the checkout recovery after a crash), so
/// the money is given back once.
pub fn refund_key(scoped: &str) -> String {
    format!("{scoped}:refund")
}

/// The order id a checkout produces: the same for every retry of the same key.
pub fn order_id_for(user_id: Uuid, idempotency_key: &str) -> Uuid {
    Uuid::new_v5(
        &ORDER_NAMESPACE,
        scoped_key(user_id, idempotency_key).as_bytes(),
    )
}

/// Checks a client-chosen idempotency key: 1..=200 printable ASCII characters (leaves room
/// for the user prefix within the 255 the stores allow).
pub fn validate_idempotency_key(key: &str, field: &str) -> Result<(), crate::FieldError> {
    if key.is_empty() || key.len() > 200 {
        return Err(crate::FieldError::new(field, "must be 1 to 200 characters"));
    }
    if !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(crate::FieldError::new(
            field,
            "must be printable ASCII without spaces",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_id_is_deterministic_per_user_and_key() {
        let u = Uuid::new_v4();
        assert_eq!(order_id_for(u, "k1"), order_id_for(u, "k1"));
        assert_ne!(order_id_for(u, "k1"), order_id_for(u, "k2"));
        assert_ne!(order_id_for(u, "k1"), order_id_for(Uuid::new_v4(), "k1"));
    }

    #[test]
    fn idempotency_key_rules() {
        assert!(validate_idempotency_key("abc-123", "k").is_ok());
        assert!(validate_idempotency_key("", "k").is_err());
        assert!(validate_idempotency_key("has space", "k").is_err());
        assert!(validate_idempotency_key(&"x".repeat(201), "k").is_err());
    }
}
