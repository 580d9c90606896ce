//! ChainedCharge against a real item-service (in-process, on the local stack's SecantusDB
//! and Redis) and the mock card gateway.

use std::time::Duration;

use crate::harness::*;
use platform::{ErrorReason, error::field_of, reason_of};
use shop_proto::{
    common::v1::ItemLine,
    item::v1::{self as item_pb, ReservationStatus, item_service_client::ItemServiceClient},
    payment::v1::{self as pb, PaymentStatus},
};
use tonic::Code;

struct Items {
    client: ItemServiceClient<platform::transport::GrpcTransport>,
    addr: std::net::SocketAddr,
    /// Stops item-service when the test drops it.
    _server: test_support::Running,
}

async fn spawn_items() -> Items {
    let items = test_support::item::spawn().await;
    Items {
        client: ItemServiceClient::new(test_support::identity::operator(
            items.grpc_addr,
            platform::identity::ITEM_SERVICE,
        )),
        addr: items.grpc_addr,
        _server: items.server,
    }
}

impl Items {
    async fn create(&self, price: i64, stock: i64) -> String {
        let sku =
            format!("PAY-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]).to_uppercase();
        self.client
            .clone()
            .create_item(item_pb::CreateItemRequest {
                sku,
                name: "Chained test item".into(),
                description: String::new(),
                category: "tests".into(),
                price: Some(usd(price)),
                stock,
                image_url: String::new(),
            })
            .await
            .expect("CreateItem")
            .into_inner()
            .item
            .expect("item")
            .id
    }

    async fn stock(&self, id: &str) -> i64 {
        self.client
            .clone()
            .get_item(item_pb::GetItemRequest { id: id.into() })
            .await
            .expect("GetItem")
            .into_inner()
            .item
            .expect("item")
            .stock
    }

    async fn reservation(&self, id: &str) -> ReservationStatus {
        self.client
            .clone()
            .get_reservation(item_pb::GetReservationRequest {
                reservation_id: id.into(),
            })
            .await
            .expect("GetReservation")
            .into_inner()
            .reservation
            .expect("reservation")
            .status()
    }
}

fn chained_request(key: &str, lines: &[(&str, i32)], number: &str) -> pb::ChainedChargeRequest {
    pb::ChainedChargeRequest {
        idempotency_key: key.into(),
        user_id: new_id(),
        order_id: new_id(),
        lines: lines
            .iter()
            .map(|(id, q)| ItemLine {
                item_id: (*id).into(),
                quantity: *q,
            })
            .collect(),
        card: Some(card(number)),
    }
}

async fn chained(
    app: &TestApp,
    req: pb::ChainedChargeRequest,
) -> Result<pb::ChainedChargeResponse, tonic::Status> {
    app.client
        .clone()
        .chained_charge(req)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_charge_prices_reserves_charges_and_commits_once() {
    let items = spawn_items().await;
    let app = spawn_app_with(|c| {
        c.item_service_url = items.addr.into();
        // SecantusDB is slow under a parallel test run; this is not what the test is about.
        c.item_timeout_ms = 20_000;
    })
    .await;
    let a = items.create(1500, 5).await;
    let b = items.create(250, 10).await;

    let req = chained_request("chk-1", &[(&a, 2), (&b, 1)], VISA_OK);
    let resp = chained(&app, req.clone()).await.expect("chained charge");
    let payment = resp.payment.clone().expect("payment");
    assert_eq!(payment.status(), PaymentStatus::Succeeded);
    assert_eq!(payment.amount, Some(usd(3250)));
    assert_eq!(resp.total, Some(usd(3250)));
    assert_eq!(resp.lines.len(), 2);
    assert_eq!(resp.lines[0].line_total, Some(usd(3000)));
    assert_eq!(resp.reservation_id, "chk-1");
    assert_eq!(
        items.reservation("chk-1").await,
        ReservationStatus::Committed
    );
    assert_eq!((items.stock(&a).await, items.stock(&b).await), (3, 9));

    // A retry of the whole hop replays: same payment, no second charge, stock unchanged.
    let again = chained(&app, req).await.expect("retry");
    assert_eq!(again.payment, resp.payment);
    assert_eq!(app.stats().await.charges_created, 1);
    assert_eq!((items.stock(&a).await, items.stock(&b).await), (3, 9));

    // The same key for another cart: item-service's refusal is relayed with its reason
    // and field, so the caller knows the key was reused whatever the message says.
    let err = chained(&app, chained_request("chk-1", &[(&a, 1)], VISA_OK))
        .await
        .expect_err("key reused");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(
        reason_of(&err),
        Some(ErrorReason::IdempotencyKeyReused),
        "{err:?}"
    );
    assert_eq!(field_of(&err).as_deref(), Some("reservation_id"));
    assert_eq!(app.stats().await.charges_created, 1);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_releases_the_stock_and_out_of_stock_never_charges() {
    let items = spawn_items().await;
    let app = spawn_app_with(|c| {
        c.item_service_url = items.addr.into();
        // SecantusDB is slow under a parallel test run; this is not what the test is about.
        c.item_timeout_ms = 20_000;
    })
    .await;
    let a = items.create(999, 3).await;

    let resp = chained(
        &app,
        chained_request("chk-declined", &[(&a, 2)], VISA_NO_FUNDS),
    )
    .await
    .expect("a decline is an answer");
    let payment = resp.payment.expect("payment");
    assert_eq!(payment.status(), PaymentStatus::Declined);
    assert_eq!(payment.decline_code, "insufficient_funds");
    assert_eq!(
        items.reservation("chk-declined").await,
        ReservationStatus::Released
    );
    assert_eq!(items.stock(&a).await, 3);

    let err = chained(&app, chained_request("chk-too-many", &[(&a, 4)], VISA_OK))
        .await
        .expect_err("not enough stock");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // Relayed from item-service: its reason and field arrive intact over this hop.
    assert_eq!(
        err.metadata()
            .get(platform::reason::REASON_METADATA_KEY)
            .and_then(|v| v.to_str().ok()),
        Some("ERROR_REASON_OUT_OF_STOCK"),
        "{err:?}"
    );
    assert_eq!(
        field_of(&err).as_deref(),
        Some("lines[0].quantity"),
        "{err:?}"
    );
    let err = chained(
        &app,
        chained_request("chk-unknown", &[("0123456789abcdef01234567", 1)], VISA_OK),
    )
    .await
    .expect_err("unknown item");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(reason_of(&err), Some(ErrorReason::ItemNotFound), "{err:?}");
    let err = chained(&app, chained_request("chk-bad", &[("nope", 1)], VISA_OK))
        .await
        .expect_err("bad id");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason_of(&err), Some(ErrorReason::InvalidField), "{err:?}");
    let stats = app.stats().await;
    assert_eq!((stats.charges_created, stats.charges_succeeded), (1, 0));
    assert_eq!(items.stock(&a).await, 3);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_service_down_fails_fast_with_unavailable() {
    // spawn_app points ITEM_SERVICE_URL at a port nobody listens on.
    let app = spawn_app().await;
    let err = chained(
        &app,
        chained_request("chk-down", &[("0123456789abcdef01234567", 1)], VISA_OK),
    )
    .await
    .expect_err("item-service is down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(app.stats().await.charges_created, 0);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciling_a_lost_gateway_answer_settles_the_payment_and_leaves_the_reservation_alone() {
    let items = spawn_items().await;
    let app = spawn_app_with(|c| {
        c.item_service_url = items.addr.into();
        c.item_timeout_ms = 20_000;
        c.processor_timeout_ms = 300;
    })
    .await;
    let a = items.create(500, 4).await;
    app.put_admin(
        "/admin/hangs",
        serde_json::json!([{"method": "POST /v1/charges", "error_rate": 1.0}]),
    )
    .await;
    let req = chained_request("chk-lost", &[(&a, 1)], VISA_OK);
    let err = chained(&app, req.clone()).await.expect_err("gateway hangs");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(
        reason_of(&err),
        Some(ErrorReason::PaymentPending),
        "{err:?}"
    );
    // Outcome unknown: the stock stays held.
    assert_eq!(
        items.reservation("chk-lost").await,
        ReservationStatus::Reserved
    );
    assert_eq!(items.stock(&a).await, 3);

    let pending = app.get_by("", &req.order_id).await.expect("by order");
    assert_eq!(pending.status(), PaymentStatus::Pending);
    let settled = app.reconcile(&pending.payment_id).await;
    assert_eq!(settled.status(), PaymentStatus::Failed);
    // Never charged, but the reservation is user-service's checkout recovery's to release:
    // reconciling only settles the payment.
    assert_eq!(
        items.reservation("chk-lost").await,
        ReservationStatus::Reserved
    );
    assert_eq!(items.stock(&a).await, 3);
    assert_eq!(app.stats().await.charges_created, 0);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_settles_a_chained_charge_as_succeeded_and_leaves_the_reservation_held() {
    let items = spawn_items().await;
    let app = spawn_app_with(|c| {
        c.item_service_url = items.addr.into();
        c.item_timeout_ms = 20_000;
        c.processor_timeout_ms = 300;
        // The background "payment reconciler" task, as deployed.
        c.reconcile_interval_ms = 200;
    })
    .await;
    let a = items.create(700, 5).await;
    // The gateway charges, but answers long after the service stopped waiting.
    app.put_admin(
        "/admin/faults",
        serde_json::json!([{"method": "POST /v1/charges", "latency": {"kind": "fixed", "ms": 2000}}]),
    )
    .await;
    let req = chained_request("chk-slow", &[(&a, 2)], VISA_OK);
    let err = chained(&app, req.clone()).await.expect_err("answer lost");
    assert_eq!(
        reason_of(&err),
        Some(ErrorReason::PaymentPending),
        "{err:?}"
    );

    let settled = eventually(Duration::from_secs(60), || async {
        let p = app.get_by("", &req.order_id).await.expect("by order");
        (p.status() != PaymentStatus::Pending).then_some(p)
    })
    .await;
    assert_eq!(settled.status(), PaymentStatus::Succeeded);
    assert_eq!(settled.amount, Some(usd(1400)));
    // The reservation is left as it was: still holding the two units.
    assert_eq!(
        items.reservation("chk-slow").await,
        ReservationStatus::Reserved
    );
    assert_eq!(items.stock(&a).await, 3);

    // The in-request path is unchanged: a retry of the hop with its key commits it.
    app.put_admin("/admin/faults", serde_json::json!([])).await;
    let resp = chained(&app, req).await.expect("retry");
    assert_eq!(resp.payment, Some(settled));
    assert_eq!(
        items.reservation("chk-slow").await,
        ReservationStatus::Committed
    );
    assert_eq!(items.stock(&a).await, 3);
    assert_eq!(app.stats().await.charges_created, 1);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_replay_after_the_key_was_purged_returns_the_payment_and_reserves_nothing() {
    let items = spawn_items().await;
    let app = spawn_app_with(|c| {
        c.item_service_url = items.addr.into();
        c.item_timeout_ms = 20_000;
    })
    .await;
    let a = items.create(1200, 5).await;
    let first = chained_request("chk-purged-1", &[(&a, 2)], VISA_OK);
    let paid = chained(&app, first.clone()).await.expect("first checkout");
    assert_eq!(
        paid.payment.as_ref().map(|p| p.status()),
        Some(PaymentStatus::Succeeded)
    );
    assert_eq!(items.stock(&a).await, 3);

    // The retention time passed: the keys are gone (as the purge leaves them).
    assert!(app.sql("DELETE FROM idempotency_keys").await >= 1);

    // The same order under a new key: its payment, the original reservation, nothing new.
    let mut again = first.clone();
    again.idempotency_key = "chk-purged-2".into();
    let replay = chained(&app, again).await.expect("replay");
    assert_eq!(replay.payment, paid.payment);
    assert_eq!(replay.total, Some(usd(2400)));
    assert_eq!(replay.reservation_id, "chk-purged-1");
    assert_eq!(items.stock(&a).await, 3);
    assert_eq!(app.stats().await.charges_created, 1);

    // Another user's checkout cannot take this order.
    let mut other = first.clone();
    other.idempotency_key = "chk-purged-3".into();
    other.user_id = new_id();
    let err = chained(&app, other)
        .await
        .expect_err("order paid by someone else");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(
        reason_of(&err),
        Some(ErrorReason::IdempotencyKeyReused),
        "{err:?}"
    );
    assert_eq!(field_of(&err).as_deref(), Some("order_id"), "{err:?}");

    // Neither request reserved stock under its own key.
    for key in ["chk-purged-2", "chk-purged-3"] {
        let err = items
            .client
            .clone()
            .get_reservation(item_pb::GetReservationRequest {
                reservation_id: key.into(),
            })
            .await
            .expect_err("no reservation");
        assert_eq!(err.code(), Code::NotFound, "{key}: {err:?}");
    }
    assert_eq!(items.stock(&a).await, 3);
    assert_eq!(app.stats().await.charges_created, 1);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cart_is_invalid_argument_naming_the_field_and_charges_nothing() {
    // No item-service runs: the cart is checked before any call to it.
    let app = spawn_app().await;
    let a = "0123456789abcdef01234567";
    let upper = a.to_uppercase();
    let ids: Vec<String> = (0..51).map(|i| format!("{i:024x}")).collect();
    let many: Vec<(&str, i32)> = ids.iter().map(|id| (id.as_str(), 1)).collect();
    let cases: Vec<(Vec<(&str, i32)>, &str)> = vec![
        (vec![], "lines"),
        (many, "lines"),
        (vec![("nope", 1)], "lines[0].item_id"),
        (vec![(a, 0)], "lines[0].quantity"),
        (vec![(a, 1001)], "lines[0].quantity"),
        (vec![(a, 1), (&upper, 2)], "lines[1].item_id"),
    ];
    for (lines, field) in cases {
        let err = chained(&app, chained_request("chk-bad-cart", &lines, VISA_OK))
            .await
            .expect_err("bad cart");
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert_eq!(
            platform::error::field_of(&err).as_deref(),
            Some(field),
            "{err:?}"
        );
    }
    assert_eq!(app.stats().await.charges_created, 0);
    app.finish().await;
}
