//! payment-service binary: gRPC on PAYMENT_GRPC_ADDR, metrics on PAYMENT_METRICS_ADDR.

// See the workspace Cargo.toml: glibc malloc was a sixth of a cached read's CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use payment_service::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = platform::telemetry::install("payment-service", config.log_json);
    let app = Application::build(config).await?;
    tracing::info!(
        grpc = %app.grpc_addr(),
        metrics = %app.metrics_addr(),
        "payment-service listening"
    );
    let served = app.run_until_stopped(platform::shutdown::signal()).await;
    telemetry.shutdown().await;
    served
}
