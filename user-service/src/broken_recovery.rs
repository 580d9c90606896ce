//! A checkout recovery broken on purpose, for the crash test's own test only
//! (`loadtest/tests/it/crash.rs`): it shows that `loadtest crash` fails when a recovery
//! undoes a checkout after it was completed. Switched on by the environment variable
//! [`SWITCH`] set to `refund-placed`, which only that test sets; never set it anywhere
//! else. Then every recovery round moves each order placed 3 to 60 s earlier back to
//! cancelling (payment-service refunds nothing for a checkout that is not cancelling) and
//! refunds its payment: money given back for goods sold, well after the checkout first
//! looked finished.

use std::time::Duration;

use platform::{CallContext, context::TraceContext};
use shop_proto::payment::v1 as pay;

use crate::service::Users;

/// The test-only switch (see the module doc).
pub const SWITCH: &str = "USER_TEST_BROKEN_RECOVERY";

/// How long after its placing an order is undone: long enough that the crash test has
/// already seen it placed.
const AFTER: Duration = Duration::from_secs(3);

/// Whether the switch is on (any other value, or none, leaves the recovery intact).
pub fn enabled() -> bool {
    std::env::var(SWITCH).is_ok_and(|v| v == "refund-placed")
}

/// The broken step of a round: refunds recently placed orders' payments.
pub async fn refund_placed(svc: &Users, call_timeout: Duration) {
    let placed: Result<Vec<(uuid::Uuid, String, String)>, sqlx::Error> = sqlx::query_as(
        "SELECT order_id, payment_id, reservation_id FROM orders \
         WHERE status = 'placed' AND payment_id IS NOT NULL \
           AND updated_at BETWEEN now() - interval '60 seconds' AND now() - make_interval(secs => $1)",
    )
    .bind(AFTER.as_secs_f64())
    .fetch_all(&svc.store.pool)
    .await;
    let placed = match placed {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "broken recovery: reading placed orders");
            return;
        }
    };
    for (order_id, payment_id, reservation_id) in placed {
        let undone = sqlx::query(
            "UPDATE orders SET status = 'cancelling' WHERE order_id = $1 AND status = 'placed'",
        )
        .bind(order_id)
        .execute(&svc.store.pool)
        .await;
        if let Err(e) = undone {
            tracing::warn!(error = %e, %order_id, "broken recovery: moving a placed order back");
            continue;
        }
        // As the recovery calls: user-service itself, no end user.
        let ctx = CallContext {
            trace: TraceContext::new_root(),
            deadline: None,
            user: None,
        };
        let req = ctx.request(
            pay::RefundRequest {
                payment_id: payment_id.clone(),
                amount: None,
                // The checkout's own refund key, as the real recovery uses: the only key
                // payment-service takes for a refund with no end user.
                idempotency_key: platform::ids::refund_key(&reservation_id),
                reason: "broken recovery (test-only switch)".into(),
            },
            Some(call_timeout),
        );
        match svc.payment.clone().refund(req).await {
            Ok(_) => {
                tracing::error!(%order_id, %payment_id, "broken recovery: refunded a placed order (test-only switch {SWITCH})")
            }
            Err(s) => {
                tracing::debug!(%order_id, code = ?s.code(), "broken recovery: refund refused")
            }
        }
    }
}
