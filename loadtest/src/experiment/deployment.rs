//! The stack the experiment measures: every service started from the built binaries on free
//! loopback ports, in the variants the sections compare, and where each one listens.

use anyhow::Context as _;

use crate::{
    experiment::sections::FaultTargets,
    generator::http::Target,
    stack::{Stack, free_addr},
};

/// Where everything listens.
pub(crate) struct Deployment {
    pub card: Target,
    pub item_grpc: String,
    pub item_metrics: String,
    pub item_nc_grpc: String,
    pub item_nc_metrics: String,
    pub user_grpc: String,
    pub user_metrics: String,
    pub payment_grpc: String,
    pub payment_metrics: String,
    /// The payment-service without card-gateway timeout or breaker.
    pub payment_nt_grpc: String,
    pub gw: Target,
    pub gw_noretry: Target,
    pub gw_unprotected: Target,
    pub shop: Option<Target>,
    /// The monolith's own gRPC listener (its FaultAdmin), when this run started it.
    pub shop_grpc: Option<String>,
    /// item-service's MongoDB server and database.
    pub mongo_url: String,
    pub mongo_db: String,
    /// Every process's event streams and consumers live under this namespace
    /// (`SHOP_EVENTS_NAMESPACE`), so other shops on the same NATS server never mix in.
    pub events_namespace: String,
}

impl Deployment {
    /// Every server a section may give faults.
    pub fn fault_targets(&self) -> FaultTargets {
        let mut grpc = vec![
            self.user_grpc.clone(),
            self.item_grpc.clone(),
            self.item_nc_grpc.clone(),
            self.payment_grpc.clone(),
            self.payment_nt_grpc.clone(),
        ];
        grpc.extend(self.shop_grpc.clone());
        FaultTargets {
            grpc,
            card: Some(self.card.clone()),
        }
    }
}

fn url(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}")
}

/// Starts every process the sections need; returns where they listen and the report's
/// setup lines.
pub(crate) async fn start_stack(
    stack: &mut Stack,
    run_id: &str,
    shop_url: Option<&str>,
    mongo_url: &str,
) -> anyhow::Result<(Deployment, Vec<String>)> {
    let mut setup = Vec::new();
    let jwt = format!("loadtest-{}-{}", run_id, uuid::Uuid::new_v4().simple());
    stack.common_env = vec![
        ("USER_JWT_SECRET".into(), jwt),
        // A catalog of this run's own, so other runs' stock never interferes (on a
        // server of the run's own, too, where one could be started).
        ("ITEM_MONGODB_URL".into(), mongo_url.to_owned()),
        ("ITEM_MONGODB_DATABASE".into(), format!("loadtest_{run_id}")),
        // Streams and durable consumers of the run's own (used when NATS_URL is set).
        ("SHOP_EVENTS_NAMESPACE".into(), format!("loadtest_{run_id}")),
    ];
    let card = free_addr()?;
    stack
        .start(
            "card-gateway",
            "card-gateway",
            &[("CARD_GATEWAY_ADDR", card.to_string())],
            card,
        )
        .await?;

    stack
        .run_once("item-service", &["seed"], &[])
        .await
        .context("seeding the catalog")?;
    let (item, item_m) = (free_addr()?, free_addr()?);
    stack
        .start(
            "item-service",
            "item-service",
            &[
                ("ITEM_GRPC_ADDR", item.to_string()),
                ("ITEM_METRICS_ADDR", item_m.to_string()),
                ("ITEM_CACHE", "on".into()),
            ],
            item,
        )
        .await?;
    let (item_nc, item_nc_m) = (free_addr()?, free_addr()?);
    stack
        .start(
            "item-service-nocache",
            "item-service",
            &[
                ("ITEM_GRPC_ADDR", item_nc.to_string()),
                ("ITEM_METRICS_ADDR", item_nc_m.to_string()),
                ("ITEM_CACHE", "off".into()),
            ],
            item_nc,
        )
        .await?;
    // payment-service asks user-service about compensations, and user-service calls
    // payment-service: user-service's address is picked first.
    let (user, user_m) = (free_addr()?, free_addr()?);
    let (pay, pay_m) = (free_addr()?, free_addr()?);
    let pay_env = |addr: std::net::SocketAddr, m: std::net::SocketAddr| {
        vec![
            ("PAYMENT_GRPC_ADDR", addr.to_string()),
            ("PAYMENT_METRICS_ADDR", m.to_string()),
            ("CARD_GATEWAY_URL", url(card)),
            ("ITEM_SERVICE_URL", url(item)),
            ("USER_SERVICE_URL", url(user)),
        ]
    };
    stack
        .start(
            "payment-service",
            "payment-service",
            &pay_env(pay, pay_m),
            pay,
        )
        .await?;
    // The unprotected payment-service waits up to a minute for the card gateway, with no
    // breaker in front of it.
    let (pay_nt, pay_nt_m) = (free_addr()?, free_addr()?);
    let mut env = pay_env(pay_nt, pay_nt_m);
    env.push(("PAYMENT_GATEWAY_TIMEOUT_MS", "60000".into()));
    env.push(("PAYMENT_REQUEST_TIMEOUT_MS", "60000".into()));
    env.push(("PAYMENT_CARD_BREAKER", "off".into()));
    stack
        .start("payment-service-notimeout", "payment-service", &env, pay_nt)
        .await?;
    stack
        .start(
            "user-service",
            "user-service",
            &[
                ("USER_GRPC_ADDR", user.to_string()),
                ("USER_METRICS_ADDR", user_m.to_string()),
                ("PAYMENT_SERVICE_URL", url(pay)),
                // The checkout recovery commits and releases reservations.
                ("ITEM_SERVICE_URL", url(item)),
            ],
            user,
        )
        .await?;
    // Each gateway's operator listener (/metrics, /debug/downstreams) on a free port too.
    let gw_env = |addr: std::net::SocketAddr,
                  pay: std::net::SocketAddr|
     -> anyhow::Result<Vec<(&'static str, String)>> {
        Ok(vec![
            ("GATEWAY_HTTP_ADDR", addr.to_string()),
            ("GATEWAY_METRICS_ADDR", free_addr()?.to_string()),
            ("USER_SERVICE_URL", url(user)),
            ("ITEM_SERVICE_URL", url(item)),
            ("PAYMENT_SERVICE_URL", url(pay)),
            // The asynchronous checkout swaps the card for the processor's token first.
            ("CARD_GATEWAY_URL", url(card)),
            // Every load-test account registers from this one address.
            ("GATEWAY_REGISTER_THROTTLE", "off".into()),
        ])
    };
    let gw = free_addr()?;
    stack
        .start("gateway", "gateway", &gw_env(gw, pay)?, gw)
        .await?;
    let gw_nr = free_addr()?;
    let mut env = gw_env(gw_nr, pay)?;
    env.push(("GATEWAY_RETRIES", "off".into()));
    stack
        .start("gateway-noretry", "gateway", &env, gw_nr)
        .await?;
    let gw_un = free_addr()?;
    let mut env = gw_env(gw_un, pay_nt)?;
    env.extend([
        ("GATEWAY_RETRIES", "off".into()),
        ("GATEWAY_BREAKERS", "off".into()),
        ("GATEWAY_CHECKOUT_BUDGET_MS", "55000".into()),
        ("GATEWAY_READ_BUDGET_MS", "60000".into()),
    ]);
    stack
        .start("gateway-unprotected", "gateway", &env, gw_un)
        .await?;
    setup.push(format!(
        "Processes: card-gateway, item-service (ITEM_CACHE=on) and a second one with ITEM_CACHE=off, payment-service and a second one with a 60 s card-gateway timeout and no card breaker, user-service, and three gateways: defaults (retries on, breakers on, 2 s checkout budget), retries off, and unprotected (no retries, no breakers, a 55 s checkout budget (its record lease, twice the budget plus 1 s, must stay within user-service's 120 s) and 60 s for everything else). Each on free 127.0.0.1 ports, logs in {}.",
        stack.log_dir().display()
    ));

    let (mut shop, mut shop_grpc) = (None, None);
    if let Some(u) = shop_url {
        shop = Some(Target::parse(u)?);
        setup.push(format!(
            "The `shop` monolith at {u} (started by the caller)."
        ));
    } else if stack.has_bin("shop") {
        let s = free_addr()?;
        let mut env = vec![
            ("GATEWAY_HTTP_ADDR", s.to_string()),
            ("CARD_GATEWAY_URL", url(card)),
            ("GATEWAY_REGISTER_THROTTLE", "off".into()),
        ];
        // Its own gRPC listener (all three services; FaultAdmin for the in-process
        // calls), its gateway's operator listener and, in case a version uses them, the
        // parts' addresses: all free ports.
        for k in [
            "SHOP_GRPC_ADDR",
            "GATEWAY_METRICS_ADDR",
            "USER_GRPC_ADDR",
            "ITEM_GRPC_ADDR",
            "PAYMENT_GRPC_ADDR",
            "USER_METRICS_ADDR",
            "ITEM_METRICS_ADDR",
            "PAYMENT_METRICS_ADDR",
        ] {
            env.push((k, free_addr()?.to_string()));
        }
        let grpc = env
            .iter()
            .find(|(k, _)| *k == "SHOP_GRPC_ADDR")
            .map(|(_, a)| format!("http://{a}"));
        match stack.start("shop", "shop", &env, s).await {
            Ok(()) => {
                shop = Some(Target::parse(&url(s))?);
                shop_grpc = grpc;
                setup.push("The `shop` monolith (gateway and the three services in one process, in-process calls) on the same databases and card gateway.".into());
            }
            Err(e) => setup.push(format!(
                "The `shop` monolith did not start, so no monolith rows: {e:#}"
            )),
        }
    } else {
        setup.push("No `shop` binary in the bin dir, so no monolith rows.".into());
    }
    Ok((
        Deployment {
            card: Target::parse(&url(card))?,
            item_grpc: url(item),
            item_metrics: format!("http://{item_m}/metrics"),
            item_nc_grpc: url(item_nc),
            item_nc_metrics: format!("http://{item_nc_m}/metrics"),
            user_grpc: url(user),
            user_metrics: format!("http://{user_m}/metrics"),
            payment_grpc: url(pay),
            payment_metrics: format!("http://{pay_m}/metrics"),
            payment_nt_grpc: url(pay_nt),
            gw: Target::parse(&url(gw))?,
            gw_noretry: Target::parse(&url(gw_nr))?,
            gw_unprotected: Target::parse(&url(gw_un))?,
            shop,
            shop_grpc,
            events_namespace: format!("loadtest_{run_id}"),
            mongo_url: mongo_url.to_owned(),
            mongo_db: format!("loadtest_{run_id}"),
        },
        setup,
    ))
}
