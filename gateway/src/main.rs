use clap::Parser;
use gateway::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = platform::telemetry::install("gateway", config.log_json);
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.http_addr(), "gateway listening (REST /api, web shop /, /metrics, /openapi.json)");
    let served = app.run_until_stopped(platform::shutdown::signal()).await;
    telemetry.shutdown().await;
    served
}
