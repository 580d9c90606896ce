//! The `items` collection (the catalog): documents, indexes, and every read and write on
//! it, joined with each item's stock from [`crate::inventory`] for what is served.
//!
//! Plain `mongodb` driver code that runs unchanged on a real mongod and on SecantusDB.
//! No multi-document transactions: every write is a single-document conditional update.
//!
//! An item is two documents with the same `_id`: its catalog document here and its stock
//! in `inventory`. Creating one writes the stock first, then the catalog document, so a
//! crash in between leaves only stock nobody can see or reserve (its id was never
//! answered); deleting removes the catalog document first. A catalog document without
//! stock (not created by this code) is served as out of stock.

use mongodb::event::{EventHandler, command::CommandEvent};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::{
    Client, Collection, Database, IndexModel,
    bson::{Bson, DateTime, Document, doc, oid::ObjectId},
    options::{ClientOptions, IndexOptions, ReturnDocument},
};
use platform::money::Money;
use serde::{Deserialize, Serialize};
use shop_proto::{common::v1 as common, item::v1 as pb};

use crate::{
    cursor::{Cursor, Sort},
    error::{Error, is_duplicate_key},
    input::{ItemId, ItemPatch, NewItem},
    inventory::{Inventory, StockChange, StockDoc},
};

pub const ITEMS: &str = "items";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PriceDoc {
    pub amount_minor: i64,
    pub currency: String,
}

/// An item as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemDoc {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub sku: String,
    pub name: String,
    /// Lower-cased name: sort key and target of the case-insensitive search (a plain,
    /// escaped regex on it needs no `$options`, and sorting needs no collation).
    pub name_lc: String,
    pub description: String,
    pub category: String,
    pub price: PriceDoc,
    pub image_url: String,
    pub created_at: DateTime,
    /// The last catalog edit (stock movements do not change it).
    pub updated_at: DateTime,
    /// Catalog edits so far (1 when created).
    pub version: i64,
}

/// An item as served: its catalog document joined with its stock.
#[derive(Debug, Clone)]
pub struct Item {
    pub doc: ItemDoc,
    /// None only for a catalog document without stock (served as out of stock).
    pub stock: Option<StockDoc>,
}

/// Completes a catalog part ([`ItemDoc::catalog_pb`]) with the item's stock.
pub fn with_stock(item: &mut pb::Item, stock: Option<&StockDoc>) {
    item.stock = stock.map_or(0, |s| s.stock);
    item.version += stock.map_or(0, |s| s.version);
}

impl Item {
    /// The served version: catalog edits plus stock movements, so it changes whenever
    /// anything served changes and never goes back (both counts only grow).
    pub fn version(&self) -> i64 {
        self.doc.version + self.stock.as_ref().map_or(0, |s| s.version)
    }

    pub fn stock(&self) -> i64 {
        self.stock.as_ref().map_or(0, |s| s.stock)
    }

    pub fn to_pb(&self) -> pb::Item {
        let mut item = self.doc.catalog_pb();
        with_stock(&mut item, self.stock.as_ref());
        item
    }
}

fn timestamp(d: DateTime) -> prost_types::Timestamp {
    let ms = d.timestamp_millis();
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

impl ItemDoc {
    pub fn new(item: NewItem, now: DateTime) -> Self {
        Self {
            id: ObjectId::new(),
            sku: item.sku.0,
            name_lc: item.name.to_lowercase(),
            name: item.name,
            description: item.description,
            category: item.category,
            price: PriceDoc {
                amount_minor: item.price.amount_minor(),
                currency: item.price.currency().code().to_owned(),
            },
            image_url: item.image_url,
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }

    /// The catalog fields, stock 0 and the catalog's version: what the catalog cache
    /// holds; [`Item::to_pb`] adds the stock.
    pub fn catalog_pb(&self) -> pb::Item {
        pb::Item {
            id: self.id.to_hex(),
            sku: self.sku.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            category: self.category.clone(),
            price: Some(common::Money {
                amount_minor: self.price.amount_minor,
                currency: self.price.currency.clone(),
            }),
            stock: 0,
            image_url: self.image_url.clone(),
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
            version: self.version,
        }
    }
}

/// Counts one MongoDB read (the load test compares reads/s with the cache on and off).
pub fn count_read(op: &'static str) {
    metrics::counter!("item_mongo_reads_total", "op" => op).increment(1);
}

/// Catalog documents from before the inventory collection held their stock themselves;
/// reads leave those fields out (the start-up migration moves them, see `migration`).
fn public() -> Document {
    doc! { "stock": 0, "stock_received": 0, "holds": 0 }
}

/// Escapes regex metacharacters so a user's search text matches literally.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if "\\^$.|?*+()[]{}/-".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Connects to MongoDB (lazily: the driver connects on first use, so a store that is down
/// at start-up makes requests fail with UNAVAILABLE instead of the process failing).
pub async fn connect(url: &str, database: &str) -> anyhow::Result<Database> {
    let mut opts = ClientOptions::parse(url).await?;
    opts.app_name
        .get_or_insert_with(|| "item-service".to_owned());
    opts.server_selection_timeout
        .get_or_insert(Duration::from_secs(5));
    opts.connect_timeout.get_or_insert(Duration::from_secs(5));
    // No retryable writes unless the URL asks for them (`retryWrites=true`). Every write
    // here is safe to repeat by design (unique reservation ids, per-reservation hold
    // markers, status changes conditional on the status expected), and callers retry
    // what failed; the driver's own retry bookkeeping (a transaction number per write)
    // made each write cost SecantusDB 13-18 ms of CPU instead of 0.4-0.8 ms (measured
    // with a plain driver loop, see docs/architecture.md).
    opts.retry_writes.get_or_insert(false);
    // Every command is one round trip to MongoDB: the driver reports each (in the calling
    // task), so the request's Server-Timing and the store histogram count them all,
    // cursor batches included; and, when traces are on, each is a span of the request
    // (the driver makes none itself).
    opts.command_event_handler = Some(EventHandler::callback(|event| match event {
        CommandEvent::Succeeded(e) => {
            platform::telemetry::record_store_span("mongodb", &e.command_name, e.duration, false);
            platform::timing::record_store("mongodb", e.command_name, e.duration)
        }
        CommandEvent::Failed(e) => {
            platform::telemetry::record_store_span("mongodb", &e.command_name, e.duration, true);
            platform::timing::record_store("mongodb", e.command_name, e.duration)
        }
        _ => {}
    }));
    let client = Client::with_options(opts)?;
    Ok(client.database(database))
}

#[derive(Clone, Debug)]
pub struct ItemStore {
    items: Collection<ItemDoc>,
    inventory: Inventory,
}

/// What ListItems asks the store for.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub category: String,
    pub query: String,
    pub sort: Sort,
    pub after: Option<Cursor>,
    pub limit: u32,
}

impl ItemStore {
    pub fn new(db: &Database) -> Self {
        Self {
            items: db.collection(ITEMS),
            inventory: Inventory::new(db),
        }
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    pub fn collection(&self) -> &Collection<ItemDoc> {
        &self.items
    }

    /// Creates the indexes; creating an index that exists with the same spec is a no-op,
    /// so this runs at every start.
    pub async fn ensure_indexes(&self) -> Result<(), Error> {
        let named = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build()
        };
        let indexes = vec![
            IndexModel::builder()
                .keys(doc! { "sku": 1 })
                .options(
                    IndexOptions::builder()
                        .name("sku_unique".to_owned())
                        .unique(true)
                        .build(),
                )
                .build(),
            named(doc! { "name_lc": 1, "_id": 1 }, "name"),
            named(doc! { "price.amount_minor": 1, "_id": 1 }, "price"),
            named(doc! { "created_at": -1, "_id": -1 }, "newest"),
            named(
                doc! { "category": 1, "name_lc": 1, "_id": 1 },
                "category_name",
            ),
            named(
                doc! { "category": 1, "price.amount_minor": 1, "_id": 1 },
                "category_price",
            ),
            named(
                doc! { "category": 1, "created_at": -1, "_id": -1 },
                "category_newest",
            ),
        ];
        self.items
            .create_indexes(indexes)
            .await
            .map_err(Error::mongo("creating item indexes"))?;
        Ok(())
    }

    /// Creates an item: its stock first, then its catalog document (see the module
    /// comment for why in this order).
    pub async fn insert(&self, item: NewItem) -> Result<Item, Error> {
        let stock = item.stock;
        let doc = ItemDoc::new(item, DateTime::now());
        let stock = StockDoc::new(doc.id, stock);
        self.inventory.insert(&stock).await?;
        match self.items.insert_one(&doc).await {
            Ok(_) => Ok(Item {
                doc,
                stock: Some(stock),
            }),
            Err(e) => {
                // Nobody can reach the stock of an item that was never answered; dropping
                // it keeps the collection tidy (a failure here leaves it harmless).
                if let Err(drop) = self.inventory.delete(doc.id).await {
                    tracing::debug!(error = %platform::telemetry::chain(&drop), "dropping the stock of an item not created");
                }
                if is_duplicate_key(&e) {
                    Err(Error::DuplicateSku(doc.sku))
                } else {
                    Err(Error::mongo("inserting an item")(e))
                }
            }
        }
    }

    /// Applies a patch if the item is still at `expected_version` (the served version:
    /// catalog edits plus stock movements).
    ///
    /// A stock change writes only the item's stock; catalog fields only its catalog
    /// document. A patch with both writes the stock first (conditional on the stock and
    /// its version as read, so a reservation in between makes it a version conflict with
    /// nothing changed), then the catalog (conditional on the catalog version). Only a
    /// concurrent catalog edit landing between those two writes can leave the stock set
    /// and the catalog fields not; that answers a version conflict like any other.
    pub async fn update(&self, patch: ItemPatch) -> Result<Item, Error> {
        let Some(current) = self.get(patch.id).await? else {
            return Err(Error::ItemNotFound(patch.id.hex()));
        };
        if current.version() != patch.expected_version {
            return Err(self.conflict(&patch, current.version()));
        }
        let mut set = doc! {};
        if let Some(n) = &patch.name {
            set.insert("name", n);
            set.insert("name_lc", n.to_lowercase());
        }
        if let Some(d) = &patch.description {
            set.insert("description", d);
        }
        if let Some(c) = &patch.category {
            set.insert("category", c);
        }
        if let Some(p) = patch.price {
            set.insert("price", money_doc(p));
        }
        if let Some(u) = &patch.image_url {
            set.insert("image_url", u);
        }
        let catalog_edit = !set.is_empty() || patch.stock.is_none();
        let mut stock = current.stock.clone();
        if let Some(new_stock) = patch.stock {
            let change = StockChange {
                stock: new_stock,
                bump: !catalog_edit,
            };
            match self
                .inventory
                .set_stock(patch.id, current.stock.as_ref(), change)
                .await?
            {
                Some(after) => stock = Some(after),
                None => return Err(self.reread_conflict(&patch).await),
            }
        }
        let doc = if catalog_edit {
            set.insert("updated_at", DateTime::now());
            let updated = self
                .items
                .find_one_and_update(
                    doc! { "_id": patch.id.0, "version": current.doc.version },
                    doc! { "$set": set, "$inc": { "version": 1_i64 } },
                )
                .return_document(ReturnDocument::After)
                .projection(public())
                .await
                .map_err(Error::mongo("updating an item"))?;
            match updated {
                Some(doc) => doc,
                None => return Err(self.reread_conflict(&patch).await),
            }
        } else {
            current.doc
        };
        Ok(Item { doc, stock })
    }

    fn conflict(&self, patch: &ItemPatch, current: i64) -> Error {
        Error::VersionConflict {
            id: patch.id.hex(),
            expected: patch.expected_version,
            current,
        }
    }

    /// A conditional write missed: says why (gone, or another version now).
    async fn reread_conflict(&self, patch: &ItemPatch) -> Error {
        match self.get(patch.id).await {
            Ok(None) => Error::ItemNotFound(patch.id.hex()),
            Ok(Some(current)) => self.conflict(patch, current.version()),
            Err(e) => e,
        }
    }

    /// Deletes the catalog document, then the stock (see the module comment).
    pub async fn delete(&self, id: ItemId) -> Result<(), Error> {
        let res = self
            .items
            .delete_one(doc! { "_id": id.0 })
            .await
            .map_err(Error::mongo("deleting an item"))?;
        if res.deleted_count == 0 {
            return Err(Error::ItemNotFound(id.hex()));
        }
        self.inventory.delete(id.0).await
    }

    /// One item, catalog and stock (two reads by `_id`).
    pub async fn get(&self, id: ItemId) -> Result<Option<Item>, Error> {
        let Some(doc) = self.get_catalog(id).await? else {
            return Ok(None);
        };
        let stock = self.inventory.get(id).await?;
        Ok(Some(Item { doc, stock }))
    }

    /// One catalog document, without its stock.
    pub async fn get_catalog(&self, id: ItemId) -> Result<Option<ItemDoc>, Error> {
        count_read("get");
        self.items
            .find_one(doc! { "_id": id.0 })
            .projection(public())
            .await
            .map_err(Error::mongo("reading an item"))
    }

    /// The catalog documents among `ids` that exist, in no particular order, without
    /// their stock (pricing needs none).
    pub async fn get_catalog_many(&self, ids: &[ItemId]) -> Result<Vec<ItemDoc>, Error> {
        count_read("get_many");
        let ids: Vec<Bson> = ids.iter().map(|i| Bson::ObjectId(i.0)).collect();
        self.items
            .find(doc! { "_id": { "$in": ids } })
            .projection(public())
            .await
            .map_err(Error::mongo("reading items"))?
            .try_collect()
            .await
            .map_err(Error::mongo("reading items"))
    }

    /// Joins catalog documents to their stock, one `$in` for all of them.
    async fn join(&self, docs: Vec<ItemDoc>) -> Result<Vec<Item>, Error> {
        let ids: Vec<ObjectId> = docs.iter().map(|d| d.id).collect();
        let mut stock = self.inventory.get_many(&ids).await?;
        Ok(docs
            .into_iter()
            .map(|doc| Item {
                stock: stock.remove(&doc.id),
                doc,
            })
            .collect())
    }

    /// One page (plus one item, to tell whether another page follows), joined with its
    /// stock in one more round trip.
    pub async fn list(&self, q: &ListQuery) -> Result<Vec<Item>, Error> {
        let mut clauses = Vec::new();
        if !q.category.is_empty() {
            clauses.push(doc! { "category": &q.category });
        }
        if !q.query.is_empty() {
            clauses.push(doc! { "name_lc": { "$regex": regex_escape(&q.query) } });
        }
        if let Some(after) = &q.after {
            let key = match &after.key {
                Some(k) => k.clone(),
                // The token had no room for the key: read it from the anchor item.
                None => match self.get_catalog(ItemId(after.id)).await? {
                    Some(anchor) => q.sort.key_of(&anchor),
                    None => {
                        return Err(platform::FieldError::new(
                            "page.page_token",
                            "has expired (its anchor item was deleted); start again",
                        )
                        .into());
                    }
                },
            };
            clauses.push(q.sort.after(key, after.id));
        }
        let filter = match clauses.len() {
            0 => doc! {},
            1 => clauses.remove(0),
            _ => doc! { "$and": clauses },
        };
        count_read("list");
        let docs = self
            .items
            .find(filter)
            .sort(q.sort.sort_doc())
            .limit(i64::from(q.limit) + 1)
            .projection(public())
            .await
            .map_err(Error::mongo("listing items"))?
            .try_collect()
            .await
            .map_err(Error::mongo("listing items"))?;
        self.join(docs).await
    }
}

pub fn money_doc(m: Money) -> Document {
    doc! { "amount_minor": m.amount_minor(), "currency": m.currency().code() }
}
