//! A refund no end user asked for is a checkout's own compensation, and nothing else: the
//! whole payment, under the refund key derived from its charge's key, for a checkout that
//! user-service's record says is being cancelled. So a stolen service key (or a confused
//! caller) cannot refund payments of its choosing, nor undo a checkout that was placed.

use platform::CallContext;
use shop_proto::user::v1::{GetOrderRequest, OrderStatus};
use tonic::{Code, Status};

use crate::{payment::PaymentRow, service::Payments};

/// Checks a refund without an end user of `payment` (of `amount`: None is all that is left)
/// under `key`. `Ok` lets it go ahead.
pub async fn check(
    payments: &Payments,
    ctx: &CallContext,
    payment: &PaymentRow,
    whole: bool,
    key: &str,
) -> Result<(), Status> {
    if !whole || key != platform::ids::refund_key(&payment.idempotency_key) {
        return Err(Status::permission_denied(
            "a refund without an end user is a checkout's own compensation: the whole \
             payment, under its checkout's refund key",
        ));
    }
    let status = checkout_status(payments, ctx, payment).await?;
    if !matches!(status, OrderStatus::Cancelling | OrderStatus::Cancelled) {
        tracing::warn!(
            payment = %payment.id,
            order = %payment.order_id,
            status = ?status,
            "a compensation refund refused: its checkout is not being cancelled"
        );
        return Err(Status::permission_denied(
            "a refund without an end user is given only for a checkout user-service has \
             moved to cancelling",
        ));
    }
    Ok(())
}

/// The status user-service records for the payment's checkout.
async fn checkout_status(
    payments: &Payments,
    ctx: &CallContext,
    payment: &PaymentRow,
) -> Result<OrderStatus, Status> {
    let request = ctx.request(
        GetOrderRequest {
            order_id: payment.order_id.clone(),
            user_id: payment.user_id.clone(),
        },
        Some(payments.settings().user_timeout),
    );
    match payments.users().get_order(request).await {
        Ok(r) => Ok(r
            .into_inner()
            .order
            .map_or(OrderStatus::Unspecified, |o| o.status())),
        // No such checkout: nothing to compensate.
        Err(s) if s.code() == Code::NotFound => Ok(OrderStatus::Unspecified),
        Err(s) => {
            tracing::warn!(payment = %payment.id, code = ?s.code(), message = s.message(), "asking user-service about a compensation refund failed");
            // The caller (the saga's compensation, the recovery) retries later.
            Err(Status::unavailable(
                "user-service could not confirm that this payment's checkout is being \
                 cancelled; retry later",
            ))
        }
    }
}
