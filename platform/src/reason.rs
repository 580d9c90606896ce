//! Machine-readable failure reasons (`shop.common.v1.ErrorReason`) on `tonic::Status`.
//!
//! Callers decide on a failure by its code and reason, never by its message: messages are
//! for people and get reworded. The reason travels in the `x-shop-reason` metadata entry as
//! the enum value's proto name, so grpcurl shows it among the trailers.

pub use shop_proto::common::v1::ErrorReason;
use tonic::{Code, Status, metadata::MetadataValue};

/// Metadata key carrying the [`ErrorReason`] name of a failed call.
pub const REASON_METADATA_KEY: &str = "x-shop-reason";

/// Attaches `reason` to `status` (replacing any reason it had).
pub fn with_reason(mut status: Status, reason: ErrorReason) -> Status {
    status.metadata_mut().insert(
        REASON_METADATA_KEY,
        MetadataValue::from_static(reason.as_str_name()),
    );
    status
}

/// A status with `code`, `message` and `reason`.
pub fn status(code: Code, message: impl Into<String>, reason: ErrorReason) -> Status {
    with_reason(Status::new(code, message), reason)
}

/// The reason a Shop service attached to `status`; None when it carries none (or one this
/// build does not know, which a caller must treat like none).
pub fn reason_of(status: &Status) -> Option<ErrorReason> {
    status
        .metadata()
        .get(REASON_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorReason::from_str_name)
        .filter(|r| *r != ErrorReason::Unspecified)
}

/// True when `status` carries `reason`.
pub fn has_reason(status: &Status, reason: ErrorReason) -> bool {
    reason_of(status) == Some(reason)
}

/// `status` with its code and message replaced, keeping every metadata entry (reason,
/// field, ...): for a hop that passes another service's failure on in its own words.
pub fn restate(status: &Status, code: Code, message: impl Into<String>) -> Status {
    Status::with_metadata(code, message, status.metadata().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_round_trips_through_metadata() {
        let s = status(Code::FailedPrecondition, "x", ErrorReason::OutOfStock);
        assert_eq!(
            s.metadata()
                .get(REASON_METADATA_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("ERROR_REASON_OUT_OF_STOCK")
        );
        assert_eq!(reason_of(&s), Some(ErrorReason::OutOfStock));
        assert!(has_reason(&s, ErrorReason::OutOfStock));
        assert_eq!(reason_of(&Status::aborted("in progress")), None);
    }

    #[test]
    fn unknown_or_unspecified_reasons_read_as_none() {
        let mut s = Status::aborted("x");
        s.metadata_mut().insert(
            REASON_METADATA_KEY,
            MetadataValue::from_static("NO_SUCH_REASON"),
        );
        assert_eq!(reason_of(&s), None);
        let s = with_reason(Status::aborted("x"), ErrorReason::Unspecified);
        assert_eq!(reason_of(&s), None);
    }

    #[test]
    fn restate_keeps_reason_and_field() {
        let inner = crate::error::with_field(
            status(
                Code::FailedPrecondition,
                "item has 1 left",
                ErrorReason::OutOfStock,
            ),
            "lines[0].quantity",
        );
        let outer = restate(
            &inner,
            Code::FailedPrecondition,
            "item-service ReserveStock: ...",
        );
        assert_eq!(reason_of(&outer), Some(ErrorReason::OutOfStock));
        assert_eq!(
            crate::error::field_of(&outer).as_deref(),
            Some("lines[0].quantity")
        );
        assert_eq!(outer.message(), "item-service ReserveStock: ...");
    }
}
