//! Stock apart from the catalog: reservations never touch an item's catalog document, and
//! a database from before (stock inside the catalog documents) is migrated at start-up,
//! idempotently, by replicas starting together, without losing a unit or a hold.

use futures::TryStreamExt;
use mongodb::{
    Database,
    bson::{Document, doc, oid::ObjectId},
};
use shop_proto::item::v1 as pb;

use crate::harness::*;

async fn catalog_doc(db: &Database, id: &str) -> Document {
    let oid = ObjectId::parse_str(id).expect("item id");
    db.collection::<Document>("items")
        .find_one(doc! { "_id": oid })
        .await
        .expect("read the catalog")
        .expect("the item is in the catalog")
}

async fn all(db: &Database, collection: &str) -> Vec<Document> {
    db.collection::<Document>(collection)
        .find(doc! {})
        .await
        .expect("read")
        .try_collect()
        .await
        .expect("read")
}

#[tokio::test]
async fn reservations_leave_the_catalog_document_as_it_was() {
    let app = spawn().await;
    let item = app.create("INV-CAT-1", "Untouched", "c", 100, 10).await;
    let db = app.service.database().clone();
    let before = catalog_doc(&db, &item.id).await;
    app.reserve("cat-a", &[(&item.id, 2)])
        .await
        .expect("reserve");
    app.commit("cat-a").await.expect("commit");
    app.reserve("cat-b", &[(&item.id, 3)])
        .await
        .expect("reserve");
    app.release("cat-b").await.expect("release");
    // Settling runs after the commit's answer; wait until its hold is gone.
    for _ in 0..100 {
        if stock_doc(&db, &item.id)
            .await
            .get_array("holds")
            .map_or(true, Vec::is_empty)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        catalog_doc(&db, &item.id).await,
        before,
        "catalog unchanged"
    );
    assert_eq!(before.get_i64("version").ok(), Some(1));
    assert_eq!(app.stock(&item.id).await, 8, "the stock moved");
    app.stop().await;
}

async fn stock_doc(db: &Database, id: &str) -> Document {
    let oid = ObjectId::parse_str(id).expect("item id");
    db.collection::<Document>("inventory")
        .find_one(doc! { "_id": oid })
        .await
        .expect("read stock")
        .expect("the item has stock")
}

/// Turns the service's database back into the shape from before `inventory`: stock,
/// units received and holds inside the catalog documents, reservations without `due`
/// under the two old sweeper indexes.
async fn make_old_shape(db: &Database) {
    let items = db.collection::<Document>("items");
    for s in all(db, "inventory").await {
        let mut set = doc! { "stock": s.get_i64("stock").expect("stock") };
        if let Ok(r) = s.get_i64("stock_received") {
            set.insert("stock_received", r);
        }
        if let Ok(h) = s.get_array("holds") {
            set.insert("holds", h.clone());
        }
        items
            .update_one(doc! { "_id": s.get("_id").cloned() }, doc! { "$set": set })
            .await
            .expect("stock into the catalog");
    }
    db.collection::<Document>("inventory")
        .drop()
        .await
        .expect("drop inventory");
    let reservations = db.collection::<Document>("reservations");
    reservations
        .update_many(doc! {}, doc! { "$unset": { "due": "" } })
        .await
        .expect("reservations without due");
    reservations.drop_index("due").await.expect("drop due");
    for (keys, name) in [
        (doc! { "status": 1, "expires_at": 1 }, "status_expiry"),
        (doc! { "settled": 1, "updated_at": 1 }, "unsettled"),
    ] {
        create_named_index(&reservations, keys, name).await;
    }
}

/// (item id, stock, stock_received, holds) of every item, from wherever it is stored.
async fn stock_by_item(db: &Database, from: &str) -> Vec<(ObjectId, i64, Option<i64>, usize)> {
    let mut v: Vec<_> = all(db, from)
        .await
        .iter()
        .filter_map(|d| {
            Some((
                d.get_object_id("_id").ok()?,
                d.get_i64("stock").ok()?,
                d.get_i64("stock_received").ok(),
                d.get_array("holds").map_or(0, Vec::len),
            ))
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn an_old_shape_database_is_migrated_at_start_up_once_and_loses_nothing() {
    let app = spawn().await;
    let a = app.create("INV-OLD-A", "Held", "c", 100, 10).await;
    let b = app.create("INV-OLD-B", "Sold", "c", 250, 4).await;
    let c = app.create("INV-OLD-C", "Untouched", "c", 300, 0).await;
    app.reserve("old-held", &[(&a.id, 3), (&b.id, 1)])
        .await
        .expect("reserve");
    app.reserve("old-sold", &[(&b.id, 2)])
        .await
        .expect("reserve");
    app.commit("old-sold").await.expect("commit");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let db = app.service.database().clone();
    let expected = stock_by_item(&db, "inventory").await;
    assert_eq!(expected.len(), 3);
    make_old_shape(&db).await;
    assert_eq!(stock_by_item(&db, "items").await, expected);

    // Two replicas start on it at once; both migrate.
    let name = app.config.mongodb_database.clone();
    let (r1, r2) = tokio::join!(
        spawn_with(|c| c.mongodb_database = name.clone()),
        spawn_with(|c| c.mongodb_database = name.clone()),
    );
    assert_eq!(
        stock_by_item(&db, "inventory").await,
        expected,
        "nothing lost"
    );
    assert_eq!(
        stock_by_item(&db, "items").await,
        Vec::new(),
        "catalog has no stock"
    );
    for (item, stock) in [(&a, 7), (&b, 1), (&c, 0)] {
        assert_eq!(r1.stock(&item.id).await, stock);
    }
    // The reservation still holding stock is due for the sweeper at its expiry.
    let held = db
        .collection::<Document>("reservations")
        .find_one(doc! { "_id": "old-held" })
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        held.get_datetime("due").ok(),
        held.get_datetime("expires_at").ok()
    );
    assert!(held.get_datetime("due").is_ok());
    // Running it again changes nothing.
    let again = item_service::migration::run(&db)
        .await
        .expect("migrate again");
    assert_eq!(again, item_service::migration::Migrated::default());

    // The held reservation works on: released, its stock comes back exactly once; the
    // sold one stays sold.
    r2.release("old-held").await.expect("release");
    assert_eq!(r1.stock(&a.id).await, 10);
    assert_eq!(r1.stock(&b.id).await, 2);
    assert_eq!(
        r2.release("old-held").await.expect("again").status,
        pb::ReservationStatus::Released as i32
    );
    assert_eq!(r1.stock(&a.id).await, 10);
    let indexes = db
        .collection::<Document>("reservations")
        .list_index_names()
        .await
        .expect("indexes");
    assert!(
        !indexes
            .iter()
            .any(|i| i == "status_expiry" || i == "unsettled")
    );
    assert!(indexes.iter().any(|i| i == "due"));
    r1.stop().await;
    r2.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_migration_cut_short_after_the_copy_keeps_the_stock_that_moved_since() {
    let app = spawn().await;
    let item = app.create("INV-CUT-1", "Cut", "c", 100, 10).await;
    let db = app.service.database().clone();
    let oid = ObjectId::parse_str(&item.id).expect("item id");
    // A run copied the item (10), died before the unset, and a reservation took 4 from
    // the copy since: the catalog's stale 10 must not come back.
    db.collection::<Document>("items")
        .update_one(
            doc! { "_id": oid },
            doc! { "$set": { "stock": 10_i64, "stock_received": 10_i64 } },
        )
        .await
        .expect("leftover stock in the catalog");
    app.reserve("cut-a", &[(&item.id, 4)])
        .await
        .expect("reserve");
    let done = item_service::migration::run(&db).await.expect("migrate");
    assert_eq!((done.items, done.copied), (1, 0));
    assert_eq!(app.stock(&item.id).await, 6);
    assert_eq!(
        stock_doc(&db, &item.id)
            .await
            .get_i64("stock_received")
            .ok(),
        Some(10)
    );
    assert!(catalog_doc(&db, &item.id).await.get("stock").is_none());
    app.stop().await;
}
