//! An item-service under test with a client, a handle on its service (database, sweeper)
//! and the calls most tests make. Its config is test_support::item's.

use item_service::{Application, Config, ItemService};
use shop_proto::{
    common::v1::{ItemLine, Money},
    item::v1::{self as pb, item_service_client::ItemServiceClient},
};
use test_support::Running;
pub use test_support::{counter, env};

pub struct TestApp {
    pub client: ItemServiceClient<platform::transport::GrpcTransport>,
    pub grpc_addr: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
    pub service: ItemService,
    pub config: Config,
    server: Running,
}

pub async fn spawn() -> TestApp {
    spawn_with(|_| {}).await
}

// Builds the Application here rather than through test_support::item::spawn_with: these
// tests also drive the service directly (its database, one sweep).
pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_support::item::config();
    tweak(&mut config);
    let app = Application::build(config.clone())
        .await
        .expect("item-service builds against the local stack");
    let grpc_addr = app.grpc_addr();
    let metrics_addr = app.metrics_addr();
    let service = app.service();
    let server = Running::spawn(grpc_addr, |stop| app.run_until_stopped(stop));
    let client = ItemServiceClient::new(test_support::identity::operator(
        grpc_addr,
        platform::identity::ITEM_SERVICE,
    ));
    TestApp {
        client,
        grpc_addr,
        metrics_addr,
        service,
        config,
        server,
    }
}

impl TestApp {
    /// Stops the server and drops the test database.
    pub async fn stop(mut self) {
        self.server.stop().await;
        let _ = self.service.database().drop().await;
        self.service.database().client().clone().shutdown().await;
    }

    /// The item's document in `inventory` as stored (no cache in between).
    pub async fn stored_inventory(&self, item_id: &str) -> mongodb::bson::Document {
        use mongodb::bson::{Document, doc, oid::ObjectId};
        let oid = ObjectId::parse_str(item_id).expect("item id");
        self.service
            .database()
            .collection::<Document>("inventory")
            .find_one(doc! { "_id": oid })
            .await
            .expect("read the item's stock")
            .expect("the item's stock exists")
    }

    pub async fn metrics(&self) -> String {
        test_support::metrics(self.metrics_addr).await
    }

    pub async fn create(
        &self,
        sku: &str,
        name: &str,
        category: &str,
        cents: i64,
        stock: i64,
    ) -> pb::Item {
        self.client
            .clone()
            .create_item(create_req(sku, name, category, cents, stock))
            .await
            .expect("create item")
            .into_inner()
            .item
            .expect("item")
    }

    pub async fn get(&self, id: &str) -> Result<pb::Item, tonic::Status> {
        self.client
            .clone()
            .get_item(pb::GetItemRequest { id: id.into() })
            .await
            .map(|r| r.into_inner().item.expect("item"))
    }

    pub async fn stock(&self, id: &str) -> i64 {
        self.get(id).await.expect("get item").stock
    }

    pub async fn reserve(
        &self,
        rid: &str,
        lines: &[(&str, i32)],
    ) -> Result<pb::Reservation, tonic::Status> {
        self.client
            .clone()
            .reserve_stock(pb::ReserveStockRequest {
                reservation_id: rid.into(),
                lines: lines
                    .iter()
                    .map(|(id, q)| ItemLine {
                        item_id: (*id).into(),
                        quantity: *q,
                    })
                    .collect(),
            })
            .await
            .map(|r| r.into_inner().reservation.expect("reservation"))
    }

    pub async fn commit(&self, rid: &str) -> Result<pb::Reservation, tonic::Status> {
        self.client
            .clone()
            .commit_reservation(pb::CommitReservationRequest {
                reservation_id: rid.into(),
            })
            .await
            .map(|r| r.into_inner().reservation.expect("reservation"))
    }

    pub async fn release(&self, rid: &str) -> Result<pb::Reservation, tonic::Status> {
        self.client
            .clone()
            .release_reservation(pb::ReleaseReservationRequest {
                reservation_id: rid.into(),
            })
            .await
            .map(|r| r.into_inner().reservation.expect("reservation"))
    }
}

pub fn usd(cents: i64) -> Option<Money> {
    Some(Money {
        amount_minor: cents,
        currency: "USD".into(),
    })
}

pub fn create_req(
    sku: &str,
    name: &str,
    category: &str,
    cents: i64,
    stock: i64,
) -> pb::CreateItemRequest {
    pb::CreateItemRequest {
        sku: sku.into(),
        name: name.into(),
        description: format!("{name} for tests"),
        category: category.into(),
        price: usd(cents),
        stock,
        image_url: "https://img.example/x.png".into(),
    }
}

/// Asserts a status code and that the status names `field` (metadata x-shop-field).
#[track_caller]
pub fn assert_field(
    res: Result<impl std::fmt::Debug, tonic::Status>,
    code: tonic::Code,
    field: &str,
) {
    let status = res.expect_err("expected an error");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(
        platform::error::field_of(&status).as_deref(),
        Some(field),
        "field of {status:?}"
    );
}

/// How many round trips to `store` (`mongodb`, `redis`) the server reported for one call
/// in its `x-shop-timing` header (0 when it made none).
#[track_caller]
pub fn round_trips(metadata: &tonic::metadata::MetadataMap, store: &str) -> u32 {
    let header = metadata
        .get(platform::timing::HEADER)
        .and_then(|v| v.to_str().ok())
        .expect("every response carries x-shop-timing");
    platform::timing::Ledger::decode(header)
        .get(&format!("store.{store}"))
        .map_or(0, |e| e.count)
}

/// Creates the index `name` on `keys` (to build a collection as an older version left it).
pub async fn create_named_index(
    collection: &mongodb::Collection<mongodb::bson::Document>,
    keys: mongodb::bson::Document,
    name: &str,
) {
    let options = mongodb::options::IndexOptions::builder()
        .name(name.to_owned())
        .build();
    collection
        .create_index(
            mongodb::IndexModel::builder()
                .keys(keys)
                .options(options)
                .build(),
        )
        .await
        .expect("create the index");
}
