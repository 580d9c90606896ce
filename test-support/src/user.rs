//! user-service on 127.0.0.1:0 with its own fresh PostgreSQL database.

use std::net::SocketAddr;

use secrecy::SecretString;
use user_service::{Application, Config};

use crate::{Running, db};

/// The JWT secret test servers sign with (gateways under test must share it).
pub const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";
/// The address the test config makes an admin.
pub const ADMIN_EMAIL: &str = "admin@example.com";

/// A running user-service.
pub struct UserServer {
    pub server: Running,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub database_url: String,
}

/// The test config over `database_url`: ephemeral ports, [`SECRET`], [`ADMIN_EMAIL`], and
/// a payment-service address nothing listens on (a chained checkout fails fast, not hangs).
pub fn config(database_url: &str) -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".into(),
        metrics_addr: "127.0.0.1:0".into(),
        database_url: SecretString::from(database_url.to_owned()),
        database_max_connections: 10,
        jwt_secret: Some(SecretString::from(SECRET.to_owned())),
        jwt_secret_file: None,
        token_ttl_secs: 3600,
        hash_concurrency: user_service::password::default_concurrency(),
        hash_wait_ms: 2_000,
        admin_emails: vec![ADMIN_EMAIL.into()],
        payment_service_url: "http://127.0.0.1:1".into(),
        item_service_url: "http://127.0.0.1:1".into(),
        recovery_interval_ms: 200,
        recovery_call_timeout_ms: 2000,
        recovery_stuck_secs: 60,
        request_timeout_ms: 10_000,
        faults: String::new(),
        log_json: false,
    }
}

pub async fn spawn() -> UserServer {
    spawn_with(|_| {}).await
}

/// Spawns user-service on a fresh database, with `tweak` applied to the test config.
pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> UserServer {
    let database = db::fresh_postgres("user").await;
    spawn_on(&database.url, tweak).await
}

/// Spawns user-service on an existing database: a second replica of a running one.
pub async fn spawn_on(database_url: &str, tweak: impl FnOnce(&mut Config)) -> UserServer {
    let mut config = config(database_url);
    tweak(&mut config);
    let app = Application::build(config)
        .await
        .expect("user-service builds against the local stack");
    let grpc_addr = app.grpc_addr();
    let metrics_addr = app.metrics_addr();
    UserServer {
        server: Running::spawn(grpc_addr, |stop| app.run_until_stopped(stop)),
        grpc_addr,
        metrics_addr,
        database_url: database_url.to_owned(),
    }
}
