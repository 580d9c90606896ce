//! The web shop's lab in the distributed shop: an admin's `PUT /api/admin/faults` reaches
//! the service (and the card processor) each rule names, through their own admin APIs,
//! `GET` gathers the rules from all of them, a clear clears everywhere, and a process that
//! is down is named in a 503.

use std::time::Duration;

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const RESERVE: &str = "/shop.item.v1.ItemService/ReserveStock";

/// The `dur` (ms) of `name` in a response's Server-Timing header.
fn timing_ms(r: &Resp, name: &str) -> f64 {
    let header = r
        .headers
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no Server-Timing header: {:?}", r.headers));
    header
        .split(',')
        .map(str::trim)
        .find(|e| e.split(';').next() == Some(name))
        .and_then(|e| {
            e.split(';')
                .find_map(|p| p.trim().strip_prefix("dur="))
                .and_then(|d| d.parse().ok())
        })
        .unwrap_or_else(|| panic!("no {name} in {header:?}"))
}

async fn put_faults(s: &Stack, token: &str, rules: Value) -> Resp {
    s.send(
        Method::PUT,
        "/api/admin/faults",
        Some(token),
        Some(rules),
        &[],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_sets_gathers_and_clears_the_services_rules_in_the_distributed_shop() {
    let mut s = stack().await;
    let admin = s.admin().await;
    let item = s.create_item(&admin, "Metronome", 1500, 10).await;
    let id = item["id"].as_str().expect("id").to_owned();

    // A customer may neither read nor set them.
    let (customer, _) = s.customer().await;
    let rules = json!([
        {"method": RESERVE, "latency": {"kind": "fixed", "ms": 200}, "error_rate": 0.0},
        {"method": "card-gateway:POST /v1/refunds", "latency": null, "error_rate": 1.0},
    ]);
    assert_eq!(
        put_faults(&s, &customer, rules.clone()).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.get("/api/admin/faults", Some(&customer)).await.status,
        StatusCode::FORBIDDEN
    );

    // The admin's rules go to item-service's FaultAdmin and the card processor.
    let set = put_faults(&s, &admin, rules.clone()).await;
    assert_eq!(set.status, StatusCode::OK, "{:?}", set.body);
    assert_eq!(set.body, rules);
    assert_eq!(
        s.card.faults().rules().first().map(|r| r.method.as_str()),
        Some("POST /v1/refunds"),
        "the card processor holds its rule under its own route key"
    );

    // The next checkout's ReserveStock hop carries the 200 ms item-service now adds.
    let (buyer, _) = s.customer().await;
    let r = s.buy_one(&buyer, &id, &key()).await;
    let reserve = timing_ms(&r, "call.item.ReserveStock");
    assert!(reserve >= 200.0, "call.item.ReserveStock took {reserve} ms");

    // GET gathers them from every process.
    let got = s.get("/api/admin/faults", Some(&admin)).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.body, rules);

    // A clear clears everywhere.
    let cleared = put_faults(&s, &admin, json!([])).await;
    assert_eq!(cleared.status, StatusCode::OK, "{:?}", cleared.body);
    assert_eq!(cleared.body, json!([]));
    assert!(s.card.faults().rules().is_empty());
    assert_eq!(
        s.get("/api/admin/faults", Some(&admin)).await.body,
        json!([])
    );

    // A rule naming no part of the shop is refused before anything changes.
    let bad = put_faults(&s, &admin, json!([{"method": "/shop.admin.v1.Echo/Echo"}])).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{:?}", bad.body);
    assert_eq!(bad.field(), "rules[0].method");

    // item-service down: the lab says which process it cannot reach.
    s.item.stop().await;
    let down = tokio::time::timeout(
        Duration::from_secs(30),
        s.get("/api/admin/faults", Some(&admin)),
    )
    .await
    .expect("the gateway answers");
    assert_eq!(
        down.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        down.body
    );
    assert_eq!(down.code(), "target_unavailable");
    assert_eq!(down.body["error"]["targets"], json!(["item-service"]));
}
