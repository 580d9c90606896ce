//! The service's errors and how they reach callers. Internal failures are logged with their
//! cause chain and returned as an opaque INTERNAL; nothing here ever holds card data.

use platform::{ErrorReason, FieldError, error::with_field, internal_error, with_reason};
use tonic::Status;

use crate::card_processor::ProcessorError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("idempotency key {key:?} was already used with different parameters")]
    KeyReused { key: String },
    #[error("payment {0} not found")]
    PaymentNotFound(String),
    #[error("order {0} has no payment")]
    OrderPaymentNotFound(String),
    #[error(
        "order {order_id} already has a payment for another user or amount; an order is paid once"
    )]
    OrderTaken { order_id: String },
    #[error("a request with idempotency key {key:?} is still in progress; retry later")]
    InProgress { key: String },
    #[error(
        "card gateway {} for payment {payment_id}; the payment is PENDING and will be reconciled (a retry with the same idempotency key is safe)", source.summary()
    )]
    ChargePending {
        payment_id: String,
        source: ProcessorError,
    },
    #[error(
        "card gateway {} for refund {refund_id}; the refund is PENDING (a retry with the same idempotency key is safe)", source.summary()
    )]
    RefundPending {
        refund_id: String,
        source: ProcessorError,
    },
    #[error(
        "the card gateway is failing; new charges are refused for a few seconds (circuit open). Nothing was charged; retry later"
    )]
    CardGatewayFailing {
        /// Until the card breaker lets a probe through.
        retry_after: std::time::Duration,
    },
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
            Error::KeyReused { .. } => with_reason(
                with_field(Status::failed_precondition(msg), "idempotency_key"),
                ErrorReason::IdempotencyKeyReused,
            ),
            Error::PaymentNotFound(_) => with_reason(
                with_field(Status::not_found(msg), "payment_id"),
                ErrorReason::PaymentNotFound,
            ),
            Error::OrderPaymentNotFound(_) => with_reason(
                with_field(Status::not_found(msg), "order_id"),
                ErrorReason::PaymentNotFound,
            ),
            Error::OrderTaken { .. } => with_reason(
                with_field(Status::already_exists(msg), "order_id"),
                ErrorReason::IdempotencyKeyReused,
            ),
            Error::InProgress { .. } => with_reason(Status::aborted(msg), ErrorReason::InProgress),
            Error::ChargePending { .. } => {
                with_reason(Status::unavailable(msg), ErrorReason::PaymentPending)
            }
            Error::RefundPending { .. } => {
                with_reason(Status::unavailable(msg), ErrorReason::RefundPending)
            }
            // Load shed by this service's own breaker, not this service failing: marked so
            // its callers' breakers do not count it (platform::shedding).
            Error::CardGatewayFailing { retry_after } => platform::shedding::mark_shed(
                with_reason(Status::unavailable(msg), ErrorReason::CardGatewayFailing),
                retry_after,
            ),
            Error::NotRefundable { .. } => with_reason(
                with_field(Status::failed_precondition(msg), "payment_id"),
                ErrorReason::PaymentNotRefundable,
            ),
            Error::CurrencyMismatch { .. } => with_reason(
                with_field(Status::failed_precondition(msg), "amount.currency"),
                ErrorReason::CurrencyMismatch,
            ),
            Error::RefundTooLarge { .. } => with_reason(
                with_field(Status::failed_precondition(msg), "amount"),
                ErrorReason::RefundTooLarge,
            ),
            Error::RefundRejected { .. } => with_reason(
                Status::failed_precondition(msg),
                ErrorReason::RefundRejected,
            ),
            // Passed on whole: its reason and field metadata stay.
            Error::Upstream(s) => s,
            Error::Database(e) => internal_error("database", &e),
            Error::Task(e) => internal_error("background task", &e),
        }
    }
}
