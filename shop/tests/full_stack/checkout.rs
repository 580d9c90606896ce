//! The checkout saga against real services: every strategy, failures and compensation,
//! idempotent retries, and contention for the last units.

use std::time::Duration;

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shop_proto::item::v1::{GetReservationRequest, ReservationStatus};

const STRATEGIES: [&str; 3] = ["orchestrated", "parallel", "chained"];

/// The parts of a checkout result that must not depend on the strategy.
fn normalized(body: &Value) -> Value {
    let o = &body["order"];
    let p = &body["payment"];
    json!({
        "lines": o["lines"],
        "total": o["total"],
        "status": o["status"],
        "payment": {
            "amount": p["amount"],
            "amount_refunded": p["amount_refunded"],
            "status": p["status"],
            "card_brand": p["card_brand"],
            "card_last4": p["card_last4"],
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_gives_the_same_result() {
    let s = stack().await;
    let admin = s.admin().await;
    let a = s.create_item(&admin, "Anvil", 2500, 100).await;
    let b = s.create_item(&admin, "Bucket", 399, 100).await;
    let scarce = s.create_item(&admin, "Rare coin", 10_000, 1).await;
    let (a_id, b_id) = (a["id"].as_str().expect("id"), b["id"].as_str().expect("id"));
    let scarce_id = scarce["id"].as_str().expect("id");
    let lines = json!([{"item_id": a_id, "quantity": 2}, {"item_id": b_id, "quantity": 3}]);

    let mut results = Vec::new();
    let mut stock_a = 100;
    let mut stock_b = 100;
    for strategy in STRATEGIES {
        let (token, user_id) = s.customer().await;
        let k = key();

        // Success.
        let r = s
            .checkout(&token, strategy, &k, lines.clone(), GOOD_CARD)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{strategy}: {:?}", r.body);
        assert_eq!(r.body["order"]["total"]["amount_minor"], 2 * 2500 + 3 * 399);
        assert_eq!(r.body["payment"]["status"], "succeeded");
        let expected_id = gateway::order_id_for(user_id.parse().expect("uuid"), &k);
        assert_eq!(r.body["order"]["id"], expected_id.to_string(), "{strategy}");
        assert_eq!(r.body["order"]["reservation_id"], format!("{user_id}:{k}"));
        assert_eq!(r.body["payment"]["order_id"], expected_id.to_string());
        stock_a -= 2;
        stock_b -= 3;
        assert_eq!(s.stock_of(a_id).await, stock_a, "{strategy}");
        assert_eq!(s.stock_of(b_id).await, stock_b, "{strategy}");
        results.push(normalized(&r.body));

        // The same key again: the same order, nothing charged or reserved twice.
        let again = s
            .checkout(&token, strategy, &k, lines.clone(), GOOD_CARD)
            .await;
        assert_eq!(
            again.status,
            StatusCode::CREATED,
            "{strategy}: {:?}",
            again.body
        );
        assert_eq!(again.body["order"]["id"], r.body["order"]["id"]);
        assert_eq!(again.body["payment"]["id"], r.body["payment"]["id"]);
        assert_eq!(s.stock_of(a_id).await, stock_a);

        // History shows it, with its payment.
        let orders = s.get("/api/orders", Some(&token)).await;
        assert_eq!(orders.body["orders"].as_array().expect("orders").len(), 1);
        let one = s
            .get(&format!("/api/orders/{expected_id}"), Some(&token))
            .await;
        assert_eq!(one.status, StatusCode::OK, "{:?}", one.body);
        assert_eq!(one.body["payment"]["status"], "succeeded");
        assert_eq!(one.body["order"]["lines"], r.body["order"]["lines"]);

        // Declined and insufficient funds: 402, stock restored exactly.
        for card in [DECLINED_CARD, NO_FUNDS_CARD] {
            let d = s
                .checkout(&token, strategy, &key(), lines.clone(), card)
                .await;
            assert_eq!(
                d.status,
                StatusCode::PAYMENT_REQUIRED,
                "{strategy} {card}: {:?}",
                d.body
            );
            assert_eq!(d.code(), "card_declined");
            assert_eq!(
                s.stock_of(a_id).await,
                stock_a,
                "{strategy}: stock restored"
            );
            assert_eq!(s.stock_of(b_id).await, stock_b);
        }
        let nofunds = s
            .checkout(&token, strategy, &key(), lines.clone(), NO_FUNDS_CARD)
            .await;
        assert!(
            nofunds.body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("insufficient funds"),
            "{:?}",
            nofunds.body
        );

        // Out of stock: 409, nothing charged.
        let oos = s
            .checkout(
                &token,
                strategy,
                &key(),
                json!([{"item_id": scarce_id, "quantity": 2}]),
                GOOD_CARD,
            )
            .await;
        assert_eq!(
            oos.status,
            StatusCode::CONFLICT,
            "{strategy}: {:?}",
            oos.body
        );
        assert_eq!(oos.code(), "out_of_stock");
        assert_eq!(s.stock_of(scarce_id).await, 1);

        // Unknown item: 404.
        let unknown = s
            .checkout(
                &token,
                strategy,
                &key(),
                json!([{"item_id": "0123456789abcdef01234567", "quantity": 1}]),
                GOOD_CARD,
            )
            .await;
        assert_eq!(
            unknown.status,
            StatusCode::NOT_FOUND,
            "{strategy}: {:?}",
            unknown.body
        );

        // An invalid card number names the field.
        let bad_card = s
            .checkout(&token, strategy, &key(), lines.clone(), "1234")
            .await;
        assert_eq!(
            bad_card.status,
            StatusCode::BAD_REQUEST,
            "{strategy}: {:?}",
            bad_card.body
        );
        assert!(bad_card.field().starts_with("card"), "{:?}", bad_card.body);
        assert_eq!(s.stock_of(a_id).await, stock_a);

        // No token: 401.
        let anon = s
            .send(
                reqwest::Method::POST,
                &format!("/api/checkout?strategy={strategy}"),
                None,
                Some(json!({"lines": lines, "card": {"number": GOOD_CARD, "exp_month": 12, "exp_year": 2099, "cvc": "123"}})),
                &[("Idempotency-Key", "x")],
            )
            .await;
        assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(results[0], results[1], "orchestrated vs parallel");
    assert_eq!(results[0], results[2], "orchestrated vs chained");
    // Exactly the three successful charges moved money.
    assert_eq!(s.card.stats().charges_succeeded, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_client_timeout_gives_one_order_and_one_charge() {
    let s = stack().await;
    let admin = s.admin().await;
    let item = s.create_item(&admin, "Slow seller", 1000, 10).await;
    let id = item["id"].as_str().expect("id");
    // Charging takes a while: the client gives up before the gateway is done.
    s.set_service_faults(
        s.payment.addr,
        vec![
            delay("/shop.payment.v1.PaymentService/Charge", 700),
            delay("/shop.payment.v1.PaymentService/ChainedCharge", 700),
        ],
    )
    .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(250))
        .build()
        .expect("client");
    for (n, strategy) in ["orchestrated", "chained"].into_iter().enumerate() {
        let (token, _) = s.customer().await;
        let k = key();
        let body = json!({"lines": [{"item_id": id, "quantity": 1}],
                          "card": {"number": GOOD_CARD, "exp_month": 12, "exp_year": 2099, "cvc": "123"}});
        let first = impatient
            .post(format!("{}/api/checkout?strategy={strategy}", s.base))
            .bearer_auth(&token)
            .header("Idempotency-Key", &k)
            .json(&body)
            .send()
            .await;
        assert!(first.is_err(), "the client should have timed out");
        // Retry once the first attempt has had time to finish (and once while it may not).
        let r = s
            .checkout(&token, strategy, &k, body["lines"].clone(), GOOD_CARD)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{strategy}: {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let again = s
            .checkout(&token, strategy, &k, body["lines"].clone(), GOOD_CARD)
            .await;
        assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
        assert_eq!(again.body["order"]["id"], r.body["order"]["id"]);

        let orders = s.get("/api/orders", Some(&token)).await;
        assert_eq!(
            orders.body["orders"].as_array().expect("orders").len(),
            1,
            "{strategy}"
        );
        assert_eq!(
            s.card.stats().charges_created,
            n as u64 + 1,
            "{strategy}: one charge"
        );
        assert_eq!(s.stock_of(id).await, 10 - (n as i64 + 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_buyers_for_the_last_five_units() {
    let s = stack().await;
    let admin = s.admin().await;
    let item = s.create_item(&admin, "Limited edition", 4200, 5).await;
    let id = item["id"].as_str().expect("id").to_owned();
    let mut buyers = Vec::new();
    for _ in 0..20 {
        buyers.push(s.customer().await);
    }
    let s = std::sync::Arc::new(s);
    let mut tasks = Vec::new();
    for (i, (token, user_id)) in buyers.iter().cloned().enumerate() {
        let s = s.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let k = key();
            let strategy = STRATEGIES[i % 3];
            let r = s
                .checkout(
                    &token,
                    strategy,
                    &k,
                    json!([{"item_id": id, "quantity": 1}]),
                    GOOD_CARD,
                )
                .await;
            (user_id, k, r)
        }));
    }
    let mut won = Vec::new();
    let mut lost = Vec::new();
    for t in tasks {
        let (user_id, k, r) = t.await.expect("task");
        match r.status {
            StatusCode::CREATED => won.push((user_id, k)),
            StatusCode::CONFLICT => {
                assert_eq!(r.code(), "out_of_stock", "{:?}", r.body);
                lost.push((user_id, k));
            }
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    assert_eq!(won.len(), 5, "exactly five orders");
    assert_eq!(lost.len(), 15);
    assert_eq!(s.card.stats().charges_succeeded, 5, "exactly five charges");
    assert_eq!(s.card.stats().charges_created, 5);
    assert_eq!(s.stock_of(&id).await, 0);
    let mut items = item_client(&s).await;
    for (user_id, k) in won.iter().chain(lost.iter()) {
        let r = items
            .get_reservation(GetReservationRequest {
                reservation_id: format!("{user_id}:{k}"),
            })
            .await;
        if let Ok(r) = r {
            let status = r.into_inner().reservation.expect("reservation").status();
            assert_ne!(
                status,
                ReservationStatus::Reserved,
                "no reservation left open"
            );
        }
    }
}

/// A commit that fails without saying why (item-service unavailable): whether it committed
/// is unknown, the money was taken and the stock is held, so the checkout is completed
/// forward by user-service's recovery, never refunded on a guess. The client is told so (202).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_commit_is_completed_by_the_recovery() {
    let s = stack().await;
    let admin = s.admin().await;
    let item = s.create_item(&admin, "Fragile vase", 3000, 4).await;
    let id = item["id"].as_str().expect("id");
    let (token, _user_id) = s.customer().await;
    s.set_service_faults(
        s.item.addr,
        vec![fail_always("/shop.item.v1.ItemService/CommitReservation")],
    )
    .await;
    let k = key();
    let lines = json!([{"item_id": id, "quantity": 2}]);
    let r = s
        .checkout(&token, "orchestrated", &k, lines.clone(), GOOD_CARD)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.body["order"]["status"], "pending");
    assert_eq!(r.body["payment"]["status"], "succeeded");
    let order_id = r.body["order"]["id"].as_str().expect("order id").to_owned();
    // While item-service keeps failing the order stays pending (and is listed as such).
    let shown = s
        .get(&format!("/api/orders/{order_id}"), Some(&token))
        .await;
    assert_eq!(shown.status, StatusCode::OK, "{:?}", shown.body);
    assert_eq!(shown.body["order"]["status"], "pending");
    assert_eq!(shown.body["payment"]["status"], "succeeded");

    s.set_service_faults(s.item.addr, vec![]).await;
    let placed = test_support::eventually(Duration::from_secs(30), || async {
        let o = s
            .get(&format!("/api/orders/{order_id}"), Some(&token))
            .await;
        (o.body["order"]["status"] == "placed").then_some(o)
    })
    .await;
    assert_eq!(placed.body["order"]["payment_id"], r.body["payment"]["id"]);
    let stats = s.card.stats();
    assert_eq!(stats.charges_succeeded, 1);
    assert_eq!(stats.refunds_created, 0, "nothing refunded on a guess");
    assert_eq!(s.stock_of(id).await, 2, "the stock stays sold");

    // A retry with the same key returns the order, charging nothing more.
    let again = s
        .checkout(&token, "orchestrated", &k, lines, GOOD_CARD)
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
    assert_eq!(again.body["order"]["id"], order_id.as_str());
    assert_eq!(s.card.stats().charges_created, 1);
}

/// A commit refused because the stock hold is gone: the money goes back, and the answer
/// says "refunded" only because the refund went through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_refused_refunds_and_releases() {
    let s = stack().await;
    let admin = s.admin().await;
    let item = s.create_item(&admin, "Fragile vase", 3000, 4).await;
    let id = item["id"].as_str().expect("id");
    let (token, user_id) = s.customer().await;
    // The hold is released while the charge runs (as the sweeper would on expiry).
    s.set_service_faults(
        s.payment.addr,
        vec![delay("/shop.payment.v1.PaymentService/Charge", 600)],
    )
    .await;
    let k = key();
    let lines = json!([{"item_id": id, "quantity": 2}]);
    let mut items = item_client(&s).await;
    let releaser = {
        let rid = format!("{user_id}:{k}");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            items
                .release_reservation(shop_proto::item::v1::ReleaseReservationRequest {
                    reservation_id: rid,
                })
                .await
                .expect("release");
        })
    };
    let r = s
        .checkout(&token, "orchestrated", &k, lines.clone(), GOOD_CARD)
        .await;
    releaser.await.expect("releaser");
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("refunded"),
        "{:?}",
        r.body
    );
    let stats = s.card.stats();
    assert_eq!(stats.charges_succeeded, 1);
    assert_eq!(stats.refunds_created, 1, "the charge was refunded");
    assert_eq!(s.stock_of(id).await, 4, "the stock was released");
    let orders = s.get("/api/orders", Some(&token)).await;
    assert_eq!(orders.body["orders"], json!([]));

    // A retry with the same key does not charge again.
    s.set_service_faults(s.payment.addr, vec![]).await;
    let again = s
        .checkout(&token, "orchestrated", &k, lines, GOOD_CARD)
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{:?}", again.body);
    assert_eq!(s.card.stats().charges_created, 1);
    assert_eq!(s.stock_of(id).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_of_one_checkout_converge() {
    let s = stack().await;
    let admin = s.admin().await;
    let item = s.create_item(&admin, "Double click", 800, 10).await;
    let id = item["id"].as_str().expect("id").to_owned();
    // A slow charge, so the duplicates overlap.
    s.set_service_faults(
        s.payment.addr,
        vec![
            delay("/shop.payment.v1.PaymentService/Charge", 300),
            delay("/shop.payment.v1.PaymentService/ChainedCharge", 300),
        ],
    )
    .await;
    let s = std::sync::Arc::new(s);
    for (n, strategy) in STRATEGIES.into_iter().enumerate() {
        let (token, _) = s.customer().await;
        let k = key();
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let (s, token, k, id) = (s.clone(), token.clone(), k.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                s.checkout(
                    &token,
                    strategy,
                    &k,
                    json!([{"item_id": id, "quantity": 1}]),
                    GOOD_CARD,
                )
                .await
            }));
        }
        let mut order_ids = Vec::new();
        for t in tasks {
            let r = t.await.expect("task");
            assert_eq!(r.status, StatusCode::CREATED, "{strategy}: {:?}", r.body);
            order_ids.push(r.body["order"]["id"].clone());
        }
        assert!(order_ids.windows(2).all(|w| w[0] == w[1]), "{order_ids:?}");
        assert_eq!(
            s.card.stats().charges_created,
            n as u64 + 1,
            "{strategy}: one charge"
        );
        assert_eq!(
            s.stock_of(&id).await,
            10 - (n as i64 + 1),
            "{strategy}: one unit"
        );
        let orders = s.get("/api/orders", Some(&token)).await;
        assert_eq!(orders.body["orders"].as_array().expect("orders").len(), 1);
    }
}
