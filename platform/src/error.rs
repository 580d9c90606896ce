//! Turning errors into `tonic::Status` the same way everywhere: bad input names its field,
//! internal failures are logged with their cause chain and never returned.

use tonic::{Code, Status, metadata::MetadataValue};

use crate::reason::ErrorReason;

/// Metadata key carrying the name of the offending field on INVALID_ARGUMENT, so the
/// gateway can put it in its JSON error without parsing messages.
pub const FIELD_METADATA_KEY: &str = "x-shop-field";

/// A request field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error for a field nested under `parent` (`lines[2]` + `quantity`).
    pub fn within(self, parent: &str) -> Self {
        Self {
            field: format!("{parent}.{}", self.field),
            message: self.message,
        }
    }

    /// As a status with another code (FAILED_PRECONDITION for a field that is well-formed
    /// but not acceptable in the current state). Its reason is INVALID_FIELD; a caller with
    /// a more telling one replaces it ([`crate::reason::with_reason`]).
    pub fn into_status_with(self, code: Code) -> Status {
        crate::reason::with_reason(
            with_field(Status::new(code, self.to_string()), &self.field),
            ErrorReason::InvalidField,
        )
    }
}

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Self {
        e.into_status_with(Code::InvalidArgument)
    }
}

/// Attaches the field name to a status.
pub fn with_field(mut status: Status, field: &str) -> Status {
    if let Ok(v) = MetadataValue::try_from(field) {
        status.metadata_mut().insert(FIELD_METADATA_KEY, v);
    }
    status
}

/// Reads the field name a Shop service attached to a status, if any.
pub fn field_of(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(FIELD_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Logs an internal failure with its cause chain and returns a status that reveals nothing.
pub fn internal_error(what: &str, err: &(dyn std::error::Error + 'static)) -> Status {
    tracing::error!(error = %crate::telemetry::chain(err), "{what}");
    Status::internal("internal error")
}

/// Logs a dependency failure and returns UNAVAILABLE (the caller may retry).
pub fn unavailable(what: &str, err: &(dyn std::error::Error + 'static)) -> Status {
    tracing::warn!(error = %crate::telemetry::chain(err), "{what}");
    Status::unavailable(format!("{what}: temporarily unavailable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_errors_name_the_field_and_the_invalid_field_reason() {
        let s: Status = FieldError::new("lines[0].quantity", "must be 1 to 1000").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(field_of(&s).as_deref(), Some("lines[0].quantity"));
        assert_eq!(
            crate::reason::reason_of(&s),
            Some(ErrorReason::InvalidField)
        );
    }
}
