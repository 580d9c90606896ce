//! A payment-service under test (test_support::payment: its own card gateway and MariaDB
//! database) with a client, the test cards, and the calls and checks most tests make.

use std::net::SocketAddr;

use card_gateway::api::Stats;
use payment_service::Config;
pub use secrecy::{ExposeSecret, SecretString};
use shop_proto::{
    common::v1::Money,
    payment::v1::{self as pb, payment_service_client::PaymentServiceClient},
};
use sqlx::{Connection, MySqlConnection, Row};
pub use test_support::{env, eventually, payment::CardGatewayServer as TestGateway};

pub const VISA_OK: &str = "4242424242424242";
pub const VISA_DECLINED: &str = "4000000000000002";
pub const VISA_NO_FUNDS: &str = "4000000000009995";
/// Every test card uses this CVC; the no-card-data scan looks for it.
pub const CVC: &str = "7319";

/// Card numbers the suite sends; none may ever reach a payment table.
pub const ALL_TEST_NUMBERS: &[&str] = &[VISA_OK, VISA_DECLINED, VISA_NO_FUNDS, "5555555555554444"];

pub async fn spawn_gateway() -> TestGateway {
    test_support::payment::card_gateway().await
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub client: PaymentServiceClient<platform::transport::GrpcTransport>,
    pub gateway: TestGateway,
    pub db_url: String,
    pub db_name: String,
    pub http: reqwest::Client,
    /// Stops payment-service when the test drops the app.
    _server: test_support::Running,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let app = test_support::payment::spawn_with(tweak).await;
    let client = PaymentServiceClient::new(test_support::identity::operator(
        app.grpc_addr,
        platform::identity::PAYMENT_SERVICE,
    ));
    TestApp {
        addr: app.grpc_addr,
        metrics_addr: app.metrics_addr,
        client,
        http: operator_http(&app.card_gateway.secret_key),
        gateway: app.card_gateway,
        db_url: app.database.url,
        db_name: app.database.name,
        _server: app.server,
    }
}

pub fn card(number: &str) -> pb::Card {
    pb::Card {
        number: number.into(),
        exp_month: 12,
        exp_year: 2034,
        cvc: CVC.into(),
    }
}

pub fn usd(amount_minor: i64) -> Money {
    Money {
        amount_minor,
        currency: "USD".into(),
    }
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn charge_request(key: &str, amount_minor: i64, number: &str) -> pb::ChargeRequest {
    pb::ChargeRequest {
        idempotency_key: key.into(),
        user_id: new_id(),
        order_id: new_id(),
        amount: Some(usd(amount_minor)),
        card: Some(card(number)),
        description: "test order".into(),
    }
}

impl TestApp {
    pub fn gateway_url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.url)
    }

    /// The mock's counters, over its admin endpoint.
    pub async fn stats(&self) -> Stats {
        self.http
            .get(self.gateway_url("/admin/stats"))
            .send()
            .await
            .expect("GET /admin/stats")
            .json()
            .await
            .expect("stats JSON")
    }

    pub async fn put_admin(&self, path: &str, rules: serde_json::Value) {
        let resp = self
            .http
            .put(self.gateway_url(path))
            .json(&rules)
            .send()
            .await
            .expect("PUT admin");
        assert!(resp.status().is_success(), "PUT {path}: {}", resp.status());
    }

    pub async fn charge(&self, req: pb::ChargeRequest) -> Result<pb::Payment, tonic::Status> {
        self.client
            .clone()
            .charge(req)
            .await
            .map(|r| r.into_inner().payment.expect("payment"))
    }

    pub async fn get(&self, payment_id: &str) -> pb::Payment {
        self.client
            .clone()
            .get_payment(pb::GetPaymentRequest {
                payment_id: payment_id.into(),
                order_id: String::new(),
            })
            .await
            .expect("GetPayment")
            .into_inner()
            .payment
            .expect("payment")
    }

    pub async fn reconcile(&self, payment_id: &str) -> pb::Payment {
        self.client
            .clone()
            .reconcile(pb::ReconcileRequest {
                payment_id: payment_id.into(),
            })
            .await
            .expect("Reconcile")
            .into_inner()
            .payments
            .into_iter()
            .next()
            .expect("one payment")
    }

    /// Runs one statement on this test's database (to age or drop rows as time would);
    /// returns the rows it affected.
    pub async fn sql(&self, statement: &str) -> u64 {
        let mut conn = MySqlConnection::connect(&self.db_url)
            .await
            .expect("connect to the test database");
        let n = sqlx::query(statement)
            .execute(&mut conn)
            .await
            .expect("statement runs")
            .rows_affected();
        conn.close().await.ok();
        n
    }

    /// `SELECT COUNT(*) FROM {from}` on this test's database.
    pub async fn count(&self, from: &str) -> i64 {
        let mut conn = MySqlConnection::connect(&self.db_url)
            .await
            .expect("connect to the test database");
        let n = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {from}"))
            .fetch_one(&mut conn)
            .await
            .expect("count");
        conn.close().await.ok();
        n
    }

    /// GetPayment with these two fields.
    pub async fn get_by(
        &self,
        payment_id: &str,
        order_id: &str,
    ) -> Result<pb::Payment, tonic::Status> {
        self.client
            .clone()
            .get_payment(pb::GetPaymentRequest {
                payment_id: payment_id.into(),
                order_id: order_id.into(),
            })
            .await
            .map(|r| r.into_inner().payment.expect("payment"))
    }

    /// Scans every table of this test's database: none of the test card numbers (in any
    /// column, text or binary), no 13–19-digit number and no cell equal to the CVC in the
    /// service's tables, no card-ish column name.
    pub async fn assert_no_card_data(&self) {
        let mut conn = MySqlConnection::connect(&self.db_url)
            .await
            .expect("connect for the scan");
        let columns = sqlx::query(
            "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME, ORDINAL_POSITION",
        )
        .bind(&self.db_name)
        .fetch_all(&mut conn)
        .await
        .expect("list columns");
        assert!(!columns.is_empty(), "the test database has tables");
        let mut cells = 0;
        for col in &columns {
            let table: String = col.get(0);
            let column: String = col.get(1);
            let data_type: String = col.get(2);
            let lower = column.to_ascii_lowercase();
            for bad in ["cvc", "cvv", "card_number", "pan"] {
                assert!(
                    !lower.contains(bad),
                    "{table}.{column} looks like card data"
                );
            }
            let binary = [
                "binary",
                "varbinary",
                "blob",
                "tinyblob",
                "mediumblob",
                "longblob",
            ]
            .contains(&data_type.to_ascii_lowercase().as_str());
            let values: Vec<Option<Vec<u8>>> =
                sqlx::query_scalar(&format!("SELECT CAST(`{column}` AS BINARY) FROM `{table}`"))
                    .fetch_all(&mut conn)
                    .await
                    .expect("read column");
            for v in values.into_iter().flatten() {
                cells += 1;
                for n in ALL_TEST_NUMBERS {
                    assert!(
                        !v.windows(n.len()).any(|w| w == n.as_bytes()),
                        "{table}.{column} holds a card number"
                    );
                }
                // sqlx's own bookkeeping: `version` is the migration file's 14-digit timestamp.
                if binary || table == "_sqlx_migrations" {
                    continue;
                }
                let mut text = String::from_utf8_lossy(&v).into_owned();
                assert_ne!(text, CVC, "{table}.{column} holds the CVC");
                if table == "outbox" && column == "body" {
                    // An event envelope: its millisecond timestamp is the one long number
                    // allowed; everything else is scanned.
                    let mut event: serde_json::Value =
                        serde_json::from_str(&text).expect("an outbox body is JSON");
                    event
                        .as_object_mut()
                        .expect("an envelope")
                        .remove("occurred_at_ms");
                    text = event.to_string();
                }
                let mut run = 0;
                for c in text.chars().chain(std::iter::once(' ')) {
                    if c.is_ascii_digit() {
                        run += 1;
                    } else {
                        assert!(
                            !(13..=19).contains(&run),
                            "{table}.{column} holds a {run}-digit number"
                        );
                        run = 0;
                    }
                }
            }
        }
        assert!(cells > 0, "the scan read some data");
        conn.close().await.ok();
    }

    /// Stops payment-service (its database stays, for another instance or the checks).
    pub async fn stop(&mut self) {
        self._server.stop().await;
    }

    /// The scan, then the throw-away database goes.
    pub async fn finish(self) {
        self.assert_no_card_data().await;
        test_support::db::drop_mysql(&self.db_name).await;
    }
}

/// An HTTP client that presents the operator's token (the card gateway's `/admin/*` needs it).
/// A client of the card gateway with the operator's token (its admin API) and `key` (its
/// account's API).
pub fn operator_http(key: &SecretString) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", key.expose_secret())
            .parse()
            .expect("a key is a header value"),
    );
    let token = test_support::identity::operator_token(card_gateway::AUDIENCE);
    headers.insert(
        platform::identity::CALLER_HEADER,
        token.parse().expect("a token is a header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

/// A card gateway the test stops and starts again on the same address and journal: a
/// processor that goes down and comes back with its books (charges, keys, tokens).
pub struct RestartableGateway {
    pub addr: SocketAddr,
    pub url: String,
    /// Its account's keys, the same across restarts.
    pub secret_key: SecretString,
    pub publishable_key: SecretString,
    journal: std::path::PathBuf,
    running: Option<(test_support::Running, card_gateway::Gateway)>,
}

impl RestartableGateway {
    pub async fn start() -> Self {
        let journal = std::env::temp_dir().join(format!("card-journal-{}.jsonl", new_id()));
        let (secret_key, publishable_key) = platform::card_keys::generate_pair();
        let mut gw = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            url: String::new(),
            secret_key,
            publishable_key,
            journal,
            running: None,
        };
        gw.up().await;
        gw
    }

    async fn up(&mut self) {
        use card_gateway::CardGateway;
        let mut config = card_gateway::Config::on(&self.addr.to_string())
            .with_keys(self.secret_key.clone(), self.publishable_key.clone());
        config.journal = Some(self.journal.clone());
        let built = CardGateway::build(config)
            .await
            .expect("the card gateway binds (again)");
        self.addr = built.addr();
        self.url = format!("http://{}", self.addr);
        let handle = built.handle();
        let server = test_support::Running::spawn(self.addr, |stop| built.run_until_stopped(stop));
        self.running = Some((server, handle));
    }

    /// Down: nothing listens on its address any more.
    pub async fn stop(&mut self) {
        if let Some((mut server, _)) = self.running.take() {
            server.stop().await;
        }
    }

    /// Back on the same address, with what its journal kept.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.up().await;
    }

    /// The counters of the running instance (they start at 0 on each start).
    pub fn stats(&self) -> Stats {
        self.running
            .as_ref()
            .map(|(_, handle)| handle.stats())
            .unwrap_or_default()
    }

    /// Tokenises a test card through payment-service's client, as the shop's edge would.
    pub async fn tokenize(&self, number: &str) -> String {
        use card_gateway::api::CardDetails;
        use payment_service::card_processor::{ProcessorClient, TokenAnswer};
        let client = ProcessorClient::new(&self.url, self.publishable_key.clone()).expect("client");
        let card = CardDetails {
            number: number.into(),
            exp_month: 12,
            exp_year: 2034,
            cvc: CVC.into(),
        };
        match client
            .create_token(&new_id(), &card, std::time::Duration::from_secs(5))
            .await
            .expect("the card gateway answers")
        {
            TokenAnswer::Token(t) => t.id,
            TokenAnswer::Refused(e) => panic!("card refused: {e:?}"),
        }
    }
}

impl Drop for RestartableGateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.journal);
    }
}
