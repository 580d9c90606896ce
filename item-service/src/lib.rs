//! item-service: the Shop catalog, stock and stock reservations on MongoDB, with a Redis
//! cache in front of item reads.
//!
//! Library shape: [`Application`] is the standalone server; [`ItemGrpc`] is the service
//! itself, which the `shop` monolith hosts in-process; [`seed_catalog`] loads the demo
//! catalog.

pub mod cache;
pub mod config;
pub mod cursor;
pub mod error;
pub mod grpc;
pub mod input;
pub mod reservations;
pub mod seed;
pub mod store;

use std::{future::Future, net::SocketAddr};

use anyhow::Context;
use futures::FutureExt;
use platform::{faults::FaultInjector, grpc::ServerOptions};
use tokio::net::TcpListener;

pub use config::{CacheMode, Config};
pub use error::Error;
pub use grpc::ItemGrpc;
pub use seed::{SeedReport, seed_catalog};

/// Fully-qualified name health reports as SERVING.
pub const SERVICE_NAME: &str = "shop.item.v1.ItemService";

/// The standalone item-service: store connections and bound listeners, ready to run.
pub struct Application {
    grpc: ItemGrpc,
    grpc_listener: TcpListener,
    metrics_listener: TcpListener,
    options: ServerOptions,
}

impl Application {
    /// Connects to MongoDB (creating indexes) and Redis, and binds the gRPC and metrics
    /// listeners (port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        platform::metrics::handle();
        let faults = FaultInjector::from_json(&config.faults).context("ITEM_FAULTS")?;
        let grpc = ItemGrpc::connect(&config).await?;
        let grpc_listener = platform::grpc::bind(&config.grpc_addr)
            .await
            .with_context(|| format!("binding gRPC on {}", config.grpc_addr))?;
        let metrics_listener = platform::grpc::bind(&config.metrics_addr)
            .await
            .with_context(|| format!("binding metrics on {}", config.metrics_addr))?;
        Ok(Self {
            grpc,
            grpc_listener,
            metrics_listener,
            options: ServerOptions {
                request_timeout: config.request_timeout(),
                faults,
            },
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The service, e.g. to call `sweep_once` in tests.
    pub fn service(&self) -> ItemGrpc {
        self.grpc.clone()
    }

    /// Serves gRPC and `/metrics` and runs the reservation sweeper until `shutdown`.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let shutdown = shutdown.boxed().shared();
        let metrics = tokio::spawn(platform::metrics::serve(
            self.metrics_listener,
            shutdown.clone(),
        ));
        let sweeper = {
            let grpc = self.grpc.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { grpc.run_sweeper(shutdown).await })
        };
        let routes = self.grpc.routes();
        let served = platform::grpc::serve(
            self.grpc_listener,
            routes,
            &[SERVICE_NAME],
            self.options,
            shutdown,
        )
        .await;
        sweeper.abort();
        match metrics.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics server failed"),
            Err(e) if !e.is_cancelled() => tracing::warn!(error = %e, "metrics task failed"),
            _ => {}
        }
        served.context("serving gRPC")
    }
}
