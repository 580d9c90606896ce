//! Building and running user-service: connect, migrate, bind, serve.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use futures::FutureExt;
use platform::{faults::FaultInjector, grpc::ServerOptions, transport::GrpcTransport};
use secrecy::ExposeSecret;
use shop_proto::user::v1::user_service_server::UserServiceServer;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::{
    config::Config,
    service::{UserApi, UserGrpc},
    store::Store,
    token::TokenKeys,
};

pub const SERVICE_NAME: &str = "shop.user.v1.UserService";

/// The service's state, ready to be hosted by any process (its own, or the monolith).
#[derive(Clone)]
pub struct UserService {
    api: UserApi,
}

impl UserService {
    /// Connects to PostgreSQL, applies migrations and prepares the signing keys.
    /// `payment` is how the chained checkout reaches payment-service.
    pub async fn connect(config: &Config, payment: GrpcTransport) -> anyhow::Result<Self> {
        let options: PgConnectOptions =
            config.database_url.expose_secret().parse().map_err(|e| {
                anyhow::anyhow!("USER_DATABASE_URL is not a valid postgres URL: {e}")
            })?;
        let pool = PgPoolOptions::new()
            .max_connections(config.database_max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to PostgreSQL: {e}"))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("running migrations: {e}"))?;
        let tokens = TokenKeys::new(
            &config.jwt_secret()?,
            Duration::from_secs(config.token_ttl_secs),
        )?;
        let grpc = UserGrpc::new(Store::new(pool), tokens, &config.admin_emails, payment);
        Ok(Self {
            api: UserApi(Arc::new(grpc)),
        })
    }

    /// The tonic server, to serve or to call in-process.
    pub fn server(&self) -> UserServiceServer<UserApi> {
        UserServiceServer::new(self.api.clone())
    }

    pub fn routes(&self) -> Routes {
        Routes::new(self.server())
    }
}

/// user-service as its own process: gRPC and metrics listeners bound, ready to run.
pub struct Application {
    service: UserService,
    grpc: TcpListener,
    grpc_addr: SocketAddr,
    metrics: TcpListener,
    metrics_addr: SocketAddr,
    options: ServerOptions,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let faults = FaultInjector::from_json(&config.faults)
            .map_err(|e| anyhow::anyhow!("USER_FAULTS: {e}"))?;
        let payment =
            platform::transport::channel(&config.payment_service_url, Duration::from_millis(500))
                .map_err(|e| anyhow::anyhow!("PAYMENT_SERVICE_URL: {e}"))?;
        let service = UserService::connect(&config, payment).await?;
        let grpc = TcpListener::bind(&config.grpc_addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding {}: {e}", config.grpc_addr))?;
        let metrics = TcpListener::bind(&config.metrics_addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding {}: {e}", config.metrics_addr))?;
        Ok(Self {
            grpc_addr: grpc.local_addr()?,
            metrics_addr: metrics.local_addr()?,
            service,
            grpc,
            metrics,
            options: ServerOptions {
                request_timeout: config.request_timeout(),
                faults,
            },
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn service(&self) -> &UserService {
        &self.service
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let shutdown = shutdown.shared();
        let metrics = tokio::spawn(platform::metrics::serve(self.metrics, shutdown.clone()));
        platform::grpc::serve(
            self.grpc,
            self.service.routes(),
            &[SERVICE_NAME],
            self.options,
            shutdown,
        )
        .await?;
        metrics.abort();
        Ok(())
    }
}
