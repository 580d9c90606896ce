//! The `shop` monolith: the same checkout, with every service called in-process.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

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
    let dbg = s.get("/debug/downstreams", None).await;
    assert_eq!(dbg.body["downstreams"][0]["target"], "in-process");
}
