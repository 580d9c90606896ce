//! Shop's edge: a REST/JSON API and a web shop for browsers over user-, item- and
//! payment-service, and the checkout saga (orchestrated, parallel or chained) with deadlines,
//! retries, circuit breakers and compensation. The same code runs against the services over
//! gRPC channels (`gateway` binary) or in-process (the `shop` crate's monolith).

pub mod admission;
pub mod api;
pub mod auth;
pub mod card_tokens;
pub mod checkout;
pub mod config;
pub mod deadline;
pub mod downstream;
pub mod error;
pub mod lab;
pub mod operator;
pub mod retry;
pub mod serve;
pub mod state;
pub mod throttle;
pub mod web;

use std::{future::Future, net::SocketAddr};

use futures::FutureExt as _;

pub use checkout::order_id_for;
pub use config::Config;
use platform::faults::FaultInjector;
use tokio::net::TcpListener;

use crate::{
    auth::TokenVerifier,
    deadline::Budgets,
    downstream::{Downstreams, Transports},
    state::{AppState, Inner},
};

/// The gateway, bound and ready to serve: its public listener and its operator listener.
pub struct Application {
    listener: TcpListener,
    metrics_listener: TcpListener,
    router: axum::Router,
    state: AppState,
    limits: serve::ServeLimits,
}

impl Application {
    /// Connects (lazily) to the services named in `config` and binds the public and the
    /// operator listener (both at once, so a taken port fails the start).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let transports = Transports::from_config(&config)?;
        Self::build_with(config, transports).await
    }

    /// As [`build`](Self::build), with the services reached through `transports` (the
    /// monolith passes in-process ones).
    pub async fn build_with(config: Config, transports: Transports) -> anyhow::Result<Self> {
        config.check_checkout_lease()?;
        // The metrics recorder before the downstreams: their breakers and retry budgets
        // publish their starting values when created, which a later recorder would miss.
        platform::metrics::handle();
        let faults = FaultInjector::from_json(&config.faults)
            .map_err(|e| anyhow::anyhow!("GATEWAY_FAULTS: {e}"))?;
        // Every call to a service says it comes from the gateway (and, in the request's
        // context, for which user).
        let signer = config.identity.signer(platform::identity::GATEWAY)?;
        let transports = transports.signed(&signer);
        let lab = lab::Lab::new(&config, &signer)?;
        let state = AppState::new(Inner {
            downstreams: Downstreams::new(transports, &config),
            verifier: TokenVerifier::new(&config.jwt_secret),
            budgets: Budgets {
                checkout: config.checkout_budget(),
                read: config.read_budget(),
                lease: config.checkout_lease(),
            },
            faults,
            login_throttle: throttle::LoginThrottle::new(config.login_throttle()),
            register_throttle: throttle::RegisterThrottle::new(config.register_throttle()),
            auth_admission: admission::Admission::new(config.auth_concurrency),
            lab,
            card_tokens: card_tokens::CardTokens::new(
                &config.card_gateway_url,
                config.card_publishable_key()?,
                config.checkout_budget(),
            )?,
        });
        let router = api::router(
            state.clone(),
            config.body_limit_bytes,
            config.identity.fault_admin(),
        );
        let listener = TcpListener::bind(&config.http_addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding {}: {e}", config.http_addr))?;
        let metrics_listener = TcpListener::bind(&config.metrics_addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding metrics on {}: {e}", config.metrics_addr))?;
        Ok(Self {
            listener,
            metrics_listener,
            router,
            state,
            limits: config.serve_limits(),
        })
    }

    /// The injector the services in this process share (the monolith): the lab
    /// (`PUT /api/admin/faults`, SHOP_FAULT_ADMIN=on) then sets their rules there instead
    /// of through their FaultAdmin.
    pub fn attach_service_faults(&self, faults: &FaultInjector) {
        self.state.lab.attach_services(faults);
    }

    /// The card processor hosted in this process (the monolith): the lab sets its rules
    /// there instead of through its `/admin/faults`.
    pub fn attach_card_faults(&self, faults: &FaultInjector) {
        self.state.lab.attach_card(faults);
    }

    /// The public listener's address (REST API, web shop).
    pub fn http_addr(&self) -> SocketAddr {
        bound(&self.listener)
    }

    /// The operator listener's address (`/metrics`, `/debug/downstreams`).
    pub fn metrics_addr(&self) -> SocketAddr {
        bound(&self.metrics_listener)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves both listeners until `shutdown` resolves; the public one then lets in-flight
    /// requests finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let shutdown = shutdown.boxed().shared();
        let (listener, state, stop) = (self.metrics_listener, self.state, shutdown.clone());
        let operator = tokio::spawn(async move {
            if let Err(e) = operator::serve(listener, state, stop).await {
                tracing::error!(error = %e, "the operator listener stopped");
            }
        });
        let served = serve::serve(self.listener, self.router, self.limits, shutdown).await;
        // A scrape in flight is not worth waiting for.
        operator.abort();
        served?;
        Ok(())
    }
}

fn bound(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}
