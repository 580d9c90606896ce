//! The `shop` monolith: the same checkout, with every service called in-process, and the
//! services' background tasks running as in their own processes.

use std::time::Duration;

use crate::common::*;
use reqwest::StatusCode;
use serde_json::json;
use shop_proto::{
    common::v1::ItemLine,
    item::v1::{
        GetReservationRequest, ReservationStatus, ReserveStockRequest,
        item_service_client::ItemServiceClient,
    },
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_in_the_monolith_under_every_strategy() {
    let s = monolith().await;
    let admin = s.admin().await;
    let item = s.create_item(&admin, "Monolith mug", 1200, 10).await;
    let id = item["id"].as_str().expect("id").to_owned();
    let lines = json!([{"item_id": id, "quantity": 2}]);
    let mut stock = 10;
    let mut totals = Vec::new();
    for strategy in ["orchestrated", "parallel", "chained"] {
        let (token, user_id) = s.customer().await;
        let k = key();
        let r = s
            .checkout(&token, strategy, &k, lines.clone(), GOOD_CARD)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{strategy}: {:?}", r.body);
        assert_eq!(
            r.body["order"]["id"],
            gateway::order_id_for(user_id.parse().expect("uuid"), &k).to_string()
        );
        totals.push((
            r.body["order"]["total"].clone(),
            r.body["order"]["lines"].clone(),
        ));
        stock -= 2;
        assert_eq!(s.stock_of(&id).await, stock);
        let again = s
            .checkout(&token, strategy, &k, lines.clone(), GOOD_CARD)
            .await;
        assert_eq!(again.body["order"]["id"], r.body["order"]["id"]);

        let d = s
            .checkout(&token, strategy, &key(), lines.clone(), DECLINED_CARD)
            .await;
        assert_eq!(
            d.status,
            StatusCode::PAYMENT_REQUIRED,
            "{strategy}: {:?}",
            d.body
        );
        assert_eq!(s.stock_of(&id).await, stock, "declined: stock restored");

        let orders = s.get("/api/orders", Some(&token)).await;
        assert_eq!(orders.body["orders"].as_array().expect("orders").len(), 1);
    }
    assert!(totals.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(s.card.stats().charges_succeeded, 3);
    let dbg = s.operator.get("/debug/downstreams", None).await;
    assert_eq!(dbg.body["downstreams"][0]["target"], "in-process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monolith_runs_the_item_sweeper_too() {
    // A reservation nobody commits or releases comes back by expiry alone: the sweeper that
    // item-service declares runs in the monolith as in item-service's own process.
    let s = monolith_with(|item| {
        item.reservation_ttl_secs = 1;
        item.sweep_interval_ms = 100;
    })
    .await;
    let admin = s.admin().await;
    let item = s.create_item(&admin, "Forgotten mug", 900, 5).await;
    let id = item["id"].as_str().expect("id").to_owned();
    let mut items = ItemServiceClient::new(test_support::identity::operator(
        s.grpc,
        platform::identity::ITEM_SERVICE,
    ));
    let rid = format!("abandoned-{}", unique_suffix());
    items
        .reserve_stock(ReserveStockRequest {
            reservation_id: rid.clone(),
            lines: vec![ItemLine {
                item_id: id.clone(),
                quantity: 3,
            }],
        })
        .await
        .expect("reserve");
    assert_eq!(s.stock_of(&id).await, 2, "the reservation holds stock");

    // Generous bound: only there so a missing sweeper fails instead of hanging.
    let status = eventually(Duration::from_secs(30), || {
        let mut items = items.clone();
        let rid = rid.clone();
        async move {
            let status = items
                .get_reservation(GetReservationRequest {
                    reservation_id: rid,
                })
                .await
                .expect("get reservation")
                .into_inner()
                .reservation
                .expect("reservation")
                .status();
            (status != ReservationStatus::Reserved).then_some(status)
        }
    })
    .await;
    assert_eq!(
        status,
        ReservationStatus::Released,
        "expired reservation swept"
    );
    // The stock comes back with the release, read through the gateway (and item-service's
    // cache), which on a loaded machine may answer a moment before the release shows.
    let api = &s.api;
    let id = &id;
    eventually(Duration::from_secs(30), || async move {
        (api.stock_of(id).await == 5).then_some(())
    })
    .await;
}

/// The monolith enforces the same policy as the separate services: its gRPC listener
/// refuses every method of every service with no credentials (the attacker's loop), and a
/// refund from a caller off the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monolith_refuses_what_the_services_refuse() {
    use crate::attacker::{methods_of, raw_call};
    use shop_proto::payment::v1::{RefundRequest, payment_service_client::PaymentServiceClient};
    let s = monolith().await;
    for service in [
        "shop.user.v1.UserService",
        "shop.item.v1.ItemService",
        "shop.payment.v1.PaymentService",
    ] {
        for path in methods_of(service) {
            assert_eq!(
                raw_call(s.grpc, &path, None).await,
                tonic::Code::Unauthenticated,
                "{path} on the monolith without credentials"
            );
        }
    }
    // The admin services are either absent (faults off) or closed, never open.
    for path in methods_of("shop.admin.v1.FaultAdmin")
        .into_iter()
        .chain(methods_of("shop.admin.v1.Echo"))
    {
        let code = raw_call(s.grpc, &path, None).await;
        assert!(
            matches!(
                code,
                tonic::Code::Unauthenticated | tonic::Code::Unimplemented
            ),
            "{path} on the monolith without credentials: {code:?}"
        );
    }
    assert_eq!(
        raw_call(s.grpc, "/grpc.health.v1.Health/Check", None).await,
        tonic::Code::Ok,
        "health stays open"
    );
    let refund = || RefundRequest {
        payment_id: uuid::Uuid::new_v4().to_string(),
        amount: None,
        idempotency_key: format!("m-{}", unique_suffix()),
        reason: "grpcurl".into(),
    };
    let err = PaymentServiceClient::new(test_support::connect(s.grpc).await)
        .refund(refund())
        .await
        .expect_err("no credentials");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = PaymentServiceClient::new(test_support::identity::client_as(
        s.grpc,
        platform::identity::ITEM_SERVICE,
        platform::identity::PAYMENT_SERVICE,
        None,
    ))
    .refund(refund())
    .await
    .expect_err("item-service may not refund");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
}
