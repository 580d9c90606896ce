//! payment-service on 127.0.0.1:0 with its own fresh MariaDB database and its own mock
//! card gateway.

use std::net::SocketAddr;

use card_gateway::{CardGateway, Gateway};
use payment_service::{Application, Config};
use secrecy::SecretString;

use crate::{
    Running,
    db::{self, FreshDatabase},
};

/// A running mock card gateway.
pub struct CardGatewayServer {
    pub server: Running,
    pub addr: SocketAddr,
    /// `http://{addr}`.
    pub url: String,
    /// In-process access to its state (stats, faults).
    pub handle: Gateway,
    /// Its account's secret key (payment-service's).
    pub secret_key: SecretString,
    /// Its account's publishable key (the gateway's: tokens only).
    pub publishable_key: SecretString,
}

/// Spawns the mock card gateway on 127.0.0.1:0.
pub async fn card_gateway() -> CardGatewayServer {
    card_gateway_with(|_| {}).await
}

/// Spawns the mock card gateway on 127.0.0.1:0 with a fresh key pair, `tweak` applied to
/// its config.
pub async fn card_gateway_with(tweak: impl FnOnce(&mut card_gateway::Config)) -> CardGatewayServer {
    let (secret_key, publishable_key) = platform::card_keys::generate_pair();
    let mut config = card_gateway::Config::on("127.0.0.1:0")
        .with_keys(secret_key.clone(), publishable_key.clone());
    config.identity = crate::identity::settings(card_gateway::AUDIENCE);
    tweak(&mut config);
    let gw = CardGateway::build(config)
        .await
        .expect("the card gateway binds");
    let addr = gw.addr();
    let handle = gw.handle();
    CardGatewayServer {
        server: Running::spawn(addr, |stop| gw.run_until_stopped(stop)),
        addr,
        url: format!("http://{addr}"),
        handle,
        secret_key,
        publishable_key,
    }
}

/// A running payment-service and the card gateway it charges through.
pub struct PaymentServer {
    pub server: Running,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub card_gateway: CardGatewayServer,
    pub database: FreshDatabase,
}

/// The test config: ephemeral ports, `database_url`, the card gateway at
/// `card_gateway_url` (called with `card_secret_key`), no reconcile timer, and item- and
/// user-service addresses nothing listens on (ChainedCharge tests start their own
/// item-service and set it; a compensation refund needs a user-service to confirm it).
pub fn config(
    database_url: &str,
    card_gateway_url: &str,
    card_secret_key: &SecretString,
) -> Config {
    let mut config = Config::with_database(database_url);
    config.grpc_addr = "127.0.0.1:0".into();
    config.metrics_addr = "127.0.0.1:0".into();
    config.card_gateway_url = card_gateway_url.into();
    config.card_secret_key = Some(card_secret_key.clone());
    config.reconcile_interval_ms = 0;
    config.database_max_connections = 30;
    config.item_service_url = std::net::SocketAddr::from(([127, 0, 0, 1], 9)).into();
    config.user_service_url = std::net::SocketAddr::from(([127, 0, 0, 1], 9)).into();
    config.identity = crate::identity::settings(platform::identity::PAYMENT_SERVICE);
    config
}

pub async fn spawn() -> PaymentServer {
    spawn_with(|_| {}).await
}

/// Spawns a card gateway, then payment-service on a fresh database in front of it, with
/// `tweak` applied to the test config.
pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> PaymentServer {
    platform::telemetry::init(false);
    let card_gateway = card_gateway().await;
    let database = db::fresh_mysql("payment").await;
    let mut config = config(&database.url, &card_gateway.url, &card_gateway.secret_key);
    tweak(&mut config);
    let app = Application::build(config)
        .await
        .expect("payment-service builds against the local stack");
    let grpc_addr = app.grpc_addr();
    let metrics_addr = app.metrics_addr();
    PaymentServer {
        server: Running::spawn(grpc_addr, |stop| app.run_until_stopped(stop)),
        grpc_addr,
        metrics_addr,
        card_gateway,
        database,
    }
}
