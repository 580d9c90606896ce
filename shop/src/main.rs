//! `shop`: the whole shop in one process (the monolith deployment). Settings are the union
//! of the parts' environment variables (USER_*, ITEM_*, PAYMENT_*, CARD_GATEWAY_URL,
//! GATEWAY_*, USER_JWT_SECRET, ...) plus the SHOP_* flags below. The services' own
//! listen and metrics addresses are not used: the gateway's operator listener
//! (GATEWAY_METRICS_ADDR) serves /metrics for everything, and SHOP_GRPC_ADDR serves all
//! three gRPC services.

// See the workspace Cargo.toml: glibc malloc was a sixth of a cached read's CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use shop::{Monolith, MonolithConfig};

#[derive(Debug, clap::Parser)]
#[command(
    name = "shop",
    about = "Shop monolith: all services and the gateway in one process"
)]
struct Args {
    /// gRPC listener for all three services ("off" for none).
    #[arg(long, env = "SHOP_GRPC_ADDR", default_value = "127.0.0.1:50050")]
    grpc_addr: String,
    /// Fault rules for the in-process service calls (platform faults JSON).
    #[arg(long, env = "SHOP_FAULTS", default_value = "")]
    faults: String,
    /// Also host the mock card gateway at this address (e.g. 127.0.0.1:8081); empty: use
    /// CARD_GATEWAY_URL.
    #[arg(long, env = "SHOP_CARD_GATEWAY_ADDR", default_value = "")]
    card_gateway_addr: String,
}

fn part<T: clap::Parser>(name: &str) -> anyhow::Result<T> {
    T::try_parse_from([name]).map_err(|e| anyhow::anyhow!("{name} settings: {e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let gateway: gateway::Config = part("gateway")?;
    let telemetry = platform::telemetry::install("shop", gateway.log_json);
    let config = MonolithConfig {
        user: part("user-service")?,
        item: part("item-service")?,
        payment: part("payment-service")?,
        gateway,
        grpc_addr: (!args.grpc_addr.is_empty() && args.grpc_addr != "off")
            .then_some(args.grpc_addr),
        faults: args.faults,
        card_gateway_addr: (!args.card_gateway_addr.is_empty()).then_some(args.card_gateway_addr),
    };
    let shop = Monolith::build(config).await?;
    tracing::info!(
        http = %shop.http_addr(),
        metrics = %shop.metrics_addr(),
        grpc = ?shop.grpc_addr(),
        card_gateway = ?shop.card_gateway().map(|c| c.0),
        "shop monolith listening (web shop and REST on http, /metrics and /debug/downstreams on metrics, all services on grpc)"
    );
    println!("shop listening on http://{}", shop.http_addr());
    let served = shop.run_until_stopped(platform::shutdown::signal()).await;
    telemetry.shutdown().await;
    served
}
