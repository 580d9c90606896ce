//! user-service on 127.0.0.1:0 with its own fresh PostgreSQL database.

use std::net::SocketAddr;

use secrecy::SecretString;
use user_service::{Application, Config, admin::AdminCommand};

use crate::{Running, db};

/// The JWT secret test servers sign with (gateways under test must share it).
pub const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";
/// The address tests make an admin with [`grant_admin`] (registering it alone gives a
/// customer, as for any address).
pub const ADMIN_EMAIL: &str = "admin@example.com";

/// A running user-service.
pub struct UserServer {
    pub server: Running,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub database_url: String,
    /// This replica's checkout recovery (the same state its background loop uses): a test
    /// runs rounds itself and sees what each one claimed and how it ended.
    pub recovery: user_service::recovery::Recovery,
}

impl UserServer {
    /// [`grant_admin`] on this server's database.
    pub async fn grant_admin(&self, email: &str) {
        grant_admin(&self.database_url, email).await;
    }
}

/// The test config over `database_url`: ephemeral ports, [`SECRET`], and
/// a payment-service address nothing listens on (a chained checkout fails fast, not hangs).
pub fn config(database_url: &str) -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".into(),
        metrics_addr: "127.0.0.1:0".into(),
        tls_cert: None,
        tls_key: None,
        health_addr: None,
        database_url: SecretString::from(database_url.to_owned()),
        database_max_connections: 10,
        jwt_secret: Some(SecretString::from(SECRET.to_owned())),
        jwt_secret_file: None,
        token_ttl_secs: 3600,
        hash_concurrency: user_service::password::default_concurrency(),
        // Tests run on a loaded, shared machine: wait for a slot rather than refuse (the
        // hashing tests set their own limits).
        hash_wait_ms: 60_000,
        payment_service_url: std::net::SocketAddr::from(([127, 0, 0, 1], 1)).into(),
        item_service_url: std::net::SocketAddr::from(([127, 0, 0, 1], 1)).into(),
        recovery_interval_ms: 200,
        recovery_call_timeout_ms: 2000,
        recovery_stuck_secs: 60,
        recovery_batch: 50,
        request_timeout_ms: 10_000,
        faults: String::new(),
        log_json: false,
        identity: crate::identity::settings(platform::identity::USER_SERVICE),
        balance: Default::default(),
        tls: Default::default(),
        // No event stream unless a test asks for one (crate::events::settings).
        events: Default::default(),
    }
}

/// Gives the registered account `email` on user-service's database `database_url` the
/// admin role, by the operator's code path (`user-service admin grant`). Its next login
/// gets an admin token.
pub async fn grant_admin(database_url: &str, email: &str) {
    let command = AdminCommand::Grant {
        email: email.to_owned(),
    };
    user_service::admin::run(&config(database_url), &command)
        .await
        .unwrap_or_else(|e| panic!("granting admin to {email}: {e:#}"));
}

/// Makes `email` a customer again (`user-service admin revoke`), from its next login on.
pub async fn revoke_admin(database_url: &str, email: &str) {
    let command = AdminCommand::Revoke {
        email: email.to_owned(),
    };
    user_service::admin::run(&config(database_url), &command)
        .await
        .unwrap_or_else(|e| panic!("revoking admin from {email}: {e:#}"));
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
    let recovery = app.service().recovery();
    UserServer {
        server: Running::spawn(grpc_addr, |stop| app.run_until_stopped(stop)),
        grpc_addr,
        metrics_addr,
        database_url: database_url.to_owned(),
        recovery,
    }
}
