//! How a checkout that placed no order ended ([`CheckoutFailure`], from the contracts), the
//! one table from a service's answer (gRPC code and reason) to an ending, and each ending's
//! code (`out_of_stock`): the text the order record stores, the events carry and the
//! gateway's JSON answers with. A new ending is one enum value in `common.proto`; the
//! exhaustive matches here and in the gateway's answer then say what else it needs.

use tonic::{Code, Status};

pub use shop_proto::common::v1::CheckoutFailure;

use crate::{ErrorReason, reason_of};

/// Every ending, for tables and tests that walk them all.
pub const ALL: [CheckoutFailure; 13] = [
    CheckoutFailure::OutOfStock,
    CheckoutFailure::ItemNotFound,
    CheckoutFailure::MixedCurrencies,
    CheckoutFailure::InvalidOrder,
    CheckoutFailure::CardDeclined,
    CheckoutFailure::PaymentFailed,
    CheckoutFailure::ReservationExpired,
    CheckoutFailure::PriceChanged,
    CheckoutFailure::IdempotencyKeyReused,
    CheckoutFailure::RolledBack,
    CheckoutFailure::ServiceFailed,
    CheckoutFailure::Abandoned,
    CheckoutFailure::Refunded,
];

/// The ending's code: the enum value's name without its prefix, in lower case.
pub fn code(f: CheckoutFailure) -> &'static str {
    use CheckoutFailure as F;
    match f {
        F::Unspecified => "",
        F::OutOfStock => "out_of_stock",
        F::ItemNotFound => "item_not_found",
        F::MixedCurrencies => "mixed_currencies",
        F::InvalidOrder => "invalid_order",
        F::CardDeclined => "card_declined",
        F::PaymentFailed => "payment_failed",
        F::ReservationExpired => "reservation_expired",
        F::PriceChanged => "price_changed",
        F::IdempotencyKeyReused => "idempotency_key_reused",
        F::RolledBack => "checkout_rolled_back",
        F::ServiceFailed => "service_failed",
        F::Abandoned => "abandoned",
        F::Refunded => "refunded",
    }
}

/// The ending a stored or received code names; None for one no version wrote.
pub fn from_code(code: &str) -> Option<CheckoutFailure> {
    ALL.into_iter().find(|f| self::code(*f) == code)
}

/// The ending a stored code names, for records older versions wrote: those stored the
/// gateway's error code of whatever stopped the checkout, which for anything not an
/// ending above was a service failing.
pub fn from_stored(code: &str) -> CheckoutFailure {
    from_code(code).unwrap_or(CheckoutFailure::ServiceFailed)
}

/// The ending a service's answer stands for, decided on its code and reason (never its
/// message), the same for every strategy; None when the answer ends no checkout by itself
/// (a timeout, a checkout still in progress, a payment not yet confirmed: what happened
/// is unknown or not over).
pub fn of_status(s: &Status) -> Option<CheckoutFailure> {
    use CheckoutFailure as F;
    use Code as C;
    use ErrorReason as R;
    Some(match (s.code(), reason_of(s)?) {
        (C::FailedPrecondition | C::ResourceExhausted, R::OutOfStock) => F::OutOfStock,
        (C::NotFound, R::ItemNotFound) => F::ItemNotFound,
        (C::FailedPrecondition, R::MixedCurrencies) => F::MixedCurrencies,
        // Released by a concurrent caller or by this key's earlier, failed attempt.
        (C::FailedPrecondition | C::Aborted, R::ReservationReleased) => F::RolledBack,
        (C::FailedPrecondition | C::Aborted, R::ReservationExpired) => F::ReservationExpired,
        (C::Aborted, R::PaymentRefunded) => F::RolledBack,
        (C::AlreadyExists | C::FailedPrecondition, R::IdempotencyKeyReused) => {
            F::IdempotencyKeyReused
        }
        _ => return None,
    })
}

/// The ending an asynchronous refusal stands for: the reason a service refused a step of
/// the event flow with (no gRPC code travels there).
pub fn of_reason(reason: ErrorReason) -> CheckoutFailure {
    use CheckoutFailure as F;
    use ErrorReason as R;
    match reason {
        R::OutOfStock => F::OutOfStock,
        R::ItemNotFound => F::ItemNotFound,
        R::MixedCurrencies => F::MixedCurrencies,
        R::ReservationExpired => F::ReservationExpired,
        R::IdempotencyKeyReused => F::IdempotencyKeyReused,
        R::ReservationReleased | R::PaymentRefunded => F::RolledBack,
        _ => F::InvalidOrder,
    }
}

/// Serde as the ending's code, for events: `"out_of_stock"`.
pub mod as_code {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    use super::CheckoutFailure;

    pub fn serialize<S: Serializer>(f: &CheckoutFailure, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(super::code(*f))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<CheckoutFailure, D::Error> {
        let code = String::deserialize(d)?;
        super::from_code(&code)
            .ok_or_else(|| D::Error::custom(format!("unknown checkout failure {code:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ending_has_its_own_code_and_it_reads_back() {
        let mut seen = std::collections::HashSet::new();
        for f in ALL {
            assert!(!code(f).is_empty(), "{f:?}");
            assert!(seen.insert(code(f)), "{f:?} shares its code");
            assert_eq!(from_code(code(f)), Some(f));
        }
        assert_eq!(from_code(""), None);
        // Every value of the contract is walked (UNSPECIFIED is no ending).
        assert_eq!(
            ALL.len() + 1,
            (0..64)
                .filter(|n| CheckoutFailure::try_from(*n).is_ok())
                .count()
        );
    }

    #[test]
    fn answers_map_on_code_and_reason_only() {
        use crate::reason::status;
        let s = status(
            Code::FailedPrecondition,
            "anything",
            ErrorReason::OutOfStock,
        );
        assert_eq!(of_status(&s), Some(CheckoutFailure::OutOfStock));
        // The same reason under a code that means something else is no ending.
        let s = status(
            Code::Unavailable,
            "not enough stock",
            ErrorReason::OutOfStock,
        );
        assert_eq!(of_status(&s), None);
        assert_eq!(
            of_status(&Status::failed_precondition("out of stock")),
            None
        );
        assert_eq!(
            from_stored("invalid_argument"),
            CheckoutFailure::ServiceFailed
        );
    }
}
