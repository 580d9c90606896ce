//! The `items` collection: documents, indexes, and every read and write on it.
//!
//! Plain `mongodb` driver code that runs unchanged on a real mongod and on SecantusDB.
//! No multi-document transactions: stock changes are single-document conditional updates.

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
    pub stock: i64,
    /// Every unit ever put into stock: the initial stock plus every restock (an admin stock
    /// change adds its delta). Reservations move `stock` but never this, so for every item
    /// `stock_received = stock + units held + units committed` (what `loadtest check`
    /// verifies). None on items created before the field existed: those are not accounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock_received: Option<i64>,
    pub image_url: String,
    pub created_at: DateTime,
    pub updated_at: DateTime,
    pub version: i64,
    /// Ids of the reservations holding stock of this item. Makes taking and putting back a
    /// reservation line idempotent per reservation (see `reservations`). Never served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<String>,
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
            stock: item.stock,
            stock_received: Some(item.stock),
            image_url: item.image_url,
            created_at: now,
            updated_at: now,
            version: 1,
            holds: Vec::new(),
        }
    }

    pub fn to_pb(&self) -> pb::Item {
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
            stock: self.stock,
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

/// Served items never carry the internal `holds` list.
fn public() -> Document {
    doc! { "holds": 0 }
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
        }
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

    pub async fn insert(&self, item: NewItem) -> Result<ItemDoc, Error> {
        let doc = ItemDoc::new(item, DateTime::now());
        match self.items.insert_one(&doc).await {
            Ok(_) => Ok(doc),
            Err(e) if is_duplicate_key(&e) => Err(Error::DuplicateSku(doc.sku)),
            Err(e) => Err(Error::mongo("inserting an item")(e)),
        }
    }

    /// Applies a patch if the item is still at `expected_version`.
    pub async fn update(&self, patch: ItemPatch) -> Result<ItemDoc, Error> {
        let mut set = doc! { "updated_at": DateTime::now() };
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
        let Some(stock) = patch.stock else {
            let filter = doc! { "_id": patch.id.0, "version": patch.expected_version };
            let update = doc! { "$set": set, "$inc": { "version": 1_i64 } };
            return self.apply_update(&patch, filter, update).await;
        };
        // A stock change is a restock (or a write-off): `stock_received` moves by the same
        // delta in the same single-document update. The delta needs the current stock, so
        // the update is conditional on the stock read (compare-and-set): a reservation
        // moving the stock in between makes it miss instead of being counted twice.
        set.insert("stock", stock);
        for _ in 0..3 {
            let Some(current) = self.get(patch.id).await? else {
                return Err(Error::ItemNotFound(patch.id.hex()));
            };
            if current.version != patch.expected_version {
                return Err(Error::VersionConflict {
                    id: patch.id.hex(),
                    expected: patch.expected_version,
                    current: current.version,
                });
            }
            let mut inc = doc! { "version": 1_i64 };
            let mut filter = doc! {
                "_id": patch.id.0,
                "version": patch.expected_version,
                "stock": current.stock,
            };
            // Items from before the field existed stay unaccounted rather than get a
            // count that would start from a delta.
            if current.stock_received.is_some() {
                inc.insert("stock_received", stock - current.stock);
                filter.insert("stock_received", doc! { "$exists": true });
            } else {
                filter.insert("stock_received", doc! { "$exists": false });
            }
            let update = doc! { "$set": set.clone(), "$inc": inc };
            match self.try_update(filter, update).await? {
                Some(doc) => return Ok(doc),
                // Moved under us (the stock, or the version: reported by the next read).
                None => continue,
            }
        }
        Err(Error::Aborted(
            platform::ErrorReason::ConcurrentChange,
            format!(
                "stock of item {} is changing too fast; retry",
                patch.id.hex()
            ),
        ))
    }

    async fn try_update(
        &self,
        filter: Document,
        update: Document,
    ) -> Result<Option<ItemDoc>, Error> {
        self.items
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .projection(public())
            .await
            .map_err(Error::mongo("updating an item"))
    }

    /// One conditional update; when it did not apply, says why (gone or another version).
    async fn apply_update(
        &self,
        patch: &ItemPatch,
        filter: Document,
        update: Document,
    ) -> Result<ItemDoc, Error> {
        if let Some(doc) = self.try_update(filter, update).await? {
            return Ok(doc);
        }
        match self.get(patch.id).await? {
            None => Err(Error::ItemNotFound(patch.id.hex())),
            Some(current) => Err(Error::VersionConflict {
                id: patch.id.hex(),
                expected: patch.expected_version,
                current: current.version,
            }),
        }
    }

    pub async fn delete(&self, id: ItemId) -> Result<(), Error> {
        let res = self
            .items
            .delete_one(doc! { "_id": id.0 })
            .await
            .map_err(Error::mongo("deleting an item"))?;
        if res.deleted_count == 0 {
            return Err(Error::ItemNotFound(id.hex()));
        }
        Ok(())
    }

    pub async fn get(&self, id: ItemId) -> Result<Option<ItemDoc>, Error> {
        count_read("get");
        self.items
            .find_one(doc! { "_id": id.0 })
            .projection(public())
            .await
            .map_err(Error::mongo("reading an item"))
    }

    /// The items among `ids` that exist, in no particular order.
    pub async fn get_many(&self, ids: &[ItemId]) -> Result<Vec<ItemDoc>, Error> {
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

    /// One page (plus one item, to tell whether another page follows).
    pub async fn list(&self, q: &ListQuery) -> Result<Vec<ItemDoc>, Error> {
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
                None => match self.get(ItemId(after.id)).await? {
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
        self.items
            .find(filter)
            .sort(q.sort.sort_doc())
            .limit(i64::from(q.limit) + 1)
            .projection(public())
            .await
            .map_err(Error::mongo("listing items"))?
            .try_collect()
            .await
            .map_err(Error::mongo("listing items"))
    }
}

pub fn money_doc(m: Money) -> Document {
    doc! { "amount_minor": m.amount_minor(), "currency": m.currency().code() }
}
