//! user-service's one error type and how it becomes a gRPC status.

use platform::{ErrorReason, FieldError, with_reason};
use tonic::Status;

use crate::{
    checkout_record::RecordError, password::HashError, store::StoreError, token::TokenError,
};

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
    #[error("user not found")]
    UserNotFound,
    #[error("order not found")]
    OrderNotFound,
    #[error("order_id is already used by another order")]
    OrderIdTaken,
    /// The caller asserted one user and sent another's access token.
    #[error("the access token is not the user the call is made for")]
    NotYourCheckout,
    #[error("database error")]
    Store(#[source] StoreError),
    #[error("password hashing failed")]
    Hash(#[from] HashError),
    #[error("token signing failed")]
    Token(#[source] TokenError),
    #[error(transparent)]
    Record(RecordError),
    /// A downstream service's answer, passed on as it came (metadata included: callers
    /// decide on its reason and field).
    #[error("downstream: {}", .0.message())]
    Downstream(Status),
    #[error(
        "the asynchronous checkout is not available: this user-service has no event stream (NATS_URL)"
    )]
    NoEventStream,
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DuplicateEmail => Self::EmailTaken,
            StoreError::UnknownUser => Self::UserNotFound,
            other => Self::Store(other),
        }
    }
}

impl From<RecordError> for Error {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::NotFound => Self::OrderNotFound,
            RecordError::OtherUser => Self::OrderIdTaken,
            RecordError::Store(s) => Self::from(s),
            other => Self::Record(other),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Field(f) => f.into(),
            Error::EmailTaken => with_reason(
                Status::already_exists(e.to_string()),
                ErrorReason::EmailTaken,
            ),
            Error::BadCredentials | Error::BadToken => Status::unauthenticated(e.to_string()),
            Error::NotYourCheckout => Status::permission_denied(e.to_string()),
            Error::UserNotFound => {
                with_reason(Status::not_found(e.to_string()), ErrorReason::UserNotFound)
            }
            Error::OrderNotFound => {
                with_reason(Status::not_found(e.to_string()), ErrorReason::OrderNotFound)
            }
            Error::OrderIdTaken => with_reason(
                Status::failed_precondition(e.to_string()),
                ErrorReason::OrderIdTaken,
            ),
            Error::Store(StoreError::Db(ref db)) if is_unavailable(db) => {
                platform::error::unavailable("user database", db)
            }
            Error::Store(ref inner) => platform::internal_error("user database", inner),
            Error::Hash(HashError::Busy) => Status::resource_exhausted(HashError::Busy.to_string()),
            Error::Hash(ref inner) => platform::internal_error("password hashing", inner),
            Error::Token(ref inner) => platform::internal_error("token signing", inner),
            Error::Record(RecordError::OtherCart) => platform::error::with_field(
                with_reason(
                    Status::already_exists(e.to_string()),
                    ErrorReason::IdempotencyKeyReused,
                ),
                "order.lines",
            ),
            Error::Record(RecordError::TakenOver) => with_reason(
                Status::aborted(e.to_string()),
                ErrorReason::CheckoutTakenOver,
            ),
            Error::Record(ref inner @ RecordError::State(_)) => with_reason(
                Status::failed_precondition(inner.to_string()),
                ErrorReason::CheckoutState,
            ),
            Error::Record(ref inner) => platform::internal_error("checkout record", inner),
            Error::Downstream(s) => s,
            Error::NoEventStream => Status::unavailable(e.to_string()),
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
