// See the workspace Cargo.toml: glibc malloc was a sixth of a cached read's CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use user_service::{Application, Config, admin::AdminCommand};

/// The service's settings, and optionally an operator command run instead of serving.
#[derive(Debug, clap::Parser)]
#[command(
    name = "user-service",
    about = "Shop accounts, sessions and order history (gRPC). Without a command it serves."
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Grant or revoke the admin role (on USER_DATABASE_URL); takes effect at the
    /// account's next login.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { config, command } = Cli::parse();
    if let Some(Command::Admin(command)) = command {
        match user_service::admin::run(&config, &command).await {
            Ok(change) => {
                println!("{change}");
                return Ok(());
            }
            Err(e) => {
                eprintln!("user-service admin: {e:#}");
                std::process::exit(1);
            }
        }
    }
    let telemetry = platform::telemetry::install("user-service", config.log_json);
    let app = Application::build(config).await?;
    tracing::info!(
        grpc = %app.grpc_addr(),
        metrics = %app.metrics_addr(),
        "user-service listening"
    );
    let served = app.run_until_stopped(platform::shutdown::signal()).await;
    telemetry.shutdown().await;
    served
}
