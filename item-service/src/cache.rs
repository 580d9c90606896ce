//! Redis cache-aside in front of GetItem, BatchGetItems and ListItems.
//!
//! Choices, briefly:
//! - What is cached: the whole served item, stock included, as protobuf bytes under
//!   `shop:item:v1:{id}`. Every write path deletes the keys it makes stale *after* its
//!   MongoDB write (item updates and deletes, and every stock change made by reservations,
//!   releases and the sweeper). Keeping stock out of the cached value would make every
//!   GetItem read MongoDB anyway, i.e. no cache at all for the cart's pricing call.
//! - The catalog part alone (stock 0, the catalog's version) is cached too, under
//!   `shop:catalog:v1:{id}`, and only catalog edits drop it. A served item's entry goes at
//!   every stock movement; its reload takes the catalog part from here and reads only the
//!   item's stock (`inventory`, no secondary index) from MongoDB.
//! - Not found is cached too, briefly (ids are server-generated and never reused, so a
//!   negative entry only guards against bursts for unknown ids).
//! - TTLs get +-20% jitter so entries written together do not expire together.
//! - A burst of misses on one key in this process makes one MongoDB read (single-flight).
//! - List pages are cached briefly (`list_ttl`, default 2 s), because a page of the whole
//!   catalog costs tens of milliseconds on a store that does not stop an index scan at the
//!   limit, and the catalog's first pages are what every visitor asks for. Key: the
//!   normalised request (category, search text, sort, page size, page token) under
//!   `shop:items:list:v1:{database}:`. Value: the catalog generation it was read at plus
//!   the response. Catalog edits (create, update, delete) bump the generation
//!   (`shop:items:gen:v1:{database}`, no TTL) after their MongoDB write; a page stored at
//!   an older generation is a miss, so edits show in lists at once. The generation is read *before* MongoDB, so a reader that raced a
//!   writer stores its page under the old generation and nobody serves it. Stock changes
//!   (reservations) do not bump it: stock shown in lists may lag by up to the TTL, which
//!   is fine because pricing and reservations never read lists (they use GetItem,
//!   BatchGetItems and MongoDB). A bump that cannot reach Redis leaves old pages to their
//!   (short) TTL.
//! - Redis is never a reason to fail: every operation has a short timeout, errors and
//!   timeouts are logged and counted, and the request continues on MongoDB. After an
//!   error (refused, reset: Redis is down) the cache is bypassed for a moment so a dead
//!   Redis does not cost every request the timeout; timeouts alone bypass it only once
//!   Redis has answered nothing for `HUNG_AFTER` (see [`Health`]).
//! - The classic cache-aside race (a reader that read MongoDB before a write stores its old
//!   copy after the writer's delete) is closed by deleting twice: at once and again
//!   `REDELETE_AFTER` later. A delete that cannot reach Redis leaves the entry to its TTL.

use platform::timing::StoreOp as _;
use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use prost::Message;
use rand::Rng;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use shop_proto::item::v1 as pb;
use tokio::sync::OnceCell;
use tonic::Status;

use crate::input::ItemId;

const FOUND: u8 = b'I';
const NOT_FOUND: u8 = b'N';
/// How long the cache is skipped after a Redis error.
const BACKOFF: Duration = Duration::from_secs(1);
/// How long Redis may answer nothing but timeouts before it is taken for hung.
const HUNG_AFTER: Duration = Duration::from_secs(1);
/// When the second delete of an invalidation runs.
const REDELETE_AFTER: Duration = Duration::from_millis(500);

/// What an entry holds: the served item (catalog and stock), or its catalog part alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Item,
    Catalog,
}

impl Entry {
    fn key(self, id: ItemId) -> String {
        match self {
            Self::Item => format!("shop:item:v1:{}", id.hex()),
            Self::Catalog => format!("shop:catalog:v1:{}", id.hex()),
        }
    }

    /// The lookup counters are the served items' (what the load test compares).
    fn count(self, result: &'static str, n: u64) {
        if self == Self::Item {
            count(result, n);
        }
    }
}

fn key(id: ItemId) -> String {
    Entry::Item.key(id)
}

const LIST_PAGE: u8 = b'L';

fn count(result: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!("item_cache_requests_total", "result" => result).increment(n);
    }
}

fn count_list(result: &'static str) {
    metrics::counter!("item_list_cache_requests_total", "result" => result).increment(1);
}

/// What a ListItems response depends on, normalised (lower-cased text, the sort after
/// defaulting, the page size after defaulting): its cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListKey(String);

impl ListKey {
    pub fn new(category: &str, query: &str, sort: &str, size: u32, token: &str) -> Self {
        // JSON of a tuple: unambiguous whatever the texts contain.
        Self(serde_json::json!([category, query, sort, size, token]).to_string())
    }
}

fn encode_page(generation: i64, page: &pb::ListItemsResponse) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + page.encoded_len());
    v.push(LIST_PAGE);
    v.extend_from_slice(&generation.to_be_bytes());
    page.encode(&mut v).map(|()| v).unwrap_or_default()
}

/// The page if it was stored at `generation`; None for another generation or bytes we
/// cannot read.
fn decode_page(bytes: &[u8], generation: i64) -> Option<pb::ListItemsResponse> {
    let (&tag, rest) = bytes.split_first()?;
    if tag != LIST_PAGE || rest.len() < 8 {
        return None;
    }
    let (stored, body) = rest.split_at(8);
    let stored = i64::from_be_bytes(stored.try_into().ok()?);
    if stored != generation {
        return None;
    }
    pb::ListItemsResponse::decode(body).ok()
}

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub redis_url: String,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub op_timeout: Duration,
    /// TTL of a cached list page; zero leaves list pages uncached.
    pub list_ttl: Duration,
    /// Which catalog the list pages are of (the MongoDB database name): catalogs that
    /// share a Redis keep their pages and generations apart.
    pub catalog: String,
}

type Loaded = Result<Option<pb::Item>, Status>;
type LoadedPage = Result<pb::ListItemsResponse, Status>;
/// A list load in flight, by (generation, key).
type PageFlights = HashMap<(i64, ListKey), Arc<OnceCell<LoadedPage>>>;

struct Inner {
    settings: CacheSettings,
    /// Key of the catalog generation, and prefix of list page keys.
    generation_key: String,
    list_prefix: String,
    /// Set by the background connector once Redis answered; the manager reconnects by
    /// itself after that.
    conn: OnceLock<ConnectionManager>,
    health: Mutex<Health>,
    inflight: Mutex<HashMap<ItemId, Arc<OnceCell<Loaded>>>>,
    inflight_lists: Mutex<PageFlights>,
}

/// The item cache; `Cache::off()` passes everything straight to MongoDB.
#[derive(Clone)]
pub struct Cache {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

// Short-lived (one per requested key, per request); boxing would cost an allocation per hit.
#[allow(clippy::large_enum_variant)]
enum Lookup {
    Hit(Option<pb::Item>),
    Miss,
}

fn decode(bytes: &[u8]) -> Option<Option<pb::Item>> {
    match bytes.split_first() {
        Some((&NOT_FOUND, _)) => Some(None),
        Some((&FOUND, rest)) => pb::Item::decode(rest).ok().map(Some),
        _ => None,
    }
}

fn encode(item: Option<&pb::Item>) -> Vec<u8> {
    match item {
        None => vec![NOT_FOUND],
        Some(i) => {
            let mut v = Vec::with_capacity(1 + i.encoded_len());
            v.push(FOUND);
            i.encode(&mut v).map(|()| v).unwrap_or_default()
        }
    }
}

/// Registers the cache and store counters at zero, with help text, so dashboards and the
/// load test see them before the first request.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "item_cache_requests_total",
        "Item cache lookups per key by result: hit, miss, error (Redis failed or timed out), bypass (skipped after a recent error)"
    );
    metrics::describe_counter!(
        "item_mongo_reads_total",
        "MongoDB read operations by item-service, by operation"
    );
    metrics::describe_counter!(
        "item_list_cache_requests_total",
        "ListItems page cache lookups by result: hit, miss, error (Redis failed or timed out), bypass (skipped after a recent error)"
    );
    for result in ["hit", "miss", "error", "bypass"] {
        metrics::counter!("item_cache_requests_total", "result" => result).increment(0);
        metrics::counter!("item_list_cache_requests_total", "result" => result).increment(0);
    }
    for op in ["get", "get_many", "list"] {
        metrics::counter!("item_mongo_reads_total", "op" => op).increment(0);
    }
}

impl Cache {
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// A cache in front of Redis at `settings.redis_url`. Tries to connect for a moment;
    /// if Redis is not there, keeps trying in the background, so the service starts (and
    /// serves from MongoDB) while Redis is down. Must be called inside a runtime.
    pub async fn connect(settings: CacheSettings) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.redis_url.as_str())?;
        let inner = Arc::new(Inner {
            generation_key: format!("shop:items:gen:v1:{}", settings.catalog),
            list_prefix: format!("shop:items:list:v1:{}:", settings.catalog),
            settings,
            conn: OnceLock::new(),
            health: Mutex::new(Health::default()),
            inflight: Mutex::new(HashMap::new()),
            inflight_lists: Mutex::new(HashMap::new()),
        });
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_millis(500))
            .set_number_of_retries(1)
            .set_max_delay(200);
        let attempt = |client: redis::Client, config: ConnectionManagerConfig| async move {
            match tokio::time::timeout(
                Duration::from_secs(1),
                ConnectionManager::new_with_config(client, config),
            )
            .await
            {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("connect timed out".to_owned()),
            }
        };
        match attempt(client.clone(), config.clone()).await {
            Ok(conn) => {
                let _ = inner.conn.set(conn);
                tracing::info!("redis cache connected");
            }
            Err(e) => {
                tracing::warn!(error = %e, "redis cache not reachable; serving from MongoDB until it is");
                let weak = Arc::downgrade(&inner);
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let Some(inner) = weak.upgrade() else { return };
                        match attempt(client.clone(), config.clone()).await {
                            Ok(conn) => {
                                let _ = inner.conn.set(conn);
                                tracing::info!("redis cache connected");
                                return;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "redis cache still not reachable")
                            }
                        }
                    }
                });
            }
        }
        Ok(Self { inner: Some(inner) })
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// One item through the cache; `load` reads MongoDB.
    pub async fn get_item<F, Fut>(&self, id: ItemId, load: F) -> Loaded
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Loaded>,
    {
        let Some(inner) = &self.inner else {
            return load().await;
        };
        let fill = match inner.lookup(Entry::Item, &[id]).await {
            Some(mut found) => match found.pop() {
                Some(Lookup::Hit(item)) => {
                    count("hit", 1);
                    return Ok(item);
                }
                _ => {
                    count("miss", 1);
                    true
                }
            },
            None => false,
        };
        // Single-flight: the first caller loads, concurrent callers for the same id wait
        // for its result.
        let cell = {
            let mut map = inner.inflight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(id).or_default().clone()
        };
        let result = cell
            .get_or_init(|| async {
                // Double-check: a load that finished between our miss and taking the lead
                // has filled Redis already.
                if fill
                    && let Some(Some(Lookup::Hit(item))) =
                        inner.lookup(Entry::Item, &[id]).await.map(|mut v| v.pop())
                {
                    return Ok(item);
                }
                let loaded = load().await;
                if fill && let Ok(item) = &loaded {
                    inner.store(Entry::Item, &[(id, item.as_ref())]).await;
                }
                loaded
            })
            .await
            .clone();
        {
            let mut map = inner.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                map.remove(&id);
            }
        }
        result
    }

    /// Many entries through the cache: one MGET, one MongoDB read for all misses, one
    /// pipelined fill. Returns what exists. `Entry::Catalog` keeps the catalog part under
    /// keys of its own that only catalog edits drop: a served item's entry goes at every
    /// stock movement, and reloading it then needs only the item's stock from MongoDB.
    pub async fn get_many<F, Fut>(
        &self,
        entry: Entry,
        ids: &[ItemId],
        load: F,
    ) -> Result<HashMap<ItemId, pb::Item>, Status>
    where
        F: FnOnce(Vec<ItemId>) -> Fut,
        Fut: Future<Output = Result<Vec<(ItemId, pb::Item)>, Status>>,
    {
        let Some(inner) = &self.inner else {
            return Ok(load(ids.to_vec()).await?.into_iter().collect());
        };
        let mut out = HashMap::with_capacity(ids.len());
        let (misses, fill) = match inner.lookup(entry, ids).await {
            Some(found) => {
                let mut misses = Vec::new();
                for (id, l) in ids.iter().zip(found) {
                    match l {
                        Lookup::Hit(Some(item)) => {
                            out.insert(*id, item);
                        }
                        Lookup::Hit(None) => {}
                        _ => misses.push(*id),
                    }
                }
                entry.count("hit", (ids.len() - misses.len()) as u64);
                entry.count("miss", misses.len() as u64);
                (misses, true)
            }
            None => (ids.to_vec(), false),
        };
        if misses.is_empty() {
            return Ok(out);
        }
        let loaded: HashMap<ItemId, pb::Item> = load(misses.clone()).await?.into_iter().collect();
        if fill {
            let entries: Vec<(ItemId, Option<&pb::Item>)> =
                misses.iter().map(|id| (*id, loaded.get(id))).collect();
            inner.store(entry, &entries).await;
        }
        out.extend(loaded);
        Ok(out)
    }

    /// Deletes the entries of items whose stored state just changed.
    pub async fn invalidate(&self, ids: &[ItemId]) {
        let Some(inner) = &self.inner else { return };
        if ids.is_empty() {
            return;
        }
        // Not skipped during a bypass: a delete that reaches Redis is always worth it.
        let Some(mut conn) = inner.conn.get().cloned() else {
            return;
        };
        let keys: Vec<String> = ids.iter().map(|id| key(*id)).collect();
        inner.delete(&mut conn, &keys).await;
        // Delete again a moment later: a reader that read MongoDB before our write and
        // filled Redis after the first delete would otherwise serve its old copy until
        // the TTL ends. The second delete shrinks that window to REDELETE_AFTER.
        let inner = Arc::clone(inner);
        tokio::spawn(async move {
            tokio::time::sleep(REDELETE_AFTER).await;
            inner.delete(&mut conn, &keys).await;
        });
    }
}

impl Cache {
    /// One ListItems page through the page cache; `load` reads MongoDB.
    pub async fn list_page<F, Fut>(&self, key: ListKey, load: F) -> LoadedPage
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = LoadedPage>,
    {
        let Some(inner) = self
            .inner
            .as_ref()
            .filter(|i| !i.settings.list_ttl.is_zero())
        else {
            return load().await;
        };
        let generation = match inner.lookup_page(&key).await {
            None => return load().await,
            Some(PageLookup::Hit(page)) => {
                count_list("hit");
                return Ok(page);
            }
            Some(PageLookup::Miss(generation)) => {
                count_list("miss");
                generation
            }
        };
        // Single-flight per (generation, key): a reader that saw a newer generation never
        // waits for a load that may have started before the edit.
        let flight = (generation, key);
        let cell = {
            let mut map = inner
                .inflight_lists
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            map.entry(flight.clone()).or_default().clone()
        };
        let result = cell
            .get_or_init(|| async {
                let loaded = load().await;
                if let Ok(page) = &loaded {
                    inner.store_page(&flight.1, generation, page).await;
                }
                loaded
            })
            .await
            .clone();
        {
            let mut map = inner
                .inflight_lists
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if map.get(&flight).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                map.remove(&flight);
            }
        }
        result
    }

    /// After a catalog edit (create, update, delete) has reached MongoDB: drops the edited
    /// items' entries and makes every cached list page stale, in one round trip.
    pub async fn catalog_changed(&self, ids: &[ItemId]) {
        let Some(inner) = &self.inner else { return };
        // Not skipped during a bypass, like `invalidate`.
        let Some(mut conn) = inner.conn.get().cloned() else {
            return;
        };
        let keys: Vec<String> = ids
            .iter()
            .flat_map(|id| [Entry::Item.key(*id), Entry::Catalog.key(*id)])
            .collect();
        let mut pipe = redis::pipe();
        if !keys.is_empty() {
            pipe.cmd("DEL").arg(&keys).ignore();
        }
        pipe.cmd("INCR").arg(&inner.generation_key).ignore();
        inner
            .ask(
                "catalog_changed",
                Counted::Item,
                pipe.query_async::<()>(&mut conn)
                    .store_op("redis", "catalog_changed"),
            )
            .await;
        if keys.is_empty() {
            return;
        }
        // The second delete of `invalidate`, for the same race on the item entries (list
        // pages need none: see the module comment).
        let inner = Arc::clone(inner);
        tokio::spawn(async move {
            tokio::time::sleep(REDELETE_AFTER).await;
            inner.delete(&mut conn, &keys).await;
        });
    }
}

enum PageLookup {
    Hit(pb::ListItemsResponse),
    /// Not cached at this generation (the one to store the page under).
    Miss(i64),
}

impl Inner {
    /// The catalog generation and the page, in one round trip; None when Redis is
    /// unusable (counted as "error" or "bypass").
    async fn lookup_page(&self, key: &ListKey) -> Option<PageLookup> {
        let Some(mut conn) = self.usable() else {
            count_list("bypass");
            return None;
        };
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(&self.generation_key)
            .cmd("GET")
            .arg(self.list_key(key));
        let (generation, bytes) = self
            .ask(
                "list_get",
                Counted::List,
                pipe.query_async::<(Option<i64>, Option<Vec<u8>>)>(&mut conn)
                    .store_op("redis", "list_get"),
            )
            .await?;
        // No generation yet (a fresh Redis): 0 until the first edit.
        let generation = generation.unwrap_or(0);
        Some(
            match bytes.as_deref().and_then(|b| decode_page(b, generation)) {
                Some(page) => PageLookup::Hit(page),
                None => PageLookup::Miss(generation),
            },
        )
    }

    fn list_key(&self, key: &ListKey) -> String {
        format!("{}{}", self.list_prefix, key.0)
    }

    async fn store_page(&self, key: &ListKey, generation: i64, page: &pb::ListItemsResponse) {
        let Some(mut conn) = self.usable() else {
            return;
        };
        let ttl = u64::try_from(self.settings.list_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.ask(
            "list_set",
            Counted::List,
            redis::cmd("SET")
                .arg(self.list_key(key))
                .arg(encode_page(generation, page))
                .arg("PX")
                .arg(ttl)
                .query_async::<()>(&mut conn)
                .store_op("redis", "list_set"),
        )
        .await;
    }

    /// The connection, unless Redis is known to be down right now.
    fn usable(&self) -> Option<ConnectionManager> {
        let bypassed = self.health().bypassed(Instant::now());
        if bypassed {
            return None;
        }
        self.conn.get().cloned()
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One Redis operation under the cache's timeout; None when it failed or timed out,
    /// which is counted (as the item or the list cache's "error"), logged once per
    /// back-off period, and told to [`Health`].
    async fn ask<T>(
        &self,
        op: &'static str,
        counted: Counted,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let failure = match tokio::time::timeout(self.settings.op_timeout, call).await {
            Ok(Ok(v)) => {
                self.health().answered();
                return Some(v);
            }
            Ok(Err(e)) => Failure::Error(e.to_string()),
            Err(_) => Failure::TimedOut,
        };
        self.failed(op, counted, failure);
        None
    }

    /// A cache operation failed: counted, logged when it starts a bypass.
    fn failed(&self, op: &str, counted: Counted, failure: Failure) {
        match counted {
            Counted::Item => count("error", 1),
            Counted::List => count_list("error"),
        }
        let started = self.health().failed(&failure, Instant::now());
        if started {
            tracing::warn!(
                op,
                error = %failure,
                "redis cache failed; serving from MongoDB for a while"
            );
        }
    }

    async fn delete(&self, conn: &mut ConnectionManager, keys: &[String]) {
        self.ask(
            "invalidate",
            Counted::Item,
            redis::cmd("DEL")
                .arg(keys)
                .query_async::<i64>(conn)
                .store_op("redis", "del"),
        )
        .await;
    }

    /// MGET; None when Redis is unusable (counted as "error" or "bypass").
    async fn lookup(&self, entry: Entry, ids: &[ItemId]) -> Option<Vec<Lookup>> {
        let Some(mut conn) = self.usable() else {
            entry.count("bypass", ids.len() as u64);
            return None;
        };
        let keys: Vec<String> = ids.iter().map(|id| entry.key(*id)).collect();
        let values = self
            .ask(
                "mget",
                Counted::Item,
                redis::cmd("MGET")
                    .arg(&keys)
                    .query_async::<Vec<Option<Vec<u8>>>>(&mut conn)
                    .store_op("redis", "mget"),
            )
            .await?;
        if values.len() != ids.len() {
            let wrong = Failure::Error("wrong number of values".to_owned());
            self.failed("mget", Counted::Item, wrong);
            return None;
        }
        Some(
            values
                .into_iter()
                .map(|v| match v.as_deref().map(decode) {
                    Some(Some(hit)) => Lookup::Hit(hit),
                    // Absent, or bytes we cannot read (an older format): a miss.
                    _ => Lookup::Miss,
                })
                .collect(),
        )
    }

    fn ttl(&self, found: bool) -> u64 {
        let base = if found {
            self.settings.ttl
        } else {
            self.settings.negative_ttl
        };
        let jitter = rand::rng().random_range(0.8..1.2);
        ((base.as_millis() as f64 * jitter) as u64).max(1)
    }

    async fn store(&self, entry: Entry, entries: &[(ItemId, Option<&pb::Item>)]) {
        let Some(mut conn) = self.usable() else {
            return;
        };
        let mut pipe = redis::pipe();
        for (id, item) in entries {
            pipe.cmd("SET")
                .arg(entry.key(*id))
                .arg(encode(*item))
                .arg("PX")
                .arg(self.ttl(item.is_some()))
                .ignore();
        }
        self.ask(
            "set",
            Counted::Item,
            pipe.query_async::<()>(&mut conn).store_op("redis", "set"),
        )
        .await;
    }
}

/// Which counter a failed operation counts in.
#[derive(Clone, Copy)]
enum Counted {
    Item,
    List,
}

/// Why a Redis operation gave no answer.
#[derive(Debug)]
enum Failure {
    /// Redis answered with an error, or the connection failed (refused, reset).
    Error(String),
    /// No answer within the operation timeout.
    TimedOut,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Error(e) => f.write_str(e),
            Self::TimedOut => f.write_str("timed out"),
        }
    }
}

/// Whether Redis is worth asking right now.
///
/// An error (refused, reset: Redis is down or restarting) skips it for `BACKOFF` at once.
/// A timeout alone does not: on a busy machine one slow answer is the machine, not Redis,
/// and sending every read to MongoDB for a second would turn a busy moment into an
/// overloaded store. Only timeouts with no answer between them for `HUNG_AFTER` (Redis
/// hung, or the network to it gone) skip it.
#[derive(Debug, Default)]
struct Health {
    bypass_until: Option<Instant>,
    /// The first timeout since Redis last answered.
    silent_since: Option<Instant>,
}

impl Health {
    fn bypassed(&self, now: Instant) -> bool {
        self.bypass_until.is_some_and(|until| now < until)
    }

    fn answered(&mut self) {
        self.silent_since = None;
    }

    /// Records a failure; true when it starts a bypass (the moment to log it).
    fn failed(&mut self, failure: &Failure, now: Instant) -> bool {
        let bypass = match failure {
            Failure::Error(_) => true,
            Failure::TimedOut => {
                let since = *self.silent_since.get_or_insert(now);
                now.duration_since(since) >= HUNG_AFTER
            }
        };
        if !bypass {
            return false;
        }
        let starts = !self.bypassed(now);
        self.bypass_until = Some(now + BACKOFF);
        self.silent_since = None;
        starts
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;

    #[test]
    fn an_error_bypasses_redis_at_once() {
        let now = Instant::now();
        let mut h = Health::default();
        assert!(h.failed(&Failure::Error("connection refused".into()), now));
        assert!(h.bypassed(now + Duration::from_millis(999)));
        assert!(!h.bypassed(now + BACKOFF));
    }

    #[test]
    fn timeouts_between_answers_never_bypass_redis() {
        let now = Instant::now();
        let mut h = Health::default();
        for ms in (0..5_000).step_by(100) {
            let t = now + Duration::from_millis(ms);
            assert!(!h.failed(&Failure::TimedOut, t));
            assert!(!h.bypassed(t));
            h.answered();
        }
    }

    #[test]
    fn a_second_of_nothing_but_timeouts_bypasses_redis() {
        let now = Instant::now();
        let mut h = Health::default();
        assert!(!h.failed(&Failure::TimedOut, now));
        assert!(!h.failed(&Failure::TimedOut, now + Duration::from_millis(500)));
        assert!(!h.bypassed(now + Duration::from_millis(500)));
        let hung = now + HUNG_AFTER;
        assert!(h.failed(&Failure::TimedOut, hung));
        assert!(h.bypassed(hung));
        // Once the bypass is over, the count of silence starts again.
        let later = hung + BACKOFF;
        assert!(!h.failed(&Failure::TimedOut, later));
        assert!(!h.bypassed(later));
    }
}
