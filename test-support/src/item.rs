//! item-service on 127.0.0.1:0 with its own fresh MongoDB database (the stack's
//! SecantusDB) and the stack's Redis.

use std::net::SocketAddr;

use item_service::{Application, CacheMode, Config};

use crate::{Running, database_name, env};

/// A running item-service.
pub struct ItemServer {
    pub server: Running,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The config it runs with (its database name included).
    pub config: Config,
}

/// The test config: ephemeral ports, a fresh database name, cache on, no seed, no faults.
pub fn config() -> Config {
    let mut c = Config::for_stores(
        &env("ITEM_MONGODB_URL"),
        &database_name("item"),
        &env("ITEM_REDIS_URL"),
    );
    c.grpc_addr = "127.0.0.1:0".into();
    c.metrics_addr = "127.0.0.1:0".into();
    c.cache = CacheMode::On;
    c.seed = false;
    c.faults = String::new();
    // The shared SecantusDB is slow when every test hammers it at once; tests are about
    // outcomes, not speed, so the server-side cap must not decide them.
    c.request_timeout_ms = 60_000;
    c.identity = crate::identity::settings(platform::identity::ITEM_SERVICE);
    // No event stream unless a test asks for one (crate::events::settings): the stack's
    // NATS_URL would otherwise make every test consume the shared default stream.
    c.events = Default::default();
    c
}

pub async fn spawn() -> ItemServer {
    spawn_with(|_| {}).await
}

/// Spawns item-service with `tweak` applied to the test config.
pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> ItemServer {
    let mut config = config();
    tweak(&mut config);
    let app = Application::build(config.clone())
        .await
        .expect("item-service builds against the local stack");
    let grpc_addr = app.grpc_addr();
    let metrics_addr = app.metrics_addr();
    ItemServer {
        server: Running::spawn(grpc_addr, |stop| app.run_until_stopped(stop)),
        grpc_addr,
        metrics_addr,
        config,
    }
}
