//! The gateway's `Server-Timing` header: every response carries one, and for a checkout it
//! accounts for every hop (each call as the caller saw it, each handler, each store), in
//! the distributed stack and in the monolith alike. Only structure and counts are checked;
//! durations depend on the machine.

use std::collections::BTreeMap;

use crate::common::*;
use reqwest::StatusCode;
use serde_json::json;

/// One `Server-Timing` entry; only its round-trip count is asserted on.
#[derive(Debug, Clone, Copy)]
struct Entry {
    count: u32,
}

/// Parses `name;dur=1.234;n=2, ...` strictly: an entry that is not a token with a
/// non-negative finite `dur` and an integer `n`, or a name given twice, fails the test.
fn parse(header: &str) -> BTreeMap<String, Entry> {
    let mut entries = BTreeMap::new();
    for item in header.split(',') {
        let mut parts = item.trim().split(';');
        let name = parts.next().unwrap_or_default().trim();
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "entry name {name:?} in {header:?}"
        );
        let (mut dur, mut count) = (None, None);
        for p in parts {
            match p.trim().split_once('=') {
                Some(("dur", v)) => dur = v.parse::<f64>().ok(),
                Some(("n", v)) => count = v.parse::<u32>().ok(),
                // Other Server-Timing parameters (`desc`) are allowed, not used.
                _ => {}
            }
        }
        assert!(
            dur.is_some_and(|d| d.is_finite() && d >= 0.0),
            "dur of {name} in {header:?}"
        );
        let count = count.unwrap_or_else(|| panic!("n of {name} in {header:?}"));
        let previous = entries.insert(name.to_owned(), Entry { count });
        assert!(previous.is_none(), "{name} twice in {header:?}");
    }
    entries
}

/// The parsed `Server-Timing` header of a response (which must have one).
fn server_timing(r: &Resp) -> BTreeMap<String, Entry> {
    let header = r
        .headers
        .get("server-timing")
        .unwrap_or_else(|| panic!("no Server-Timing header: {:?}", r.headers))
        .to_str()
        .expect("Server-Timing is ASCII");
    parse(header)
}

fn count(ledger: &BTreeMap<String, Entry>, name: &str) -> u32 {
    ledger.get(name).map_or(0, |e| e.count)
}

/// A successful checkout under `strategy` by a new customer; returns its ledger.
async fn checkout_ledger(api: &Api, item_id: &str, strategy: &str) -> BTreeMap<String, Entry> {
    let (token, _) = api.customer().await;
    let r = api
        .checkout(
            &token,
            strategy,
            &key(),
            json!([{"item_id": item_id, "quantity": 1}]),
            GOOD_CARD,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{strategy}: {:?}", r.body);
    server_timing(&r)
}

/// What every response's ledger has: the whole request, once, and the gateway's own part.
fn assert_gateway_entries(ledger: &BTreeMap<String, Entry>) {
    assert_eq!(count(ledger, "total"), 1, "{ledger:?}");
    assert_eq!(count(ledger, "gateway.self"), 1, "{ledger:?}");
}

/// A checkout touches every store: items in MongoDB, the payment in MariaDB and at the
/// card gateway, the order in PostgreSQL.
fn assert_every_store(ledger: &BTreeMap<String, Entry>) {
    for store in ["postgres", "mysql", "mongodb", "card_gateway"] {
        assert!(
            count(ledger, &format!("store.{store}")) >= 1,
            "store.{store}: {ledger:?}"
        );
    }
}

/// The orchestrated saga: the gateway's four calls, each callee's handler, and a round
/// trip to every store behind them.
fn assert_orchestrated(ledger: &BTreeMap<String, Entry>) {
    assert_gateway_entries(ledger);
    for method in [
        "item.ReserveStock",
        "payment.Charge",
        "item.CommitReservation",
        "user.BeginCheckout",
        "user.AdvanceCheckout",
    ] {
        assert!(
            count(ledger, &format!("call.{method}")) >= 1,
            "call.{method}: {ledger:?}"
        );
        assert!(
            count(ledger, &format!("handler.{method}")) >= 1,
            "handler.{method}: {ledger:?}"
        );
    }
    assert_every_store(ledger);
}

/// The chained saga: the gateway calls user-service, which calls payment-service, which
/// calls item-service; the nested hops' ledgers reach the gateway too.
fn assert_chained(ledger: &BTreeMap<String, Entry>) {
    assert_gateway_entries(ledger);
    for name in [
        "call.user.ChainedCheckout",
        "handler.user.ChainedCheckout",
        "call.payment.ChainedCharge",
        "handler.payment.ChainedCharge",
        "call.item.ReserveStock",
        "handler.item.ReserveStock",
        "call.item.CommitReservation",
    ] {
        assert!(count(ledger, name) >= 1, "{name}: {ledger:?}");
    }
    assert_every_store(ledger);
}

/// Responses that are not checkouts carry the header as well, errors included.
async fn assert_every_response_is_timed(api: &Api) {
    let list = api.get("/api/items", None).await;
    assert_eq!(list.status, StatusCode::OK, "{:?}", list.body);
    let ledger = server_timing(&list);
    assert_gateway_entries(&ledger);
    assert!(count(&ledger, "call.item.ListItems") >= 1, "{ledger:?}");
    let missing = api.get("/api/nothing-here", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_gateway_entries(&server_timing(&missing));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_timing_accounts_for_every_hop_of_a_checkout() {
    let s = stack().await;
    let admin = s.admin().await;
    let item = s.create_item(&admin, "Stopwatch", 1999, 10).await;
    let id = item["id"].as_str().expect("id");
    assert_orchestrated(&checkout_ledger(&s, id, "orchestrated").await);
    assert_chained(&checkout_ledger(&s, id, "chained").await);
    assert_every_response_is_timed(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_timing_accounts_for_every_hop_of_a_checkout_in_the_monolith() {
    let s = monolith().await;
    let admin = s.admin().await;
    let item = s.create_item(&admin, "Hourglass", 2999, 10).await;
    let id = item["id"].as_str().expect("id");
    assert_orchestrated(&checkout_ledger(&s, id, "orchestrated").await);
    assert_chained(&checkout_ledger(&s, id, "chained").await);
    assert_every_response_is_timed(&s).await;
}
