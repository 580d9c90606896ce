//! user-service's one error type and how it becomes a gRPC status.

use platform::FieldError;
use tonic::Status;

use crate::{password::HashError, store::StoreError, token::TokenError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error("an account with this email already exists")]
    EmailTaken,
    /// One shape for unknown email and wrong password, so logins cannot probe accounts.
    #[error("invalid email or password")]
    BadCredentials,
    #[error("invalid or expired token")]
    BadToken,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Precondition(String),
    #[error("database error")]
    Store(#[source] StoreError),
    #[error("password hashing failed")]
    Hash(#[from] HashError),
    #[error("token signing failed")]
    Token(#[source] TokenError),
    /// A downstream service's answer, passed on as it came.
    #[error("downstream: {}", .0.message())]
    Downstream(Status),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DuplicateEmail => Self::EmailTaken,
            StoreError::UnknownUser => Self::NotFound("user"),
            other => Self::Store(other),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Field(f) => f.into(),
            Error::EmailTaken => Status::already_exists(e.to_string()),
            Error::BadCredentials | Error::BadToken => Status::unauthenticated(e.to_string()),
            Error::NotFound(_) => Status::not_found(e.to_string()),
            Error::Precondition(m) => Status::failed_precondition(m),
            Error::Store(StoreError::Db(ref db)) if is_unavailable(db) => {
                platform::error::unavailable("user database", db)
            }
            Error::Store(ref inner) => platform::internal_error("user database", inner),
            Error::Hash(ref inner) => platform::internal_error("password hashing", inner),
            Error::Token(ref inner) => platform::internal_error("token signing", inner),
            Error::Downstream(s) => s,
        }
    }
}

/// Errors that mean "the database is not reachable right now", worth a retry elsewhere.
fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
    )
}
