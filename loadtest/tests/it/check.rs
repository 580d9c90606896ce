//! `loadtest check` against a real shop: item-, payment- and user-service and the gateway
//! on 127.0.0.1:0, each on its own throw-away database of the local stack. Real checkouts
//! make a consistent state the checker passes; then one thing is broken behind the
//! services' backs and exactly the right violation must show. The checker must not be able
//! to write.

use std::{process::Command, time::Duration};

use futures::TryStreamExt;
use loadtest::resilience::check::{self, Options, Report, Rule, Stores, Urls};
use mongodb::bson::{DateTime, Document, doc, oid::ObjectId};
use serde_json::{Value, json};
use shop_proto::{
    common::v1::ItemLine,
    item::v1::{ReserveStockRequest, item_service_client::ItemServiceClient},
};
use sqlx::{Connection, MySqlConnection, PgConnection, Row};
use test_support::{Running, env, item, payment, unique_suffix, user};

const PASSWORD: &str = "correct horse battery";
const GOOD_CARD: &str = "4242 4242 4242 4242";
const DECLINED_CARD: &str = "4000 0000 0000 0002";

/// The shop under test and where its stores are.
struct Shop {
    base: String,
    http: reqwest::Client,
    urls: Urls,
    item_grpc: std::net::SocketAddr,
    item_id: String,
    /// Order ids of the checkouts made.
    orders: Vec<String>,
    _servers: Vec<Running>,
}

async fn post(
    shop: &Shop,
    path: &str,
    token: Option<&str>,
    body: Value,
    key: Option<&str>,
) -> (u16, Value) {
    let mut req = shop.http.post(format!("{}{path}", shop.base)).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.expect("request to the gateway");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn login(shop: &Shop, email: &str) -> String {
    let (s, b) = post(
        shop,
        "/api/auth/register",
        None,
        json!({"email": email, "password": PASSWORD, "display_name": "Checker"}),
        None,
    )
    .await;
    assert_eq!(s, 201, "register: {b}");
    sign_in(shop, email).await
}

/// Logs in an existing account.
async fn sign_in(shop: &Shop, email: &str) -> String {
    let (s, b) = post(
        shop,
        "/api/auth/login",
        None,
        json!({"email": email, "password": PASSWORD}),
        None,
    )
    .await;
    assert_eq!(s, 200, "login: {b}");
    b["access_token"].as_str().expect("token").to_owned()
}

async fn checkout(
    shop: &Shop,
    token: &str,
    strategy: &str,
    quantity: i64,
    card: &str,
) -> (u16, Value) {
    post(
        shop,
        &format!("/api/checkout?strategy={strategy}"),
        Some(token),
        json!({
            "lines": [{"item_id": shop.item_id, "quantity": quantity}],
            "card": {"number": card, "exp_month": 12, "exp_year": 2099, "cvc": "123"},
        }),
        Some(&format!("k-{}", uuid::Uuid::new_v4())),
    )
    .await
}

/// A shop with one item (stock 20) and a checkout through every strategy, a declined one
/// and an out-of-stock one. `tweak_item` adjusts item-service's config.
async fn shop_with_checkouts(tweak_item: impl FnOnce(&mut item_service::Config)) -> Shop {
    platform::telemetry::init(false);
    let item = item::spawn_with(tweak_item).await;
    // payment-service and user-service call each other: user-service's address first.
    let user_addr = test_support::free_addr();
    let payment = payment::spawn_with(|c| {
        c.item_service_url = item.grpc_addr.into();
        c.user_service_url = user_addr.into();
        c.item_timeout_ms = 10_000;
    })
    .await;
    let user = user::spawn_with(|c| {
        c.grpc_addr = user_addr.to_string();
        c.payment_service_url = payment.grpc_addr.into();
        c.item_service_url = item.grpc_addr.into();
    })
    .await;
    let mut g = gateway::Config::with_secret(user::SECRET);
    g.identity = test_support::identity::settings(platform::identity::GATEWAY);
    g.http_addr = "127.0.0.1:0".into();
    g.metrics_addr = "127.0.0.1:0".into();
    g.user_service_url = user.grpc_addr.into();
    g.item_service_url = item.grpc_addr.into();
    g.payment_service_url = payment.grpc_addr.into();
    g.card_gateway_url = payment.card_gateway.url.clone();
    g.card_publishable_key = Some(payment.card_gateway.publishable_key.clone());
    g.checkout_budget_ms = 10_000;
    g.read_budget_ms = 5_000;
    let gw = gateway::Application::build(g)
        .await
        .expect("build the gateway");
    let gw_addr = gw.http_addr();
    let gateway = Running::spawn(gw_addr, |stop| gw.run_until_stopped(stop));

    let mut shop = Shop {
        base: format!("http://{gw_addr}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client"),
        urls: Urls {
            user_database_url: user.database_url.clone(),
            payment_database_url: payment.database.url.clone(),
            item_mongodb_url: env("ITEM_MONGODB_URL"),
            item_mongodb_database: item.config.mongodb_database.clone(),
        },
        item_grpc: item.grpc_addr,
        item_id: String::new(),
        orders: Vec::new(),
        _servers: vec![
            gateway,
            user.server,
            payment.server,
            payment.card_gateway.server,
            item.server,
        ],
    };
    // Registered as a customer; the operator makes it an admin; the next login says so.
    login(&shop, user::ADMIN_EMAIL).await;
    user::grant_admin(&shop.urls.user_database_url, user::ADMIN_EMAIL).await;
    let admin = sign_in(&shop, user::ADMIN_EMAIL).await;
    let (s, b) = post(
        &shop,
        "/api/items",
        Some(&admin),
        json!({
            "sku": format!("CHK-{}", unique_suffix()).to_uppercase(),
            "name": "Checked item",
            "description": "bought by the checker's tests",
            "category": "testing",
            "price": {"amount_minor": 250, "currency": "USD"},
            "stock": 20,
        }),
        None,
    )
    .await;
    assert_eq!(s, 201, "create item: {b}");
    shop.item_id = b["id"].as_str().expect("item id").to_owned();

    let token = login(&shop, &format!("buyer-{}@shop.test", unique_suffix())).await;
    for (i, strategy) in ["orchestrated", "parallel", "chained"]
        .into_iter()
        .enumerate()
    {
        let (s, b) = checkout(&shop, &token, strategy, i as i64 + 1, GOOD_CARD).await;
        assert_eq!(s, 201, "{strategy} checkout: {b}");
        shop.orders
            .push(b["order"]["id"].as_str().expect("order id").to_owned());
    }
    let (s, b) = checkout(&shop, &token, "orchestrated", 1, DECLINED_CARD).await;
    assert_eq!(s, 402, "declined checkout: {b}");
    let (s, b) = checkout(&shop, &token, "orchestrated", 100, GOOD_CARD).await;
    assert_eq!(s, 409, "out-of-stock checkout: {b}");
    shop
}

async fn check_now(shop: &Shop) -> Report {
    check::check(&shop.urls, &Options::default())
        .await
        .expect("the checker reads every store")
}

/// A clean report of the state [`shop_with_checkouts`] makes.
async fn assert_clean(shop: &Shop) -> Report {
    let report = check_now(shop).await;
    assert!(report.is_clean(), "violations: {:#?}", report.violations);
    report
}

async fn mongo(shop: &Shop) -> mongodb::Database {
    mongodb::Client::with_uri_str(&shop.urls.item_mongodb_url)
        .await
        .expect("connect to MongoDB")
        .database(&shop.urls.item_mongodb_database)
}

/// `loadtest check` as a user runs it: (exit code, stdout).
fn run_cli(urls: &Urls, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "check",
            "--user-database-url",
            &urls.user_database_url,
            "--payment-database-url",
            &urls.payment_database_url,
            "--item-mongodb-url",
            &urls.item_mongodb_url,
            "--item-mongodb-database",
            &urls.item_mongodb_database,
        ])
        .args(extra)
        .output()
        .expect("run loadtest check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Inserts a payment row the way payment-service stores one.
async fn insert_payment(shop: &Shop, status: &str, age_secs: i64) -> (String, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let order_id = uuid::Uuid::new_v4().to_string();
    let mut c = MySqlConnection::connect(&shop.urls.payment_database_url)
        .await
        .expect("connect to MariaDB");
    sqlx::query(
        "INSERT INTO payments (id, idempotency_key, user_id, order_id, amount_minor, currency, \
                               status, card_brand, card_last4, created_at, updated_at) \
         VALUES (?, ?, ?, ?, 999, 'USD', ?, 'visa', '4242', \
                 UTC_TIMESTAMP(6) - INTERVAL ? SECOND, UTC_TIMESTAMP(6) - INTERVAL ? SECOND)",
    )
    .bind(&id)
    .bind(format!("forged-{id}"))
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(&order_id)
    .bind(status)
    .bind(age_secs)
    .bind(age_secs)
    .execute(&mut c)
    .await
    .expect("insert a payment");
    c.close().await.ok();
    (id, order_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_through_the_services_leave_a_consistent_state() {
    let shop = shop_with_checkouts(|_| {}).await;
    let report = assert_clean(&shop).await;
    let c = report.checked;
    // Three placed and one declined (cancelled) checkout; the out-of-stock one may leave a
    // cancelled record too.
    assert!(c.orders >= 4, "{c:?}");
    assert!(c.payments >= 4, "{c:?}");
    assert!(c.reservations >= 4, "{c:?}");
    assert_eq!((c.items, c.items_accounted), (1, 1), "{c:?}");
    assert!(report.not_accounted.is_empty());

    let (code, out) = run_cli(&shop.urls, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("checked") && out.contains("0 violations"),
        "{out}"
    );
    let (code, out) = run_cli(&shop.urls, &["--json"]);
    assert_eq!(code, 0, "{out}");
    let json: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(json["violations"], json!([]));
    assert_eq!(json["checked"]["items"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_without_an_order_is_reported() {
    let shop = shop_with_checkouts(|_| {}).await;
    assert_clean(&shop).await;
    let (payment, order) = insert_payment(&shop, "SUCCEEDED", 0).await;

    let report = check_now(&shop).await;
    assert_eq!(report.violations.len(), 1, "{:#?}", report.violations);
    let v = &report.violations[0];
    assert_eq!(v.rule, Rule::PaidHasOrder);
    assert!(
        v.names("payment", &payment) && v.names("order", &order),
        "{v}"
    );

    let (code, out) = run_cli(&shop.urls, &[]);
    assert_eq!(code, 1, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("rule a"))
        .unwrap_or_else(|| panic!("a line for rule a in {out}"));
    assert!(
        line.contains(&payment) && line.contains("no order"),
        "{line}"
    );
    assert!(out.contains("1 violation"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_order_whose_total_differs_from_its_payment_is_reported() {
    let shop = shop_with_checkouts(|_| {}).await;
    assert_clean(&shop).await;
    let order = &shop.orders[0];
    let mut c = PgConnection::connect(&shop.urls.user_database_url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query("UPDATE orders SET total_minor = total_minor + 1 WHERE order_id = $1::uuid")
        .bind(order)
        .execute(&mut c)
        .await
        .expect("change the order's total");

    let report = check_now(&shop).await;
    let rules: Vec<Rule> = report.violations.iter().map(|v| v.rule).collect();
    assert_eq!(rules, [Rule::OrderHasPayment], "{:#?}", report.violations);
    assert!(report.violations[0].names("order", order));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_changed_behind_the_services_back_is_reported() {
    let shop = shop_with_checkouts(|_| {}).await;
    assert_clean(&shop).await;
    let oid = ObjectId::parse_str(&shop.item_id).expect("item id");
    mongo(&shop)
        .await
        .collection::<Document>("inventory")
        .update_one(doc! { "_id": oid }, doc! { "$inc": { "stock": -2_i64 } })
        .await
        .expect("lose two units");

    let report = check_now(&shop).await;
    let rules: Vec<Rule> = report.violations.iter().map(|v| v.rule).collect();
    assert_eq!(rules, [Rule::StockAccounted], "{:#?}", report.violations);
    let v = &report.violations[0];
    assert!(v.names("item", &shop.item_id), "{v}");
    assert!(v.detail.contains("2 unit(s) missing"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_held_long_past_its_expiry_is_reported() {
    // No sweeper round during the test: it would release the reservation.
    let shop = shop_with_checkouts(|c| c.sweep_interval_ms = 3_600_000).await;
    let rid = format!("held-{}", unique_suffix());
    ItemServiceClient::new(test_support::identity::operator(
        shop.item_grpc,
        platform::identity::ITEM_SERVICE,
    ))
    .reserve_stock(ReserveStockRequest {
        reservation_id: rid.clone(),
        lines: vec![ItemLine {
            item_id: shop.item_id.clone(),
            quantity: 1,
        }],
    })
    .await
    .expect("reserve");
    assert_clean(&shop).await;

    let two_minutes_ago = DateTime::from_millis(DateTime::now().timestamp_millis() - 120_000);
    mongo(&shop)
        .await
        .collection::<Document>("reservations")
        .update_one(
            doc! { "_id": &rid },
            doc! { "$set": { "expires_at": two_minutes_ago } },
        )
        .await
        .expect("age the reservation");

    let report = check_now(&shop).await;
    let rules: Vec<Rule> = report.violations.iter().map(|v| v.rule).collect();
    assert_eq!(rules, [Rule::ReservationExpiry], "{:#?}", report.violations);
    assert!(report.violations[0].names("reservation", &rid));
    // A wider window forgives it.
    let wide = check::check(
        &shop.urls,
        &Options {
            recovery_window: Duration::from_secs(600),
        },
    )
    .await
    .expect("check");
    assert!(wide.is_clean(), "{:#?}", wide.violations);
}

/// Inserts a checkout record in `status`, started `age_secs` ago, whose lease runs for
/// another hour (so user-service's recovery leaves it alone); returns its order id.
async fn insert_checkout(shop: &Shop, status: &str, age_secs: i64) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let mut c = PgConnection::connect(&shop.urls.user_database_url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(
        "INSERT INTO orders (order_id, user_id, lines, priced, reservation_id, status, \
                             lease_token, lease_until, created_at, updated_at) \
         SELECT $1::uuid, user_id, '[]'::jsonb, false, $2, $3, $1::uuid, \
                now() + interval '1 hour', now() - $4 * interval '1 second', now() \
         FROM users LIMIT 1",
    )
    .bind(&id)
    .bind(format!("forged-{id}"))
    .bind(status)
    .bind(age_secs as f64)
    .execute(&mut c)
    .await
    .expect("insert a checkout record");
    c.close().await.ok();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_left_unfinished_past_the_window_is_reported() {
    let shop = shop_with_checkouts(|_| {}).await;
    // payment-service's reconcile timer is off in tests: nothing settles these.
    let (fresh_payment, _) = insert_payment(&shop, "PENDING", 5).await;
    let (stale_payment, _) = insert_payment(&shop, "PENDING", 120).await;
    let fresh_order = insert_checkout(&shop, "pending", 5).await;
    let stale_order = insert_checkout(&shop, "cancelling", 120).await;

    let report = check_now(&shop).await;
    let rules: Vec<Rule> = report.violations.iter().map(|v| v.rule).collect();
    assert_eq!(
        rules,
        [Rule::Stuck, Rule::Stuck],
        "{:#?}",
        report.violations
    );
    let named = |kind: &str, id: &str| report.violations.iter().any(|v| v.names(kind, id));
    assert!(named("payment", &stale_payment) && named("order", &stale_order));
    assert!(!named("payment", &fresh_payment) && !named("order", &fresh_order));
    assert_eq!(report.checked.orders_in_flight, 1);
}

/// Waits (up to 30 s) until nothing is in flight: no order mid-checkout and no refund
/// pending as the checker counts them, no payment PENDING, no reservation holding stock.
/// Nothing left for a sweeper, reconciler or recovery to finish, so nothing changes by itself.
async fn wait_settled(shop: &Shop) {
    test_support::eventually(Duration::from_secs(30), || async {
        let checked = check_now(shop).await.checked;
        let mut my = MySqlConnection::connect(&shop.urls.payment_database_url)
            .await
            .expect("connect to MariaDB");
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM payments WHERE status = 'PENDING'")
                .fetch_one(&mut my)
                .await
                .expect("count pending payments");
        let held = mongo(shop)
            .await
            .collection::<Document>("reservations")
            .count_documents(doc! { "status": { "$in": ["pending", "reserved"] } })
            .await
            .expect("count held reservations");
        (checked.orders_in_flight == 0 && checked.refunds == 0 && pending == 0 && held == 0)
            .then_some(())
    })
    .await;
}

/// Everything the stores hold that the checker reads, as text, to compare.
async fn contents(shop: &Shop) -> Vec<String> {
    let mut out = Vec::new();
    let mut pg = PgConnection::connect(&shop.urls.user_database_url)
        .await
        .expect("connect to PostgreSQL");
    for r in sqlx::query("SELECT row_to_json(o)::text AS j FROM orders o ORDER BY order_id")
        .fetch_all(&mut pg)
        .await
        .expect("read orders")
    {
        out.push(r.get::<String, _>("j"));
    }
    let mut my = MySqlConnection::connect(&shop.urls.payment_database_url)
        .await
        .expect("connect to MariaDB");
    for r in sqlx::query(
        "SELECT CONCAT_WS('|', id, order_id, status, amount_refunded_minor, updated_at) AS j \
         FROM payments ORDER BY id",
    )
    .fetch_all(&mut my)
    .await
    .expect("read payments")
    {
        out.push(r.get::<String, _>("j"));
    }
    let db = mongo(shop).await;
    for coll in ["items", "reservations"] {
        let docs: Vec<Document> = db
            .collection::<Document>(coll)
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .await
            .expect("read")
            .try_collect()
            .await
            .expect("read");
        out.extend(docs.iter().map(|d| d.to_string()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_cannot_write() {
    let shop = shop_with_checkouts(|_| {}).await;
    // Let any settling after the answers finish, so only the checker could change things.
    wait_settled(&shop).await;
    let before = contents(&shop).await;
    assert_clean(&shop).await;
    assert_eq!(contents(&shop).await, before, "the check changed a store");

    let mut stores = Stores::connect(&shop.urls)
        .await
        .expect("connect read-only");
    let pg = sqlx::query("UPDATE orders SET status = 'cancelled'")
        .execute(&mut stores.postgres)
        .await
        .expect_err("PostgreSQL refuses writes");
    assert!(pg.to_string().contains("read-only"), "{pg}");
    let my = sqlx::query("UPDATE payments SET status = 'FAILED'")
        .execute(&mut stores.mariadb)
        .await
        .expect_err("MariaDB refuses writes");
    assert!(my.to_string().to_lowercase().contains("read only"), "{my}");
    // Still refused inside the checker's own snapshot reads.
    stores.snapshot().await.expect("snapshot");
    sqlx::query("DELETE FROM payments")
        .execute(&mut stores.mariadb)
        .await
        .expect_err("MariaDB refuses writes after a snapshot");
    stores.close().await;
    assert_eq!(contents(&shop).await, before);
}

#[tokio::test]
async fn unreachable_stores_exit_with_2() {
    let urls = Urls {
        user_database_url: "postgres://nobody:x@127.0.0.1:1/none".into(),
        payment_database_url: "mysql://nobody:x@127.0.0.1:1/none".into(),
        item_mongodb_url: "mongodb://127.0.0.1:1/?directConnection=true".into(),
        item_mongodb_database: "none".into(),
    };
    let (code, out) = run_cli(&urls, &[]);
    assert_eq!(code, 2, "{out}");
}
