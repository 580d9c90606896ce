//! Read-only access to the three stores and the snapshot read from them.
//!
//! PostgreSQL sessions start with `default_transaction_read_only = on` and read in one
//! REPEATABLE READ READ ONLY transaction; the MariaDB session is `SET SESSION TRANSACTION
//! READ ONLY` and reads in one consistent-snapshot READ ONLY transaction. So a write through
//! these connections fails in the database, whatever the code does. MongoDB has no
//! read-only session: the checker only ever calls `find` on it.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use futures::TryStreamExt;
use mongodb::{
    Client,
    bson::{Bson, Document, doc},
    options::ClientOptions,
};
use sqlx::{
    ConnectOptions, Connection, MySqlConnection, PgConnection, Row, mysql::MySqlConnectOptions,
    postgres::PgConnectOptions,
};

use item_service::inventory::{StoredStock, stored_int};

use super::Urls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A `payments` row (payment-service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub id: String,
    pub order_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub amount_refunded_minor: i64,
    /// PENDING, SUCCEEDED, DECLINED, FAILED, REFUNDED.
    pub status: String,
    /// Time since it last changed.
    pub age: Duration,
}

/// A PENDING `refunds` row (payment-service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub id: String,
    pub payment_id: String,
    pub age: Duration,
}

/// An `orders` row: user-service's checkout record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub order_id: String,
    /// pending, cancelling, cancelled, placed, refunded.
    pub status: String,
    pub total_minor: Option<i64>,
    pub currency: Option<String>,
    pub payment_id: Option<String>,
    pub reservation_id: String,
    /// orchestrated, parallel, chained, async ('' on orders from before the record).
    pub strategy: String,
    /// Time since it was created. Not since it last changed: a recovery round that waits
    /// hands the record back and so refreshes `updated_at`; a checkout must be finished
    /// within the window of its start (user-service's stuck gauge counts the same way).
    pub age: Duration,
}

/// A `reservations` document (item-service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: String,
    /// pending, reserved, committed, released, rejected.
    pub status: String,
    /// Milliseconds since the epoch.
    pub expires_at_ms: i64,
    /// (item id, quantity).
    pub lines: Vec<(String, i64)>,
}

/// An item's stock (item-service's `inventory`, with the SKU from `items`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: String,
    pub sku: String,
    pub stock: i64,
    /// None on items created before the field existed.
    pub stock_received: Option<i64>,
    /// Reservations whose stock of this item is taken but not yet committed.
    pub holds: Vec<String>,
}

/// Everything the rules judge, read once.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub orders: Vec<Order>,
    pub payments: Vec<Payment>,
    pub pending_refunds: Vec<Refund>,
    pub items: Vec<Item>,
    pub reservations: Vec<Reservation>,
    /// When the reservations were read (milliseconds since the epoch).
    pub now_ms: i64,
}

/// Read-only connections to the three stores.
pub struct Stores {
    pub postgres: PgConnection,
    pub mariadb: MySqlConnection,
    pub mongo: mongodb::Database,
}

async fn within<T>(
    what: &str,
    f: impl Future<Output = Result<T, impl std::error::Error + Send + Sync + 'static>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(CONNECT_TIMEOUT, f).await {
        Ok(r) => r.with_context(|| format!("connecting to {what}")),
        Err(_) => anyhow::bail!("connecting to {what}: no answer in {CONNECT_TIMEOUT:?}"),
    }
}

fn age(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn id_of(d: &Document) -> String {
    match d.get("_id") {
        Some(Bson::ObjectId(o)) => o.to_hex(),
        Some(Bson::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

impl Stores {
    pub async fn connect(urls: &Urls) -> anyhow::Result<Self> {
        let pg = PgConnectOptions::from_str(&urls.user_database_url)
            .context("USER_DATABASE_URL / --user-database-url")?
            .options([("default_transaction_read_only", "on")]);
        let postgres = within("user-service's PostgreSQL", pg.connect()).await?;

        let my = MySqlConnectOptions::from_str(&urls.payment_database_url)
            .context("PAYMENT_DATABASE_URL / --payment-database-url")?;
        let mut mariadb = within("payment-service's MariaDB", my.connect()).await?;
        sqlx::raw_sql("SET SESSION TRANSACTION READ ONLY")
            .execute(&mut mariadb)
            .await
            .context("making the MariaDB session read-only")?;

        let mut opts = ClientOptions::parse(&urls.item_mongodb_url)
            .await
            .context("ITEM_MONGODB_URL / --item-mongodb-url")?;
        opts.app_name = Some("loadtest-check".to_owned());
        opts.server_selection_timeout = Some(CONNECT_TIMEOUT);
        opts.connect_timeout = Some(CONNECT_TIMEOUT);
        let mongo = Client::with_options(opts)
            .context("item-service's MongoDB")?
            .database(&urls.item_mongodb_database);
        mongo
            .run_command(doc! { "ping": 1 })
            .await
            .context("connecting to item-service's MongoDB")?;
        Ok(Self {
            postgres,
            mariadb,
            mongo,
        })
    }

    /// Reads every store. The order matters on a live system: orders before payments (a
    /// refund finishing in between shows as an order still cancelling, which is in flight,
    /// rather than as a refunded payment), and items before reservations.
    pub async fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        let orders = self.orders().await.context("reading orders")?;
        let (payments, pending_refunds) = self.payments().await.context("reading payments")?;
        let items = self.items().await.context("reading items")?;
        let now_ms = mongodb::bson::DateTime::now().timestamp_millis();
        let reservations = self.reservations().await.context("reading reservations")?;
        Ok(Snapshot {
            orders,
            payments,
            pending_refunds,
            items,
            reservations,
            now_ms,
        })
    }

    async fn orders(&mut self) -> anyhow::Result<Vec<Order>> {
        let c = &mut self.postgres;
        sqlx::raw_sql("START TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *c)
            .await?;
        let rows = sqlx::query(
            "SELECT order_id::text AS order_id, status, total_minor, currency, payment_id, \
                    reservation_id, strategy, \
                    (EXTRACT(EPOCH FROM (now() - created_at)) * 1000)::bigint AS age_ms \
             FROM orders",
        )
        .fetch_all(&mut *c)
        .await;
        sqlx::raw_sql("ROLLBACK").execute(&mut *c).await?;
        rows?
            .iter()
            .map(|r| {
                Ok(Order {
                    order_id: r.try_get("order_id")?,
                    status: r.try_get("status")?,
                    total_minor: r.try_get("total_minor")?,
                    currency: r.try_get("currency")?,
                    payment_id: r.try_get("payment_id")?,
                    reservation_id: r.try_get("reservation_id")?,
                    strategy: r.try_get("strategy")?,
                    age: age(r.try_get("age_ms")?),
                })
            })
            .collect()
    }

    async fn payments(&mut self) -> anyhow::Result<(Vec<Payment>, Vec<Refund>)> {
        let c = &mut self.mariadb;
        sqlx::raw_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .execute(&mut *c)
            .await?;
        // Ages in the database's own clock; the service writes UTC.
        let payments = sqlx::query(
            "SELECT id, order_id, amount_minor, currency, amount_refunded_minor, status, \
                    CAST(TIMESTAMPDIFF(MICROSECOND, updated_at, UTC_TIMESTAMP(6)) DIV 1000 AS SIGNED) AS age_ms \
             FROM payments",
        )
        .fetch_all(&mut *c)
        .await;
        let refunds = sqlx::query(
            "SELECT id, payment_id, \
                    CAST(TIMESTAMPDIFF(MICROSECOND, updated_at, UTC_TIMESTAMP(6)) DIV 1000 AS SIGNED) AS age_ms \
             FROM refunds WHERE status = 'PENDING'",
        )
        .fetch_all(&mut *c)
        .await;
        sqlx::raw_sql("ROLLBACK").execute(&mut *c).await?;
        let payments = payments?
            .iter()
            .map(|r| {
                Ok(Payment {
                    id: r.try_get("id")?,
                    order_id: r.try_get("order_id")?,
                    amount_minor: r.try_get("amount_minor")?,
                    currency: r.try_get("currency")?,
                    amount_refunded_minor: r.try_get("amount_refunded_minor")?,
                    status: r.try_get("status")?,
                    age: age(r.try_get("age_ms")?),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let refunds = refunds?
            .iter()
            .map(|r| {
                Ok(Refund {
                    id: r.try_get("id")?,
                    payment_id: r.try_get("payment_id")?,
                    age: age(r.try_get("age_ms")?),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok((payments, refunds))
    }

    /// Every item's stock, from `inventory` (one document per item, keyed by its id),
    /// with the SKU from the catalog (`items`). A catalog document still holding stock
    /// itself (a database item-service has not migrated yet) is read as it is; stock
    /// without a catalog document (an item whose creation died half-way) is judged too.
    async fn items(&self) -> anyhow::Result<Vec<Item>> {
        let catalog: Vec<Document> = self
            .mongo
            .collection::<Document>("items")
            .find(doc! {})
            .projection(doc! { "sku": 1, "stock": 1, "stock_received": 1, "holds": 1 })
            .await?
            .try_collect()
            .await?;
        let stock: Vec<Document> = self
            .mongo
            .collection::<Document>("inventory")
            .find(doc! {})
            .projection(doc! { "stock": 1, "stock_received": 1, "holds": 1 })
            .await?
            .try_collect()
            .await?;
        let mut stock: std::collections::HashMap<String, Document> =
            stock.into_iter().map(|d| (id_of(&d), d)).collect();
        let item = |id: String, sku: &str, d: &Document| {
            let stored = StoredStock::read(d);
            Item {
                id,
                sku: sku.to_owned(),
                stock: stored.stock,
                stock_received: stored.stock_received,
                holds: stored.holds,
            }
        };
        let mut items: Vec<Item> = catalog
            .iter()
            .map(|c| {
                let id = id_of(c);
                let sku = c.get_str("sku").unwrap_or_default();
                match stock.remove(&id) {
                    Some(s) => item(id, sku, &s),
                    None => item(id, sku, c),
                }
            })
            .collect();
        items.extend(stock.into_iter().map(|(id, s)| item(id, "", &s)));
        Ok(items)
    }

    async fn reservations(&self) -> anyhow::Result<Vec<Reservation>> {
        let docs: Vec<Document> = self
            .mongo
            .collection::<Document>("reservations")
            .find(doc! {})
            .projection(doc! { "status": 1, "expires_at": 1, "lines": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .iter()
            .map(|d| Reservation {
                id: id_of(d),
                status: d.get_str("status").unwrap_or_default().to_owned(),
                expires_at_ms: d
                    .get_datetime("expires_at")
                    .map(|t| t.timestamp_millis())
                    .unwrap_or(i64::MAX),
                lines: d
                    .get_array("lines")
                    .map(|ls| {
                        ls.iter()
                            .filter_map(Bson::as_document)
                            .map(|l| {
                                let item = match l.get("item_id") {
                                    Some(Bson::ObjectId(o)) => o.to_hex(),
                                    Some(other) => other.to_string(),
                                    None => String::new(),
                                };
                                (item, stored_int(l.get("quantity")).unwrap_or(0))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect())
    }

    pub async fn close(self) {
        let _ = self.postgres.close().await;
        let _ = self.mariadb.close().await;
        self.mongo.client().clone().shutdown().await;
    }
}
