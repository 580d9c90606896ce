//! `loadtest experiment`: starts the stack it needs from the built binaries (each service on
//! free loopback ports, several gateways with different settings), runs the five comparisons
//! and the wrk calibration, and writes the report. Every run is bounded in time.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    admin::{self, Rule, ShopAdmin},
    engine::{self, Measured, Model, RunSpec, Workload},
    http::{HttpPool, Target},
    report::{self, Machine, Report, Section},
    scenario::{self, EP_GET, EP_LIST, Mix, ShopWorkload},
    sections::{self, AvailRun, CacheRun, CascadeRun, Hops, StrategyRun, SweepPoint, TailRun},
    stack::{Stack, free_addr},
    wrk,
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

/// Durations, rates and sizes of one mode.
struct Params {
    warmup: Duration,
    dur: Duration,
    rate: f64,
    echo_rate: f64,
    tail_dur: Duration,
    /// Pause after a run with faults, so its leftovers do not spill into the next one.
    settle: Duration,
    /// Pause after a run that opened breakers (they stay open 5 s by default).
    recover: Duration,
    sweep: Vec<f64>,
    sweep_dur: Duration,
    users: usize,
    fails: Vec<f64>,
    avail_dur: Duration,
    cascade_dur: Duration,
    cascade_rate: f64,
    cascade_conns: usize,
    cascade_timeout: Duration,
    cache_rate: f64,
    calib_dur: Duration,
    calib_conns: usize,
}

impl Params {
    fn new(quick: bool, rate: Option<f64>) -> Self {
        if quick {
            Self {
                warmup: Duration::from_millis(300),
                dur: Duration::from_millis(1500),
                rate: rate.unwrap_or(3.0),
                echo_rate: 20.0,
                tail_dur: Duration::from_secs(2),
                settle: Duration::ZERO,
                recover: Duration::from_millis(500),
                sweep: vec![2.0, 4.0],
                sweep_dur: Duration::from_millis(1200),
                users: 4,
                fails: vec![0.05, 0.2],
                avail_dur: Duration::from_millis(1500),
                cascade_dur: Duration::from_secs(3),
                cascade_rate: 10.0,
                cascade_conns: 4,
                cascade_timeout: Duration::from_secs(4),
                cache_rate: 40.0,
                calib_dur: Duration::from_secs(1),
                calib_conns: 8,
            }
        } else {
            // SecantusDB (a Python MongoDB) is the checkout bottleneck on this 2-core machine,
            // and it slows down as the catalog database grows: about 8 checkouts/s on a fresh
            // one, about 5 after a few thousand. Sections 1-3 stay well below either.
            let rate = rate.unwrap_or(3.0);
            Self {
                warmup: Duration::from_secs(2),
                dur: Duration::from_secs(15),
                rate,
                echo_rate: 50.0,
                // Enough checkouts that a 1-3% tail shows in p99.
                tail_dur: Duration::from_secs(40),
                settle: Duration::from_secs(2),
                recover: Duration::from_secs(8),
                sweep: vec![1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0],
                sweep_dur: Duration::from_secs(8),
                users: 16,
                fails: vec![0.01, 0.05, 0.10],
                avail_dur: Duration::from_secs(15),
                cascade_dur: Duration::from_secs(30),
                cascade_rate: 10.0,
                cascade_conns: 4,
                cascade_timeout: Duration::from_secs(15),
                cache_rate: 200.0,
                calib_dur: Duration::from_secs(10),
                calib_conns: 32,
            }
        }
    }
}

/// Where everything listens.
struct Deployment {
    card: Target,
    item_grpc: String,
    item_metrics: String,
    item_nc_grpc: String,
    item_nc_metrics: String,
    user_grpc: String,
    user_metrics: String,
    payment_grpc: String,
    payment_metrics: String,
    gw: Target,
    gw_noretry: Target,
    gw_unprotected: Target,
    shop: Option<Target>,
}

struct Ctx {
    p: Params,
    progress: bool,
    dep: Deployment,
    browse_ids: Arc<Vec<String>>,
    buy_ids: Arc<Vec<String>>,
    tokens: Arc<Vec<String>>,
    notes: Vec<String>,
}

const REQUIRED_ENV: [&str; 4] = [
    "USER_DATABASE_URL",
    "PAYMENT_DATABASE_URL",
    "ITEM_MONGODB_URL",
    "ITEM_REDIS_URL",
];

fn url(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}")
}

async fn start_stack(
    stack: &mut Stack,
    run_id: &str,
    admin_email: &str,
    shop_url: Option<&str>,
) -> anyhow::Result<(Deployment, Vec<String>)> {
    let mut setup = Vec::new();
    let jwt = format!("loadtest-{}-{}", run_id, uuid::Uuid::new_v4().simple());
    stack.common_env = vec![
        ("USER_JWT_SECRET".into(), jwt),
        ("USER_ADMIN_EMAILS".into(), admin_email.into()),
        // A catalog of this run's own, so other runs' stock never interferes.
        ("ITEM_MONGODB_DATABASE".into(), format!("loadtest_{run_id}")),
    ];
    let card = free_addr()?;
    stack
        .start(
            "card-gateway",
            "card-gateway",
            &[("CARD_GATEWAY_ADDR", card.to_string())],
            card,
        )
        .await?;

    stack
        .run_once("item-service", &["seed"], &[])
        .await
        .context("seeding the catalog")?;
    let (item, item_m) = (free_addr()?, free_addr()?);
    stack
        .start(
            "item-service",
            "item-service",
            &[
                ("ITEM_GRPC_ADDR", item.to_string()),
                ("ITEM_METRICS_ADDR", item_m.to_string()),
                ("ITEM_CACHE", "on".into()),
            ],
            item,
        )
        .await?;
    let (item_nc, item_nc_m) = (free_addr()?, free_addr()?);
    stack
        .start(
            "item-service-nocache",
            "item-service",
            &[
                ("ITEM_GRPC_ADDR", item_nc.to_string()),
                ("ITEM_METRICS_ADDR", item_nc_m.to_string()),
                ("ITEM_CACHE", "off".into()),
            ],
            item_nc,
        )
        .await?;
    let (pay, pay_m) = (free_addr()?, free_addr()?);
    let pay_env = |addr: std::net::SocketAddr, m: std::net::SocketAddr| {
        vec![
            ("PAYMENT_GRPC_ADDR", addr.to_string()),
            ("PAYMENT_METRICS_ADDR", m.to_string()),
            ("CARD_GATEWAY_URL", url(card)),
            ("ITEM_SERVICE_URL", url(item)),
        ]
    };
    stack
        .start(
            "payment-service",
            "payment-service",
            &pay_env(pay, pay_m),
            pay,
        )
        .await?;
    // The unprotected payment-service waits up to a minute for the card gateway, with no
    // breaker in front of it.
    let (pay_nt, pay_nt_m) = (free_addr()?, free_addr()?);
    let mut env = pay_env(pay_nt, pay_nt_m);
    env.push(("PAYMENT_GATEWAY_TIMEOUT_MS", "60000".into()));
    env.push(("PAYMENT_REQUEST_TIMEOUT_MS", "60000".into()));
    env.push(("PAYMENT_CARD_BREAKER", "off".into()));
    stack
        .start("payment-service-notimeout", "payment-service", &env, pay_nt)
        .await?;
    let (user, user_m) = (free_addr()?, free_addr()?);
    stack
        .start(
            "user-service",
            "user-service",
            &[
                ("USER_GRPC_ADDR", user.to_string()),
                ("USER_METRICS_ADDR", user_m.to_string()),
                ("PAYMENT_SERVICE_URL", url(pay)),
            ],
            user,
        )
        .await?;
    let gw_env = |addr: std::net::SocketAddr, pay: std::net::SocketAddr| {
        vec![
            ("GATEWAY_HTTP_ADDR", addr.to_string()),
            ("USER_SERVICE_URL", url(user)),
            ("ITEM_SERVICE_URL", url(item)),
            ("PAYMENT_SERVICE_URL", url(pay)),
        ]
    };
    let gw = free_addr()?;
    stack
        .start("gateway", "gateway", &gw_env(gw, pay), gw)
        .await?;
    let gw_nr = free_addr()?;
    let mut env = gw_env(gw_nr, pay);
    env.push(("GATEWAY_RETRIES", "off".into()));
    stack
        .start("gateway-noretry", "gateway", &env, gw_nr)
        .await?;
    let gw_un = free_addr()?;
    let mut env = gw_env(gw_un, pay_nt);
    env.extend([
        ("GATEWAY_RETRIES", "off".into()),
        ("GATEWAY_BREAKERS", "off".into()),
        ("GATEWAY_CHECKOUT_BUDGET_MS", "60000".into()),
        ("GATEWAY_READ_BUDGET_MS", "60000".into()),
    ]);
    stack
        .start("gateway-unprotected", "gateway", &env, gw_un)
        .await?;
    setup.push(format!(
        "Processes: card-gateway, item-service (ITEM_CACHE=on) and a second one with ITEM_CACHE=off, payment-service and a second one with a 60 s card-gateway timeout and no card breaker, user-service, and three gateways: defaults (retries on, breakers on, 2 s checkout budget), retries off, and unprotected (no retries, no breakers, 60 s budgets). Each on free 127.0.0.1 ports, logs in {}.",
        stack.log_dir().display()
    ));

    let mut shop = None;
    if let Some(u) = shop_url {
        shop = Some(Target::parse(u)?);
        setup.push(format!(
            "The `shop` monolith at {u} (started by the caller)."
        ));
    } else if stack.has_bin("shop") {
        let s = free_addr()?;
        let mut env = vec![
            ("GATEWAY_HTTP_ADDR", s.to_string()),
            ("CARD_GATEWAY_URL", url(card)),
        ];
        // Its own gRPC listener (all three services; FaultAdmin for the in-process
        // calls) and, in case a version uses them, the parts' addresses: all free ports.
        for k in [
            "SHOP_GRPC_ADDR",
            "USER_GRPC_ADDR",
            "ITEM_GRPC_ADDR",
            "PAYMENT_GRPC_ADDR",
            "USER_METRICS_ADDR",
            "ITEM_METRICS_ADDR",
            "PAYMENT_METRICS_ADDR",
        ] {
            env.push((k, free_addr()?.to_string()));
        }
        match stack.start("shop", "shop", &env, s).await {
            Ok(()) => {
                shop = Some(Target::parse(&url(s))?);
                setup.push("The `shop` monolith (gateway and the three services in one process, in-process calls) on the same databases and card gateway.".into());
            }
            Err(e) => setup.push(format!(
                "The `shop` monolith did not start, so no monolith rows: {e:#}"
            )),
        }
    } else {
        setup.push("No `shop` binary in the bin dir, so no monolith rows.".into());
    }
    Ok((
        Deployment {
            card: Target::parse(&url(card))?,
            item_grpc: url(item),
            item_metrics: format!("http://{item_m}/metrics"),
            item_nc_grpc: url(item_nc),
            item_nc_metrics: format!("http://{item_nc_m}/metrics"),
            user_grpc: url(user),
            user_metrics: format!("http://{user_m}/metrics"),
            payment_grpc: url(pay),
            payment_metrics: format!("http://{pay_m}/metrics"),
            gw: Target::parse(&url(gw))?,
            gw_noretry: Target::parse(&url(gw_nr))?,
            gw_unprotected: Target::parse(&url(gw_un))?,
            shop,
        },
        setup,
    ))
}

impl Ctx {
    fn spec(&self, name: &str, model: Model, warmup: Duration, dur: Duration) -> RunSpec {
        let mut s = RunSpec::new(name, model, warmup, dur);
        s.progress = self.progress;
        s
    }

    fn shop(&self, target: &Target, conns: usize, mix: Mix, strategy: &str) -> Arc<dyn Workload> {
        Arc::new(ShopWorkload::new(
            Arc::new(HttpPool::new(target.clone(), conns)),
            self.browse_ids.clone(),
            self.buy_ids.clone(),
            self.tokens.clone(),
            mix,
            strategy,
        ))
    }

    async fn checkout_run(
        &self,
        name: &str,
        target: &Target,
        strategy: &str,
        rate: f64,
        warmup: Duration,
        dur: Duration,
    ) -> Measured {
        let spec = self.spec(name, Model::Open { rate }, warmup, dur);
        engine::run(&spec, self.shop(target, 512, Mix::CHECKOUT, strategy)).await
    }

    /// gRPC calls per service, from the services' own counters (admin RPCs excluded).
    async fn grpc_calls(&self) -> Hops {
        let count = |page: &str| -> f64 {
            page.lines()
                .filter(|l| {
                    l.starts_with("grpc_server_requests_total{")
                        && l.contains("method=\"/shop.")
                        && !l.contains("/shop.admin.")
                })
                .filter_map(|l| {
                    l.rsplit_once(' ')
                        .and_then(|(_, v)| v.trim().parse::<f64>().ok())
                })
                .sum()
        };
        let get = |u: &str| {
            let u = u.to_owned();
            async move { admin::scrape(&u).await.map(|p| count(&p)).unwrap_or(0.0) }
        };
        Hops {
            user: get(&self.dep.user_metrics).await,
            item: get(&self.dep.item_metrics).await,
            payment: get(&self.dep.payment_metrics).await,
        }
    }

    async fn faults_everywhere(&self, rules: &[Rule]) -> anyhow::Result<()> {
        for u in [
            &self.dep.user_grpc,
            &self.dep.item_grpc,
            &self.dep.payment_grpc,
        ] {
            admin::set_grpc_faults(u, rules).await?;
        }
        Ok(())
    }
}

async fn calibration(ctx: &mut Ctx) -> anyhow::Result<Section> {
    let p = &ctx.p;
    let mut pairs = Vec::new();
    let have_wrk = wrk::available();
    let mut paths = vec!["/healthz".to_owned()];
    if let Some(id) = ctx.browse_ids.first() {
        paths.push(format!("/api/items/{id}"));
    }
    for path in paths {
        let full = format!("{}{path}", ctx.dep.gw.url());
        let w = if have_wrk {
            match wrk::run(&full, 2, p.calib_conns, p.calib_dur).await {
                Ok(w) => Some(w),
                Err(e) => {
                    ctx.notes.push(format!("wrk on {path}: {e:#}"));
                    None
                }
            }
        } else {
            None
        };
        let spec = ctx.spec(
            &format!("calibration {path}"),
            Model::Closed {
                users: p.calib_conns,
                think_ms: 0,
            },
            Duration::ZERO,
            p.calib_dur,
        );
        let workload = Arc::new(scenario::GetPath {
            pool: Arc::new(HttpPool::new(ctx.dep.gw.clone(), p.calib_conns)),
            path: path.clone(),
        });
        let lt = engine::run(&spec, workload).await.result;
        let label = if path.starts_with("/api/items/") {
            "GET /api/items/{id}".to_owned()
        } else {
            format!("GET {path}")
        };
        pairs.push((label, w, lt));
    }
    Ok(sections::calibration(
        "the default gateway",
        p.calib_conns,
        p.calib_dur.as_secs_f64(),
        &pairs,
        (!have_wrk).then_some("`wrk` not found; apt-get install wrk"),
    ))
}

/// Items checkouts buy from: enough that concurrent reservations rarely update the same
/// document.
const BUY_ITEMS: usize = 64;

const STRATEGIES: [&str; 3] = ["orchestrated", "parallel", "chained"];
/// The two ends of the hop count (6 and 5 calls); parallel makes the same calls as
/// orchestrated.
const AVAIL_STRATEGIES: [&str; 2] = ["orchestrated", "chained"];

async fn cost_per_hop(
    ctx: &mut Ctx,
    hops_out: &mut Vec<(String, Hops)>,
) -> anyhow::Result<(engine::RunResult, Vec<StrategyRun>)> {
    let (rate, warmup, dur) = (ctx.p.rate, ctx.p.warmup, ctx.p.dur);
    let echo_spec = ctx.spec(
        "Echo (item-service)",
        Model::Open {
            rate: ctx.p.echo_rate,
        },
        warmup,
        dur,
    );
    let ch = scenario::grpc_channel(&ctx.dep.item_grpc).await?;
    let echo = engine::run(&echo_spec, Arc::new(scenario::EchoWorkload::new(ch)))
        .await
        .result;
    let mut runs = Vec::new();
    for s in STRATEGIES {
        let before = ctx.grpc_calls().await;
        let m = ctx.checkout_run(s, &ctx.dep.gw, s, rate, warmup, dur).await;
        let after = ctx.grpc_calls().await;
        let n = (m.result.ok + m.snapshot.warmup).max(1) as f64;
        let all = (m.result.requests + m.snapshot.warmup).max(1) as f64;
        // Per checkout issued; failures (rare here) make fewer calls, so use all requests
        // when nearly all succeed.
        let per = if m.result.success_rate > 0.99 { all } else { n };
        let hops = Hops {
            user: (after.user - before.user) / per,
            item: (after.item - before.item) / per,
            payment: (after.payment - before.payment) / per,
        };
        hops_out.push((s.to_owned(), hops));
        runs.push(StrategyRun {
            label: s.to_owned(),
            result: m.result,
            hops: Some(hops),
        });
    }
    if let Some(shop) = ctx.dep.shop.clone() {
        for s in STRATEGIES {
            let label = format!("monolith ({s})");
            let m = ctx.checkout_run(&label, &shop, s, rate, warmup, dur).await;
            runs.push(StrategyRun {
                label,
                result: m.result,
                hops: None,
            });
        }
    }
    Ok((echo, runs))
}

/// Latency vs offered load, run last: pushing past capacity leaves work behind (stock
/// reservations finishing, payments to reconcile) that would disturb later sections.
async fn sweep(ctx: &mut Ctx) -> Vec<SweepPoint> {
    let mut sweep = Vec::new();
    let sweep_dur = ctx.p.sweep_dur;
    let sweep_warm = ctx.p.warmup.min(Duration::from_secs(1));
    let mut targets = vec![
        (
            "orchestrated".to_owned(),
            ctx.dep.gw.clone(),
            "orchestrated",
        ),
        ("chained".to_owned(), ctx.dep.gw.clone(), "chained"),
    ];
    if let Some(shop) = &ctx.dep.shop {
        targets.push((
            "monolith (orchestrated)".to_owned(),
            shop.clone(),
            "orchestrated",
        ));
    }
    for (series, target, strategy) in targets {
        for &r in &ctx.p.sweep.clone() {
            let m = ctx
                .checkout_run(
                    &format!("{series} @ {r:.0}/s"),
                    &target,
                    strategy,
                    r,
                    sweep_warm,
                    sweep_dur,
                )
                .await;
            let saturated = m.result.latency.p99_ms > 3000.0 || m.result.success_rate < 0.9;
            sweep.push(SweepPoint {
                series: series.clone(),
                result: m.result,
            });
            if saturated {
                // Past saturation every further step only queues more; stop this series.
                break;
            }
        }
    }
    sweep
}

async fn tail(ctx: &mut Ctx, hops: &[(String, Hops)]) -> anyhow::Result<Section> {
    let (prob, delay) = (0.01, 200);
    let (rate, warmup) = (ctx.p.rate, ctx.p.warmup);
    let mut runs = Vec::new();
    for s in STRATEGIES {
        // Each strategy's own baseline right before its tail run: latency drifts over an
        // experiment (SecantusDB slows as the databases grow), so section 1's would not do.
        admin::set_grpc_faults(&ctx.dep.item_grpc, &[]).await?;
        let before = ctx
            .checkout_run(s, &ctx.dep.gw, s, rate, warmup, ctx.p.dur)
            .await;
        admin::set_grpc_faults(&ctx.dep.item_grpc, &[Rule::tail("*", prob, delay)]).await?;
        let m = ctx
            .checkout_run(
                &format!("{s} + item tail"),
                &ctx.dep.gw,
                s,
                rate,
                warmup,
                ctx.p.tail_dur,
            )
            .await;
        let calls = hops
            .iter()
            .find(|(n, _)| n == s)
            .map_or(3.0, |(_, h)| h.item);
        // Halfway: a delayed checkout takes its usual time plus the whole delay, an
        // undelayed one seldom strays half the delay above the median (the "slow before"
        // column shows how seldom).
        let threshold_ms = before.result.latency.p50_ms + f64::from(delay) / 2.0;
        let threshold = Duration::from_secs_f64(threshold_ms / 1000.0);
        runs.push(TailRun {
            label: s.to_owned(),
            calls_to_slow: calls,
            threshold_ms,
            share_before: before.snapshot.fraction_at_least(threshold),
            fraction_slow: m.snapshot.fraction_at_least(threshold),
            baseline: before.result,
            with_tail: m.result,
        });
    }
    admin::set_grpc_faults(&ctx.dep.item_grpc, &[]).await?;
    Ok(sections::tail_amplification(
        "item-service",
        prob,
        delay,
        &runs,
    ))
}

async fn availability(ctx: &mut Ctx, hops: &[(String, Hops)]) -> anyhow::Result<Section> {
    let (rate, dur) = (ctx.p.rate, ctx.p.avail_dur);
    let warm = ctx.p.warmup.min(Duration::from_secs(1));
    let mut runs = Vec::new();
    for f in ctx.p.fails.clone() {
        ctx.faults_everywhere(&[Rule::error_rate("*", f)]).await?;
        for s in AVAIL_STRATEGIES {
            let h = hops
                .iter()
                .find(|(n, _)| n == s)
                .map_or(6.0, |(_, h)| h.total());
            for (retries, target) in [
                (false, ctx.dep.gw_noretry.clone()),
                (true, ctx.dep.gw.clone()),
            ] {
                let name = format!(
                    "{s} f={:.0}% retries {}",
                    f * 100.0,
                    if retries { "on" } else { "off" }
                );
                let m = ctx.checkout_run(&name, &target, s, rate, warm, dur).await;
                tokio::time::sleep(ctx.p.settle).await;
                runs.push(AvailRun {
                    strategy: s.to_owned(),
                    f,
                    retries,
                    hops: h,
                    result: m.result,
                });
            }
        }
    }
    ctx.faults_everywhere(&[]).await?;
    Ok(sections::availability(&runs))
}

async fn cascade(ctx: &mut Ctx) -> anyhow::Result<Section> {
    let p = &ctx.p;
    let delay = 2000;
    let mix = Mix {
        list: 15,
        get: 65,
        checkout: 20,
    };
    let conns = p.cascade_conns;
    let mut runs = Vec::new();
    let is_browse = |ep: &str| ep == EP_LIST || ep == EP_GET;
    let is_checkout = |ep: &str| ep.starts_with("POST /api/checkout");
    let configs = [
        ("baseline (no fault)", ctx.dep.gw.clone(), false),
        ("slow card gateway, protected", ctx.dep.gw.clone(), true),
        (
            "slow card gateway, unprotected",
            ctx.dep.gw_unprotected.clone(),
            true,
        ),
    ];
    for (label, target, slow) in configs {
        let rules = if slow {
            vec![Rule::fixed("POST /v1/charges", delay)]
        } else {
            vec![]
        };
        admin::set_http_faults(&ctx.dep.card, "/admin/faults", None, &rules).await?;
        let dur = if slow {
            p.cascade_dur
        } else {
            p.cascade_dur / 2
        };
        let mut spec = ctx.spec(
            label,
            Model::Open {
                rate: p.cascade_rate,
            },
            Duration::ZERO,
            dur,
        );
        spec.timeout = p.cascade_timeout;
        let m = engine::run(&spec, ctx.shop(&target, conns, mix, "orchestrated")).await;
        runs.push(CascadeRun {
            label: label.to_owned(),
            browse: sections::group(&m.snapshot, is_browse),
            checkout: sections::group(&m.snapshot, is_checkout),
            result: m.result,
        });
        // Let breakers close and in-flight charges finish before the next configuration.
        admin::set_http_faults(&ctx.dep.card, "/admin/faults", None, &[]).await?;
        tokio::time::sleep(ctx.p.recover).await;
    }
    Ok(sections::cascading_failure(delay, conns, &runs))
}

/// Distinct items the cache comparison reads.
const HOT_SET: usize = 100;

async fn cache(ctx: &mut Ctx) -> anyhow::Result<Section> {
    let p = &ctx.p;
    let mut runs = Vec::new();
    for (label, grpc, metrics) in [
        (
            "cache off",
            ctx.dep.item_nc_grpc.clone(),
            ctx.dep.item_nc_metrics.clone(),
        ),
        (
            "cache on",
            ctx.dep.item_grpc.clone(),
            ctx.dep.item_metrics.clone(),
        ),
    ] {
        let ch = scenario::grpc_channel(&grpc).await?;
        // A hot set, read once before the run so the cache (when on) holds all of it.
        let hot: Vec<String> = ctx.browse_ids.iter().take(HOT_SET).cloned().collect();
        let mut client =
            shop_proto::item::v1::item_service_client::ItemServiceClient::new(ch.clone());
        for id in &hot {
            let _ = client
                .get_item(shop_proto::item::v1::GetItemRequest { id: id.clone() })
                .await;
        }
        let workload = Arc::new(scenario::GrpcGetItem::new(ch, Arc::new(hot)));
        let spec = ctx.spec(
            &format!("GetItem, {label}"),
            Model::Open { rate: p.cache_rate },
            p.warmup,
            p.dur,
        );
        // Counters at the end of warm-up and at the end of the run.
        let m2 = metrics.clone();
        let warm = p.warmup;
        let first = tokio::spawn(async move {
            tokio::time::sleep(warm).await;
            let t = Instant::now();
            (admin::scrape(&m2).await.unwrap_or_default(), t)
        });
        let m = engine::run(&spec, workload).await;
        let end_page = admin::scrape(&metrics).await.unwrap_or_default();
        let end_t = Instant::now();
        let (start_page, start_t) = first.await.unwrap_or_else(|_| (String::new(), end_t));
        let reads = |pg: &str| admin::metric_sum(pg, "item_mongo_reads_total", &[]);
        let secs = end_t.duration_since(start_t).as_secs_f64().max(1e-3);
        let hits = admin::metric_sum(&end_page, "item_cache_requests_total", &["result=\"hit\""])
            - admin::metric_sum(
                &start_page,
                "item_cache_requests_total",
                &["result=\"hit\""],
            );
        let all = admin::metric_sum(&end_page, "item_cache_requests_total", &[])
            - admin::metric_sum(&start_page, "item_cache_requests_total", &[]);
        runs.push(CacheRun {
            label: label.to_owned(),
            mongo_reads_per_s: (reads(&end_page) - reads(&start_page)) / secs,
            cache_hit_ratio: (all > 0.0).then(|| hits / all),
            result: m.result,
        });
    }
    Ok(sections::cache(&runs))
}

fn wanted(opts: &Options, id: &str) -> bool {
    opts.only.is_empty() || opts.only.iter().any(|o| o == id)
}

/// Runs the whole experiment and writes the report into `opts.out_dir`.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    let t0 = Instant::now();
    let missing: Vec<&str> = REQUIRED_ENV
        .iter()
        .copied()
        .filter(|v| std::env::var(v).map_or(true, |s| s.is_empty()))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "{} not set: start the stores first, e.g. `eval \"$(scripts/stack up)\"`, then run loadtest experiment again",
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
        if !opts.bin_dir.join(b).is_file() {
            anyhow::bail!(
                "{} not found: build the services first (cargo build --release --workspace --bins)",
                opts.bin_dir.join(b).display()
            );
        }
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let log_dir = std::env::temp_dir().join(format!("loadtest-{run_id}"));
    let mut stack = Stack::new(&opts.bin_dir, &log_dir)?;
    let admin_email = format!("loadtest-admin-{run_id}@example.com");
    eprintln!(
        "[loadtest] starting the stack (logs in {})",
        log_dir.display()
    );
    let (dep, mut setup) =
        start_stack(&mut stack, &run_id, &admin_email, opts.shop_url.as_deref()).await?;
    let p = Params::new(opts.quick, opts.rate);

    eprintln!("[loadtest] creating accounts and load-test items");
    let shop_admin = ShopAdmin::new(dep.gw.clone());
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
    setup.push(format!(
        "Mode {}: warm-up {:.1} s and {:.1} s measured per run; checkouts at {} req/s for sections 1-3; open model unless stated.",
        if opts.quick { "quick" } else { "full" },
        p.warmup.as_secs_f64(),
        p.dur.as_secs_f64(),
        p.rate
    ));
    let mut ctx = Ctx {
        p,
        progress: opts.progress,
        dep,
        browse_ids: Arc::new(browse_ids),
        buy_ids: Arc::new(buy_ids),
        tokens: Arc::new(tokens),
        notes: Vec::new(),
    };

    let mut done: std::collections::BTreeMap<String, Section> = Default::default();
    let mut push = |r: anyhow::Result<Section>, id: &str, notes: &mut Vec<String>| match r {
        Ok(s) => {
            done.insert(id.to_owned(), s);
        }
        Err(e) => notes.push(format!("section {id} failed: {e:#}")),
    };
    if wanted(&opts, "calibration") {
        eprintln!("[loadtest] calibration against wrk");
        let r = calibration(&mut ctx).await;
        push(r, "calibration", &mut ctx.notes);
    }
    let mut hops = Vec::new();
    let mut s1 = None;
    if wanted(&opts, "cost_per_hop")
        || wanted(&opts, "tail_amplification")
        || wanted(&opts, "availability")
    {
        eprintln!("[loadtest] 1. cost per hop");
        match cost_per_hop(&mut ctx, &mut hops).await {
            Ok(done) => s1 = Some(done),
            Err(e) => ctx
                .notes
                .push(format!("section cost_per_hop failed: {e:#}")),
        }
    }
    if wanted(&opts, "tail_amplification") {
        eprintln!("[loadtest] 2. tail amplification");
        let r = tail(&mut ctx, &hops).await;
        let _ = admin::set_grpc_faults(&ctx.dep.item_grpc, &[]).await;
        push(r, "tail_amplification", &mut ctx.notes);
    }
    if wanted(&opts, "availability") {
        eprintln!("[loadtest] 3. availability");
        let r = availability(&mut ctx, &hops).await;
        let _ = ctx.faults_everywhere(&[]).await;
        push(r, "availability", &mut ctx.notes);
    }
    if wanted(&opts, "cascading_failure") {
        eprintln!("[loadtest] 4. cascading failure");
        let r = cascade(&mut ctx).await;
        let _ = admin::set_http_faults(&ctx.dep.card, "/admin/faults", None, &[]).await;
        push(r, "cascading_failure", &mut ctx.notes);
    }
    if wanted(&opts, "cache") {
        eprintln!("[loadtest] 5. cache");
        let r = cache(&mut ctx).await;
        push(r, "cache", &mut ctx.notes);
    }
    // The sweep runs last: past saturation it leaves a backlog (open breakers, held stock,
    // pending charges) that would spill into any section after it. The price: by then the
    // databases have grown with every checkout before it and the Python SecantusDB is
    // slower, so its latencies sit above the strategy comparison's (the report says so).
    if wanted(&opts, "cost_per_hop")
        && let Some((echo, runs)) = s1.take()
    {
        eprintln!("[loadtest] 1. (continued) latency vs offered load");
        let points = sweep(&mut ctx).await;
        push(
            Ok(sections::cost_per_hop(&echo, &runs, &points)),
            "cost_per_hop",
            &mut ctx.notes,
        );
    }
    let sections: Vec<Section> = report::SECTION_IDS
        .iter()
        .filter_map(|id| done.remove(*id))
        .collect();
    stack.stop_all().await;

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
