//! Stock accounting: every item's `stock_received` (all units ever put into stock) equals
//! its stock plus the units its reservations hold or have committed, through every kind of
//! stock movement, restocks racing reservations included.

use std::collections::HashMap;

use futures::TryStreamExt;
use mongodb::bson::{Document, doc, oid::ObjectId};
use shop_proto::item::v1 as pb;
use tonic::Code;

use crate::harness::*;

/// `stock_received` as stored with the item's stock (None when it has no such field).
async fn received(app: &TestApp, id: &str) -> Option<i64> {
    app.stored_inventory(id)
        .await
        .get_i64("stock_received")
        .ok()
}

/// Units of `id` held (pending/reserved) plus committed, from the reservations collection.
async fn taken(app: &TestApp, id: &str) -> i64 {
    let oid = ObjectId::parse_str(id).expect("item id");
    let docs: Vec<Document> = app
        .service
        .database()
        .collection::<Document>("reservations")
        .find(doc! { "status": { "$in": ["pending", "reserved", "committed"] } })
        .await
        .expect("read reservations")
        .try_collect()
        .await
        .expect("read reservations");
    let mut by_item: HashMap<ObjectId, i64> = HashMap::new();
    for d in docs {
        for line in d.get_array("lines").expect("lines") {
            let line = line.as_document().expect("a line is a document");
            *by_item
                .entry(line.get_object_id("item_id").expect("item_id"))
                .or_default() += i64::from(line.get_i32("quantity").expect("quantity"));
        }
    }
    by_item.get(&oid).copied().unwrap_or(0)
}

async fn assert_accounted(app: &TestApp, id: &str) {
    let stock = app.stock(id).await;
    let taken = taken(app, id).await;
    assert_eq!(
        received(app, id).await,
        Some(stock + taken),
        "stock_received = stock {stock} + held/committed {taken}"
    );
}

async fn set_stock(
    app: &TestApp,
    id: &str,
    version: i64,
    stock: i64,
) -> Result<pb::Item, tonic::Status> {
    app.client
        .clone()
        .update_item(pb::UpdateItemRequest {
            id: id.into(),
            expected_version: version,
            stock: Some(stock),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().item.expect("item"))
}

#[tokio::test]
async fn stock_received_balances_through_reserve_commit_release_and_restock() {
    let app = spawn().await;
    let item = app.create("ACC-1", "Counted", "tests", 100, 10).await;
    assert_eq!(received(&app, &item.id).await, Some(10));

    app.reserve("acc-a", &[(&item.id, 3)])
        .await
        .expect("reserve a");
    app.reserve("acc-b", &[(&item.id, 2)])
        .await
        .expect("reserve b");
    assert_accounted(&app, &item.id).await;
    app.commit("acc-a").await.expect("commit a");
    app.release("acc-b").await.expect("release b");
    assert_eq!(app.stock(&item.id).await, 7);
    assert_accounted(&app, &item.id).await;

    // Reservation c holds 4 (stock 7 -> 3); restock 3 -> 20: 17 more units received.
    app.reserve("acc-c", &[(&item.id, 4)])
        .await
        .expect("reserve c");
    let current = app.get(&item.id).await.expect("get");
    let restocked = set_stock(&app, &item.id, current.version, 20)
        .await
        .expect("restock");
    assert_eq!(restocked.stock, 20);
    assert_eq!(received(&app, &item.id).await, Some(10 + 17));
    assert_accounted(&app, &item.id).await;

    // A write-off counts down the same way.
    let written_off = set_stock(&app, &item.id, restocked.version, 15)
        .await
        .expect("write off");
    assert_eq!(received(&app, &item.id).await, Some(22));
    // An edit that leaves stock alone leaves the count alone.
    app.client
        .clone()
        .update_item(pb::UpdateItemRequest {
            id: item.id.clone(),
            expected_version: written_off.version,
            name: Some("Renamed".into()),
            ..Default::default()
        })
        .await
        .expect("rename");
    app.commit("acc-c").await.expect("commit c");
    assert_eq!(received(&app, &item.id).await, Some(22));
    assert_accounted(&app, &item.id).await;
    app.stop().await;
}

/// Restocks race reservations: each restock either applies to the stock it read or is
/// refused as a version conflict, never counted against a stock that moved meanwhile.
#[tokio::test]
async fn restocks_racing_reservations_keep_the_count_exact() {
    let app = spawn().await;
    let item = app.create("ACC-RACE", "Raced", "tests", 100, 30).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = app.client.clone();
        let id = item.id.clone();
        tasks.push(tokio::spawn(async move {
            let _ = c
                .reserve_stock(pb::ReserveStockRequest {
                    reservation_id: format!("race-{i}"),
                    lines: vec![shop_proto::common::v1::ItemLine {
                        item_id: id,
                        quantity: 1,
                    }],
                })
                .await;
        }));
    }
    let mut restocked = 0;
    for _ in 0..10 {
        let current = app.get(&item.id).await.expect("get");
        match set_stock(&app, &item.id, current.version, current.stock + 5).await {
            Ok(_) => restocked += 1,
            Err(s) => assert_eq!(s.code(), Code::Aborted, "{s:?}"),
        }
    }
    for t in tasks {
        t.await.expect("join");
    }
    assert!(restocked > 0, "at least the uncontended restocks apply");
    assert_eq!(received(&app, &item.id).await, Some(30 + 5 * restocked));
    assert_accounted(&app, &item.id).await;
    app.stop().await;
}

/// Items from before the field existed are left unaccounted, not given a wrong count.
#[tokio::test]
async fn items_without_the_count_stay_without_it() {
    let app = spawn().await;
    let item = app.create("ACC-OLD", "Old", "tests", 100, 5).await;
    let oid = ObjectId::parse_str(&item.id).expect("item id");
    app.service
        .database()
        .collection::<Document>("inventory")
        .update_one(
            doc! { "_id": oid },
            doc! { "$unset": { "stock_received": "" } },
        )
        .await
        .expect("make the item look old");
    let updated = set_stock(&app, &item.id, item.version, 9)
        .await
        .expect("restock");
    assert_eq!(updated.stock, 9);
    assert_eq!(received(&app, &item.id).await, None);
    app.stop().await;
}
