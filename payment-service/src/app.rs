//! Start-up: database, migrations, clients, listeners; and the run loop with the
//! background reconciler.

use std::{future::Future, net::SocketAddr, str::FromStr, time::Duration};

use anyhow::Context as _;
use futures::FutureExt as _;
use platform::{
    breaker::BreakerConfig,
    faults::FaultInjector,
    grpc::{ServerOptions, bind},
    transport::GrpcTransport,
};
use secrecy::ExposeSecret as _;
use shop_proto::{
    item::v1::item_service_client::ItemServiceClient,
    payment::v1::payment_service_server::PaymentServiceServer,
};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::{
    config::Config,
    gateway_client::GatewayClient,
    grpc::PaymentGrpc,
    service::{Payments, Settings},
    store::Store,
};

/// The gRPC service name health reports as SERVING.
pub const SERVICE_NAME: &str = "shop.payment.v1.PaymentService";

/// Connects to the database, runs the migrations and builds the gateway client. `items` is
/// how ChainedCharge reaches item-service: a lazy channel (so this service starts without
/// item-service) or, in the monolith, an in-process transport.
pub async fn connect(config: &Config, items: GrpcTransport) -> anyhow::Result<Payments> {
    if config.idempotency_ttl_hours < 24 {
        anyhow::bail!("PAYMENT_IDEMPOTENCY_TTL_HOURS must be at least 24");
    }
    if config.max_amount_minor < 1 {
        anyhow::bail!("PAYMENT_MAX_AMOUNT_MINOR must be at least 1");
    }
    if config.gateway_timeout_ms == 0 {
        anyhow::bail!("PAYMENT_GATEWAY_TIMEOUT_MS must be at least 1");
    }
    let options = MySqlConnectOptions::from_str(config.database_url.expose_secret())
        .context("PAYMENT_DATABASE_URL is not a valid mysql:// URL")?;
    let pool = MySqlPoolOptions::new()
        .max_connections(config.database_max_connections.max(2))
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await
        .context("connecting to PAYMENT_DATABASE_URL")?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .context("running payment-service migrations")?;
    let gateway = GatewayClient::new(&config.card_gateway_url).context("CARD_GATEWAY_URL")?;
    Ok(Payments::new(
        Store::new(pool),
        gateway,
        ItemServiceClient::new(items),
        Settings {
            max_amount_minor: config.max_amount_minor,
            gateway_timeout: Duration::from_millis(config.gateway_timeout_ms),
            card_breaker: BreakerConfig {
                enabled: config.card_breaker,
                failure_threshold: config.card_breaker_failures.max(1),
                open_for: Duration::from_millis(config.card_breaker_open_ms),
                half_open_probes: 1,
            },
            item_timeout: Duration::from_millis(config.item_timeout_ms.max(1)),
            idempotency_ttl: Duration::from_secs(u64::from(config.idempotency_ttl_hours) * 3600),
        },
    ))
}

/// The tonic server, to serve or to call in-process (monolith).
pub fn server(payments: Payments) -> PaymentServiceServer<PaymentGrpc> {
    PaymentServiceServer::new(PaymentGrpc::new(payments))
}

/// The PaymentService routes, for this binary and for the monolith.
pub fn routes(payments: Payments) -> Routes {
    Routes::new(server(payments))
}

/// Reconciles PENDING payments and refunds and purges old idempotency keys every
/// `interval` until `shutdown` resolves.
pub async fn reconcile_loop(
    payments: Payments,
    interval: Duration,
    shutdown: impl Future<Output = ()> + Send,
) {
    let work = async {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match payments.reconcile_pending().await {
                Ok(settled) if !settled.is_empty() => {
                    tracing::info!(count = settled.len(), "reconciled pending payments");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %platform::telemetry::chain(&e), "reconcile run failed")
                }
            }
            match payments.purge_keys().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "purged expired idempotency keys"),
                Err(e) => {
                    tracing::warn!(error = %platform::telemetry::chain(&e), "purging keys failed")
                }
            }
        }
    };
    tokio::select! {
        () = work => {}
        () = shutdown => {}
    }
}

pub struct Application {
    grpc: TcpListener,
    metrics: TcpListener,
    payments: Payments,
    faults: FaultInjector,
    request_timeout: Duration,
    reconcile_interval: Duration,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // Install the metrics recorder before the first counter is touched.
        platform::metrics::handle();
        let faults = FaultInjector::from_json(&config.faults)
            .map_err(|e| anyhow::anyhow!("PAYMENT_FAULTS: {e}"))?;
        let items =
            platform::transport::channel(&config.item_service_url, Duration::from_millis(500))
                .context("ITEM_SERVICE_URL is not a valid URL")?;
        let payments = connect(&config, items).await?;
        let grpc = bind(&config.grpc_addr)
            .await
            .with_context(|| format!("binding PAYMENT_GRPC_ADDR {}", config.grpc_addr))?;
        let metrics = bind(&config.metrics_addr)
            .await
            .with_context(|| format!("binding PAYMENT_METRICS_ADDR {}", config.metrics_addr))?;
        Ok(Self {
            grpc,
            metrics,
            payments,
            faults,
            request_timeout: Duration::from_millis(config.request_timeout_ms.max(1)),
            reconcile_interval: Duration::from_millis(config.reconcile_interval_ms),
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn payments(&self) -> Payments {
        self.payments.clone()
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let shutdown = shutdown.boxed().shared();
        let reconciler = (!self.reconcile_interval.is_zero()).then(|| {
            tokio::spawn(reconcile_loop(
                self.payments.clone(),
                self.reconcile_interval,
                shutdown.clone(),
            ))
        });
        let metrics = tokio::spawn(platform::metrics::serve(self.metrics, shutdown.clone()));
        let served = platform::grpc::serve(
            self.grpc,
            routes(self.payments),
            &[SERVICE_NAME],
            ServerOptions {
                request_timeout: self.request_timeout,
                faults: self.faults,
            },
            shutdown,
        )
        .await;
        if let Some(r) = reconciler {
            r.abort();
        }
        metrics.abort();
        served.context("serving payment-service gRPC")
    }
}
