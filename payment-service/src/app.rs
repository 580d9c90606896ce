//! Start-up: database, migrations, clients; what any host runs of payment-service (the
//! server, the background reconciler and, with an event stream, the asynchronous checkout's
//! consumer and outbox relay), and the standalone process.

use std::{future::Future, net::SocketAddr, str::FromStr, sync::Arc, time::Duration};

use anyhow::Context as _;
use platform::{
    breaker::BreakerConfig,
    events::EventTasks,
    faults::FaultInjector,
    grpc::ServerOptions,
    host::{Hosted, Standalone},
    identity::{ITEM_SERVICE, PAYMENT_SERVICE, USER_SERVICE},
    transport::GrpcTransport,
};
use secrecy::ExposeSecret as _;
use shop_proto::{
    item::v1::item_service_client::ItemServiceClient,
    payment::v1::payment_service_server::PaymentServiceServer,
    user::v1::user_service_client::UserServiceClient,
};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use tonic::server::NamedService as _;

use crate::{
    card_processor::ProcessorClient,
    config::Config,
    grpc::PaymentService,
    service::{Downstreams, Payments, Settings},
    store::Store,
};

/// The gRPC service name health reports as SERVING.
pub const SERVICE_NAME: &str = PaymentServiceServer::<PaymentService>::NAME;

impl PaymentService {
    /// Connects to the database, runs the migrations and builds the gateway client, and
    /// with an event stream configured the broker connection (which keeps retrying in the
    /// background while NATS is down). `deps` is how it reaches item-service (ChainedCharge)
    /// and user-service (before a compensation refund): lazy channels (so this service
    /// starts without them) or, in the monolith, in-process transports.
    pub async fn connect(config: &Config, deps: Transports) -> anyhow::Result<Self> {
        let mut payments = connect(config, deps).await?;
        let events = match config.events_config() {
            Some(events) => {
                let tasks =
                    EventTasks::connect(events, PAYMENT_SERVICE, payments.outbox().clone()).await?;
                payments = payments.with_relay(tasks.waker());
                Some(Arc::new(crate::checkout::consumers(tasks, &payments)))
            }
            None => None,
        };
        Ok(Self {
            payments,
            reconcile_interval: Duration::from_millis(config.reconcile_interval_ms),
            events,
        })
    }

    /// The tonic server, to serve or to call in-process.
    pub fn server(&self) -> PaymentServiceServer<PaymentService> {
        PaymentServiceServer::new(self.clone())
    }

    /// What a host runs: the server, unless its interval is 0 the reconciler, and with an
    /// event stream the `stock.reserved` consumer and the outbox relay.
    pub fn hosted(&self) -> Hosted {
        self.hosted_with_event_faults(&FaultInjector::default())
    }

    /// [`PaymentService::hosted`] with `faults` (the server's fault rules) applied at the
    /// relay's and consumer's fault points (platform::events::fault_points).
    pub fn hosted_with_event_faults(&self, faults: &FaultInjector) -> Hosted {
        let mut hosted = Hosted::new(self.server(), crate::access::POLICY);
        if !self.reconcile_interval.is_zero() {
            let (payments, interval) = (self.payments.clone(), self.reconcile_interval);
            hosted = hosted.with_task("payment reconciler", move |stop| {
                reconcile_loop(payments, interval, stop)
            });
        }
        if let Some(events) = &self.events {
            hosted = events.host(hosted, faults);
        }
        hosted
    }

    pub fn payments(&self) -> &Payments {
        &self.payments
    }
}

/// The transports to the services payment-service calls.
pub struct Transports {
    pub items: GrpcTransport,
    pub users: GrpcTransport,
}

async fn connect(config: &Config, deps: Transports) -> anyhow::Result<Payments> {
    if config.idempotency_ttl_hours < 24 {
        anyhow::bail!("PAYMENT_IDEMPOTENCY_TTL_HOURS must be at least 24");
    }
    if config.max_amount_minor < 1 {
        anyhow::bail!("PAYMENT_MAX_AMOUNT_MINOR must be at least 1");
    }
    if config.processor_timeout_ms == 0 {
        anyhow::bail!("PAYMENT_GATEWAY_TIMEOUT_MS must be at least 1");
    }
    let card_key = platform::card_keys::read(
        platform::card_keys::Kind::Secret,
        config.card_secret_key.as_ref(),
        config.card_secret_key_file.as_deref(),
    )?;
    let options = MySqlConnectOptions::from_str(config.database_url.expose_secret())
        .context("PAYMENT_DATABASE_URL is not a valid mysql:// URL")?;
    let pool = MySqlPoolOptions::new()
        .max_connections(config.database_max_connections.max(2))
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await
        .context("connecting to PAYMENT_DATABASE_URL")?;
    migrate(&pool).await?;
    let gateway =
        ProcessorClient::new(&config.card_gateway_url, card_key).context("CARD_GATEWAY_URL")?;
    // Every call it makes says it comes from payment-service.
    let signer = config.identity.signer(PAYMENT_SERVICE)?;
    let items = platform::policy::sign(deps.items, &signer, ITEM_SERVICE);
    let users = platform::policy::sign(deps.users, &signer, USER_SERVICE);
    Ok(Payments::new(
        Store::new(pool),
        gateway,
        Downstreams {
            items: ItemServiceClient::new(items),
            users: UserServiceClient::new(users),
        },
        Settings {
            max_amount_minor: config.max_amount_minor,
            processor_timeout: Duration::from_millis(config.processor_timeout_ms),
            card_breaker: BreakerConfig {
                enabled: config.card_breaker,
                failure_threshold: config.card_breaker_failures.max(1),
                min_failure_span: Duration::ZERO,
                open_for: Duration::from_millis(config.card_breaker_open_ms),
                // A fixed cool-down: the card processor is one external system.
                max_open_for: Duration::ZERO,
                half_open_probes: 1,
            },
            item_timeout: Duration::from_millis(config.item_timeout_ms.max(1)),
            user_timeout: Duration::from_millis(config.user_timeout_ms.max(1)),
            idempotency_ttl: Duration::from_secs(u64::from(config.idempotency_ttl_hours) * 3600),
        },
    ))
}

/// Reconciles PENDING payments and refunds and purges old idempotency keys every
/// `interval` until `shutdown` resolves. It settles money only: a chained checkout's
/// reservation is committed or released by user-service's checkout recovery.
async fn reconcile_loop(
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
            // A round finished: what lets a caller (a test, a dashboard) see the reconciler
            // is alive and has looked again since some moment.
            metrics::counter!("payment_reconcile_rounds_total").increment(1);
        }
    };
    tokio::select! {
        () = work => {}
        () = shutdown => {}
    }
}

/// payment-service as its own process: gRPC and metrics listeners bound, ready to run.
pub struct Application {
    service: PaymentService,
    process: Standalone,
    /// The server's fault rules, for the event flow's fault points too.
    faults: FaultInjector,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let faults = FaultInjector::from_json(&config.faults)
            .map_err(|e| anyhow::anyhow!("PAYMENT_FAULTS: {e}"))?;
        let process = Standalone::bind(
            &config.grpc_addr,
            &config.metrics_addr,
            ServerOptions {
                request_timeout: Duration::from_millis(config.request_timeout_ms.max(1)),
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
        let connect = Duration::from_millis(500);
        let tls = config.tls.load()?;
        let items = platform::transport::balanced(
            ITEM_SERVICE,
            &config.item_service_url,
            connect,
            &config.balance,
            tls.as_ref(),
        )
        .context("ITEM_SERVICE_URL")?;
        let users = platform::transport::balanced(
            USER_SERVICE,
            &config.user_service_url,
            connect,
            &config.balance,
            tls.as_ref(),
        )
        .context("USER_SERVICE_URL")?;
        let service = PaymentService::connect(&config, Transports { items, users }).await?;
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

    pub fn service(&self) -> &PaymentService {
        &self.service
    }

    pub fn payments(&self) -> Payments {
        self.service.payments.clone()
    }

    /// Serves gRPC and `/metrics` and runs the reconciler until `shutdown`.
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

/// Runs the migrations, one replica at a time: replicas starting together would otherwise
/// race on MariaDB, whose DDL is not transactional, and the loser would find a migration
/// "partially applied" and refuse to start. sqlx's own lock (`GET_LOCK(name, -1)`) is not
/// checked and does not wait on MariaDB; this one waits up to a minute and is checked.
async fn migrate(pool: &sqlx::MySqlPool) -> anyhow::Result<()> {
    const LOCK: &str = "shop_payment_migrations";
    let mut conn = pool
        .acquire()
        .await
        .context("connecting to PAYMENT_DATABASE_URL for the migrations")?;
    let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 60)")
        .bind(LOCK)
        .fetch_one(&mut *conn)
        .await
        .context("taking the migration lock")?;
    if got != Some(1) {
        anyhow::bail!("another payment-service replica held the migration lock for a minute");
    }
    let result = sqlx::migrate!("./migrations")
        .run(&mut *conn)
        .await
        .context("running payment-service migrations");
    let _ = sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(LOCK)
        .execute(&mut *conn)
        .await;
    result
}
