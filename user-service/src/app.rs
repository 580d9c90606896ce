//! Building and running user-service: connect, migrate, and host it (its own process or
//! the monolith).

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use platform::{
    events::{ConsumerSpec, Envelope, EventTasks, HandlerError, Outcome, RelayWaker, checkout},
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
    service::{Downstreams, Users},
    store::Store,
    token::TokenKeys,
};

/// Fully-qualified name health reports as SERVING.
pub const SERVICE_NAME: &str = UserServiceServer::<UserService>::NAME;

/// user-service's gRPC implementation, ready to be hosted by any process (its own, or the
/// monolith): the state every request shares, and what a host runs besides the server.
/// A tuple so the request handlers reach the state as `self.0`.
#[derive(Clone)]
pub struct UserService(pub(crate) Arc<Users>, Background);

/// What runs besides the server: the checkout recovery and, when an event stream is
/// configured, the asynchronous checkout's relay and consumers.
#[derive(Clone)]
struct Background {
    recovery: RecoverySettings,
    events: Option<EventTasks<PgOutbox>>,
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
        let store = Store::new(pool.clone());
        let mut users =
            Users::new(store.clone(), tokens, deps).with_hash_limits(config.hash_limits());
        let events = match config.events.config() {
            Some(events) => {
                let tasks = EventTasks::connect(events, USER_SERVICE, PgOutbox { pool }).await?;
                users = users.with_relay(tasks.waker());
                Some(consumers(tasks, &store))
            }
            None => None,
        };
        Ok(Self(
            Arc::new(users),
            Background {
                recovery: config.recovery(),
                events,
            },
        ))
    }

    /// The checkout recovery over this service's state (its hosted task runs it; tests
    /// run single rounds).
    pub fn recovery(&self) -> Recovery {
        Recovery::new(self.0.clone(), self.1.recovery.clone())
    }

    /// The tonic server, to serve or to call in-process.
    pub fn server(&self) -> UserServiceServer<UserService> {
        UserServiceServer::new(self.clone())
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
        match &self.1.events {
            Some(events) => events.host(hosted, faults),
            None => hosted,
        }
    }
}

/// `tasks` with one consumer per kind the asynchronous checkout follows; the handlers are
/// the store's conditional moves.
fn consumers(tasks: EventTasks<PgOutbox>, store: &Store) -> EventTasks<PgOutbox> {
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
    let waker = tasks.waker();
    follows
        .into_iter()
        .fold(tasks, |tasks, (task, kind, handler)| {
            let (store, waker) = (store.clone(), waker.clone());
            tasks.consume(task, ConsumerSpec::new(USER_SERVICE, kind), move |event| {
                handler.apply(store.clone(), waker.clone(), event)
            })
        })
}

#[derive(Clone, Copy)]
enum Handler {
    StockReserved,
    PaymentSucceeded,
    Refusal,
}

impl Handler {
    /// Applies `event`; a move that stored an event wakes the relay.
    async fn apply(
        self,
        store: Store,
        waker: RelayWaker,
        event: Envelope,
    ) -> Result<Outcome, HandlerError> {
        let outcome = match self {
            Self::StockReserved => store.on_stock_reserved(&event).await,
            Self::PaymentSucceeded => store.on_payment_succeeded(&event).await,
            Self::Refusal => store.on_refusal(&event).await,
        };
        if matches!(outcome, Ok(Outcome::Applied)) {
            waker.wake();
        }
        outcome
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
        let payment = platform::transport::balanced(
            platform::identity::PAYMENT_SERVICE,
            &config.payment_service_url,
            connect,
            &config.balance,
            tls.as_ref(),
        )
        .map_err(|e| anyhow::anyhow!("PAYMENT_SERVICE_URL: {e}"))?;
        let item = platform::transport::balanced(
            platform::identity::ITEM_SERVICE,
            &config.item_service_url,
            connect,
            &config.balance,
            tls.as_ref(),
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
