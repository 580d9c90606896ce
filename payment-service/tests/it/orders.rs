//! One payment per order: a replay whose idempotency key is gone (purged after the retention
//! time) or a second key for the same order gets the order's payment, never a second charge;
//! GetPayment finds a payment by its order.

use std::time::Duration;

use crate::harness::*;
use platform::{ErrorReason, error::field_of, reason_of};
use serde_json::json;
use shop_proto::payment::v1::PaymentStatus;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_the_key_was_purged_returns_the_orders_payment_without_charging() {
    // The reconcile timer also purges keys older than the retention time.
    let app = spawn_app_with(|c| c.reconcile_interval_ms = 100).await;
    let first = charge_request("purged-1", 2500, VISA_OK);
    let paid = app.charge(first.clone()).await.expect("first charge");
    assert_eq!(paid.status(), PaymentStatus::Succeeded);

    // Time passes beyond the retention (at least 24 h): the purge drops the key.
    app.sql("UPDATE idempotency_keys SET created_at = created_at - INTERVAL 25 HOUR")
        .await;
    eventually(Duration::from_secs(30), || async {
        (app.count("idempotency_keys").await == 0).then_some(())
    })
    .await;

    // The same checkout again, with its old key or with a new one: the order's payment.
    let mut new_key = first.clone();
    new_key.idempotency_key = "purged-2".into();
    for req in [first.clone(), new_key] {
        let again = app.charge(req).await.expect("replay");
        assert_eq!(again, paid);
    }
    let stats = app.stats().await;
    assert_eq!(
        stats.charges_created, 1,
        "the card was charged once: {stats:?}"
    );

    // The order with another amount or for another user is not this payment.
    let mut other_amount = first.clone();
    other_amount.idempotency_key = "purged-3".into();
    other_amount.amount = Some(usd(2501));
    let mut other_user = first.clone();
    other_user.idempotency_key = "purged-4".into();
    other_user.user_id = new_id();
    for req in [other_amount, other_user] {
        let err = app.charge(req).await.expect_err("order already paid");
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
        assert_eq!(
            reason_of(&err),
            Some(ErrorReason::IdempotencyKeyReused),
            "{err:?}"
        );
        assert_eq!(field_of(&err).as_deref(), Some("order_id"), "{err:?}");
    }
    assert_eq!(app.stats().await.charges_created, 1);
    assert_eq!(
        app.get_by("", &first.order_id).await.expect("by order"),
        paid
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_charges_of_one_order_under_different_keys_charge_once() {
    let app = spawn_app().await;
    // A slow gateway keeps the winner in flight while the others hit the order's index.
    app.put_admin(
        "/admin/faults",
        json!([{"method": "POST /v1/charges", "latency": {"kind": "fixed", "ms": 300}}]),
    )
    .await;
    let base = charge_request("order-race-0", 4200, VISA_OK);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut req = base.clone();
        req.idempotency_key = format!("order-race-{i}");
        let mut client = app.client.clone();
        tasks.push(tokio::spawn(async move { client.charge(req).await }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        let resp = t.await.expect("task").expect("every call succeeds");
        answers.push(resp.into_inner().payment.expect("payment"));
    }
    assert_eq!(answers[0].status(), PaymentStatus::Succeeded);
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "one payment for all: {answers:?}"
    );
    assert_eq!(app.stats().await.charges_created, 1, "charged exactly once");
    assert_eq!(
        app.count("payments").await,
        1,
        "one payment row for the order"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_payment_finds_a_payment_by_its_id_or_its_order_and_wants_exactly_one() {
    let app = spawn_app().await;
    let req = charge_request("lookup", 700, VISA_DECLINED);
    let paid = app
        .charge(req.clone())
        .await
        .expect("a decline is an answer");
    assert_eq!(paid.status(), PaymentStatus::Declined);

    assert_eq!(app.get_by(&paid.payment_id, "").await.expect("by id"), paid);
    assert_eq!(app.get_by("", &req.order_id).await.expect("by order"), paid);
    // Upper-case UUIDs name the same order.
    assert_eq!(
        app.get_by("", &req.order_id.to_uppercase())
            .await
            .expect("by order, upper case"),
        paid
    );

    let cases = [
        ("", "", Code::InvalidArgument, "payment_id"),
        (
            paid.payment_id.as_str(),
            req.order_id.as_str(),
            Code::InvalidArgument,
            "order_id",
        ),
        ("", "not-a-uuid", Code::InvalidArgument, "order_id"),
        ("not-a-uuid", "", Code::InvalidArgument, "payment_id"),
    ];
    for (payment_id, order_id, code, field) in cases {
        let err = app
            .get_by(payment_id, order_id)
            .await
            .expect_err("bad lookup");
        assert_eq!(err.code(), code, "{payment_id:?}/{order_id:?}: {err:?}");
        assert_eq!(field_of(&err).as_deref(), Some(field), "{err:?}");
    }
    let unknown = new_id();
    let err = app.get_by("", &unknown).await.expect_err("no such order");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(field_of(&err).as_deref(), Some("order_id"), "{err:?}");
    assert_eq!(
        reason_of(&err),
        Some(ErrorReason::PaymentNotFound),
        "{err:?}"
    );
    assert!(err.message().contains(&unknown), "{err:?}");
    app.finish().await;
}
