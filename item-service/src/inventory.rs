//! The `inventory` collection: each item's stock, units received and reservation holds,
//! one document per item keyed by the item's id, apart from its catalog document.
//!
//! Why apart: a stock take, release or commit is a conditional update on one document,
//! and a MongoDB-wire server rewrites the entries of every secondary index of the
//! collection it updates (SecantusDB deletes and rewrites them all on any change). The
//! catalog carries seven sort and lookup indexes; this collection carries none beyond
//! `_id` (the sweeper works from `reservations`, never queries this), so a reservation's
//! per-line writes touch no secondary index at all, and catalog documents change only on
//! catalog edits.
//!
//! `version` counts stock movements (reservation takes and put-backs, admin stock
//! changes); the item's served version is the catalog's `version` plus this one, so a
//! client's `expected_version` still covers the stock it saw (see `store::ItemStore`).

use std::collections::HashMap;

use futures::TryStreamExt;
use mongodb::{
    Collection, Database,
    bson::{Bson, Document, doc, oid::ObjectId},
    options::ReturnDocument,
};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, is_duplicate_key},
    input::ItemId,
    store::count_read,
};

pub const INVENTORY: &str = "inventory";

/// The stock fields of a stored document of either shape: an `inventory` document, or a
/// catalog document from before stock moved out of the catalog. Lenient about integer
/// types and missing fields, because it reads what older versions wrote: the start-up
/// migration and `loadtest check` use it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredStock {
    pub stock: i64,
    pub stock_received: Option<i64>,
    pub holds: Vec<String>,
}

impl StoredStock {
    pub fn read(d: &Document) -> Self {
        Self {
            stock: stored_int(d.get("stock")).unwrap_or(0),
            stock_received: stored_int(d.get("stock_received")),
            holds: d
                .get_array("holds")
                .map(|h| {
                    h.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// An integer as any version may have stored it (int32, int64, or a double from a shell).
pub fn stored_int(v: Option<&Bson>) -> Option<i64> {
    match v? {
        Bson::Int64(n) => Some(*n),
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Double(f) => Some(*f as i64),
        _ => None,
    }
}

/// One item's stock as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockDoc {
    /// The item's id (the catalog document's `_id`).
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub stock: i64,
    /// Every unit ever put into stock: the initial stock plus every restock. Reservations
    /// move `stock` but never this, so `stock_received = stock + units held + units
    /// committed` (what `loadtest check` verifies). None on items created before the
    /// field existed: those are not accounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock_received: Option<i64>,
    /// Stock movements so far (0 for a new item).
    #[serde(default)]
    pub version: i64,
    /// Ids of the reservations holding stock of this item. Makes taking and putting back a
    /// reservation line idempotent per reservation (see `reservations`). Never served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<String>,
}

impl StockDoc {
    /// The stock of a new item: all of it received now.
    pub fn new(id: ObjectId, stock: i64) -> Self {
        Self {
            id,
            stock,
            stock_received: Some(stock),
            version: 0,
            holds: Vec::new(),
        }
    }
}

/// What an admin stock change asks for: set `stock`, conditional on the document still
/// being as read (`read`), moving `stock_received` by the same delta.
#[derive(Debug, Clone, Copy)]
pub struct StockChange {
    pub stock: i64,
    /// Whether the change counts as a stock movement of its own (+1 on `version`); false
    /// when it comes with a catalog edit, which moves the served version by one already.
    pub bump: bool,
}

#[derive(Clone, Debug)]
pub struct Inventory {
    stock: Collection<StockDoc>,
}

impl Inventory {
    pub fn new(db: &Database) -> Self {
        Self {
            stock: db.collection(INVENTORY),
        }
    }

    pub fn collection(&self) -> &Collection<StockDoc> {
        &self.stock
    }

    /// Served reads never carry `holds`.
    fn public() -> mongodb::bson::Document {
        doc! { "holds": 0 }
    }

    pub async fn get(&self, id: ItemId) -> Result<Option<StockDoc>, Error> {
        count_read("stock");
        self.stock
            .find_one(doc! { "_id": id.0 })
            .projection(Self::public())
            .await
            .map_err(Error::mongo("reading stock"))
    }

    /// The stock of `ids` that exists, by item id: one `$in`.
    pub async fn get_many(&self, ids: &[ObjectId]) -> Result<HashMap<ObjectId, StockDoc>, Error> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        count_read("stock_many");
        let ids: Vec<Bson> = ids.iter().copied().map(Bson::ObjectId).collect();
        let docs: Vec<StockDoc> = self
            .stock
            .find(doc! { "_id": { "$in": ids } })
            .projection(Self::public())
            .await
            .map_err(Error::mongo("reading stock"))?
            .try_collect()
            .await
            .map_err(Error::mongo("reading stock"))?;
        Ok(docs.into_iter().map(|d| (d.id, d)).collect())
    }

    pub async fn insert(&self, doc: &StockDoc) -> Result<(), Error> {
        self.stock
            .insert_one(doc)
            .await
            .map_err(Error::mongo("inserting stock"))?;
        Ok(())
    }

    /// Drops an item's stock (after its catalog document is gone, or when creating the
    /// catalog document failed).
    pub async fn delete(&self, id: ObjectId) -> Result<(), Error> {
        self.stock
            .delete_one(doc! { "_id": id })
            .await
            .map_err(Error::mongo("deleting stock"))?;
        Ok(())
    }

    /// Applies `change` if the stock is still `read` (same version, same stock): a
    /// reservation moving it in between makes it miss (None) instead of being counted
    /// against a stock that moved. With no document (`read` None) it creates one, not
    /// accounted (nothing says what was received before).
    pub async fn set_stock(
        &self,
        id: ItemId,
        read: Option<&StockDoc>,
        change: StockChange,
    ) -> Result<Option<StockDoc>, Error> {
        let Some(read) = read else {
            let doc = StockDoc {
                id: id.0,
                stock: change.stock,
                stock_received: None,
                version: i64::from(change.bump),
                holds: Vec::new(),
            };
            return match self.stock.insert_one(&doc).await {
                Ok(_) => Ok(Some(doc)),
                Err(e) if is_duplicate_key(&e) => Ok(None),
                Err(e) => Err(Error::mongo("setting stock")(e)),
            };
        };
        let mut filter = doc! { "_id": id.0, "version": read.version, "stock": read.stock };
        let mut inc = doc! { "version": i64::from(change.bump) };
        // Items from before the count existed stay unaccounted rather than get a count
        // that would start from a delta.
        match read.stock_received {
            Some(_) => {
                inc.insert("stock_received", change.stock - read.stock);
                filter.insert("stock_received", doc! { "$exists": true });
            }
            None => {
                filter.insert("stock_received", doc! { "$exists": false });
            }
        }
        self.stock
            .find_one_and_update(
                filter,
                doc! { "$set": { "stock": change.stock }, "$inc": inc },
            )
            .return_document(ReturnDocument::After)
            .projection(Self::public())
            .await
            .map_err(Error::mongo("setting stock"))
    }
}
