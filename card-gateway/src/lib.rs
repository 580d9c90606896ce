//! `card-gateway`: a mock card processor with an HTTP JSON API shaped like Stripe's charges,
//! refunds and tokens, Stripe's test cards, Stripe's idempotency rules, and injectable
//! latency, HTTP 500s and hangs. In memory; tests run it in-process on port 0.
//!
//! Routes: `POST /v1/tokens`, `POST /v1/charges`, `GET /v1/charges/{id}`,
//! `GET /v1/charges?idempotency_key=`, `POST /v1/refunds`, `GET /health`, `GET /admin/stats`,
//! `GET|PUT /admin/faults`, `GET|PUT /admin/hangs`, `GET /metrics` (Prometheus).
//!
//! **Keys**: every `/v1/*` call carries an account key as `Authorization: Bearer`, as at
//! Stripe: the secret key (payment-service's) opens everything, the publishable key (the
//! gateway's) only `POST /v1/tokens`; `/admin/*` takes the operator's token instead. See
//! `auth` and card-gateway/README.md.
//!
//! **Tokens** (the asynchronous checkout's card handling): the shop's edge sends the card
//! the customer typed to `POST /v1/tokens` and gets `{"id": "tok_...", ..}` back; from then
//! on only the token travels (the checkout request, the event stream, the payment row), and
//! payment-service charges it with `POST /v1/charges` and `{"token": "tok_..."}` in place of
//! `card`. A token is single-use, its account's only, expires by age, and is never dropped
//! for a new one while pending (`tokens`).

pub mod admin;
pub mod api;
pub mod auth;
pub mod card;
pub mod config;
mod errors;
mod handle;
mod handlers;
mod journal;
pub mod ledger;
pub mod routes;
pub mod tokens;
mod validation;

use std::{future::Future, net::SocketAddr};

use anyhow::Context as _;
use platform::{faults::FaultInjector, http_server::HttpServer, identity::Trust};
use tokio::net::TcpListener;

use auth::Accounts;
pub use config::{AUDIENCE, Config, DEFAULT_MAX_ENTRIES};
pub use handle::Gateway;
use ledger::Ledger;
pub use routes::{
    ROUTE_CREATE_CHARGE, ROUTE_CREATE_REFUND, ROUTE_CREATE_TOKEN, ROUTE_GET_CHARGE,
    ROUTE_LIST_CHARGES, router,
};

/// A bound, not yet running gateway.
pub struct CardGateway {
    listener: TcpListener,
    gateway: Gateway,
    accounts: Accounts,
    admin: Option<Trust>,
}

impl CardGateway {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let faults = FaultInjector::from_json(&config.faults)
            .map_err(|e| anyhow::anyhow!("CARD_GATEWAY_FAULTS: {e}"))?;
        let hangs = FaultInjector::from_json(&config.hangs)
            .map_err(|e| anyhow::anyhow!("CARD_GATEWAY_HANGS: {e}"))?;
        let listener = TcpListener::bind(&config.addr)
            .await
            .with_context(|| format!("binding CARD_GATEWAY_ADDR {}", config.addr))?;
        let admin = if config.identity.fault_admin() {
            Some(
                config
                    .identity
                    .trust()
                    .context("SHOP_FAULT_ADMIN=on: the admin API needs the operator's key")?,
            )
        } else {
            None
        };
        let accounts = Accounts::from_config(&config)?;
        let books =
            Ledger::new(config.max_entries).token_limits(config.token_ttl_secs, config.max_tokens);
        let ledger = match &config.journal {
            Some(path) => books
                .journaled(path)
                .with_context(|| format!("CARD_GATEWAY_JOURNAL {}", path.display()))?,
            None => books,
        };
        Ok(Self {
            listener,
            gateway: Gateway::new(faults, hangs, ledger),
            accounts,
            admin,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn handle(&self) -> Gateway {
        self.gateway.clone()
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = self.gateway.inner.stop.clone();
        HttpServer::new("card-gateway", routes::http_limits())
            .answering(routes::limit_answer)
            .serve(
                self.listener,
                router(self.gateway, self.accounts, self.admin),
                async move {
                    shutdown.await;
                    // Wake hanging requests so shutdown does not wait for them.
                    let _ = stop.send(true);
                },
            )
            .await
            .context("serving card-gateway")
    }
}
