//! `loadtest`: drive the Shop (or any loopback HTTP/gRPC target) with an open or closed
//! model, or run the whole sync-chain experiment and write the report.

// See the workspace Cargo.toml: glibc malloc was a sixth of a cached read's CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::{Parser, Subcommand};
use loadtest::{
    admin::ShopAdmin,
    experiment::{self, report},
    generator::{
        engine::{self, Model, RunSpec, Workload},
        http::{HttpPool, Target},
        scenario::{self, Mix, ShopWorkload},
    },
    resilience::check,
};

/// "30s", "500ms", "2m" or plain seconds.
fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = n.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(0.0..=3600.0 * 24.0).contains(&(v * mul)) {
        return Err(format!("{s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(v * mul))
}

#[derive(Parser)]
#[command(
    name = "loadtest",
    about = "Load generator and sync-chain experiment for the Shop"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One load run against a running gateway (or a gRPC server for `echo`).
    Run(RunArgs),
    /// Start the stack from the built binaries, run every comparison, write the report.
    Experiment(ExperimentArgs),
    /// Crash test: SIGKILL each process in each step of a checkout, restart it, and check
    /// every checkout ends placed, refunded or never charged (needs `scripts/stack up`).
    Crash(CrashArgs),
    /// Chaos soak: a checkout + browse mix at half the peak while a random process gets
    /// SIGKILL every 20-40 s, then every checkout's ending and the checker (needs
    /// `scripts/stack up`; not for CI).
    Soak(SoakArgs),
    /// Check the stores' consistency (read-only): exit 0 consistent, 1 violations, 2 error.
    Check(check::Args),
    /// Store drift benchmark: many checkouts in one run on a fresh stack, store time per
    /// checkout for each block, the last block against the first (needs `scripts/stack up`).
    Drift(DriftArgs),
}

#[derive(Parser)]
struct DriftArgs {
    /// Directory with the built binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    #[arg(long, default_value_t = 5000)]
    checkouts: usize,
    /// Checkouts per block.
    #[arg(long, default_value_t = 500)]
    block: usize,
    /// Closed-model users.
    #[arg(long, default_value_t = 4)]
    users: usize,
    /// Checkout strategy: orchestrated | parallel | chained.
    #[arg(long, default_value = "orchestrated")]
    strategy: String,
    /// Client-side timeout per checkout.
    #[arg(long, value_parser = duration, default_value = "10s")]
    timeout: Duration,
    /// Write the blocks as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    no_progress: bool,
}

#[derive(Parser)]
struct SoakArgs {
    /// Directory with the built binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    #[arg(long, value_parser = duration, default_value = "5m")]
    duration: Duration,
    /// Operations per second of the mix (default: half the peak).
    #[arg(long)]
    rate: Option<f64>,
    /// The stack's peak in operations per second of the mix (default: measured first,
    /// 10 s closed model with 32 users).
    #[arg(long)]
    peak: Option<f64>,
    /// Checkout strategy: orchestrated | parallel | chained.
    #[arg(long, default_value = "orchestrated")]
    strategy: String,
    /// Shortest time between two SIGKILLs.
    #[arg(long, value_parser = duration, default_value = "20s")]
    kill_min: Duration,
    /// Longest time between two SIGKILLs.
    #[arg(long, value_parser = duration, default_value = "40s")]
    kill_max: Duration,
    /// After the load, how long every checkout may take to reach its ending.
    #[arg(long, value_parser = duration, default_value = "90s")]
    settle: Duration,
    #[arg(long, default_value = "target/soak/logs")]
    log_dir: PathBuf,
    /// Writes soak.md and soak.json here.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
    #[arg(long)]
    no_progress: bool,
}

#[derive(Parser)]
struct CrashArgs {
    /// Directory with the built binaries (gateway, user-service, item-service,
    /// payment-service, card-gateway).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Only these combinations, process:step, comma-separated; `*` for all of one side
    /// (e.g. gateway:during-commit,item-service:*). Processes: gateway, user-service,
    /// item-service, payment-service, card-gateway. Steps: after-reserve, after-charge,
    /// during-commit, during-order-recording, during-compensation; for `--strategy async`:
    /// accepted, reserving, charging, charged, completing (by default the 11 kills that
    /// matter there; `*:*` for all 25). Async needs NATS_URL (the stack exports it).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Checkout strategy: orchestrated | parallel | chained | async.
    #[arg(long, default_value = "orchestrated")]
    strategy: String,
    /// Where the processes' logs go (appended across restarts).
    #[arg(long, default_value = "target/crash/logs")]
    log_dir: PathBuf,
    /// Writes crash.md and crash.json here.
    #[arg(long, default_value = "target/crash")]
    out: PathBuf,
    /// Keep the throw-away databases (kept anyway when a combination fails).
    #[arg(long)]
    keep_databases: bool,
}

#[derive(Parser)]
struct RunArgs {
    /// Gateway (or shop monolith) base URL; gRPC URL for --scenario echo.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// The shop's key directory (`shopctl keys init`; scripts/run uses target/shop-keys):
    /// gRPC calls (--scenario echo) go out as its operator.
    #[arg(long, env = "SHOP_KEYS_DIR")]
    keys: Option<PathBuf>,
    /// browse | checkout | mix | echo | list=N,get=N,checkout=N
    #[arg(long, default_value = "browse")]
    scenario: String,
    /// Checkout strategy: orchestrated | parallel | chained | async.
    #[arg(long, default_value = "orchestrated")]
    strategy: String,
    /// Asynchronous checkouts: how long (from the intended start) an accepted order is
    /// followed until it is no longer pending.
    #[arg(long, value_parser = duration, default_value = "60s")]
    completion_timeout: Duration,
    /// Open model: arrivals per second (omit for the closed model).
    #[arg(long)]
    rate: Option<f64>,
    /// Closed model: virtual users (default 10 when --rate is not given).
    #[arg(long)]
    users: Option<usize>,
    /// Closed model: think time between a user's operations.
    #[arg(long, value_parser = duration, default_value = "0s")]
    think: Duration,
    #[arg(long, value_parser = duration, default_value = "5s")]
    warmup: Duration,
    #[arg(long, value_parser = duration, default_value = "30s")]
    duration: Duration,
    /// Client-side timeout per operation, from its intended start.
    #[arg(long, value_parser = duration, default_value = "10s")]
    timeout: Duration,
    /// HTTP connections (shared by all virtual users).
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Stop after this many operations (warm-up included).
    #[arg(long)]
    max_requests: Option<u64>,
    /// Accounts to create for checkouts (one per virtual user).
    #[arg(long, default_value_t = 8)]
    accounts: usize,
    /// Admin account (made one by the operator: `user-service admin grant EMAIL`) to create
    /// items with plenty of stock for checkouts; without it, in-stock catalog items are bought.
    #[arg(long)]
    admin_email: Option<String>,
    #[arg(long, default_value = "load-test-password-1")]
    admin_password: String,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    no_progress: bool,
}

#[derive(Parser)]
struct ExperimentArgs {
    /// Directory with the built binaries (gateway, user-service, item-service,
    /// payment-service, card-gateway, optionally shop).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Report directory.
    #[arg(long, default_value = "report")]
    out: PathBuf,
    /// A few seconds per section: checks that everything runs, not what it measures.
    #[arg(long)]
    quick: bool,
    /// Only these sections (comma-separated ids: calibration, cost_per_hop,
    /// tail_amplification, availability, cascading_failure, cache).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Checkouts per second for sections 1-3.
    #[arg(long)]
    rate: Option<f64>,
    /// Use this running `shop` monolith instead of starting target/release/shop. It
    /// must use the same databases and JWT secret as the started stack,
    /// so this is mainly for debugging the experiment.
    #[arg(long)]
    shop_url: Option<String>,
    #[arg(long)]
    no_progress: bool,
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    if let Some(dir) = &a.keys {
        loadtest::identity::use_key_dir(dir)?;
    }
    let model = match a.rate {
        Some(rate) if rate > 0.0 => Model::Open { rate },
        Some(_) => anyhow::bail!("--rate must be positive"),
        None => Model::Closed {
            users: a.users.unwrap_or(10),
            think_ms: a.think.as_millis() as u64,
        },
    };
    let tracker = loadtest::generator::completion::Tracker::new();
    let mut checkouts = false;
    let workload: Arc<dyn Workload> = if a.scenario == "echo" {
        Arc::new(scenario::EchoWorkload::new(
            scenario::grpc_channel(&a.target).await?,
        ))
    } else {
        let mix: Mix = a
            .scenario
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--scenario: {e}"))?;
        let target = Target::parse(&a.target)?;
        let admin = ShopAdmin::new(target.clone());
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let browse = admin.catalog(500).await?;
        let (buy, tokens) = if mix.checkout > 0 {
            let buy = match &a.admin_email {
                Some(email) => {
                    let token = admin.account(email, &a.admin_password).await?;
                    admin.create_items(&token, &run_id, 8).await?
                }
                None => browse.iter().take(50).cloned().collect(),
            };
            let n = match model {
                Model::Closed { users, .. } => users,
                Model::Open { .. } => a.accounts,
            };
            (buy, admin.accounts(&run_id, n.max(1)).await?)
        } else {
            (Vec::new(), Vec::new())
        };
        checkouts = mix.checkout > 0;
        Arc::new(
            ShopWorkload::new(
                Arc::new(HttpPool::new(target, a.connections)),
                Arc::new(browse),
                Arc::new(buy),
                Arc::new(tokens),
                mix,
                &a.strategy,
            )
            .tracking(tracker.clone(), a.completion_timeout),
        )
    };
    let mut spec = RunSpec::new(
        format!("{} ({})", a.scenario, model.describe()),
        model,
        a.warmup,
        a.duration,
    );
    spec.timeout = a.timeout;
    spec.max_ops = a.max_requests;
    spec.progress = !a.no_progress;
    let measure_from = std::time::Instant::now() + a.warmup;
    let mut m = engine::run(&spec, workload).await;
    if checkouts {
        if tracker.following() > 0 {
            eprintln!(
                "waiting up to {:?} for {} accepted orders to complete",
                a.completion_timeout,
                tracker.following()
            );
        }
        tracker.settle(a.completion_timeout).await;
        m.result.completion = Some(tracker.stats(measure_from, a.strategy == "async"));
    }
    let r = &m.result;
    println!("{}", report::RUN_HEADERS.join(" | "));
    println!("{}", report::run_row(&r.name, r).join(" | "));
    println!("\nper endpoint (ms):");
    for e in &r.endpoints {
        println!(
            "  {:<45} {:<5} n={:<7} p50 {:>8} p90 {:>8} p99 {:>8} max {:>8}",
            e.endpoint,
            e.outcome,
            e.latency.count,
            report::f_ms(e.latency.p50_ms),
            report::f_ms(e.latency.p90_ms),
            report::f_ms(e.latency.p99_ms),
            report::f_ms(e.latency.max_ms)
        );
    }
    if let Some(c) = &r.completion {
        println!("\ncheckouts ({}):", c.note);
        println!(
            "  answers: {} placed (201), {} accepted (202), {} failed (timeouts not included)",
            c.answered_placed, c.answered_accepted, c.answered_failed
        );
        for (what, l) in [
            ("time to answer", &c.answer),
            ("time to completed order", &c.completion),
        ] {
            println!(
                "  {:<25} n={:<7} p50 {:>8} p90 {:>8} p99 {:>8} max {:>8}",
                what,
                l.count,
                report::f_ms(l.p50_ms),
                report::f_ms(l.p90_ms),
                report::f_ms(l.p99_ms),
                report::f_ms(l.max_ms)
            );
        }
        println!(
            "  endings: {} placed, {} cancelled, {} still pending when given up",
            c.placed, c.cancelled, c.unfinished
        );
    }
    match &r.pacer_lateness {
        Some(l) => println!(
            "\npacer lateness (actual minus intended start, {} requests): {}",
            l.count,
            l.summary()
        ),
        None => println!("\npacer lateness: none (closed model)"),
    }
    match &r.waterfall {
        Some(w) => {
            println!();
            for l in w.lines() {
                println!("{l}");
            }
        }
        None => {
            println!("\nwaterfall: none (no successful checkout carried a Server-Timing header)")
        }
    }
    if !r.errors_by_kind.is_empty() {
        println!("\nerrors by kind:");
        for (k, n) in &r.errors_by_kind {
            println!("  {k:<30} {n}");
        }
    }
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_string_pretty(r)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(a) => run(a).await,
        Command::Check(a) => std::process::exit(check::run_cli(a).await),
        Command::Experiment(a) => {
            let report = experiment::run(experiment::Options {
                bin_dir: a.bin_dir,
                out_dir: a.out.clone(),
                quick: a.quick,
                progress: !a.no_progress,
                only: a.only,
                rate: a.rate,
                shop_url: a.shop_url,
            })
            .await?;
            eprintln!(
                "[loadtest] wrote {}/README.md, report.json and {} charts in {:.0} s",
                a.out.display(),
                report
                    .sections
                    .iter()
                    .map(|s| s.charts.len())
                    .sum::<usize>(),
                report.elapsed_s
            );
            for n in &report.notes {
                eprintln!("[loadtest] note: {n}");
            }
            Ok(())
        }
        Command::Crash(a) => crash(a).await,
        Command::Soak(a) => soak(a).await,
        Command::Drift(a) => drift(a).await,
    }
}

async fn drift(a: DriftArgs) -> anyhow::Result<()> {
    let report = loadtest::experiment::drift::run(&loadtest::experiment::drift::Options {
        bin_dir: a.bin_dir,
        checkouts: a.checkouts,
        block: a.block,
        users: a.users,
        strategy: a.strategy,
        timeout: a.timeout,
        progress: !a.no_progress,
    })
    .await?;
    print!("{}", report.text());
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

async fn soak(a: SoakArgs) -> anyhow::Result<()> {
    if a.kill_min.is_zero() || a.kill_min > a.kill_max {
        anyhow::bail!("--kill-min must be positive and at most --kill-max");
    }
    let report = loadtest::resilience::chaos::run(&loadtest::resilience::chaos::Options {
        bin_dir: a.bin_dir,
        log_dir: a.log_dir,
        out_dir: a.out,
        duration: a.duration,
        rate: a.rate,
        peak: a.peak,
        strategy: a.strategy,
        kill_min: a.kill_min,
        kill_max: a.kill_max,
        settle: a.settle,
        progress: !a.no_progress,
    })
    .await?;
    print!("{}", report.markdown());
    for why in &report.shortfalls {
        eprintln!("[soak] FAIL: {why}");
    }
    if !report.violations.is_empty() {
        eprintln!(
            "[soak] FAIL: {} consistency violations",
            report.violations.len()
        );
    }
    if !report.passed() {
        std::process::exit(1);
    }
    Ok(())
}

async fn crash(a: CrashArgs) -> anyhow::Result<()> {
    use loadtest::resilience::crash::{self, plan};
    let combos = if a.only.is_empty() {
        plan::Combo::all_for(&a.strategy)
    } else {
        plan::parse_list_for(&a.only, &a.strategy).map_err(|e| anyhow::anyhow!("--only: {e}"))?
    };
    if combos.is_empty() {
        anyhow::bail!("--only: no combination given");
    }
    let report = crash::run_matrix(&crash::Options {
        bin_dir: a.bin_dir,
        log_dir: a.log_dir,
        combos,
        strategy: a.strategy,
        out_dir: Some(a.out),
        keep_databases: a.keep_databases,
        extra_env: Vec::new(),
    })
    .await?;
    println!("{}", report.table());
    print!("{}", report.details());
    let failed = report.failures();
    println!(
        "\n{} of {} combinations failed; {} SIGKILLs; {:.0} s",
        failed,
        report.results.len(),
        report.kills,
        report.elapsed_s
    );
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
