//! The service's one error type and how it maps to gRPC status codes.

use platform::{ErrorReason, FieldError, with_reason};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Field(#[from] FieldError),

    #[error("item {0} not found")]
    ItemNotFound(String),

    #[error("reservation {0:?} not found")]
    ReservationNotFound(String),

    #[error("an item with sku {0:?} already exists")]
    DuplicateSku(String),

    #[error("item {id} is at version {current}, not {expected}")]
    VersionConflict {
        id: String,
        expected: i64,
        current: i64,
    },

    /// A well-formed request the current state does not allow (not enough stock,
    /// committing a released reservation). `field` names the offending request field;
    /// `reason` is what callers decide on.
    #[error("{message}")]
    Precondition {
        reason: ErrorReason,
        field: Option<String>,
        message: String,
    },

    /// A reservation line names an item that does not exist.
    #[error("{message}")]
    LineNotFound {
        field: Option<String>,
        message: String,
    },

    /// A concurrent operation is in the way (or, with RESERVATION_RELEASED, undid the
    /// request); `reason` tells which.
    #[error("{1}")]
    Aborted(ErrorReason, String),

    #[error("reservation {0:?} was already made with different lines")]
    ReservationMismatch(String),

    #[error("encoding {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: mongodb::bson::ser::Error,
    },

    #[error("decoding {what}")]
    Decode {
        what: &'static str,
        #[source]
        source: Box<mongodb::bson::de::Error>,
    },

    #[error("mongodb: {what}")]
    Mongo {
        what: &'static str,
        #[source]
        source: mongodb::error::Error,
    },
}

impl Error {
    pub fn mongo(what: &'static str) -> impl FnOnce(mongodb::error::Error) -> Self {
        move |source| Self::Mongo { what, source }
    }

    /// True when a MongoDB error says nothing more than "the store could not be reached".
    fn is_unavailable(err: &mongodb::error::Error) -> bool {
        use mongodb::error::ErrorKind;
        matches!(
            err.kind.as_ref(),
            ErrorKind::Io(_)
                | ErrorKind::ServerSelection { .. }
                | ErrorKind::ConnectionPoolCleared { .. }
        )
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        use platform::error::with_field;
        match e {
            Error::Field(f) => f.into(),
            Error::ItemNotFound(_) => {
                with_reason(Status::not_found(e.to_string()), ErrorReason::ItemNotFound)
            }
            Error::ReservationNotFound(_) => with_reason(
                Status::not_found(e.to_string()),
                ErrorReason::ReservationNotFound,
            ),
            Error::DuplicateSku(_) => with_reason(
                with_field(Status::already_exists(e.to_string()), "sku"),
                ErrorReason::SkuTaken,
            ),
            Error::ReservationMismatch(_) => with_reason(
                with_field(Status::already_exists(e.to_string()), "reservation_id"),
                ErrorReason::IdempotencyKeyReused,
            ),
            Error::VersionConflict { .. } => with_reason(
                with_field(Status::aborted(e.to_string()), "expected_version"),
                ErrorReason::ConcurrentChange,
            ),
            Error::Precondition {
                reason,
                field,
                message,
            } => with_reason(
                match field {
                    Some(f) => {
                        FieldError::new(f, message).into_status_with(Code::FailedPrecondition)
                    }
                    None => Status::failed_precondition(message),
                },
                reason,
            ),
            Error::LineNotFound { field, message } => with_reason(
                match field {
                    Some(f) => FieldError::new(f, message).into_status_with(Code::NotFound),
                    None => Status::not_found(message),
                },
                ErrorReason::ItemNotFound,
            ),
            Error::Aborted(reason, m) => with_reason(Status::aborted(m), reason),
            Error::Mongo { what, ref source } if Error::is_unavailable(source) => {
                platform::error::unavailable(what, &e)
            }
            Error::Mongo { .. } | Error::Encode { .. } | Error::Decode { .. } => {
                platform::internal_error("item store", &e)
            }
        }
    }
}

/// True for a duplicate-key write error (E11000).
pub fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|ws| !ws.is_empty() && ws.iter().all(|w| w.code == 11000)),
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}
