//! The `shop` monolith: user-, item- and payment-service and the gateway in one process,
//! built from the very same code as the distributed deployment. Every call between them
//! (gateway -> services, and the chained checkout's user -> payment -> item) goes through
//! the services' tonic servers in-process: same protobuf encoding, same handlers, no
//! sockets, no HTTP/2. So a load test comparing this with the distributed stack measures
//! what the network and the process boundaries cost.
//!
//! The services are also served on one gRPC listener (for grpcurl and gRPC load), and the
//! mock card gateway can be hosted too (a demo convenience; it stands for an external
//! system and is reached over HTTP like one).

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use futures::FutureExt as _;
use platform::{
    faults::{FaultInjector, FaultLayer},
    grpc::ServerOptions,
    transport::GrpcTransport,
};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tower::Layer as _;

use crate::{Application, Config, downstream::Transports};

/// Everything the monolith needs: each part's own settings plus the monolith's.
pub struct MonolithConfig {
    pub user: user_service::Config,
    pub item: item_service::Config,
    pub payment: payment_service::Config,
    pub gateway: Config,
    /// gRPC listener serving all three services; None for none.
    pub grpc_addr: Option<String>,
    /// Fault rules (platform JSON, keyed by gRPC method path) for the in-process calls and
    /// the gRPC listener; changeable at run time through that listener's FaultAdmin.
    pub faults: String,
    /// Host the mock card gateway here too ("127.0.0.1:0" picks a port); payment-service
    /// is then pointed at it.
    pub card_gateway_addr: Option<String>,
}

pub struct Monolith {
    gateway: Application,
    item: item_service::ItemGrpc,
    payments: payment_service::service::Payments,
    routes: Routes,
    grpc: Option<TcpListener>,
    card: Option<payment_service::card_gateway::CardGateway>,
    faults: FaultInjector,
    reconcile_interval: Duration,
}

/// A service's tonic server as an in-process transport, with the shared fault rules applied.
fn local<S>(server: S, faults: &FaultInjector) -> GrpcTransport
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    platform::transport::in_process(FaultLayer(faults.clone()).layer(server))
}

impl Monolith {
    pub async fn build(mut config: MonolithConfig) -> anyhow::Result<Self> {
        platform::metrics::handle();
        let faults = FaultInjector::from_json(&config.faults)
            .map_err(|e| anyhow::anyhow!("SHOP_FAULTS: {e}"))?;

        let card = match &config.card_gateway_addr {
            Some(addr) => {
                let card = payment_service::card_gateway::CardGateway::build(
                    payment_service::card_gateway::Config::on(addr),
                )
                .await?;
                config.payment.card_gateway_url = format!("http://{}", card.addr());
                Some(card)
            }
            None => None,
        };

        let item = item_service::ItemGrpc::connect(&config.item)
            .await
            .context("item-service")?;
        let item_t = local(item.server(), &faults);
        let payments = payment_service::connect(&config.payment, item_t.clone())
            .await
            .context("payment-service")?;
        let payment_t = local(payment_service::server(payments.clone()), &faults);
        let user = user_service::UserService::connect(&config.user, payment_t.clone())
            .await
            .context("user-service")?;
        let user_t = local(user.server(), &faults);

        let transports = Transports {
            user: ("in-process".into(), user_t),
            item: ("in-process".into(), item_t),
            payment: ("in-process".into(), payment_t),
        };
        let gateway = Application::build_with(config.gateway, transports).await?;

        let routes = Routes::new(item.server())
            .add_service(payment_service::server(payments.clone()))
            .add_service(user.server());
        let grpc = match &config.grpc_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding SHOP_GRPC_ADDR {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            gateway,
            item,
            payments,
            routes,
            grpc,
            card,
            faults,
            reconcile_interval: Duration::from_millis(config.payment.reconcile_interval_ms),
        })
    }

    /// The gateway's HTTP address (REST, web shop, /metrics).
    pub fn http_addr(&self) -> SocketAddr {
        self.gateway.http_addr()
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn card_gateway(&self) -> Option<(SocketAddr, payment_service::card_gateway::Gateway)> {
        self.card.as_ref().map(|c| (c.addr(), c.handle()))
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let shutdown = shutdown.boxed().shared();
        let mut tasks = Vec::new();
        {
            let item = self.item.clone();
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move { item.run_sweeper(stop).await }));
        }
        if !self.reconcile_interval.is_zero() {
            tasks.push(tokio::spawn(payment_service::reconcile_loop(
                self.payments.clone(),
                self.reconcile_interval,
                shutdown.clone(),
            )));
        }
        if let Some(card) = self.card {
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = card.run_until_stopped(stop).await {
                    tracing::error!(error = %e, "card gateway stopped");
                }
            }));
        }
        if let Some(listener) = self.grpc {
            let stop = shutdown.clone();
            let routes = self.routes;
            let faults = self.faults.clone();
            tasks.push(tokio::spawn(async move {
                let served = platform::grpc::serve(
                    listener,
                    routes,
                    &[
                        user_service::SERVICE_NAME,
                        item_service::SERVICE_NAME,
                        payment_service::SERVICE_NAME,
                    ],
                    ServerOptions {
                        request_timeout: Duration::from_secs(30),
                        faults,
                    },
                    stop,
                )
                .await;
                if let Err(e) = served {
                    tracing::error!(error = %platform::telemetry::chain(&e), "gRPC listener stopped");
                }
            }));
        }
        let result = self.gateway.run_until_stopped(shutdown).await;
        for t in tasks {
            t.abort();
        }
        result
    }
}
