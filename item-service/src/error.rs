//! The service's one error type and how it maps to gRPC status codes.

use platform::FieldError;
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
    /// committing a released reservation). `field` names the offending request field.
    #[error("{message}")]
    Precondition {
        field: Option<String>,
        message: String,
    },

    /// A reservation line names an item that does not exist.
    #[error("{message}")]
    LineNotFound {
        field: Option<String>,
        message: String,
    },

    /// A concurrent operation is in the way; the caller may retry.
    #[error("{0}")]
    Aborted(String),

    #[error("reservation {0:?} was already made with different lines")]
    ReservationMismatch(String),

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
        match e {
            Error::Field(f) => f.into(),
            Error::ItemNotFound(_) | Error::ReservationNotFound(_) => {
                Status::not_found(e.to_string())
            }
            Error::DuplicateSku(_) => {
                platform::error::with_field(Status::already_exists(e.to_string()), "sku")
            }
            Error::ReservationMismatch(_) => {
                platform::error::with_field(Status::already_exists(e.to_string()), "reservation_id")
            }
            Error::VersionConflict { .. } => {
                platform::error::with_field(Status::aborted(e.to_string()), "expected_version")
            }
            Error::Precondition { field, message } => match field {
                Some(f) => FieldError::new(f, message).into_status_with(Code::FailedPrecondition),
                None => Status::failed_precondition(message),
            },
            Error::LineNotFound { field, message } => match field {
                Some(f) => FieldError::new(f, message).into_status_with(Code::NotFound),
                None => Status::not_found(message),
            },
            Error::Aborted(m) => Status::aborted(m),
            Error::Mongo { what, ref source } if Error::is_unavailable(source) => {
                platform::error::unavailable(what, &e)
            }
            Error::Mongo { .. } => platform::internal_error("item store", &e),
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
