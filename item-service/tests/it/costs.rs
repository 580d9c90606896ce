//! Figures, not assertions (run by hand; they print): MongoDB round trips of item-service's
//! part in one orchestrated checkout, and the cost of one conditional `$inc` on a stock
//! document apart from the catalog against the same update on a catalog document.
//!
//! `cargo nextest run -p item-service --run-ignored only costs --no-capture`

use std::{collections::BTreeMap, time::Instant};

use futures::TryStreamExt;
use mongodb::bson::{Document, doc, oid::ObjectId};
use shop_proto::{common::v1::ItemLine, item::v1 as pb};

use crate::harness::*;

/// MongoDB commands item-service has made, by command name (from its store histogram).
fn mongo_commands(metrics: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("store_operation_duration_seconds_count{") else {
            continue;
        };
        if !rest.contains("store=\"mongodb\"") {
            continue;
        }
        let Some(op) = rest.split("op=\"").nth(1).and_then(|s| s.split('"').next()) else {
            continue;
        };
        let n: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(op.to_owned()).or_default() += n;
    }
    out
}

/// CPU seconds the local stack's SecantusDB process has used (`scripts/stack` records its
/// pid in `$SHOP_STACK_STATE`); None when that cannot be read. Only meaningful while
/// nothing else uses that server.
fn store_cpu_secs() -> Option<f64> {
    let state = std::fs::read_to_string(std::env::var("SHOP_STACK_STATE").ok()?).ok()?;
    let pid = state
        .lines()
        .find_map(|l| l.strip_prefix("pid ")?.strip_suffix(" secantus"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is the 12th, stime
    // the 13th; clock ticks of 1/100 s on Linux.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

#[tokio::test]
#[ignore = "a measurement: prints round trips per checkout"]
async fn round_trips_of_an_orchestrated_checkout() {
    const CHECKOUTS: usize = 200;
    let app = spawn().await;
    // The demo catalog beside the items bought, as in the load test.
    item_service::seed_catalog(app.service.database())
        .await
        .expect("seed");
    let a = app
        .create("RT-A", "Round trip A", "c", 100, 1_000_000)
        .await;
    let b = app
        .create("RT-B", "Round trip B", "c", 100, 1_000_000)
        .await;
    for lines in [vec![a.id.clone()], vec![a.id.clone(), b.id.clone()]] {
        let mut on_path: BTreeMap<&str, u32> = BTreeMap::new();
        let mut cpu: BTreeMap<&str, f64> = BTreeMap::new();
        let mut mark = store_cpu_secs();
        let mut charge = |what: &'static str| {
            let now = store_cpu_secs();
            if let (Some(a), Some(b)) = (mark, now) {
                *cpu.entry(what).or_default() += b - a;
            }
            mark = now;
        };
        let before = mongo_commands(&app.metrics().await);
        let cpu_before = store_cpu_secs();
        for n in 0..CHECKOUTS {
            let rid = format!("rt-{}-{n}", lines.len());
            let mut c = app.client.clone();
            // Pricing (the cache entry was dropped by the previous checkout's reservation,
            // as it is under load for a popular item).
            let res = c
                .batch_get_items(pb::BatchGetItemsRequest { ids: lines.clone() })
                .await
                .expect("price");
            *on_path.entry("BatchGetItems").or_default() += round_trips(res.metadata(), "mongodb");
            charge("BatchGetItems");
            let res = c
                .reserve_stock(pb::ReserveStockRequest {
                    reservation_id: rid.clone(),
                    lines: lines
                        .iter()
                        .map(|id| ItemLine {
                            item_id: id.clone(),
                            quantity: 1,
                        })
                        .collect(),
                })
                .await
                .expect("reserve");
            *on_path.entry("ReserveStock").or_default() += round_trips(res.metadata(), "mongodb");
            charge("ReserveStock");
            let res = c
                .commit_reservation(pb::CommitReservationRequest {
                    reservation_id: rid,
                })
                .await
                .expect("commit");
            *on_path.entry("CommitReservation").or_default() +=
                round_trips(res.metadata(), "mongodb");
            charge("CommitReservation");
            // Its settling, after the answer.
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            charge("settling");
        }
        // The commit's settling runs after its answer.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        for (what, secs) in &cpu {
            println!(
                "  CPU of {what:<18} {:.1} ms per checkout",
                secs * 1000.0 / CHECKOUTS as f64
            );
        }
        let after = mongo_commands(&app.metrics().await);
        let cpu_after = store_cpu_secs();
        println!("{} line(s), {CHECKOUTS} checkouts:", lines.len());
        if let (Some(b), Some(a)) = (cpu_before, cpu_after) {
            println!(
                "  SecantusDB CPU     {:.1} ms per checkout",
                (a - b) * 1000.0 / CHECKOUTS as f64
            );
        }
        for (call, n) in &on_path {
            println!(
                "  {call:<18} {:.2} round trips on the request path",
                f64::from(*n) / CHECKOUTS as f64
            );
        }
        let mut total = 0.0;
        for (op, n) in &after {
            let d = n - before.get(op).copied().unwrap_or(0.0);
            if d > 0.0 {
                total += d;
                println!("  {op:<18} {:.2} per checkout", d / CHECKOUTS as f64);
            }
        }
        println!(
            "  all MongoDB commands {:.2} per checkout",
            total / CHECKOUTS as f64
        );
    }
    app.stop().await;
}

#[tokio::test]
#[ignore = "a measurement: prints the cost of one conditional $inc, apart and inside"]
async fn one_conditional_inc_apart_from_the_catalog_and_inside_it() {
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 100;
    let app = spawn().await;
    let db = app.service.database().clone();
    item_service::seed_catalog(&db).await.expect("seed");
    // The old shape beside the new: a copy of the catalog (same 7 secondary indexes)
    // holding the stock inside each document.
    let items = db.collection::<Document>("items");
    let old = db.collection::<Document>("catalog_with_stock");
    let stock = db.collection::<Document>("inventory");
    let stock_docs: Vec<Document> = stock
        .find(doc! {})
        .await
        .expect("read stock")
        .try_collect()
        .await
        .expect("read stock");
    let by_id: BTreeMap<ObjectId, Document> = stock_docs
        .into_iter()
        .filter_map(|d| Some((d.get_object_id("_id").ok()?, d)))
        .collect();
    let catalog: Vec<Document> = items
        .find(doc! {})
        .await
        .expect("read catalog")
        .try_collect()
        .await
        .expect("read catalog");
    let mut merged = Vec::with_capacity(catalog.len());
    for mut d in catalog {
        let id = d.get_object_id("_id").expect("id");
        let s = &by_id[&id];
        d.insert("stock", 1_000_000_i64);
        d.insert("stock_received", s.get_i64("stock_received").unwrap_or(0));
        merged.push(d);
    }
    let ids: Vec<ObjectId> = merged
        .iter()
        .filter_map(|d| d.get_object_id("_id").ok())
        .collect();
    old.insert_many(&merged).await.expect("copy catalog");
    for (keys, name) in [
        (doc! { "sku": 1 }, "sku_unique"),
        (doc! { "name_lc": 1, "_id": 1 }, "name"),
        (doc! { "price.amount_minor": 1, "_id": 1 }, "price"),
        (doc! { "created_at": -1, "_id": -1 }, "newest"),
        (
            doc! { "category": 1, "name_lc": 1, "_id": 1 },
            "category_name",
        ),
        (
            doc! { "category": 1, "price.amount_minor": 1, "_id": 1 },
            "category_price",
        ),
        (
            doc! { "category": 1, "created_at": -1, "_id": -1 },
            "category_newest",
        ),
    ] {
        create_named_index(&old, keys, name).await;
    }
    stock
        .update_many(doc! {}, doc! { "$set": { "stock": 1_000_000_i64 } })
        .await
        .expect("plenty of stock");

    // Interleaved rounds (apart, inside, apart, ...), so a server that slows as it
    // grows weighs on both alike.
    let mut took = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        for (which, coll) in [(0, &stock), (1, &old)] {
            let start = Instant::now();
            for n in 0..PER_ROUND {
                let id = ids[(round * PER_ROUND + n) * 7 % ids.len()];
                let res = coll
                    .update_one(
                        doc! { "_id": id, "stock": { "$gte": 1_i64 } },
                        doc! { "$inc": { "stock": -1_i64 } },
                    )
                    .await
                    .expect("update");
                assert_eq!(res.modified_count, 1);
            }
            took[which].push(start.elapsed().as_secs_f64() * 1000.0 / PER_ROUND as f64);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (apart, inside) = (median(&mut took[0]), median(&mut took[1]));
    println!(
        "one conditional $inc, {} documents, median of {ROUNDS} interleaved rounds of {PER_ROUND}:",
        ids.len()
    );
    println!("  inventory (only _id)          {apart:.3} ms");
    println!("  catalog shape (7 secondary)   {inside:.3} ms");
    println!("  ratio                         {:.2}x", inside / apart);
    app.stop().await;
}

#[tokio::test]
#[ignore = "a measurement: prints a checkout's time as reservations accumulate"]
async fn checkout_time_as_reservations_accumulate() {
    use mongodb::bson::DateTime;
    const CHECKOUTS: usize = 100;
    const PRIMITIVES: usize = 100;
    let app = spawn().await;
    let db = app.service.database().clone();
    let item = app.create("GROW-A", "Grow", "c", 100, 10_000_000).await;
    let oid = ObjectId::parse_str(&item.id).expect("id");
    let reservations = db.collection::<Document>("reservations");
    let mut filled = 0;
    let mut n = 0;
    println!(
        "reservations | checkout (reserve+commit) | findAndModify by _id | find + update_one by _id"
    );
    for size in [0_usize, 1_000, 3_000] {
        // Filler shaped as finished checkouts leave them: committed, settled, no `due`.
        let now = DateTime::now();
        let filler: Vec<Document> = (filled..size)
            .map(|i| {
                doc! {
                    "_id": format!("fill-{i}"), "status": "committed", "settled": true,
                    "lines": [{ "item_id": oid, "quantity": 1 }], "reason": "",
                    "expires_at": now, "created_at": now, "updated_at": now, "rev": 2_i64,
                }
            })
            .collect();
        if !filler.is_empty() {
            reservations.insert_many(filler).await.expect("fill");
        }
        filled = size;
        let total = reservations.count_documents(doc! {}).await.expect("count");
        let start = Instant::now();
        for _ in 0..CHECKOUTS {
            let rid = format!("grow-{n}");
            n += 1;
            app.reserve(&rid, &[(&item.id, 1)]).await.expect("reserve");
            app.commit(&rid).await.expect("commit");
        }
        let checkout = start.elapsed().as_secs_f64() * 1000.0 / CHECKOUTS as f64;
        let id = "fill-0";
        if size > 0 {
            let start = Instant::now();
            for _ in 0..PRIMITIVES {
                reservations
                    .find_one_and_update(doc! { "_id": id }, doc! { "$inc": { "n": 1 } })
                    .await
                    .expect("findAndModify");
            }
            let fam = start.elapsed().as_secs_f64() * 1000.0 / PRIMITIVES as f64;
            let start = Instant::now();
            for _ in 0..PRIMITIVES {
                let d = reservations
                    .find_one(doc! { "_id": id })
                    .await
                    .expect("find")
                    .expect("exists");
                let rev = d.get_i64("rev").expect("rev");
                let res = reservations
                    .update_one(
                        doc! { "_id": id, "rev": rev },
                        doc! { "$inc": { "n": 1, "rev": 1_i64 } },
                    )
                    .await
                    .expect("update");
                assert_eq!(res.matched_count, 1);
            }
            let cas = start.elapsed().as_secs_f64() * 1000.0 / PRIMITIVES as f64;
            println!("{total:>12} | {checkout:>22.2} ms | {fam:>17.2} ms | {cas:>21.2} ms");
        } else {
            println!("{total:>12} | {checkout:>22.2} ms |");
        }
    }
    app.stop().await;
}
