// See the workspace Cargo.toml: glibc malloc was a sixth of a cached read's CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use gateway::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = platform::telemetry::install("gateway", config.log_json);
    let app = Application::build(config).await?;
    tracing::info!(
        addr = %app.http_addr(),
        metrics = %app.metrics_addr(),
        "gateway listening (REST /api, web shop /, /openapi.json; /metrics and /debug/downstreams on metrics)"
    );
    let served = app.run_until_stopped(platform::shutdown::signal()).await;
    telemetry.shutdown().await;
    served
}
