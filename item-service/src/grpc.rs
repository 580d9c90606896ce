//! The `shop.item.v1.ItemService` implementation.

use std::{sync::Arc, time::Duration};

use mongodb::Database;
use platform::{
    FieldError,
    events::EventTasks,
    identity::{Caller, ITEM_SERVICE, require_admin},
    paging::Page,
};
use shop_proto::{common::v1 as common, item::v1 as pb};
use tonic::{Request, Response, Status};

use pb::item_service_server::{self as rpc, ItemServiceServer};

use crate::{
    cache::{Cache, CacheSettings, Entry, ListKey},
    checkout::{Checkout, consumers},
    config::{CacheMode, Config},
    cursor::{self, Sort},
    error::Error,
    input::{self, ItemId, ItemPatch, NewItem, ReservationId},
    outbox::ReservationOutbox,
    reservations::Reservations,
    store::{self, ItemStore, ListQuery},
};

/// The item service: hosted by `Application`, or in-process by the `shop` monolith.
#[derive(Clone, Debug)]
pub struct ItemService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    store: ItemStore,
    reservations: Reservations,
    cache: Cache,
    sweep_interval: Duration,
    /// The asynchronous checkout's relay and consumers, when NATS is configured.
    events: Option<EventTasks<ReservationOutbox>>,
}

impl ItemService {
    /// Connects to MongoDB (creating indexes) and Redis (in the background), and seeds
    /// the catalog when `config.seed` says so.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        use secrecy::ExposeSecret;
        crate::cache::describe_metrics();
        let db =
            store::connect(config.mongodb_url.expose_secret(), &config.mongodb_database).await?;
        let cache = match config.cache {
            CacheMode::Off => Cache::off(),
            CacheMode::On => {
                Cache::connect(CacheSettings {
                    redis_url: config.redis_url.expose_secret().to_owned(),
                    ttl: Duration::from_secs(config.cache_ttl_secs.max(1)),
                    negative_ttl: Duration::from_secs(config.cache_negative_ttl_secs.max(1)),
                    op_timeout: Duration::from_millis(config.cache_timeout_ms.max(1)),
                    list_ttl: Duration::from_millis(config.list_cache_ttl_ms),
                    catalog: config.mongodb_database.clone(),
                })
                .await?
            }
        };
        let store = ItemStore::new(&db);
        let reservations = Reservations::new(&db, cache.clone(), config.reservation_ttl());
        store.ensure_indexes().await?;
        reservations.ensure_indexes().await?;
        // Before serving: every replica's reads and reservations expect the current shape.
        crate::migration::run(&db).await?;
        let events = match config.events.config() {
            Some(events) => {
                let outbox = ReservationOutbox::new(&db);
                outbox.ensure_indexes().await?;
                let (reservations, items) = (reservations.clone(), store.clone());
                let ttl = config.async_reservation_ttl();
                tracing::info!(nats = %events.display_url(), stream = %events.stream, "taking part in the asynchronous checkout");
                let tasks = EventTasks::connect(events, ITEM_SERVICE, outbox).await?;
                let checkout = Arc::new(Checkout::new(reservations, items, ttl, tasks.waker()));
                Some(consumers(tasks, &checkout))
            }
            None => None,
        };
        if config.seed {
            let report = crate::seed::seed_catalog(&db).await?;
            tracing::info!(
                inserted = report.inserted,
                total = report.total,
                "catalog seeded"
            );
        }
        tracing::info!(
            database = %config.mongodb_database,
            cache = ?config.cache,
            reservation_ttl_secs = config.reservation_ttl_secs,
            "item store ready"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                store,
                reservations,
                cache,
                sweep_interval: config.sweep_interval(),
                events,
            }),
        })
    }

    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    /// The event relay and consumers, when NATS is configured.
    pub(crate) fn events(&self) -> Option<&EventTasks<ReservationOutbox>> {
        self.inner.events.as_ref()
    }

    pub fn server(&self) -> ItemServiceServer<ItemService> {
        ItemServiceServer::new(self.clone())
    }

    /// Releases expired reservations every sweep interval until `shutdown`. Run one per
    /// process; several replicas may run theirs at once.
    pub async fn run_sweeper(&self, shutdown: impl std::future::Future<Output = ()>) {
        self.inner
            .reservations
            .run_sweeper(self.inner.sweep_interval, shutdown)
            .await;
    }

    /// One sweep now (tests, admin tooling); returns how many reservations it handled.
    pub async fn sweep_once(&self) -> Result<usize, Status> {
        Ok(self.inner.reservations.sweep().await?)
    }

    /// One ListItems page from MongoDB.
    async fn load_page(&self, q: ListQuery) -> Result<pb::ListItemsResponse, Status> {
        let mut docs = self.inner.store.list(&q).await?;
        let size = q.limit as usize;
        let more = docs.len() > size;
        docs.truncate(size);
        let next_page_token = match (more, docs.last()) {
            (true, Some(last)) => cursor::encode(q.sort, &q.category, &q.query, &last.doc),
            _ => String::new(),
        };
        Ok(pb::ListItemsResponse {
            items: docs.iter().map(store::Item::to_pb).collect(),
            page: Some(common::PageResponse { next_page_token }),
        })
    }

    async fn load_one(&self, id: ItemId) -> Result<Option<pb::Item>, Status> {
        Ok(self.load_items(vec![id]).await?.pop().map(|(_, item)| item))
    }

    /// Items as served, for the item cache's misses: the catalog part through its own
    /// cache entries (only catalog edits drop them), the stock from MongoDB. So a miss
    /// after a stock movement, the usual one, reads only `inventory`.
    async fn load_items(&self, ids: Vec<ItemId>) -> Result<Vec<(ItemId, pb::Item)>, Status> {
        let store = &self.inner.store;
        let catalog = self
            .inner
            .cache
            .get_many(Entry::Catalog, &ids, |missing| async move {
                let docs = match missing[..] {
                    [id] => store.get_catalog(id).await?.into_iter().collect(),
                    _ => store.get_catalog_many(&missing).await?,
                };
                Ok(docs
                    .iter()
                    .map(|d| (ItemId(d.id), d.catalog_pb()))
                    .collect())
            })
            .await?;
        let stock = match catalog.keys().copied().collect::<Vec<_>>()[..] {
            [] => Default::default(),
            [id] => store
                .inventory()
                .get(id)
                .await?
                .map(|s| (s.id, s))
                .into_iter()
                .collect(),
            ref found => {
                let found: Vec<_> = found.iter().map(|id| id.0).collect();
                store.inventory().get_many(&found).await?
            }
        };
        Ok(catalog
            .into_iter()
            .map(|(id, mut item)| {
                store::with_stock(&mut item, stock.get(&id.0));
                (id, item)
            })
            .collect())
    }
}

fn field(e: FieldError) -> Status {
    e.into()
}

#[tonic::async_trait]
impl rpc::ItemService for ItemService {
    async fn create_item(
        &self,
        request: Request<pb::CreateItemRequest>,
    ) -> Result<Response<pb::CreateItemResponse>, Status> {
        require_admin(Caller::of(&request))?;
        let new = NewItem::parse(request.get_ref()).map_err(field)?;
        let doc = self.inner.store.insert(new).await?;
        self.inner.cache.catalog_changed(&[]).await;
        Ok(Response::new(pb::CreateItemResponse {
            item: Some(doc.to_pb()),
        }))
    }

    async fn update_item(
        &self,
        request: Request<pb::UpdateItemRequest>,
    ) -> Result<Response<pb::UpdateItemResponse>, Status> {
        require_admin(Caller::of(&request))?;
        let patch = ItemPatch::parse(request.get_ref()).map_err(field)?;
        let id = patch.id;
        let result = self.inner.store.update(patch).await;
        if result.is_ok() {
            self.inner.cache.catalog_changed(&[id]).await;
        }
        Ok(Response::new(pb::UpdateItemResponse {
            item: Some(result?.to_pb()),
        }))
    }

    async fn delete_item(
        &self,
        request: Request<pb::DeleteItemRequest>,
    ) -> Result<Response<pb::DeleteItemResponse>, Status> {
        require_admin(Caller::of(&request))?;
        let id = ItemId::parse(&request.get_ref().id, "id").map_err(field)?;
        let result = self.inner.store.delete(id).await;
        self.inner.cache.catalog_changed(&[id]).await;
        result?;
        Ok(Response::new(pb::DeleteItemResponse {}))
    }

    async fn get_item(
        &self,
        request: Request<pb::GetItemRequest>,
    ) -> Result<Response<pb::GetItemResponse>, Status> {
        let id = ItemId::parse(&request.get_ref().id, "id").map_err(field)?;
        let item = self
            .inner
            .cache
            .get_item(id, || self.load_one(id))
            .await?
            .ok_or_else(|| Status::from(Error::ItemNotFound(id.hex())))?;
        Ok(Response::new(pb::GetItemResponse { item: Some(item) }))
    }

    async fn batch_get_items(
        &self,
        request: Request<pb::BatchGetItemsRequest>,
    ) -> Result<Response<pb::BatchGetItemsResponse>, Status> {
        let ids = input::batch_ids(&request.get_ref().ids).map_err(field)?;
        let mut found = self
            .inner
            .cache
            .get_many(Entry::Item, &ids, |missing| self.load_items(missing))
            .await?;
        let mut items = Vec::with_capacity(ids.len());
        let mut missing_ids = Vec::new();
        for id in ids {
            match found.remove(&id) {
                Some(item) => items.push(item),
                None => missing_ids.push(id.hex()),
            }
        }
        Ok(Response::new(pb::BatchGetItemsResponse {
            items,
            missing_ids,
        }))
    }

    async fn list_items(
        &self,
        request: Request<pb::ListItemsRequest>,
    ) -> Result<Response<pb::ListItemsResponse>, Status> {
        let r = request.get_ref();
        let category = input::category(&r.category, true).map_err(field)?;
        let query = input::query(&r.query).map_err(field)?;
        let sort = Sort::from_pb(r.sort).map_err(field)?;
        let page = Page::parse(r.page.as_ref()).map_err(field)?;
        let after = page
            .token
            .as_deref()
            .map(|t| cursor::decode(t, sort, &category, &query))
            .transpose()
            .map_err(field)?;
        // Only well-formed requests reach the cache, and only answers are stored.
        let key = ListKey::new(
            &category,
            &query,
            &format!("{sort:?}"),
            page.size,
            page.token.as_deref().unwrap_or_default(),
        );
        let q = ListQuery {
            category,
            query,
            sort,
            after,
            limit: page.size,
        };
        let response = self
            .inner
            .cache
            .list_page(key, || self.load_page(q))
            .await?;
        Ok(Response::new(response))
    }

    async fn reserve_stock(
        &self,
        request: Request<pb::ReserveStockRequest>,
    ) -> Result<Response<pb::ReserveStockResponse>, Status> {
        let r = request.get_ref();
        let id = ReservationId::parse(&r.reservation_id).map_err(field)?;
        let lines = input::lines(&r.lines).map_err(field)?;
        // Run to the end even if the caller gives up (deadline, disconnect): a reservation
        // abandoned half-way stays PENDING and every retry would be ABORTED until the
        // sweeper cleans it up.
        let reservations = self.inner.reservations.clone();
        let doc = tokio::spawn(platform::timing::carry(async move {
            reservations.reserve(&id, &lines).await
        }))
        .await
        .map_err(|e| platform::internal_error("reserve task", &e))??;
        Ok(Response::new(pb::ReserveStockResponse {
            reservation: Some(doc.to_pb()),
        }))
    }

    async fn commit_reservation(
        &self,
        request: Request<pb::CommitReservationRequest>,
    ) -> Result<Response<pb::CommitReservationResponse>, Status> {
        let id = ReservationId::parse(&request.get_ref().reservation_id).map_err(field)?;
        let doc = self.inner.reservations.commit(&id).await?;
        Ok(Response::new(pb::CommitReservationResponse {
            reservation: Some(doc.to_pb()),
        }))
    }

    async fn release_reservation(
        &self,
        request: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::ReleaseReservationResponse>, Status> {
        let id = ReservationId::parse(&request.get_ref().reservation_id).map_err(field)?;
        let doc = self.inner.reservations.release(&id).await?;
        Ok(Response::new(pb::ReleaseReservationResponse {
            reservation: Some(doc.to_pb()),
        }))
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Result<Response<pb::GetReservationResponse>, Status> {
        let id = ReservationId::parse(&request.get_ref().reservation_id).map_err(field)?;
        let doc = self
            .inner
            .reservations
            .get(&id.0)
            .await?
            .ok_or_else(|| Error::ReservationNotFound(id.0.clone()))?;
        Ok(Response::new(pb::GetReservationResponse {
            reservation: Some(doc.to_pb()),
        }))
    }
}
