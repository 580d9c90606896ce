//! Test harness: each test gets its own throw-away PostgreSQL database and a real
//! user-service listening on 127.0.0.1:0.

#![allow(dead_code)]

use std::time::Duration;

use secrecy::SecretString;
use shop_proto::user::v1::{self as pb, user_service_client::UserServiceClient};
use sqlx::{Connection, PgConnection};
use tonic::transport::Channel;
use user_service::{Application, Config};

pub const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";
pub const ADMIN_EMAIL: &str = "admin@example.com";

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
    pub client: UserServiceClient<Channel>,
    pub channel: Channel,
    pub database_url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The stack's database URL; tests fail loudly when the stack is not up.
pub fn base_url() -> String {
    std::env::var("USER_DATABASE_URL").expect(
        "USER_DATABASE_URL is not set: run the tests through scripts/test (it starts the stack)",
    )
}

/// Creates a fresh database and returns its URL.
pub async fn fresh_database() -> String {
    let base = base_url();
    let name = format!("shop_user_t{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&base)
        .await
        .expect("connect to the stack's PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let (prefix, _) = base.rsplit_once('/').expect("database URL has a path");
    format!("{prefix}/{name}")
}

pub fn config(database_url: &str) -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".into(),
        metrics_addr: "127.0.0.1:0".into(),
        database_url: SecretString::from(database_url.to_owned()),
        database_max_connections: 10,
        jwt_secret: Some(SecretString::from(SECRET.to_owned())),
        jwt_secret_file: None,
        token_ttl_secs: 3600,
        admin_emails: vec![ADMIN_EMAIL.into()],
        // Nothing listens here: the chained checkout must fail fast, not hang.
        payment_service_url: "http://127.0.0.1:1".into(),
        request_timeout_ms: 10_000,
        faults: String::new(),
        log_json: false,
    }
}

pub async fn spawn() -> TestApp {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let database_url = fresh_database().await;
    let mut cfg = config(&database_url);
    tweak(&mut cfg);
    let app = Application::build(cfg).await.expect("build user-service");
    let addr = app.grpc_addr();
    let metrics_addr = app.metrics_addr();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to user-service");
    TestApp {
        addr,
        metrics_addr,
        client: UserServiceClient::new(channel.clone()),
        channel,
        database_url,
        shutdown: Some(tx),
    }
}

impl TestApp {
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        name: &str,
    ) -> Result<pb::User, tonic::Status> {
        self.client
            .clone()
            .register(pb::RegisterRequest {
                email: email.into(),
                password: password.into(),
                display_name: name.into(),
            })
            .await
            .map(|r| r.into_inner().user.expect("user in response"))
    }

    pub async fn login(
        &self,
        email: &str,
        password: &str,
    ) -> Result<pb::LoginResponse, tonic::Status> {
        self.client
            .clone()
            .login(pb::LoginRequest {
                email: email.into(),
                password: password.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}
