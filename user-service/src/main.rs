use clap::Parser;
use user_service::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    platform::telemetry::init(config.log_json);
    let app = Application::build(config).await?;
    tracing::info!(
        grpc = %app.grpc_addr(),
        metrics = %app.metrics_addr(),
        "user-service listening"
    );
    app.run_until_stopped(platform::shutdown::signal()).await
}
