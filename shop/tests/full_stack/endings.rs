//! Every strategy ends a checkout that cannot be placed the same way: the same HTTP answer
//! where it answers at once, and the same ending (`failure`) on the order it recorded, in
//! the distributed shop and in the monolith, the asynchronous checkout included.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

const STRATEGIES: [&str; 4] = ["orchestrated", "parallel", "chained", "async"];

/// One way a checkout cannot be placed, and how every strategy must end it.
struct Ending {
    name: &'static str,
    lines: Value,
    card: &'static str,
    /// The synchronous strategies' answer.
    status: StatusCode,
    code: &'static str,
    /// The ending on the order, where one was recorded (the asynchronous checkout always
    /// records one; a synchronous one stopped before its record has none).
    failure: &'static str,
}

/// Follows an order until it leaves PENDING and CANCELLING (up to 60 s); None when there
/// is no such order.
async fn ended(api: &Api, token: &str, order_id: &str) -> Option<Value> {
    for _ in 0..600 {
        let r = api
            .get(&format!("/api/orders/{order_id}"), Some(token))
            .await;
        if r.status == StatusCode::NOT_FOUND {
            return None;
        }
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let status = r.body["order"]["status"].as_str().unwrap_or("");
        if status != "pending" && status != "cancelling" {
            return Some(r.body["order"].clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("order {order_id} did not end within 60 s");
}

async fn every_strategy_ends_alike(api: &Api, admin: &str, shop: &str) {
    let plenty = api.create_item(admin, "Anvil", 2500, 1000).await;
    let scarce = api.create_item(admin, "Rare coin", 10_000, 1).await;
    let plenty = plenty["id"].as_str().expect("id");
    let scarce = scarce["id"].as_str().expect("id");
    let endings = [
        Ending {
            name: "out of stock",
            lines: json!([{"item_id": scarce, "quantity": 2}]),
            card: GOOD_CARD,
            status: StatusCode::CONFLICT,
            code: "out_of_stock",
            failure: "out_of_stock",
        },
        Ending {
            name: "unknown item",
            lines: json!([{"item_id": "0123456789abcdef01234567", "quantity": 1}]),
            card: GOOD_CARD,
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            failure: "item_not_found",
        },
        Ending {
            name: "declined card",
            lines: json!([{"item_id": plenty, "quantity": 1}]),
            card: DECLINED_CARD,
            status: StatusCode::PAYMENT_REQUIRED,
            code: "card_declined",
            failure: "card_declined",
        },
        Ending {
            name: "insufficient funds",
            lines: json!([{"item_id": plenty, "quantity": 1}]),
            card: NO_FUNDS_CARD,
            status: StatusCode::PAYMENT_REQUIRED,
            code: "card_declined",
            failure: "card_declined",
        },
    ];
    let (token, user_id) = api.customer().await;
    let user_id = user_id.parse().expect("user id");
    for e in &endings {
        let mut recorded = Vec::new();
        for strategy in STRATEGIES {
            let k = key();
            let r = api
                .checkout(&token, strategy, &k, e.lines.clone(), e.card)
                .await;
            let what = format!("{shop}, {}, {strategy}", e.name);
            if strategy == "async" {
                assert_eq!(r.status, StatusCode::ACCEPTED, "{what}: {:?}", r.body);
            } else {
                assert_eq!(
                    (r.status, r.code()),
                    (e.status, e.code),
                    "{what}: {:?}",
                    r.body
                );
            }
            let order_id = gateway::order_id_for(user_id, &k).to_string();
            if let Some(order) = ended(api, &token, &order_id).await {
                assert_eq!(order["status"], "cancelled", "{what}: {order:?}");
                assert_eq!(order["failure"], e.failure, "{what}: {order:?}");
                recorded.push(strategy);
            }
            // The same key again ends the same way.
            let again = api
                .checkout(&token, strategy, &k, e.lines.clone(), e.card)
                .await;
            if strategy != "async" {
                assert_eq!(again.status, e.status, "{what}, retried: {:?}", again.body);
            }
        }
        assert!(
            recorded.contains(&"async") && recorded.contains(&"chained"),
            "{shop}, {}: recorded by {recorded:?}",
            e.name
        );
    }
    // Nothing was sold or kept: the scarce unit is still there.
    assert_eq!(api.stock_of(scarce).await, 1, "{shop}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_ends_a_failed_checkout_alike_in_the_distributed_shop() {
    let s = stack_with(Options {
        events: true,
        ..Options::default()
    })
    .await;
    let admin = s.admin().await;
    every_strategy_ends_alike(&s, &admin, "distributed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_ends_a_failed_checkout_alike_in_the_monolith() {
    let shop = monolith_with_events().await;
    let admin = shop.admin().await;
    every_strategy_ends_alike(&shop, &admin, "monolith").await;
}
