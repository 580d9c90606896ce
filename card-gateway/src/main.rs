//! The mock card gateway: a Stripe-like HTTP JSON API (see the `card_gateway` library).

// See the workspace Cargo.toml: glibc malloc was a sixth of a cached read's CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use card_gateway::{CardGateway, Config};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = platform::telemetry::install("card-gateway", config.log_json);
    let gateway = CardGateway::build(config).await?;
    tracing::info!(addr = %gateway.addr(), "card-gateway listening");
    let served = gateway
        .run_until_stopped(platform::shutdown::signal())
        .await;
    telemetry.shutdown().await;
    served
}
