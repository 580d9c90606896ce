//! `loadtest experiment`: starts the stack it needs from the built binaries (see
//! [`super::deployment`]), runs the sections (see [`super::sections`]) in order, each with
//! its injected faults cleared when it ends, and writes the report. Every run is bounded in
//! time.

use std::{path::PathBuf, sync::Arc, time::Instant};

use anyhow::Context as _;

use super::ctx::{Ctx, Params};
use crate::{
    admin::ShopAdmin,
    experiment::{
        deployment::start_stack,
        process_cpu::{self, Processes},
        report::{self, Machine, Report, Section},
        sections::{self, with_faults_cleared},
    },
    mongo_server::MongoServer,
    stack::Stack,
};

#[derive(Debug, Clone)]
pub struct Options {
    pub bin_dir: PathBuf,
    pub out_dir: PathBuf,
    pub quick: bool,
    pub progress: bool,
    /// Section ids to run (empty: all).
    pub only: Vec<String>,
    /// Checkouts per second for sections 1-3 (default: 25 full, 8 quick).
    pub rate: Option<f64>,
    /// A running `shop` monolith to use instead of starting one (it must share the
    /// stack's databases and JWT secret: start it with the same environment).
    pub shop_url: Option<String>,
}

const REQUIRED_ENV: [&str; 4] = [
    "USER_DATABASE_URL",
    "PAYMENT_DATABASE_URL",
    "ITEM_MONGODB_URL",
    "ITEM_REDIS_URL",
];

/// Items checkouts buy from: enough that concurrent reservations rarely update the same
/// document.
const BUY_ITEMS: usize = 64;

fn wanted(opts: &Options, id: &str) -> bool {
    opts.only.is_empty() || opts.only.iter().any(|o| o == id)
}

/// The stack started for a run, with the accounts and items it measures with.
pub(crate) struct Prepared {
    pub stack: Stack,
    pub mongo: MongoServer,
    pub ctx: Ctx,
    pub setup: Vec<String>,
}

/// Checks the environment and the binaries, starts the stack (with a MongoDB-wire server
/// of the run's own where one can be started), and creates the accounts and items.
pub(crate) async fn prepare(
    bin_dir: &std::path::Path,
    shop_url: Option<&str>,
    p: Params,
    progress: bool,
) -> anyhow::Result<Prepared> {
    let missing: Vec<&str> = REQUIRED_ENV
        .iter()
        .copied()
        .filter(|v| std::env::var(v).map_or(true, |s| s.is_empty()))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "{} not set: start the stores first, e.g. `eval \"$(scripts/stack up)\"`, then run loadtest again",
            missing.join(", ")
        );
    }
    for b in [
        "card-gateway",
        "item-service",
        "payment-service",
        "user-service",
        "gateway",
    ] {
        if !bin_dir.join(b).is_file() {
            anyhow::bail!(
                "{} not found: build the services first (cargo build --release --workspace --bins)",
                bin_dir.join(b).display()
            );
        }
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let log_dir = std::env::temp_dir().join(format!("loadtest-{run_id}"));
    let mut stack = Stack::new(bin_dir, &log_dir)?;
    let admin_email = format!("loadtest-admin-{run_id}@example.com");
    eprintln!(
        "[loadtest] starting the stack (logs in {})",
        log_dir.display()
    );
    let mongo = MongoServer::start(&log_dir).await?;
    let (dep, mut setup) = start_stack(&mut stack, &run_id, shop_url, &mongo.url).await?;
    setup.push(format!("item-service's store: {}.", mongo.describe()));
    let mut procs = Processes::default().with_generator();
    for (name, pid) in stack.pids() {
        procs.add(name, pid, false);
    }
    setup.extend(process_cpu::watch_stores(&mut procs, &mongo));

    eprintln!("[loadtest] creating accounts and load-test items");
    let shop_admin = ShopAdmin::new(dep.gw.clone());
    // Registered as a customer like any account; the operator's command (on the same
    // database, from the environment) makes it an admin; the next login carries the role.
    shop_admin
        .account(&admin_email, "load-test-password-1")
        .await?;
    stack
        .run_once("user-service", &["admin", "grant", &admin_email], &[])
        .await
        .context("granting the load-test account admin")?;
    let admin_token = shop_admin
        .account(&admin_email, "load-test-password-1")
        .await?;
    let buy_ids = shop_admin
        .create_items(&admin_token, &run_id, BUY_ITEMS)
        .await?;
    let browse_ids = shop_admin.catalog(500).await?;
    let tokens = shop_admin.accounts(&run_id, p.users).await?;
    setup.push(format!(
        "Catalog: {} items in stock to browse; checkouts buy 2 of {} load-test items (stock 100,000,000 each) with the always-succeeding test card; {} accounts, one per virtual user, logged in once before measuring.",
        browse_ids.len(),
        BUY_ITEMS,
        tokens.len()
    ));
    let ctx = Ctx {
        p,
        progress,
        dep,
        browse_ids: Arc::new(browse_ids),
        buy_ids: Arc::new(buy_ids),
        tokens: Arc::new(tokens),
        notes: Vec::new(),
        procs,
    };
    Ok(Prepared {
        stack,
        mongo,
        ctx,
        setup,
    })
}

/// The process listening on the port of the store the environment variable names, if
/// this machine runs it where loadtest can see it.
/// Runs the whole experiment and writes the report into `opts.out_dir`.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    let t0 = Instant::now();
    let p = Params::new(opts.quick, opts.rate);
    let Prepared {
        mut stack,
        mongo,
        mut ctx,
        mut setup,
    } = prepare(&opts.bin_dir, opts.shop_url.as_deref(), p, opts.progress).await?;
    setup.push(format!(
        "Mode {}: warm-up {:.1} s and {:.1} s measured per run; checkouts at {} req/s for sections 1-3; open model unless stated.",
        if opts.quick { "quick" } else { "full" },
        ctx.p.warmup.as_secs_f64(),
        ctx.p.dur.as_secs_f64(),
        ctx.p.rate
    ));

    // Every section runs through `with_faults_cleared`: whatever it injected is gone when it
    // ends, even if it failed or panicked, so it cannot leak into the next one.
    let faults = ctx.dep.fault_targets();
    let mut done: std::collections::BTreeMap<String, Section> = Default::default();
    let mut keep = |id: &str, r: anyhow::Result<Section>, notes: &mut Vec<String>| match r {
        Ok(s) => {
            done.insert(id.to_owned(), s);
        }
        Err(e) => notes.push(format!("section {id} failed: {e:#}")),
    };
    if wanted(&opts, "calibration") {
        eprintln!("[loadtest] calibration against wrk");
        let r = with_faults_cleared(&faults, sections::calibration::run(&mut ctx)).await;
        keep("calibration", r, &mut ctx.notes);
    }
    let mut strategies = None;
    if wanted(&opts, "cost_per_hop")
        || wanted(&opts, "tail_amplification")
        || wanted(&opts, "availability")
    {
        eprintln!("[loadtest] 1. cost per hop");
        match with_faults_cleared(&faults, sections::cost_per_hop::run(&mut ctx)).await {
            Ok(s) => strategies = Some(s),
            Err(e) => ctx
                .notes
                .push(format!("section cost_per_hop failed: {e:#}")),
        }
    }
    let hops = strategies
        .as_ref()
        .map(|s| s.hops.clone())
        .unwrap_or_default();
    if wanted(&opts, "tail_amplification") {
        eprintln!("[loadtest] 2. tail amplification");
        let r =
            with_faults_cleared(&faults, sections::tail_amplification::run(&mut ctx, &hops)).await;
        keep("tail_amplification", r, &mut ctx.notes);
    }
    if wanted(&opts, "availability") {
        eprintln!("[loadtest] 3. availability");
        let r = with_faults_cleared(&faults, sections::availability::run(&mut ctx, &hops)).await;
        keep("availability", r, &mut ctx.notes);
    }
    if wanted(&opts, "cascading_failure") {
        eprintln!("[loadtest] 4. cascading failure");
        let r = with_faults_cleared(&faults, sections::cascading_failure::run(&mut ctx)).await;
        keep("cascading_failure", r, &mut ctx.notes);
    }
    if wanted(&opts, "cache") {
        eprintln!("[loadtest] 5. cache");
        let r = with_faults_cleared(&faults, sections::cache::run(&mut ctx)).await;
        keep("cache", r, &mut ctx.notes);
    }
    // The sweep runs last: past saturation it leaves a backlog (open breakers, held stock,
    // pending charges) that would spill into any section after it. The price: by then the
    // databases have grown with every checkout before it and the Python SecantusDB is
    // slower, so its latencies sit above the strategy comparison's (the report says so).
    if wanted(&opts, "cost_per_hop")
        && let Some(s) = strategies.take()
    {
        eprintln!("[loadtest] 1. (continued) latency vs offered load");
        let r = with_faults_cleared(&faults, async { Ok(sections::sweep::run(&mut ctx).await) })
            .await
            .map(|points| sections::cost_per_hop(&s.echo, &s.runs, &points));
        keep("cost_per_hop", r, &mut ctx.notes);
    }
    // Last: it stops the processes other sections use (the second item- and
    // payment-service, the monolith) so that one process per service consumes events.
    if wanted(&opts, "sync_vs_async") {
        eprintln!("[loadtest] 7. synchronous vs asynchronous");
        // Only the processes still running when it ends.
        let live = sections::FaultTargets {
            grpc: vec![
                ctx.dep.user_grpc.clone(),
                ctx.dep.item_grpc.clone(),
                ctx.dep.payment_grpc.clone(),
            ],
            card: Some(ctx.dep.card.clone()),
        };
        let r =
            with_faults_cleared(&live, sections::sync_vs_async::run(&mut ctx, &mut stack)).await;
        keep("sync_vs_async", r, &mut ctx.notes);
    }
    let sections: Vec<Section> = report::SECTION_IDS
        .iter()
        .filter_map(|id| done.remove(*id))
        .collect();
    stack.stop_all().await;
    mongo.stop().await;

    let report = Report {
        title: "Shop: what synchronous call chains cost".into(),
        generated_at: report::now_rfc3339(),
        mode: if opts.quick { "quick" } else { "full" }.into(),
        machine: Machine::detect(),
        setup,
        elapsed_s: t0.elapsed().as_secs_f64(),
        sections,
        notes: ctx.notes,
    };
    report::write(&report, &opts.out_dir)?;
    Ok(report)
}
