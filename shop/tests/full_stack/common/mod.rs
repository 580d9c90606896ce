//! Test harness: a real stack per test on 127.0.0.1:0 — card gateway, item-, payment- and
//! user-service (each with its own throw-away database) and the gateway — or the monolith,
//! reached over HTTP like a browser would.
//!
//! The generic plumbing (the stack's settings, throw-away databases, servers running in
//! this runtime, each service's test config and spawn, fault rules) is test-support's; here
//! is only what full-stack tests add: the gateway wired to the services, the monolith, and
//! an HTTP client for the gateway's API.

#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use card_gateway::Gateway;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shop_proto::item::v1::item_service_client::ItemServiceClient;
use test_support::{db, item, payment, user};

pub use test_support::{
    Running, eventually,
    faults::{delay, fail_always},
    metrics, unique_suffix,
    user::{ADMIN_EMAIL, SECRET},
};

pub const PASSWORD: &str = "correct horse battery";
pub const GOOD_CARD: &str = "4242 4242 4242 4242";
pub const DECLINED_CARD: &str = "4000 0000 0000 0002";
pub const NO_FUNDS_CARD: &str = "4000 0000 0000 9995";

/// Which hooks a test applies to the configs of a distributed stack.
pub struct Options {
    pub gateway: Box<dyn FnOnce(&mut gateway::Config) + Send>,
    pub item: Box<dyn FnOnce(&mut item_service::Config) + Send>,
    pub user: Box<dyn FnOnce(&mut user_service::Config) + Send>,
    /// Puts user-, item- and payment-service on the stack's NATS, in a namespace of this
    /// stack's own (the asynchronous checkout); off, they run without an event stream.
    pub events: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            gateway: Box::new(|_| {}),
            item: Box::new(|_| {}),
            user: Box::new(|_| {}),
            events: false,
        }
    }
}

/// The payment settings both shapes of the shop share on top of test-support's.
fn tune_payment(c: &mut payment_service::Config) {
    // The chained hop's per-call cap on item-service (2 s by default) is shorter than what
    // a loaded test machine needs; the gateway's budget still bounds everything.
    c.item_timeout_ms = 10_000;
    // As deployed: the reconciler runs (test-support turns it off for the service's own
    // tests, which want no background writes).
    c.reconcile_interval_ms = 10_000;
}

/// The gateway's test config: [`SECRET`], the given downstream URLs, generous budgets.
pub fn gateway_config() -> gateway::Config {
    let mut c = gateway::Config::with_secret(SECRET);
    c.http_addr = "127.0.0.1:0".into();
    c.metrics_addr = "127.0.0.1:0".into();
    c.faults = String::new();
    // Generous budgets: tests share two cores with many other tests; the ones about
    // deadlines set their own.
    c.checkout_budget_ms = 10_000;
    c.read_budget_ms = 5_000;
    c.identity = test_support::identity::settings(platform::identity::GATEWAY);
    // A key no processor knows, for gateways with none behind them; the stacks set the
    // real one.
    c.card_publishable_key = Some(platform::card_keys::generate(
        platform::card_keys::Kind::Publishable,
    ));
    // Every test client is 127.0.0.1, and some tests register a score of customers; the
    // registration throttle's own tests set their limit.
    c.register_address_limit = 1_000;
    c
}

/// A monolith under test: the shop in this process, reached over HTTP (and its services
/// over its one gRPC listener).
pub struct Shop {
    pub api: Api,
    /// The gateway's operator listener (`/metrics` of every part, `/debug/downstreams`).
    pub operator: Api,
    pub operator_addr: SocketAddr,
    pub grpc: SocketAddr,
    pub card: Gateway,
    /// user-service's database (the operator grants admin on it).
    pub user_database_url: String,
    pub server: Running,
}

pub async fn monolith() -> Shop {
    monolith_with(|_| {}).await
}

pub async fn monolith_with(tweak_item: impl FnOnce(&mut item_service::Config)) -> Shop {
    monolith_on(tweak_item, Default::default()).await
}

/// The monolith with its three services on the stack's NATS (a namespace of its own).
pub async fn monolith_with_events() -> Shop {
    let events = test_support::events::settings(&test_support::events::namespace());
    monolith_on(|_| {}, events).await
}

async fn monolith_on(
    tweak_item: impl FnOnce(&mut item_service::Config),
    events: platform::events::EventsSettings,
) -> Shop {
    platform::telemetry::init(false);
    let mut item = item::config();
    item.events = events.clone();
    tweak_item(&mut item);
    let payment_db = db::fresh_mysql("payment").await;
    // The card gateway URL and keys are the monolith's own (it hosts the mock, see below).
    let placeholder = platform::card_keys::generate(platform::card_keys::Kind::Secret);
    let mut payment = payment::config(&payment_db.url, "http://127.0.0.1:9", &placeholder);
    payment.events = events.clone();
    tune_payment(&mut payment);
    let user_database_url = db::fresh_postgres("user").await.url;
    let mut user = user::config(&user_database_url);
    user.events = events;
    let shop = shop::Monolith::build(shop::MonolithConfig {
        user,
        item,
        payment,
        gateway: gateway_config(),
        grpc_addr: Some("127.0.0.1:0".into()),
        faults: String::new(),
        card_gateway_addr: Some("127.0.0.1:0".into()),
    })
    .await
    .expect("build the monolith");
    let addr = shop.http_addr();
    let operator_addr = shop.metrics_addr();
    let grpc = shop.grpc_addr().expect("the monolith's gRPC listener");
    let (_, card) = shop.card_gateway().expect("hosted card gateway");
    let server = Running::spawn(addr, |stop| shop.run_until_stopped(stop));
    Shop {
        api: Api::new(addr),
        operator: Api::new(operator_addr),
        operator_addr,
        grpc,
        card,
        user_database_url,
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

impl Stack {
    /// A fresh admin token (see [`Api::admin_on`]).
    pub async fn admin(&self) -> String {
        self.api.admin_on(&self.user_database_url).await
    }
}

impl Shop {
    /// A fresh admin token (see [`Api::admin_on`]).
    pub async fn admin(&self) -> String {
        self.api.admin_on(&self.user_database_url).await
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

/// The distributed shop: every service on its own listener, the gateway in front.
pub struct Stack {
    pub api: Api,
    /// The gateway's operator listener (`/metrics`, `/debug/downstreams`).
    pub operator: Api,
    pub operator_addr: SocketAddr,
    pub card: Gateway,
    pub card_server: Running,
    pub item: Running,
    pub payment: Running,
    pub user: Running,
    /// user-service's database (a second replica may run on it).
    pub user_database_url: String,
    pub gateway: Running,
    /// What a payment-service restarted in place needs: its database, the card gateway,
    /// item-service and the event stream the stack's services share.
    pub payment_database_url: String,
    pub card_url: String,
    /// The card gateway's secret key (payment-service's).
    pub card_secret_key: secrecy::SecretString,
    pub item_addr: SocketAddr,
    pub user_addr: SocketAddr,
    pub events: platform::events::EventsSettings,
}

pub async fn stack() -> Stack {
    stack_with(Options::default()).await
}

pub async fn stack_with(opts: Options) -> Stack {
    platform::telemetry::init(false);
    let events = if opts.events {
        test_support::events::settings(&test_support::events::namespace())
    } else {
        Default::default()
    };
    let tweak_item = opts.item;
    let tweak_user = opts.user;
    let item_events = events.clone();
    let item = item::spawn_with(move |c| {
        c.events = item_events;
        tweak_item(c);
    })
    .await;
    // payment-service with its own card gateway, calling this item-service (chained).
    let payment_events = events.clone();
    let stack_events = events.clone();
    // payment-service and user-service call each other: user-service's address first.
    let user_addr = test_support::free_addr();
    let payment = payment::spawn_with(|c| {
        c.item_service_url = item.grpc_addr.into();
        c.user_service_url = user_addr.into();
        c.events = payment_events;
        tune_payment(c);
    })
    .await;
    let user = user::spawn_with(|c| {
        c.grpc_addr = user_addr.to_string();
        c.payment_service_url = payment.grpc_addr.into();
        c.item_service_url = item.grpc_addr.into();
        c.events = events;
        tweak_user(c);
    })
    .await;

    let mut gcfg = gateway_config();
    gcfg.user_service_url = user.grpc_addr.into();
    gcfg.item_service_url = item.grpc_addr.into();
    gcfg.payment_service_url = payment.grpc_addr.into();
    gcfg.card_gateway_url = payment.card_gateway.url.clone();
    gcfg.card_publishable_key = Some(payment.card_gateway.publishable_key.clone());
    (opts.gateway)(&mut gcfg);
    let gw = gateway::Application::build(gcfg)
        .await
        .expect("build gateway");
    let gw_addr = gw.http_addr();
    let operator_addr = gw.metrics_addr();
    let gateway = Running::spawn(gw_addr, |stop| gw.run_until_stopped(stop));

    Stack {
        api: Api::new(gw_addr),
        operator: Api::new(operator_addr),
        operator_addr,
        payment_database_url: payment.database.url.clone(),
        card_url: payment.card_gateway.url.clone(),
        card_secret_key: payment.card_gateway.secret_key.clone(),
        item_addr: item.grpc_addr,
        user_addr: user.grpc_addr,
        events: stack_events,
        card: payment.card_gateway.handle,
        card_server: payment.card_gateway.server,
        item: item.server,
        payment: payment.server,
        user: user.server,
        user_database_url: user.database_url,
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
        self.user(&format!("buyer-{}@shop.test", unique_suffix()))
            .await
    }

    /// Registers [`ADMIN_EMAIL`], has the operator grant it admin on `user_database_url`
    /// (as `user-service admin grant` does), and logs in again: an admin token.
    pub async fn admin_on(&self, user_database_url: &str) -> String {
        let r = self
            .post(
                "/api/auth/register",
                None,
                json!({"email": ADMIN_EMAIL, "password": PASSWORD, "display_name": "Admin"}),
            )
            .await;
        // Registered already by an earlier call in this test: fine.
        assert!(
            r.status == StatusCode::CREATED || r.status == StatusCode::CONFLICT,
            "register: {:?}",
            r.body
        );
        user::grant_admin(user_database_url, ADMIN_EMAIL).await;
        self.login(ADMIN_EMAIL).await
    }

    /// Logs in an existing account; returns the token.
    pub async fn login(&self, email: &str) -> String {
        let r = self
            .post(
                "/api/auth/login",
                None,
                json!({"email": email, "password": PASSWORD}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "login: {:?}", r.body);
        r.body["access_token"].as_str().expect("token").to_owned()
    }

    /// Creates an item through the admin API; returns its JSON.
    pub async fn create_item(&self, admin: &str, name: &str, price: i64, stock: i64) -> Value {
        let r = self
            .post(
                "/api/items",
                Some(admin),
                json!({
                    "sku": format!("SKU-{}", unique_suffix()).to_uppercase(),
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

    /// One unit of `item_id`, orchestrated, with a good card, under `key`: the placed
    /// checkout's answer (201 asserted).
    pub async fn buy_one(&self, token: &str, item_id: &str, key: &str) -> Resp {
        let r = self
            .checkout(
                token,
                "orchestrated",
                key,
                json!([{"item_id": item_id, "quantity": 1}]),
                GOOD_CARD,
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "checkout: {:?}", r.body);
        r
    }
}

impl Stack {
    /// Sets fault rules on one of the stack's gRPC services through its FaultAdmin.
    pub async fn set_service_faults(
        &self,
        addr: SocketAddr,
        rules: Vec<shop_proto::admin::v1::FaultRule>,
    ) {
        test_support::faults::set(addr, rules).await;
    }

    /// A new payment-service process on the stack's payment database, card gateway and event
    /// stream (after the first was stopped): the one the gateway does not call, the one the
    /// asynchronous checkout's events reach.
    pub async fn restart_payment(&self) -> Running {
        let mut c = payment::config(
            &self.payment_database_url,
            &self.card_url,
            &self.card_secret_key,
        );
        c.item_service_url = self.item_addr.into();
        c.user_service_url = self.user_addr.into();
        c.events = self.events.clone();
        tune_payment(&mut c);
        let app = payment_service::Application::build(c)
            .await
            .expect("payment-service builds again");
        let addr = app.grpc_addr();
        Running::spawn(addr, |stop| app.run_until_stopped(stop))
    }

    /// The text of the gateway's /metrics (on its operator listener).
    pub async fn gateway_metrics(&self) -> String {
        metrics(self.operator_addr).await
    }
}

/// A direct client of the stack's item-service (to look at reservations).
pub async fn item_client(s: &Stack) -> ItemServiceClient<platform::transport::GrpcTransport> {
    ItemServiceClient::new(test_support::identity::operator(
        s.item.addr,
        platform::identity::ITEM_SERVICE,
    ))
}

pub fn key() -> String {
    format!("k-{}", uuid::Uuid::new_v4())
}
