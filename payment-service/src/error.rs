//! The service's errors and how they reach callers. Internal failures are logged with their
//! cause chain and returned as an opaque INTERNAL; nothing here ever holds card data.

use platform::{FieldError, error::with_field, internal_error};
use tonic::Status;

use crate::gateway_client::GatewayError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("idempotency key {key:?} was already used with different parameters")]
    KeyReused { key: String },
    #[error("payment {0} not found")]
    PaymentNotFound(String),
    #[error("a request with idempotency key {key:?} is still in progress; retry later")]
    InProgress { key: String },
    #[error(
        "card gateway {} for payment {payment_id}; the payment is PENDING and will be reconciled (a retry with the same idempotency key is safe)", source.summary()
    )]
    ChargePending {
        payment_id: String,
        source: GatewayError,
    },
    #[error(
        "card gateway {} for refund {refund_id}; the refund is PENDING (a retry with the same idempotency key is safe)", source.summary()
    )]
    RefundPending {
        refund_id: String,
        source: GatewayError,
    },
    #[error(
        "the card gateway is failing; new charges are refused for a few seconds (circuit open). Nothing was charged; retry later"
    )]
    CardGatewayFailing,
    #[error("payment {payment_id} is {status}; only SUCCEEDED payments can be refunded")]
    NotRefundable { payment_id: String, status: String },
    #[error("amount.currency: the payment is in {payment_currency}")]
    CurrencyMismatch { payment_currency: String },
    #[error("amount: only {left} {currency} (minor units) is left to refund")]
    RefundTooLarge { left: i64, currency: String },
    #[error("the card gateway refused the refund: {code}")]
    RefundRejected { code: String },
    /// A dependency (item-service) answered with an error worth passing on as is.
    #[error("{0}")]
    Upstream(Status),
    #[error("database")]
    Database(#[from] sqlx::Error),
    #[error("background task")]
    Task(#[from] tokio::task::JoinError),
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::Invalid(f) => f.into(),
            Error::KeyReused { .. } => {
                with_field(Status::failed_precondition(msg), "idempotency_key")
            }
            Error::PaymentNotFound(_) => with_field(Status::not_found(msg), "payment_id"),
            Error::InProgress { .. } => Status::aborted(msg),
            Error::ChargePending { .. }
            | Error::RefundPending { .. }
            | Error::CardGatewayFailing => Status::unavailable(msg),
            Error::NotRefundable { .. } => {
                with_field(Status::failed_precondition(msg), "payment_id")
            }
            Error::CurrencyMismatch { .. } => {
                with_field(Status::failed_precondition(msg), "amount.currency")
            }
            Error::RefundTooLarge { .. } => with_field(Status::failed_precondition(msg), "amount"),
            Error::RefundRejected { .. } => Status::failed_precondition(msg),
            Error::Upstream(s) => s,
            Error::Database(e) => internal_error("database", &e),
            Error::Task(e) => internal_error("background task", &e),
        }
    }
}
