//! `chained`: one call to user-service, which calls payment-service, which calls
//! item-service; each hop waits on the next and passes on what is left of the deadline.
//! The outcome is mapped to exactly the answers the orchestrated saga gives.

use http::StatusCode;
use platform::CallContext;
use shop_proto::{payment::v1 as pay, user::v1 as user};

use super::{Checkout, Outcome, declined, out_of_stock, payment_failed, rolled_back};
use crate::{downstream::Safety, error::ApiError, state::AppState};

pub async fn run(state: &AppState, ctx: &CallContext, c: &Checkout) -> Result<Outcome, ApiError> {
    let resp = state
        .downstreams
        .user
        .call(
            ctx,
            "ChainedCheckout",
            Safety::Idempotent,
            user::ChainedCheckoutRequest {
                access_token: c.user.token.clone(),
                idempotency_key: c.key.clone(),
                lines: c.lines.clone(),
                card: Some(c.card.clone()),
            },
            |mut cl, r| async move { cl.chained_checkout(r).await },
        )
        .await
        .map_err(|s| map_status(&s))?;
    let payment = resp.payment.ok_or_else(ApiError::internal)?;
    match (resp.order, payment.status()) {
        (Some(order), pay::PaymentStatus::Succeeded) => Ok(Outcome { order, payment }),
        (_, pay::PaymentStatus::Declined) => Err(declined(&payment)),
        (_, pay::PaymentStatus::Failed) => Err(payment_failed()),
        (_, pay::PaymentStatus::Refunded) => Err(rolled_back()),
        (_, pay::PaymentStatus::Pending) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "payment_pending",
            "The card processor did not confirm the payment in time. If it goes through it will be refunded automatically; try again.",
        )),
        _ => Err(ApiError::internal()),
    }
}

/// The chain reports business outcomes of the inner hops as statuses; turn them into the
/// same errors the orchestrated saga produces.
fn map_status(s: &tonic::Status) -> ApiError {
    let msg = s.message().to_ascii_lowercase();
    let field = platform::error::field_of(s);
    match s.code() {
        tonic::Code::FailedPrecondition | tonic::Code::ResourceExhausted | tonic::Code::Aborted
            if msg.contains("stock") =>
        {
            out_of_stock(s.message())
        }
        tonic::Code::FailedPrecondition | tonic::Code::Aborted
            if msg.contains("released") || msg.contains("rolled back") =>
        {
            rolled_back()
        }
        tonic::Code::FailedPrecondition
            if msg.contains("idempotency") || field.as_deref() == Some("idempotency_key") =>
        {
            ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different cart; use a new key",
            )
            .with_field("Idempotency-Key")
        }
        tonic::Code::NotFound if msg.contains("item") => {
            let mut e = ApiError::from_status(s);
            if e.field.is_none() {
                e.field = Some("lines".into());
            }
            e
        }
        _ => {
            let mut e = ApiError::from_status(s);
            if e.field.as_deref() == Some("idempotency_key") {
                e.field = Some("Idempotency-Key".into());
            }
            e
        }
    }
}
