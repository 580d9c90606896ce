//! Start-up migrations of an existing database to the current shape, idempotent and safe
//! with several replicas starting at once:
//!
//! - **stock out of the catalog**: catalog documents from before `inventory` existed hold
//!   `stock`, `stock_received` and `holds` themselves. Each batch is first copied into
//!   `inventory` as an insert that skips items already there (`$setOnInsert` semantics:
//!   an existing stock document, possibly moved by reservations since, is never
//!   overwritten), and only then unset from the catalog. A crash between the two steps
//!   leaves both copies; the next start skips the copy and finishes the unset. Two
//!   replicas copying the same item: one insert wins, the other is a duplicate and skipped.
//! - **reservation indexes**: the two indexes the sweeper used before (`status_expiry`,
//!   `unsettled`) and the outbox's full indexes (`outbox_unpublished`, `outbox_id`, now
//!   partial and sparse under new names, see `outbox`) are dropped, and reservations that
//!   may still need the sweeper get the `due` field its one sparse index covers (see
//!   `reservations`).
//!
//! Every step reads only what still needs doing, so a migrated database costs one empty
//! query per step at start-up.

use futures::TryStreamExt;
use mongodb::{
    Database,
    bson::{Bson, Document, doc},
    error::ErrorKind,
};

use crate::{
    error::{Error, is_duplicate_key},
    inventory::{INVENTORY, StockDoc, StoredStock},
    reservations::RESERVATIONS,
    store::ITEMS,
};

/// Items copied per round.
const BATCH: i64 = 500;

/// What a start-up migration did (all zero on a migrated database).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Catalog documents whose stock moved to `inventory` in this run.
    pub items: u64,
    /// Stock documents this run created (fewer than `items` when another replica, or an
    /// earlier run that crashed, copied some).
    pub copied: u64,
    /// Reservations given a `due` time.
    pub reservations: u64,
}

/// The stock an old-shape catalog document holds.
fn stock_of(d: &Document) -> Option<StockDoc> {
    let StoredStock {
        stock,
        stock_received,
        holds,
    } = StoredStock::read(d);
    Some(StockDoc {
        id: d.get_object_id("_id").ok()?,
        stock,
        stock_received,
        version: 0,
        holds,
    })
}

/// Runs every migration; see the module comment.
pub async fn run(db: &Database) -> Result<Migrated, Error> {
    let mut done = stock_out_of_catalog(db).await?;
    done.reservations = reservations_due(db).await?;
    if done != Migrated::default() {
        tracing::info!(
            items = done.items,
            copied = done.copied,
            reservations = done.reservations,
            "database migrated"
        );
    }
    Ok(done)
}

async fn stock_out_of_catalog(db: &Database) -> Result<Migrated, Error> {
    let items = db.collection::<Document>(ITEMS);
    let inventory = db.collection::<StockDoc>(INVENTORY);
    let mut done = Migrated::default();
    loop {
        let batch: Vec<Document> = items
            .find(doc! { "stock": { "$exists": true } })
            .projection(doc! { "stock": 1, "stock_received": 1, "holds": 1 })
            .limit(BATCH)
            .await
            .map_err(Error::mongo("reading items to migrate"))?
            .try_collect()
            .await
            .map_err(Error::mongo("reading items to migrate"))?;
        if batch.is_empty() {
            return Ok(done);
        }
        let stock: Vec<StockDoc> = batch.iter().filter_map(stock_of).collect();
        // Copy first, skipping what exists (never overwriting stock that may have moved).
        let skipped = match inventory.insert_many(&stock).ordered(false).await {
            Ok(_) => 0,
            Err(e) if is_duplicate_key(&e) => match e.kind.as_ref() {
                ErrorKind::InsertMany(m) => m.write_errors.as_ref().map_or(0, Vec::len),
                _ => stock.len(),
            },
            Err(e) => return Err(Error::mongo("copying stock to inventory")(e)),
        };
        done.copied += (stock.len() - skipped) as u64;
        // Then unset, only where the copy is known to exist.
        let ids: Vec<Bson> = stock.iter().map(|s| Bson::ObjectId(s.id)).collect();
        let unset = items
            .update_many(
                doc! { "_id": { "$in": ids } },
                doc! { "$unset": { "stock": "", "stock_received": "", "holds": "" } },
            )
            .await
            .map_err(Error::mongo("removing stock from the catalog"))?;
        done.items += unset.modified_count;
        if stock.len() < batch.len() {
            // A document without an ObjectId `_id` cannot be this service's item; stop
            // rather than read it again forever.
            tracing::warn!("catalog documents without an ObjectId id keep their stock fields");
            return Ok(done);
        }
    }
}

/// Drops the old sweeper indexes and gives open or unsettled reservations their `due`.
async fn reservations_due(db: &Database) -> Result<u64, Error> {
    let reservations = db.collection::<Document>(RESERVATIONS);
    for old in [
        "status_expiry",
        "unsettled",
        "outbox_unpublished",
        "outbox_id",
    ] {
        match reservations.drop_index(old).await {
            Ok(()) => tracing::info!(index = old, "dropped an old reservation index"),
            // Gone already (or never there: a fresh database has no collection).
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(Error::mongo("dropping an old reservation index")(e)),
        }
    }
    // Holding stock: due when the hold expires.
    let open = reservations
        .update_many(
            doc! {
                "status": { "$in": ["pending", "reserved"] },
                "due": { "$exists": false },
            },
            vec![doc! { "$set": { "due": "$expires_at" } }],
        )
        .await
        .map_err(Error::mongo("migrating open reservations"))?;
    // Decided but not settled: due at once (settling is idempotent).
    let unsettled = reservations
        .update_many(
            doc! {
                "status": { "$in": ["committed", "released"] },
                "settled": false,
                "due": { "$exists": false },
            },
            vec![doc! { "$set": { "due": "$updated_at" } }],
        )
        .await
        .map_err(Error::mongo("migrating unsettled reservations"))?;
    Ok(open.modified_count + unsettled.modified_count)
}

/// IndexNotFound (27) or NamespaceNotFound (26).
fn is_missing(e: &mongodb::error::Error) -> bool {
    matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == 27 || c.code == 26)
}
