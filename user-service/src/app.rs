//! Building and running user-service: connect, migrate, and host it (its own process or
//! the monolith).

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use platform::{
    events::{
        Broker, ConsumerSpec, Envelope, HandlerError, Outcome, Relay, RelayWaker, checkout,
        consumer,
    },
    faults::FaultInjector,
    grpc::ServerOptions,
    host::{Hosted, Standalone},
    identity::{ITEM_SERVICE, PAYMENT_SERVICE, USER_SERVICE},
};
use secrecy::ExposeSecret;
use shop_proto::user::v1::user_service_server::UserServiceServer;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tonic::server::NamedService as _;

use crate::{
    config::Config,
    outbox::PgOutbox,
    recovery::{Recovery, RecoverySettings},
    service::{Downstreams, UserApi, UserGrpc},
    store::Store,
    token::TokenKeys,
};

/// Fully-qualified name health reports as SERVING.
pub const SERVICE_NAME: &str = UserServiceServer::<UserApi>::NAME;

/// The service's state, ready to be hosted by any process (its own, or the monolith).
#[derive(Clone)]
pub struct UserService {
    api: UserApi,
    recovery: RecoverySettings,
    /// The asynchronous checkout's relay and consumers, when an event stream is configured.
    events: Option<AsyncTasks>,
}

/// What the asynchronous checkout runs in the background: the outbox relay and one
/// consumer per event kind this service follows.
#[derive(Clone)]
struct AsyncTasks {
    broker: Broker,
    outbox: PgOutbox,
    waker: RelayWaker,
}

impl UserService {
    /// Connects to PostgreSQL, applies migrations and prepares the signing keys.
    /// `deps` is how the chained checkout and the recovery reach the other services.
    pub async fn connect(config: &Config, deps: Downstreams) -> anyhow::Result<Self> {
        let pool = open_database(config, config.database_max_connections).await?;
        let tokens = TokenKeys::new(
            &config.jwt_secret()?,
            Duration::from_secs(config.token_ttl_secs),
        )?;
        // Every call to the next services says it comes from user-service.
        let signer = config.identity.signer(USER_SERVICE)?;
        let deps = Downstreams {
            payment: platform::policy::sign(deps.payment, &signer, PAYMENT_SERVICE),
            item: platform::policy::sign(deps.item, &signer, ITEM_SERVICE),
        };
        let mut grpc = UserGrpc::new(Store::new(pool.clone()), tokens, deps)
            .with_hash_limits(config.hash_limits());
        let events = match config.events.config() {
            Some(events) => {
                let broker = Broker::connect(events, USER_SERVICE).await?;
                let waker = RelayWaker::default();
                grpc = grpc.with_relay(waker.clone());
                Some(AsyncTasks {
                    broker,
                    outbox: PgOutbox { pool },
                    waker,
                })
            }
            None => None,
        };
        Ok(Self {
            api: UserApi(Arc::new(grpc)),
            recovery: config.recovery(),
            events,
        })
    }

    /// The checkout recovery over this service's state (its hosted task runs it; tests
    /// run single rounds).
    pub fn recovery(&self) -> Recovery {
        Recovery::new(self.api.0.clone(), self.recovery.clone())
    }

    /// The tonic server, to serve or to call in-process.
    pub fn server(&self) -> UserServiceServer<UserApi> {
        UserServiceServer::new(self.api.clone())
    }

    /// What a host runs: the server, the checkout recovery, and with an event stream the
    /// outbox relay and the asynchronous checkout's consumers.
    pub fn hosted(&self) -> Hosted {
        self.hosted_with_event_faults(&FaultInjector::default())
    }

    /// [`UserService::hosted`] with `faults` (the server's fault rules) applied at the
    /// relay's and consumers' fault points (platform::events::fault_points).
    pub fn hosted_with_event_faults(&self, faults: &FaultInjector) -> Hosted {
        let recovery = self.recovery();
        let hosted = Hosted::new(self.server(), crate::access::POLICY).with_task(
            "checkout recovery",
            move |stop| async move {
                recovery.run(stop).await;
            },
        );
        match &self.events {
            Some(tasks) => tasks.host(hosted, self.api.0.store.clone(), faults),
            None => hosted,
        }
    }
}

impl AsyncTasks {
    fn host(&self, hosted: Hosted, store: Store, faults: &FaultInjector) -> Hosted {
        let broker = self.broker.clone().with_faults(faults.clone());
        let relay = Relay::with_waker(
            "user-service",
            self.outbox.clone(),
            broker.clone(),
            self.waker.clone(),
        );
        let mut hosted = hosted.with_task("event relay", move |stop| relay.run(stop));
        // One durable consumer per kind; the handlers are the store's conditional moves.
        let follows: [(&'static str, &'static str, Handler); 4] = [
            (
                "stock.reserved consumer",
                checkout::STOCK_RESERVED,
                Handler::StockReserved,
            ),
            (
                "stock.refused consumer",
                checkout::STOCK_REFUSED,
                Handler::Refusal,
            ),
            (
                "payment.succeeded consumer",
                checkout::PAYMENT_SUCCEEDED,
                Handler::PaymentSucceeded,
            ),
            (
                "payment.declined consumer",
                checkout::PAYMENT_DECLINED,
                Handler::Refusal,
            ),
        ];
        for (name, kind, handler) in follows {
            let (broker, store, waker) = (broker.clone(), store.clone(), self.waker.clone());
            hosted = hosted.with_task(name, move |stop| async move {
                let spec = ConsumerSpec::new(USER_SERVICE, kind);
                consumer::run(
                    broker,
                    spec,
                    move |event| {
                        let (store, waker) = (store.clone(), waker.clone());
                        async move {
                            let outcome = handler.apply(&store, &event).await;
                            if matches!(outcome, Ok(Outcome::Applied)) {
                                waker.wake();
                            }
                            outcome
                        }
                    },
                    stop,
                )
                .await;
            });
        }
        hosted
    }
}

#[derive(Clone, Copy)]
enum Handler {
    StockReserved,
    PaymentSucceeded,
    Refusal,
}

impl Handler {
    async fn apply(self, store: &Store, event: &Envelope) -> Result<Outcome, HandlerError> {
        match self {
            Self::StockReserved => store.on_stock_reserved(event).await,
            Self::PaymentSucceeded => store.on_payment_succeeded(event).await,
            Self::Refusal => store.on_refusal(event).await,
        }
    }
}

/// Connects to PostgreSQL (`USER_DATABASE_URL`) with at most `max_connections` and applies
/// the migrations it has not seen yet: the service and the operator's `admin` command.
pub(crate) async fn open_database(config: &Config, max_connections: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = config
        .database_url
        .expose_secret()
        .parse()
        .map_err(|e| anyhow::anyhow!("USER_DATABASE_URL is not a valid postgres URL: {e}"))?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to PostgreSQL: {e}"))?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .map_err(|e| anyhow::anyhow!("running migrations: {e}"))?;
    Ok(pool)
}

/// user-service as its own process: gRPC and metrics listeners bound, ready to run.
pub struct Application {
    service: UserService,
    process: Standalone,
    /// The server's fault rules, for the event flow's fault points too.
    faults: FaultInjector,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let faults = FaultInjector::from_json(&config.faults)
            .map_err(|e| anyhow::anyhow!("USER_FAULTS: {e}"))?;
        let process = Standalone::bind(
            &config.grpc_addr,
            &config.metrics_addr,
            ServerOptions {
                request_timeout: config.request_timeout(),
                faults: faults.clone(),
                trust: config.identity.trust()?,
                fault_admin: config.identity.fault_admin(),
            },
        )
        .await?;
        let connect = Duration::from_millis(500);
        let payment = platform::transport::balanced(
            platform::identity::PAYMENT_SERVICE,
            &config.payment_service_url,
            connect,
            &config.balance,
        )
        .map_err(|e| anyhow::anyhow!("PAYMENT_SERVICE_URL: {e}"))?;
        let item = platform::transport::balanced(
            platform::identity::ITEM_SERVICE,
            &config.item_service_url,
            connect,
            &config.balance,
        )
        .map_err(|e| anyhow::anyhow!("ITEM_SERVICE_URL: {e}"))?;
        let service = UserService::connect(&config, Downstreams { payment, item }).await?;
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

    pub fn service(&self) -> &UserService {
        &self.service
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests.
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
