//! The asynchronous checkout end to end: the real services, their stores and NATS, through
//! the gateway as a browser calls it. Accepted at once (202, pending), then completed by
//! the services' events: the same guarantees as the synchronous strategies (no oversell,
//! a retry never charges twice, a declined card gives the stock back).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

async fn async_stack() -> Stack {
    stack_with(Options {
        events: true,
        ..Options::default()
    })
    .await
}

/// A stack with events, one item of `stock` units at `price` minor units, and a logged-in
/// customer: the stack, the item's id and the customer's token.
async fn stack_with_item(name: &str, price: i64, stock: i64) -> (Stack, String, String) {
    let s = async_stack().await;
    let admin = s.admin().await;
    let item = s.create_item(&admin, name, price, stock).await;
    let id = item["id"].as_str().expect("id").to_owned();
    let (token, _) = s.customer().await;
    (s, id, token)
}

/// Places an asynchronous checkout of `qty` of `id` under `key`; it must be accepted (202,
/// pending). Returns the order id.
async fn accepted(api: &Api, token: &str, key: &str, id: &str, qty: i64, card: &str) -> String {
    let r = api
        .checkout(
            token,
            "async",
            key,
            json!([{"item_id": id, "quantity": qty}]),
            card,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.body["order"]["status"], "pending", "{:?}", r.body);
    r.body["order"]["id"].as_str().expect("order id").to_owned()
}

/// Follows an order until it leaves PENDING (up to 60 s); returns it.
async fn settled(api: &Api, token: &str, order_id: &str) -> Value {
    for _ in 0..600 {
        let r = api
            .get(&format!("/api/orders/{order_id}"), Some(token))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        if r.body["order"]["status"] != "pending" {
            return r.body["order"].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("order {order_id} still pending after 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_checkout_is_accepted_at_once_then_paid_and_its_stock_sold() {
    let (s, id, token) = stack_with_item("Mug", 1250, 5).await;
    let order_id = accepted(&s.api, &token, &key(), &id, 2, GOOD_CARD).await;

    let order = settled(&s.api, &token, &order_id).await;
    assert_eq!(order["status"], "placed", "{order:?}");
    assert_eq!(order["total"]["amount_minor"], 2500);
    assert_eq!(order["lines"][0]["name"], "Mug");
    assert_eq!(s.stock_of(&id).await, 3);
    let stats = s.card.stats();
    assert_eq!((stats.charges_created, stats.charges_succeeded), (1, 1));
    let detail = s
        .get(&format!("/api/orders/{order_id}"), Some(&token))
        .await;
    assert_eq!(
        detail.body["payment"]["status"], "succeeded",
        "{:?}",
        detail.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_cancels_the_async_order_and_gives_the_stock_back() {
    let (s, id, token) = stack_with_item("Lamp", 4000, 4).await;
    let order_id = accepted(&s.api, &token, &key(), &id, 3, DECLINED_CARD).await;
    let order = settled(&s.api, &token, &order_id).await;
    assert_eq!(order["status"], "cancelled");
    assert_eq!(order["failure"], "card_declined");
    // Released once the cancellation reaches item-service.
    eventually(Duration::from_secs(30), || async {
        (s.stock_of(&id).await == 4).then_some(())
    })
    .await;
    assert_eq!(s.card.stats().charges_succeeded, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_async_checkout_is_one_order_and_one_charge() {
    let (s, id, token) = stack_with_item("Pen", 300, 10).await;
    let k = key();
    let lines = json!([{"item_id": id, "quantity": 1}]);
    let order_id = accepted(&s.api, &token, &k, &id, 1, GOOD_CARD).await;
    let again = s
        .checkout(&token, "async", &k, lines.clone(), GOOD_CARD)
        .await;
    assert_eq!(again.body["order"]["id"], order_id.as_str());
    assert_eq!(settled(&s.api, &token, &order_id).await["status"], "placed");
    // After it finished, the same key answers with the placed order.
    let late = s.checkout(&token, "async", &k, lines, GOOD_CARD).await;
    assert_eq!(late.status, StatusCode::CREATED, "{:?}", late.body);
    assert_eq!(late.body["order"]["id"], order_id.as_str());
    assert_eq!(s.card.stats().charges_succeeded, 1);
    assert_eq!(s.stock_of(&id).await, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k_async_buyers_for_s_units_never_oversell() {
    const K: usize = 8;
    const S: i64 = 3;
    let s = async_stack().await;
    let admin = s.admin().await;
    let item = s.create_item(&admin, "Last ones", 999, S).await;
    let id = item["id"].as_str().expect("id").to_owned();
    let mut buyers = Vec::new();
    for _ in 0..K {
        buyers.push(s.customer().await.0);
    }
    let keys: Vec<String> = buyers.iter().map(|_| key()).collect();
    let answers = futures::future::join_all(buyers.iter().zip(&keys).map(|(t, k)| {
        s.checkout(
            t,
            "async",
            k,
            json!([{"item_id": id, "quantity": 1}]),
            GOOD_CARD,
        )
    }))
    .await;
    let mut orders = Vec::new();
    for (t, r) in buyers.iter().zip(&answers) {
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
        orders.push((
            t.clone(),
            r.body["order"]["id"].as_str().expect("id").to_owned(),
        ));
    }
    let mut placed = 0;
    let mut out_of_stock = 0;
    for (t, o) in &orders {
        let order = settled(&s.api, t, o).await;
        match order["status"].as_str() {
            Some("placed") => placed += 1,
            Some("cancelled") if order["failure"] == "out_of_stock" => out_of_stock += 1,
            other => panic!("unexpected ending {other:?}: {order:?}"),
        }
    }
    assert_eq!((placed, out_of_stock), (S as usize, K - S as usize));
    assert_eq!(s.stock_of(&id).await, 0);
    assert_eq!(s.card.stats().charges_succeeded, S as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_are_accepted_while_payment_service_is_down_and_completed_when_it_returns() {
    let (mut s, id, token) = stack_with_item("Kettle", 2000, 10).await;
    s.payment.stop().await;

    // Accepted without payment-service.
    let mut orders = Vec::new();
    for _ in 0..3 {
        orders.push(accepted(&s.api, &token, &key(), &id, 1, GOOD_CARD).await);
    }
    // Stock is held and the orders wait (priced, pending): nothing is lost or failed.
    for o in &orders {
        let order = eventually(Duration::from_secs(30), || async {
            let r = s.get(&format!("/api/orders/{o}"), Some(&token)).await;
            (r.body["order"]["priced"] == true).then_some(r.body["order"].clone())
        })
        .await;
        assert_eq!(order["status"], "pending");
    }
    assert_eq!(s.stock_of(&id).await, 7);
    assert_eq!(s.card.stats().charges_created, 0);

    let _back = s.restart_payment().await;
    for o in &orders {
        assert_eq!(settled(&s.api, &token, o).await["status"], "placed");
    }
    assert_eq!(s.card.stats().charges_succeeded, 3);
    assert_eq!(s.stock_of(&id).await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monolith_completes_an_async_checkout_too() {
    let shop = monolith_with_events().await;
    let admin = shop.admin().await;
    let item = shop.api.create_item(&admin, "Cup", 700, 2).await;
    let id = item["id"].as_str().expect("id");
    let (token, _) = shop.api.customer().await;
    let order_id = accepted(&shop.api, &token, &key(), id, 2, GOOD_CARD).await;
    assert_eq!(
        settled(&shop.api, &token, &order_id).await["status"],
        "placed"
    );
    assert_eq!(shop.api.stock_of(id).await, 0);
}
