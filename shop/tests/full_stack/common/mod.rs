//! Test harness: a real stack per test on 127.0.0.1:0 — card gateway, item-, payment- and
//! user-service (each with its own throw-away database) and the gateway — reached over
//! HTTP like a browser would.

#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use shop_proto::admin::v1::{self as admin_pb, fault_admin_client::FaultAdminClient};
use sqlx::Connection;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub const SECRET: &str = "gateway-test-secret-0123456789-abcdefgh";
pub const ADMIN_EMAIL: &str = "admin@shop.test";
pub const PASSWORD: &str = "correct horse battery";
pub const GOOD_CARD: &str = "4242 4242 4242 4242";
pub const DECLINED_CARD: &str = "4000 0000 0000 0002";
pub const NO_FUNDS_CARD: &str = "4000 0000 0000 9995";

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the local stack (scripts/stack up) and load its env (/tmp/stackenv)")
    })
}

pub fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

pub async fn fresh_postgres() -> String {
    let base = env("USER_DATABASE_URL");
    let name = format!("shop_user_gw{}", suffix());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("connect to the stack's PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let (prefix, _) = base.rsplit_once('/').expect("database URL has a path");
    format!("{prefix}/{name}")
}

pub async fn fresh_mysql() -> String {
    let base = env("PAYMENT_DATABASE_URL");
    let name = format!("shop_payment_gw{}", suffix());
    let mut conn = sqlx::MySqlConnection::connect(&base)
        .await
        .expect("connect to the stack's MariaDB");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let (prefix, _) = base.rsplit_once('/').expect("database URL has a path");
    format!("{prefix}/{name}")
}

/// Stops a server when dropped or when `stop` is called.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    fn spawn<F>(addr: SocketAddr, run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Self
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let fut = run(rx);
        let done = tokio::spawn(async move {
            if let Err(e) = fut.await {
                eprintln!("server stopped with error: {e:#}");
            }
        });
        Self {
            addr,
            stop: Some(tx),
            done: Some(done),
        }
    }

    /// Stops the server and waits until it no longer serves.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

async fn until(rx: oneshot::Receiver<()>) {
    let _ = rx.await;
}

pub struct Options {
    pub gateway: Box<dyn FnOnce(&mut gateway::Config) + Send>,
    pub item: Box<dyn FnOnce(&mut item_service::Config) + Send>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            gateway: Box::new(|_| {}),
            item: Box::new(|_| {}),
        }
    }
}

/// A monolith under test: the shop in this process, reached over HTTP (and its services
/// over its one gRPC listener).
pub struct Shop {
    pub api: Api,
    pub grpc: SocketAddr,
    pub card: payment_service::card_gateway::Gateway,
    pub server: Running,
}

pub async fn monolith() -> Shop {
    monolith_with(|_| {}).await
}

pub async fn monolith_with(tweak_item: impl FnOnce(&mut item_service::Config)) -> Shop {
    platform::telemetry::init(false);
    let mut item = item_service::Config::for_stores(
        &env("ITEM_MONGODB_URL"),
        &format!("shop_item_gw{}", suffix()),
        &env("ITEM_REDIS_URL"),
    );
    item.grpc_addr = "127.0.0.1:0".into();
    tweak_item(&mut item);
    let mut payment = payment_service::Config::with_database(fresh_mysql().await);
    payment.grpc_addr = "127.0.0.1:0".into();
    payment.item_timeout_ms = 10_000;
    let user = user_service::Config {
        grpc_addr: "127.0.0.1:0".into(),
        metrics_addr: "127.0.0.1:0".into(),
        database_url: SecretString::from(fresh_postgres().await),
        database_max_connections: 10,
        jwt_secret: Some(SecretString::from(SECRET)),
        jwt_secret_file: None,
        token_ttl_secs: 3600,
        admin_emails: vec![ADMIN_EMAIL.into()],
        payment_service_url: "http://127.0.0.1:1".into(),
        request_timeout_ms: 10_000,
        faults: String::new(),
        log_json: false,
    };
    let mut gw = gateway::Config::with_secret(SECRET);
    gw.http_addr = "127.0.0.1:0".into();
    gw.faults = String::new();
    gw.checkout_budget_ms = 10_000;
    gw.read_budget_ms = 5_000;
    let shop = shop::Monolith::build(shop::MonolithConfig {
        user,
        item,
        payment,
        gateway: gw,
        grpc_addr: Some("127.0.0.1:0".into()),
        faults: String::new(),
        card_gateway_addr: Some("127.0.0.1:0".into()),
    })
    .await
    .expect("build the monolith");
    let addr = shop.http_addr();
    let grpc = shop.grpc_addr().expect("the monolith's gRPC listener");
    let (_, card) = shop.card_gateway().expect("hosted card gateway");
    let server = Running::spawn(addr, |rx| shop.run_until_stopped(until(rx)));
    Shop {
        api: Api::new(addr),
        grpc,
        card,
        server,
    }
}

/// HTTP access to a gateway.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }
}

impl std::ops::Deref for Stack {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl std::ops::Deref for Shop {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

pub struct Stack {
    pub api: Api,
    pub card: payment_service::card_gateway::Gateway,
    pub card_server: Running,
    pub item: Running,
    pub payment: Running,
    pub user: Running,
    pub gateway: Running,
}

pub async fn stack() -> Stack {
    stack_with(Options::default()).await
}

pub async fn stack_with(opts: Options) -> Stack {
    platform::telemetry::init(false);
    // Card gateway (mock).
    let card = payment_service::card_gateway::CardGateway::build(
        payment_service::card_gateway::Config::on("127.0.0.1:0"),
    )
    .await
    .expect("build card gateway");
    let card_addr = card.addr();
    let card_handle = card.handle();
    let card_server = Running::spawn(card_addr, |rx| card.run_until_stopped(until(rx)));

    // item-service.
    let mut icfg = item_service::Config::for_stores(
        &env("ITEM_MONGODB_URL"),
        &format!("shop_item_gw{}", suffix()),
        &env("ITEM_REDIS_URL"),
    );
    icfg.grpc_addr = "127.0.0.1:0".into();
    icfg.metrics_addr = "127.0.0.1:0".into();
    (opts.item)(&mut icfg);
    let item = item_service::Application::build(icfg)
        .await
        .expect("build item-service");
    let item_addr = item.grpc_addr();
    let item = Running::spawn(item_addr, |rx| item.run_until_stopped(until(rx)));

    // payment-service.
    let mut pcfg = payment_service::Config::with_database(fresh_mysql().await);
    pcfg.grpc_addr = "127.0.0.1:0".into();
    pcfg.metrics_addr = "127.0.0.1:0".into();
    pcfg.card_gateway_url = format!("http://{card_addr}");
    pcfg.item_service_url = format!("http://{item_addr}");
    // The chained hop's per-call cap on item-service (1 s by default) is shorter than what a
    // loaded test machine needs; the gateway's budget still bounds everything.
    pcfg.item_timeout_ms = 10_000;
    let payment = payment_service::Application::build(pcfg)
        .await
        .expect("build payment-service");
    let payment_addr = payment.grpc_addr();
    let payment = Running::spawn(payment_addr, |rx| payment.run_until_stopped(until(rx)));

    // user-service.
    let ucfg = user_service::Config {
        grpc_addr: "127.0.0.1:0".into(),
        metrics_addr: "127.0.0.1:0".into(),
        database_url: SecretString::from(fresh_postgres().await),
        database_max_connections: 10,
        jwt_secret: Some(SecretString::from(SECRET)),
        jwt_secret_file: None,
        token_ttl_secs: 3600,
        admin_emails: vec![ADMIN_EMAIL.into()],
        payment_service_url: format!("http://{payment_addr}"),
        request_timeout_ms: 10_000,
        faults: String::new(),
        log_json: false,
    };
    let user = user_service::Application::build(ucfg)
        .await
        .expect("build user-service");
    let user_addr = user.grpc_addr();
    let user = Running::spawn(user_addr, |rx| user.run_until_stopped(until(rx)));

    // The gateway.
    let mut gcfg = gateway::Config::with_secret(SECRET);
    gcfg.http_addr = "127.0.0.1:0".into();
    gcfg.user_service_url = format!("http://{user_addr}");
    gcfg.item_service_url = format!("http://{item_addr}");
    gcfg.payment_service_url = format!("http://{payment_addr}");
    gcfg.faults = String::new();
    // Generous budgets: tests share two cores with many other tests; the ones about
    // deadlines set their own.
    gcfg.checkout_budget_ms = 10_000;
    gcfg.read_budget_ms = 5_000;
    (opts.gateway)(&mut gcfg);
    let gw = gateway::Application::build(gcfg)
        .await
        .expect("build gateway");
    let gw_addr = gw.http_addr();
    let gateway = Running::spawn(gw_addr, |rx| gw.run_until_stopped(until(rx)));

    Stack {
        api: Api::new(gw_addr),
        card: card_handle,
        card_server,
        item,
        payment,
        user,
        gateway,
    }
}

/// A response: status and JSON body (Null when empty or not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    pub fn field(&self) -> &str {
        self.body["error"]["field"].as_str().unwrap_or("")
    }
}

impl Api {
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request to gateway");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            body,
            headers,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.send(Method::GET, path, token, None, &[]).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.send(Method::POST, path, token, Some(body), &[]).await
    }

    /// Registers and logs in; returns (token, user id).
    pub async fn user(&self, email: &str) -> (String, String) {
        let r = self
            .post(
                "/api/auth/register",
                None,
                json!({"email": email, "password": PASSWORD, "display_name": "Test User"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "register: {:?}", r.body);
        let r = self
            .post(
                "/api/auth/login",
                None,
                json!({"email": email, "password": PASSWORD}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "login: {:?}", r.body);
        (
            r.body["access_token"].as_str().expect("token").to_owned(),
            r.body["user"]["id"].as_str().expect("id").to_owned(),
        )
    }

    pub async fn customer(&self) -> (String, String) {
        self.user(&format!("buyer-{}@shop.test", suffix())).await
    }

    pub async fn admin(&self) -> String {
        self.user(ADMIN_EMAIL).await.0
    }

    /// Creates an item through the admin API; returns its JSON.
    pub async fn create_item(&self, admin: &str, name: &str, price: i64, stock: i64) -> Value {
        let r = self
            .post(
                "/api/items",
                Some(admin),
                json!({
                    "sku": format!("SKU-{}", suffix()).to_uppercase(),
                    "name": name,
                    "description": "test item",
                    "category": "testing",
                    "price": {"amount_minor": price, "currency": "USD"},
                    "stock": stock,
                }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "create item: {:?}", r.body);
        r.body
    }

    pub async fn stock_of(&self, id: &str) -> i64 {
        let r = self.get(&format!("/api/items/{id}"), None).await;
        assert_eq!(r.status, StatusCode::OK, "get item: {:?}", r.body);
        r.body["stock"].as_i64().expect("stock")
    }

    pub async fn checkout(
        &self,
        token: &str,
        strategy: &str,
        key: &str,
        lines: Value,
        card: &str,
    ) -> Resp {
        self.send(
            Method::POST,
            &format!("/api/checkout?strategy={strategy}"),
            Some(token),
            Some(json!({
                "lines": lines,
                "card": {"number": card, "exp_month": 12, "exp_year": 2099, "cvc": "123"},
            })),
            &[("Idempotency-Key", key)],
        )
        .await
    }
}

impl Stack {
    /// Sets fault rules on a gRPC service through its FaultAdmin.
    pub async fn set_service_faults(&self, addr: SocketAddr, rules: Vec<admin_pb::FaultRule>) {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect for FaultAdmin");
        FaultAdminClient::new(ch)
            .set_faults(admin_pb::SetFaultsRequest { rules })
            .await
            .expect("set faults");
    }
}

pub fn fail_always(method: &str) -> admin_pb::FaultRule {
    admin_pb::FaultRule {
        method: method.into(),
        latency: None,
        error_rate: 1.0,
    }
}

pub fn delay(method: &str, ms: u32) -> admin_pb::FaultRule {
    admin_pb::FaultRule {
        method: method.into(),
        latency: Some(admin_pb::LatencySpec {
            kind: Some(admin_pb::latency_spec::Kind::FixedMs(ms)),
        }),
        error_rate: 0.0,
    }
}

/// A direct client of the stack's item-service (to look at reservations).
#[allow(dead_code)]
pub async fn item_client(
    s: &Stack,
) -> shop_proto::item::v1::item_service_client::ItemServiceClient<Channel> {
    shop_proto::item::v1::item_service_client::ItemServiceClient::connect(format!(
        "http://{}",
        s.item.addr
    ))
    .await
    .expect("connect item-service")
}

pub fn key() -> String {
    format!("k-{}", uuid::Uuid::new_v4())
}
