//! Hosting item-service: what any host runs of it, and the standalone process.

use std::{future::Future, net::SocketAddr};

use anyhow::Context as _;
use platform::{
    faults::FaultInjector,
    grpc::ServerOptions,
    host::{Hosted, Standalone},
};
use shop_proto::item::v1::item_service_server::ItemServiceServer;
use tonic::server::NamedService as _;

use crate::{config::Config, grpc::ItemService};

/// Fully-qualified name health reports as SERVING.
pub const SERVICE_NAME: &str = ItemServiceServer::<ItemService>::NAME;

impl ItemService {
    /// What a host runs: the server and the reservation sweeper, and with NATS configured
    /// the event relay and the checkout events' consumers.
    pub fn hosted(&self) -> Hosted {
        self.hosted_with_event_faults(&FaultInjector::default())
    }

    /// [`ItemService::hosted`] with `faults` (the server's fault rules) applied at the
    /// relay's and consumers' fault points (platform::events::fault_points).
    pub fn hosted_with_event_faults(&self, faults: &FaultInjector) -> Hosted {
        let sweeper = self.clone();
        let hosted = Hosted::new(self.server(), crate::access::POLICY).with_task(
            "reservation sweeper",
            move |stop| async move {
                sweeper.run_sweeper(stop).await;
            },
        );
        match self.events() {
            Some(events) => events.host(hosted, faults),
            None => hosted,
        }
    }
}

/// The standalone item-service: store connections and bound listeners, ready to run.
pub struct Application {
    service: ItemService,
    process: Standalone,
    /// The server's fault rules, for the event flow's fault points too.
    faults: FaultInjector,
}

impl Application {
    /// Binds the gRPC and metrics listeners (port 0 picks a free port) and connects to
    /// MongoDB (creating indexes) and Redis.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let faults = FaultInjector::from_json(&config.faults).context("ITEM_FAULTS")?;
        let process = Standalone::bind(
            &config.grpc_addr,
            &config.metrics_addr,
            ServerOptions {
                request_timeout: config.request_timeout(),
                faults: faults.clone(),
                trust: config.identity.trust()?,
                fault_admin: config.identity.fault_admin(),
                tls: config.server_tls()?,
            },
        )
        .await?;
        let process = match &config.health_addr {
            Some(addr) => process.health_on(addr).await?,
            None => process,
        };
        let service = ItemService::connect(&config).await?;
        Ok(Self {
            service,
            process,
            faults,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.process.grpc_addr()
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.process.metrics_addr()
    }

    /// The service, e.g. to call `sweep_once` in tests.
    pub fn service(&self) -> ItemService {
        self.service.clone()
    }

    /// Serves gRPC and `/metrics` and runs the reservation sweeper until `shutdown`.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.process
            .run_until_stopped(
                self.service.hosted_with_event_faults(&self.faults),
                shutdown,
            )
            .await
    }
}
