//! The `shop` monolith: user-, item- and payment-service and the gateway in one process,
//! built from the very same code as the distributed deployment. Every call between them
//! (gateway -> services, and the chained checkout's user -> payment -> item) goes through
//! the services' tonic servers in-process: same protobuf encoding, same handlers, no
//! sockets, no HTTP/2. So a load test comparing this with the distributed stack measures
//! what the network and the process boundaries cost.
//!
//! The services are hosted exactly as their own processes host them
//! ([`platform::host`]): the same routes, on one gRPC listener here (for grpcurl and gRPC
//! load), and every background task each service declares. The mock card gateway can be
//! hosted too (a demo convenience; it stands for an external system and is reached over
//! HTTP like one).

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use card_gateway::CardGateway;
use futures::FutureExt as _;
use gateway::downstream::Transports;
use item_service::ItemService;
use payment_service::PaymentService;
use platform::{
    faults::FaultInjector,
    grpc::ServerOptions,
    host::{Host, Task},
    identity::{self, Trust},
};
use user_service::UserService;

/// Everything the monolith needs: each part's own settings plus the monolith's.
pub struct MonolithConfig {
    pub user: user_service::Config,
    pub item: item_service::Config,
    pub payment: payment_service::Config,
    pub gateway: gateway::Config,
    /// gRPC listener serving all three services; None for none.
    pub grpc_addr: Option<String>,
    /// Fault rules (platform JSON, keyed by gRPC method path) for the in-process calls and
    /// the gRPC listener; changeable at run time through that listener's FaultAdmin.
    pub faults: String,
    /// Host the mock card gateway here too ("127.0.0.1:0" picks a port); payment-service
    /// is then pointed at it.
    pub card_gateway_addr: Option<String>,
}

/// Gives each part its own identity for the in-process calls: a key made now that never
/// leaves the process (the gateway's may be given instead). Returns what the services trust: those keys plus the configured
/// trust file (SHOP_TRUSTED_KEYS_FILE: the operator's key, for grpcurl and the load test on
/// the gRPC listener), if any.
fn internal_identities(config: &mut MonolithConfig) -> anyhow::Result<Trust> {
    let configured = [
        &config.gateway.identity,
        &config.user.identity,
        &config.item.identity,
        &config.payment.identity,
    ]
    .into_iter()
    .find(|i| i.trusted_keys.is_some() || i.trusted_keys_file.is_some())
    .map(|i| i.trust())
    .transpose()?
    .unwrap_or_default();
    let mut signers = Vec::new();
    // The gateway keeps a key it was given (SHOP_IDENTITY_KEY_FILE: scripts/run hands it
    // the gateway's): a card processor in its own process trusts that one for the lab.
    let gateway = &config.gateway.identity;
    if gateway.identity_key.is_some() || gateway.identity_key_file.is_some() {
        signers.push(gateway.signer(identity::GATEWAY)?);
    }
    let given = signers.len();
    for (name, settings) in [
        (identity::GATEWAY, &mut config.gateway.identity),
        (identity::USER_SERVICE, &mut config.user.identity),
        (identity::ITEM_SERVICE, &mut config.item.identity),
        (identity::PAYMENT_SERVICE, &mut config.payment.identity),
    ]
    .into_iter()
    .skip(given)
    {
        let key = identity::generate_key()?;
        signers.push(identity::Signer::from_pem(name, &key)?);
        settings.identity_key = Some(key);
        settings.identity_key_file = None;
    }
    let own = Trust::of(&signers.iter().collect::<Vec<_>>());
    Ok(own.union(&configured))
}

pub struct Monolith {
    gateway: gateway::Application,
    host: Host,
    card: Option<(SocketAddr, card_gateway::Gateway)>,
}

impl Monolith {
    pub async fn build(mut config: MonolithConfig) -> anyhow::Result<Self> {
        let faults = FaultInjector::from_json(&config.faults)
            .map_err(|e| anyhow::anyhow!("SHOP_FAULTS: {e}"))?;
        let trust = internal_identities(&mut config)?;
        let mut host = Host::new(ServerOptions {
            request_timeout: Duration::from_secs(30),
            faults: faults.clone(),
            trust: trust.clone(),
            fault_admin: config.gateway.identity.fault_admin(),
            // Its parts call each other in-process; its own gRPC listener (the operator's
            // grpcurl) stays plaintext.
            tls: None,
        });
        if let Some(addr) = &config.grpc_addr {
            host = host.grpc_on(addr).await.context("SHOP_GRPC_ADDR")?;
        }

        let mut card = None;
        if let Some(addr) = &config.card_gateway_addr {
            // A fresh key pair per process: the hosted processor, payment-service (the
            // secret key) and the gateway (the publishable key) all live here.
            let (secret_key, publishable_key) = platform::card_keys::generate_pair();
            config.payment.card_secret_key = Some(secret_key.clone());
            config.gateway.card_publishable_key = Some(publishable_key.clone());
            let mut card_config =
                card_gateway::Config::on(addr).with_keys(secret_key, publishable_key);
            card_config.identity = config.gateway.identity.clone();
            // Its /admin/* takes only the operator's token: with no trust file configured
            // nobody could use it, so it is left out instead of refusing to start.
            let identity = &card_config.identity;
            if identity.fault_admin()
                && identity.trusted_keys.is_none()
                && identity.trusted_keys_file.is_none()
            {
                tracing::info!(
                    "hosted card gateway without /admin/*: SHOP_FAULT_ADMIN=on needs \
                     SHOP_TRUSTED_KEYS_FILE (the operator's key) for it"
                );
                card_config.identity.fault_admin = identity::Switch::Off;
            }
            let gateway = CardGateway::build(card_config).await?;
            config.payment.card_gateway_url = format!("http://{}", gateway.addr());
            // The asynchronous checkout tokenises cards at the same processor.
            config.gateway.card_gateway_url = config.payment.card_gateway_url.clone();
            card = Some((gateway.addr(), gateway.handle()));
            host.task(Task::new("card gateway", |stop| async move {
                if let Err(e) = gateway.run_until_stopped(stop).await {
                    tracing::error!(error = %e, "card gateway stopped");
                }
            }));
        }

        // Each service reaches the next through the one before's in-process transport.
        let item = ItemService::connect(&config.item)
            .await
            .context("item-service")?
            .hosted_with_event_faults(&faults);
        let item_t = item.in_process(&faults, &trust);
        // payment-service and user-service call each other: payment's way to user-service
        // is pointed at it once it is built.
        let (users_late, users_target) = platform::transport::late();
        let payment = PaymentService::connect(
            &config.payment,
            payment_service::Transports {
                items: item_t.clone(),
                users: users_late,
            },
        )
        .await
        .context("payment-service")?
        .hosted_with_event_faults(&faults);
        let payment_t = payment.in_process(&faults, &trust);
        let user = UserService::connect(
            &config.user,
            user_service::Downstreams {
                payment: payment_t.clone(),
                item: item_t.clone(),
            },
        )
        .await
        .context("user-service")?
        .hosted_with_event_faults(&faults);
        let user_t = user.in_process(&faults, &trust);
        users_target.set(user_t.clone());
        for service in [item, payment, user] {
            host.host(service);
        }

        let transports = Transports {
            user: ("in-process".into(), user_t),
            item: ("in-process".into(), item_t),
            payment: ("in-process".into(), payment_t),
        };
        let gateway = gateway::Application::build_with(config.gateway, transports).await?;
        // The web shop's lab (admins, SHOP_FAULT_ADMIN=on) sets the services' rules too.
        gateway.attach_service_faults(&faults);
        if let Some((_, card)) = &card {
            gateway.attach_card_faults(card.faults());
        }
        Ok(Self {
            gateway,
            host,
            card,
        })
    }

    /// The gateway's public HTTP address (REST, web shop).
    pub fn http_addr(&self) -> SocketAddr {
        self.gateway.http_addr()
    }

    /// The gateway's operator listener: `/metrics` (every part's: they share one recorder)
    /// and `/debug/downstreams`.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.gateway.metrics_addr()
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.host.grpc_addr()
    }

    pub fn card_gateway(&self) -> Option<(SocketAddr, card_gateway::Gateway)> {
        self.card.clone()
    }

    /// Serves HTTP and gRPC and runs every service's tasks until `shutdown`.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let shutdown = shutdown.boxed().shared();
        tokio::try_join!(
            self.host.run_until_stopped(shutdown.clone()),
            self.gateway.run_until_stopped(shutdown),
        )?;
        Ok(())
    }
}
