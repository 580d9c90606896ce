//! `item-service`: serve (default), or `item-service seed` to load the demo catalog and exit.

// See the workspace Cargo.toml: glibc malloc was a sixth of a cached read's CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use item_service::{Application, Config};

#[derive(Debug, clap::Parser)]
#[command(
    name = "item-service",
    version,
    about = "Shop catalog, stock and reservations (gRPC)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Load the demo catalog (idempotent) and exit.
    Seed,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = platform::telemetry::install("item-service", cli.config.log_json);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Seed => {
            use secrecy::ExposeSecret;
            let db = item_service::store::connect(
                cli.config.mongodb_url.expose_secret(),
                &cli.config.mongodb_database,
            )
            .await?;
            let report = item_service::seed_catalog(&db).await;
            // Close the driver's connections before the runtime goes away.
            db.client().clone().shutdown().await;
            let report = report?;
            tracing::info!(
                inserted = report.inserted,
                total = report.total,
                "catalog seeded"
            );
            println!(
                "seeded {} of {} catalog items into {}",
                report.inserted, report.total, cli.config.mongodb_database
            );
        }
        Command::Serve => {
            let app = Application::build(cli.config).await?;
            tracing::info!(grpc = %app.grpc_addr(), metrics = %app.metrics_addr(), "item-service listening");
            let client = app.service().database().client().clone();
            let served = app.run_until_stopped(platform::shutdown::signal()).await;
            client.shutdown().await;
            telemetry.shutdown().await;
            served?;
            return Ok(());
        }
    }
    telemetry.shutdown().await;
    Ok(())
}
