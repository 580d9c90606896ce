//! Test harness: a real item-service (Application::build on 127.0.0.1:0) against the local
//! stack's SecantusDB and Redis, each test with its own throw-away database.
#![allow(dead_code)]

use item_service::{Application, CacheMode, Config, ItemGrpc};
use shop_proto::{
    common::v1::{ItemLine, Money},
    item::v1::{self as pb, item_service_client::ItemServiceClient},
};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A stack setting, or a clear failure (never a silent skip).
pub fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: start the local stack (scripts/stack up) and load its env \
             (set -a; . /tmp/stackenv; set +a) before running item-service tests"
        ),
    }
}

pub fn db_name() -> String {
    format!("item_test_{}", uuid::Uuid::new_v4().simple())
}

pub fn config() -> Config {
    let mut c = Config::for_stores(&env("ITEM_MONGODB_URL"), &db_name(), &env("ITEM_REDIS_URL"));
    c.grpc_addr = "127.0.0.1:0".into();
    c.metrics_addr = "127.0.0.1:0".into();
    c.cache = CacheMode::On;
    c.seed = false;
    c.faults = String::new();
    // The shared SecantusDB is slow when every test hammers it at once; these tests are
    // about outcomes, not speed, so the server-side cap must not decide them.
    c.request_timeout_ms = 60_000;
    c
}

pub struct TestApp {
    pub client: ItemServiceClient<Channel>,
    pub grpc_addr: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
    pub service: ItemGrpc,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn() -> TestApp {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = config();
    tweak(&mut config);
    let app = Application::build(config.clone())
        .await
        .expect("item-service builds against the local stack");
    let grpc_addr = app.grpc_addr();
    let metrics_addr = app.metrics_addr();
    let service = app.service();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    let client = connect(grpc_addr).await;
    TestApp {
        client,
        grpc_addr,
        metrics_addr,
        service,
        config,
        stop: Some(tx),
        task: Some(task),
    }
}

pub async fn connect(addr: std::net::SocketAddr) -> ItemServiceClient<Channel> {
    for _ in 0..50 {
        if let Ok(c) = ItemServiceClient::connect(format!("http://{addr}")).await {
            return c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("cannot connect to item-service at {addr}");
}

impl TestApp {
    /// Stops the server and drops the test database.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let _ = self.service.database().drop().await;
        self.service.database().client().clone().shutdown().await;
    }

    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
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

/// The value of a Prometheus counter line starting with `prefix` (0 when absent).
pub fn counter(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
