//! The durable checkout record through BeginCheckout / AdvanceCheckout: created once, driven
//! only by its lease holder, settled states final, bad input refused naming the field.

use crate::harness::{TestApp, spawn, unique_email};
use platform::{ErrorReason, checkout_failure::CheckoutFailure, reason_of};
use shop_proto::{
    common::v1::{Money, PricedLine},
    user::v1 as pb,
};
use tonic::Code;
use uuid::Uuid;

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: "USD".into(),
    })
}

fn record(user_id: &str, item_id: &str, qty: i32) -> pb::Order {
    pb::Order {
        order_id: Uuid::new_v4().to_string(),
        user_id: user_id.into(),
        lines: vec![PricedLine {
            item_id: item_id.into(),
            sku: "MUG-1".into(),
            name: "Mug".into(),
            quantity: qty,
            unit_price: usd(500),
            line_total: usd(500 * i64::from(qty)),
        }],
        total: usd(500 * i64::from(qty)),
        reservation_id: format!("{user_id}:k-{}", Uuid::new_v4()),
        ..Default::default()
    }
}

async fn begin(
    app: &TestApp,
    order: &pb::Order,
    lease_ms: u32,
) -> Result<pb::BeginCheckoutResponse, tonic::Status> {
    begin_as(app, order, lease_ms, "").await
}

async fn begin_as(
    app: &TestApp,
    order: &pb::Order,
    lease_ms: u32,
    lease_token: &str,
) -> Result<pb::BeginCheckoutResponse, tonic::Status> {
    app.client
        .clone()
        .begin_checkout(pb::BeginCheckoutRequest {
            order: Some(order.clone()),
            lease_ms,
            strategy: "orchestrated".into(),
            lease_token: lease_token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// No failure (UNSPECIFIED).
const NONE: i32 = CheckoutFailure::Unspecified as i32;

async fn advance(
    app: &TestApp,
    order_id: &str,
    token: &str,
    to: pb::OrderStatus,
    payment_id: &str,
    failure: i32,
) -> Result<pb::Order, tonic::Status> {
    app.client
        .clone()
        .advance_checkout(pb::AdvanceCheckoutRequest {
            order_id: order_id.into(),
            lease_token: token.into(),
            to: to as i32,
            payment_id: payment_id.into(),
            failure,
            lines: Vec::new(),
            total: None,
        })
        .await
        .map(|r| r.into_inner().order.expect("order"))
}

async fn customer(app: &TestApp) -> String {
    app.register(&unique_email(), "password-123", "Rita")
        .await
        .expect("register")
        .user_id
}

const ITEM: &str = "65f0c0ffee0000000000abcd";

#[tokio::test]
async fn a_record_is_created_once_and_driven_only_by_its_lease_holder() {
    let app = spawn().await;
    let user = customer(&app).await;
    let o = record(&user, ITEM, 2);
    let first = begin(&app, &o, 60_000).await.expect("begin");
    assert!(first.created);
    assert!(!first.lease_token.is_empty());
    let stored = first.order.expect("order");
    assert_eq!(stored.status(), pb::OrderStatus::Pending);
    assert!(stored.payment_id.is_empty());

    // A second attempt with the same key finds it, held by the first: no lease for it.
    let second = begin(&app, &o, 60_000).await.expect("begin again");
    assert!(!second.created);
    assert!(second.lease_token.is_empty());

    // Someone without the lease cannot move it.
    let stolen = advance(
        &app,
        &o.order_id,
        &Uuid::new_v4().to_string(),
        pb::OrderStatus::Placed,
        "pay-1",
        NONE,
    )
    .await
    .expect_err("not the holder");
    assert_eq!(stolen.code(), Code::Aborted);
    assert_eq!(reason_of(&stolen), Some(ErrorReason::CheckoutTakenOver));

    // The holder places it; repeating that (a lost answer) returns the same order.
    let placed = advance(
        &app,
        &o.order_id,
        &first.lease_token,
        pb::OrderStatus::Placed,
        "pay-1",
        NONE,
    )
    .await
    .expect("place");
    assert_eq!(placed.status(), pb::OrderStatus::Placed);
    assert_eq!(placed.payment_id, "pay-1");
    let again = advance(
        &app,
        &o.order_id,
        &first.lease_token,
        pb::OrderStatus::Placed,
        "pay-1",
        NONE,
    )
    .await
    .expect("repeat");
    assert_eq!(again.status(), pb::OrderStatus::Placed);

    // Settled is final: it cannot be cancelled afterwards, and a retry gets it as it is.
    let late = advance(
        &app,
        &o.order_id,
        &first.lease_token,
        pb::OrderStatus::Cancelling,
        "",
        CheckoutFailure::Abandoned as i32,
    )
    .await
    .expect_err("placed is final");
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&late), Some(ErrorReason::CheckoutState));
    let replay = begin(&app, &o, 60_000).await.expect("replay");
    assert!(replay.lease_token.is_empty());
    assert_eq!(
        replay.order.expect("order").status(),
        pb::OrderStatus::Placed
    );
}

/// A retry never takes over an earlier attempt's checkout, even after its lease ran out: it
/// cannot know what that attempt did. The holder keeps it until someone (the recovery)
/// claims it; going backward is written before it ends.
#[tokio::test]
async fn a_retry_never_takes_over_and_going_backward_is_written_first() {
    // No recovery rounds here (this service has no item- or payment-service to ask).
    let app = crate::harness::spawn_with(|c| c.recovery_interval_ms = 600_000).await;
    let user = customer(&app).await;
    let o = record(&user, ITEM, 1);
    let first = begin(&app, &o, 1000).await.expect("begin");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let retry = begin(&app, &o, 5000).await.expect("retry");
    assert!(!retry.created);
    assert!(retry.lease_token.is_empty(), "a retry gets no lease");
    assert_eq!(
        retry.order.expect("order").status(),
        pb::OrderStatus::Pending
    );
    let cancelling = advance(
        &app,
        &o.order_id,
        &first.lease_token,
        pb::OrderStatus::Cancelling,
        "",
        CheckoutFailure::CardDeclined as i32,
    )
    .await
    .expect("cancelling");
    assert_eq!(cancelling.status(), pb::OrderStatus::Cancelling);
    assert_eq!(cancelling.failure(), CheckoutFailure::CardDeclined);
    // A cancelling checkout cannot be placed any more.
    let placed = advance(
        &app,
        &o.order_id,
        &first.lease_token,
        pb::OrderStatus::Placed,
        "pay-1",
        NONE,
    )
    .await
    .expect_err("cancelling is not placed");
    assert_eq!(reason_of(&placed), Some(ErrorReason::CheckoutState));
    let cancelled = advance(
        &app,
        &o.order_id,
        &first.lease_token,
        pb::OrderStatus::Cancelled,
        "",
        CheckoutFailure::CardDeclined as i32,
    )
    .await
    .expect("cancelled");
    assert_eq!(cancelled.status(), pb::OrderStatus::Cancelled);
    let after = begin(&app, &o, 5000).await.expect("begin after");
    assert!(after.lease_token.is_empty());
    assert_eq!(
        after.order.expect("order").status(),
        pb::OrderStatus::Cancelled
    );
}

/// The caller repeats BeginCheckout after losing its answer: with its own token it gets its
/// lease back; anyone else still gets none.
#[tokio::test]
async fn a_repeated_begin_with_the_callers_token_keeps_its_lease() {
    let app = spawn().await;
    let user = customer(&app).await;
    let o = record(&user, ITEM, 1);
    let mine = Uuid::new_v4().to_string();
    let first = begin_as(&app, &o, 60_000, &mine).await.expect("begin");
    assert_eq!(first.lease_token, mine);
    let again = begin_as(&app, &o, 60_000, &mine).await.expect("again");
    assert!(!again.created);
    assert_eq!(again.lease_token, mine);
    let other = begin_as(&app, &o, 60_000, &Uuid::new_v4().to_string())
        .await
        .expect("other");
    assert!(other.lease_token.is_empty());
    let e = begin_as(&app, &o, 60_000, "not-a-uuid")
        .await
        .expect_err("bad token");
    assert_eq!(
        platform::error::field_of(&e).as_deref(),
        Some("lease_token")
    );
}

#[tokio::test]
async fn the_same_key_for_another_cart_or_another_user_is_refused() {
    let app = spawn().await;
    let user = customer(&app).await;
    let o = record(&user, ITEM, 2);
    begin(&app, &o, 60_000).await.expect("begin");

    let mut other_cart = record(&user, ITEM, 3);
    other_cart.order_id = o.order_id.clone();
    let e = begin(&app, &other_cart, 60_000)
        .await
        .expect_err("other cart");
    assert_eq!(e.code(), Code::AlreadyExists);
    assert_eq!(reason_of(&e), Some(ErrorReason::IdempotencyKeyReused));

    let someone_else = customer(&app).await;
    let mut theirs = record(&someone_else, ITEM, 2);
    theirs.order_id = o.order_id.clone();
    let e = begin(&app, &theirs, 60_000).await.expect_err("other user");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&e), Some(ErrorReason::OrderIdTaken));
}

#[tokio::test]
async fn bad_records_and_transitions_name_the_field() {
    let app = spawn().await;
    let user = customer(&app).await;
    let good = record(&user, ITEM, 1);
    let cases: Vec<(pb::Order, u32, &str)> = vec![
        (
            pb::Order {
                order_id: "nope".into(),
                ..good.clone()
            },
            5000,
            "order.order_id",
        ),
        (
            pb::Order {
                reservation_id: String::new(),
                ..good.clone()
            },
            5000,
            "order.reservation_id",
        ),
        (
            pb::Order {
                total: usd(1),
                ..good.clone()
            },
            5000,
            "order.total",
        ),
        (
            pb::Order {
                lines: Vec::new(),
                ..good.clone()
            },
            5000,
            "order.lines",
        ),
        (good.clone(), 10, "lease_ms"),
        (good.clone(), 10_000_000, "lease_ms"),
    ];
    for (order, lease, field) in cases {
        let e = begin(&app, &order, lease).await.expect_err(field);
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert_eq!(
            platform::error::field_of(&e).as_deref(),
            Some(field),
            "{e:?}"
        );
    }
    let begun = begin(&app, &good, 5000).await.expect("begin");
    let token = begun.lease_token;
    for (to, payment, failure, field) in [
        (pb::OrderStatus::Placed, "", NONE, "payment_id"),
        (pb::OrderStatus::Cancelling, "", NONE, "failure"),
        (pb::OrderStatus::Cancelled, "", 999, "failure"),
        (pb::OrderStatus::Unspecified, "", NONE, "to"),
    ] {
        let e = advance(&app, &good.order_id, &token, to, payment, failure)
            .await
            .expect_err(field);
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert_eq!(platform::error::field_of(&e).as_deref(), Some(field));
    }
    let e = advance(
        &app,
        &good.order_id,
        "not-a-token",
        pb::OrderStatus::Placed,
        "p",
        NONE,
    )
    .await
    .expect_err("token");
    assert_eq!(
        platform::error::field_of(&e).as_deref(),
        Some("lease_token")
    );
    let e = advance(
        &app,
        &Uuid::new_v4().to_string(),
        &token,
        pb::OrderStatus::Placed,
        "p",
        NONE,
    )
    .await
    .expect_err("unknown order");
    assert_eq!(e.code(), Code::NotFound);
    // Nothing was changed by the refused calls.
    let got = app
        .client
        .clone()
        .get_order(pb::GetOrderRequest {
            order_id: good.order_id.clone(),
            user_id: user.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(got.status(), pb::OrderStatus::Pending);
}
