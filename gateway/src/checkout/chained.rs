//! `chained`: one call to user-service, which calls payment-service, which calls
//! item-service; each hop waits on the next and passes on what is left of the deadline.
//! The outcome is mapped to exactly the answers the orchestrated saga gives.

use http::StatusCode;
use platform::CallContext;
use shop_proto::{payment::v1 as pay, user::v1 as user};

use super::{
    Checkout, Outcome, declined, out_of_stock, payment_failed, rolled_back, saga::key_reused,
};
use crate::{downstream::Safety, error::ApiError, state::AppState};

pub async fn run(state: &AppState, ctx: &CallContext, c: &Checkout) -> Result<Outcome, ApiError> {
    let resp = super::waiting_out_duplicates(ctx, || {
        state.downstreams.user.call(
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
    })
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

/// The chain reports business outcomes of the inner hops as statuses (payment-service
/// prefixes item-service's messages with "item-service <Method>: " and drops their
/// metadata); turn them into the same errors the orchestrated saga produces.
fn map_status(s: &tonic::Status) -> ApiError {
    let msg = s.message().to_ascii_lowercase();
    let inner = s
        .message()
        .split_once(": ")
        .filter(|(prefix, _)| prefix.starts_with("item-service "))
        .map_or(s.message(), |(_, rest)| rest);
    if super::is_in_progress(s) {
        return super::in_progress();
    }
    match s.code() {
        tonic::Code::FailedPrecondition | tonic::Code::ResourceExhausted
            if msg.contains("reservestock") || msg.contains("stock") =>
        {
            let reason = inner.strip_prefix("not enough stock: ").unwrap_or(inner);
            let mut e = out_of_stock(reason);
            e.field = platform::error::field_of(s);
            e
        }
        tonic::Code::FailedPrecondition if msg.contains("released") => rolled_back(),
        tonic::Code::Aborted if msg.contains("expired") => ApiError::new(
            StatusCode::CONFLICT,
            "reservation_expired",
            "The stock hold expired before payment completed; your payment was refunded. Try again.",
        ),
        tonic::Code::Aborted if msg.contains("refunded") => rolled_back(),
        tonic::Code::Unavailable if msg.contains("pending") => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "payment_pending",
            "The card processor did not confirm the payment in time. If it goes through it will be refunded automatically; try again.",
        ),
        tonic::Code::AlreadyExists if msg.contains("reservation") => key_reused(),
        tonic::Code::FailedPrecondition if msg.contains("idempotency") => key_reused(),
        _ => {
            let mut e = ApiError::from_status(s);
            if e.field.as_deref() == Some("idempotency_key") {
                e.field = Some("Idempotency-Key".into());
            }
            if s.code() == tonic::Code::NotFound {
                e.message = inner.to_owned();
            }
            e
        }
    }
}
