//! `loadtest soak`: the chaos soak. A checkout + browse mix runs at about half
//! the stack's peak (given, or measured first) while a random process gets SIGKILL every
//! 20-40 s and is started again; afterwards every checkout the run sent must reach an
//! acceptable ending (and one the client was told is placed must be placed), and the
//! consistency checker must find nothing. Writes soak.md and soak.json.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::{FutureExt as _, StreamExt as _, future::BoxFuture};
use rand::Rng as _;
use serde::Serialize;
use serde_json::json;

use crate::{
    admin::{metric_sum, scrape},
    experiment::process_cpu::{self, CpuSpent, Processes},
    generator::{
        engine::{self, Model, RunSpec, Workload},
        http::HttpPool,
        scenario::{CARD_OK, EP_GET, EP_LIST, Mix, ep_checkout},
        stats::Outcome,
    },
    resilience::{
        crash::{
            Rig, Tuning,
            probe::{CheckoutRef, Ending},
            shop::Customer,
            supervisor::{Process, Supervisor, now_rfc3339},
        },
        kill_windows::{self, Kind, OkRates, Stray, Timeline},
    },
};

#[derive(Debug, Clone)]
pub struct Options {
    pub bin_dir: PathBuf,
    pub log_dir: PathBuf,
    pub out_dir: PathBuf,
    pub duration: Duration,
    /// Operations per second of the mix; default: half of `peak`.
    pub rate: Option<f64>,
    /// The stack's peak (operations per second of the mix); default: measured first.
    pub peak: Option<f64>,
    pub strategy: String,
    /// SIGKILL every `kill_min..=kill_max`.
    pub kill_min: Duration,
    pub kill_max: Duration,
    /// After the load: how long checkouts may take to reach their endings.
    pub settle: Duration,
    pub progress: bool,
}

/// One checkout the soak sent.
struct Sent {
    co: CheckoutRef,
    /// HTTP status of the answer; None: no answer (connection broke, or timed out).
    status: Option<u16>,
}

/// The mix, remembering every checkout it sends.
struct SoakWorkload {
    pool: Arc<HttpPool>,
    items: Arc<Vec<String>>,
    customers: Arc<Vec<Customer>>,
    mix: Mix,
    strategy: String,
    checkout_ep: String,
    sent: Arc<Mutex<Vec<Sent>>>,
    /// Every request's send time and outcome, for the ok rates around the kills.
    timeline: Arc<Timeline>,
}

impl Workload for SoakWorkload {
    fn call(&self, n: u64, user: usize) -> (String, BoxFuture<'static, Outcome>) {
        let (endpoint, fut) = self.send(n, user);
        let kind = if endpoint == EP_LIST || endpoint == EP_GET {
            Kind::Browse
        } else {
            Kind::Checkout
        };
        let (timeline, sent) = (self.timeline.clone(), Instant::now());
        let fut = async move {
            let outcome = fut.await;
            let failure = match &outcome {
                Outcome::Ok => None,
                Outcome::Error(kind) => Some(kind.clone()),
            };
            timeline.record(sent, kind, failure);
            outcome
        };
        (endpoint, fut.boxed())
    }
}

impl SoakWorkload {
    fn send(&self, _n: u64, user: usize) -> (String, BoxFuture<'static, Outcome>) {
        let mut rng = rand::rng();
        let total = (self.mix.list + self.mix.get + self.mix.checkout).max(1);
        let pick = rng.random_range(0..total);
        let r: usize = rng.random_range(0..1 << 30);
        let pool = self.pool.clone();
        let item = self.items[r % self.items.len()].clone();
        if pick < self.mix.list {
            let fut = async move {
                match pool.get("/api/items?page_size=20", &[]).await {
                    Ok(reply) => reply.outcome(),
                    Err(o) => o,
                }
            };
            return (EP_LIST.to_owned(), fut.boxed());
        }
        if pick < self.mix.list + self.mix.get {
            let fut = async move {
                match pool.get(&format!("/api/items/{item}"), &[]).await {
                    Ok(reply) => reply.outcome(),
                    Err(o) => o,
                }
            };
            return (EP_GET.to_owned(), fut.boxed());
        }
        let who = self.customers[(user + r) % self.customers.len()].clone();
        let key = format!("soak-{}", uuid::Uuid::new_v4());
        let idx = {
            let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
            sent.push(Sent {
                co: CheckoutRef {
                    user_id: who.user_id,
                    key: key.clone(),
                    asynchronous: false,
                },
                status: None,
            });
            sent.len() - 1
        };
        let sent = self.sent.clone();
        let path = format!("/api/checkout?strategy={}", self.strategy);
        let body = json!({
            "lines": [{"item_id": item, "quantity": 1}],
            "card": {"number": CARD_OK, "exp_month": 12, "exp_year": 2035, "cvc": "123"},
        })
        .to_string();
        let fut = async move {
            let headers = [
                ("authorization", format!("Bearer {}", who.token)),
                ("idempotency-key", key),
            ];
            let reply = pool
                .send(http::Method::POST, &path, &headers, Some(body.into()))
                .await;
            match reply {
                Ok(reply) => {
                    sent.lock().unwrap_or_else(|p| p.into_inner())[idx].status =
                        Some(reply.status.as_u16());
                    reply.outcome()
                }
                Err(o) => o,
            }
        };
        (self.checkout_ep.clone(), fut.boxed())
    }
}

/// One SIGKILL of the soak.
#[derive(Debug, Clone, Serialize)]
pub struct Crash {
    pub at_s: f64,
    pub process: String,
    /// From the SIGKILL to healthy again.
    pub down_s: f64,
}

/// Where the checkouts ended, by what the client was told.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Endings {
    pub placed: u64,
    pub refunded_released: u64,
    pub never_charged: u64,
    /// No acceptable ending within the settle time.
    pub unsettled: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub started_at: String,
    pub strategy: String,
    pub tuning: Tuning,
    pub duration_s: f64,
    pub peak_rps: f64,
    pub peak_measured: bool,
    pub rate_rps: f64,
    pub crashes: Vec<Crash>,
    pub crashes_by_process: BTreeMap<String, u64>,
    pub requests: u64,
    pub requests_ok: u64,
    /// Ok rates overall and outside the seconds around each kill, all requests and browsing.
    pub ok_rates: OkRates,
    /// The ok-rate bars the run missed ([`OkRates::shortfalls`]); empty: met.
    pub shortfalls: Vec<String>,
    pub checkouts_attempted: u64,
    /// The client got 201.
    pub checkouts_placed: u64,
    /// The client got 202: paid, the order being completed by the recovery.
    pub checkouts_accepted: u64,
    /// The client got an error status or no answer.
    pub checkouts_failed: u64,
    pub checkouts_no_answer: u64,
    /// Endings of every checkout the run sent (peak measurement included) whose client
    /// was told 201 / something else.
    pub endings_after_201: Endings,
    pub endings_after_error: Endings,
    /// user-service's checkout_recovery_total by action, summed over its restarts.
    pub recovery_metrics: BTreeMap<String, f64>,
    pub checker_available: bool,
    pub checker_summary: String,
    pub violations: Vec<String>,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The failures outside every kill window, by second, kind and error.
    pub strays: Vec<Stray>,
    /// CPU per process during the peak measurement (none when the peak was given, or
    /// where `/proc` cannot be read): what limited the peak.
    pub peak_cpu: Option<CpuSpent>,
    pub elapsed_s: f64,
}

/// The processes a browse request passes through: a kill of any other must cost browsing
/// nothing.
const SERVES_BROWSE: [&str; 2] = ["gateway", "item-service"];

impl SoakReport {
    /// Whether the run kept every checkout consistent and met its ok-rate bars.
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.shortfalls.is_empty()
    }

    pub fn markdown(&self) -> String {
        let e = |x: &Endings| {
            format!(
                "placed {}, refunded+released {}, never charged {}, unsettled {}",
                x.placed, x.refunded_released, x.never_charged, x.unsettled
            )
        };
        let mut s = format!(
            "# Chaos soak ({})\n\nStarted {}; strategy `{}`; {:.0} s of load at {:.1} ops/s (half of a {} peak of {:.1} ops/s; mix list {}/get {}/checkout {}).\n\n",
            if self.passed() { "pass" } else { "FAIL" },
            self.started_at,
            self.strategy,
            self.duration_s,
            self.rate_rps,
            if self.peak_measured {
                "measured"
            } else {
                "given"
            },
            self.peak_rps,
            Mix::SHOP.list,
            Mix::SHOP.get,
            Mix::SHOP.checkout,
        );
        s.push_str(&format!(
            "| figure | value |\n|---|---|\n| crashes (SIGKILL + restart) | {} ({}) |\n| requests (ok) | {} ({}) |\n| ok rate, all requests: overall / outside the kills | {} / {} |\n| ok rate, browse requests: overall / outside the kills | {} / {} |\n| ok rate, browse requests outside gateway and item-service kills (bar {}%) | {} |\n| ok-rate bars (outside the kills >= {}%, browse >= {}%) | {} |\n| checkouts attempted | {} |\n| checkouts placed (client got 201) | {} |\n| checkouts accepted (client got 202: paid, order being completed) | {} |\n| checkouts failed (client got an error or no answer) | {} ({} no answer) |\n| endings after a 201 (every checkout of the run, peak measurement included) | {} |\n| endings after anything else | {} |\n| recovery (checkout_recovery_total) | {} |\n| consistency checker | {} |\n| violations | {} |\n\n",
            self.crashes.len(),
            self.crashes_by_process
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.requests,
            self.requests_ok,
            self.ok_rates.all.describe(),
            self.ok_rates.outside_kills.describe(),
            self.ok_rates.browse.describe(),
            self.ok_rates.browse_outside_kills.describe(),
            kill_windows::MIN_BROWSE_OK,
            self.ok_rates.browse_gated.describe(),
            kill_windows::MIN_OK_OUTSIDE_KILLS,
            kill_windows::MIN_BROWSE_OK,
            if self.shortfalls.is_empty() {
                "met".to_owned()
            } else {
                format!("MISSED ({} of 2)", self.shortfalls.len())
            },
            self.checkouts_attempted,
            self.checkouts_placed,
            self.checkouts_accepted,
            self.checkouts_failed,
            self.checkouts_no_answer,
            e(&self.endings_after_201),
            e(&self.endings_after_error),
            if self.recovery_metrics.is_empty() {
                "no such metric".to_owned()
            } else {
                self.recovery_metrics
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            if self.checker_available { self.checker_summary.as_str() } else { "not run" },
            self.violations.len(),
        ));
        s.push_str(&format!(
            "\"Outside the kills\" leaves out the requests sent from {:.0} s before to {:.0} s after each SIGKILL (in flight when the process died, or sent while it restarted and its callers reconnected); what is left shows whether the shop serves well between crashes.\n\n",
            self.ok_rates.window_before_s, self.ok_rates.window_after_s
        ));
        s.push_str(&format!(
            "Tuning: reservation TTL {} s, recovery every {} ms, gateway checkout lease {} ms, checkout budget {} ms.\n\n## Crashes\n\n",
            self.tuning.reservation_ttl_secs,
            self.tuning.recovery_interval_ms,
            self.tuning.checkout_lease_ms,
            self.tuning.checkout_budget_ms
        ));
        for c in &self.crashes {
            s.push_str(&format!(
                "- {:.1} s: {} (healthy again after {:.1} s)\n",
                c.at_s, c.process, c.down_s
            ));
        }
        s.push_str(&strays_markdown(&self.strays));
        if let Some(cpu) = &self.peak_cpu {
            s.push_str(&peak_cpu_markdown(cpu));
        }
        if !self.shortfalls.is_empty() {
            s.push_str("\n## Ok-rate bars missed\n\n");
            for v in &self.shortfalls {
                s.push_str(&format!("- {v}\n"));
            }
        }
        if !self.violations.is_empty() {
            s.push_str("\n## Violations\n\n");
            for v in &self.violations {
                s.push_str(&format!("- {v}\n"));
            }
        }
        s
    }
}

/// The failures outside the kill windows: totals by kind and error, then when they came.
fn strays_markdown(strays: &[Stray]) -> String {
    const SHOWN: usize = 40;
    let mut s = String::from("\n## Failures outside the kill windows\n\n");
    if strays.is_empty() {
        s.push_str("None.\n");
        return s;
    }
    let mut totals: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for x in strays {
        *totals.entry((x.kind, x.error.as_str())).or_default() += x.count;
    }
    s.push_str("| request | error | count |\n|---|---|---:|\n");
    for ((kind, error), n) in &totals {
        s.push_str(&format!("| {kind} | {error} | {n} |\n"));
    }
    s.push_str("\nBy second of the run (load start = 0; the busiest first):\n\n| second | request | error | count |\n|---:|---|---|---:|\n");
    let mut busiest: Vec<&Stray> = strays.iter().collect();
    busiest.sort_by(|a, b| b.count.cmp(&a.count).then(a.second.cmp(&b.second)));
    for x in busiest.iter().take(SHOWN) {
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            x.second, x.kind, x.error, x.count
        ));
    }
    if strays.len() > SHOWN {
        s.push_str(&format!(
            "\n({} more rows in soak.json)\n",
            strays.len() - SHOWN
        ));
    }
    s
}

/// Where the CPU went while the peak was measured.
fn peak_cpu_markdown(cpu: &CpuSpent) -> String {
    let mut s = format!(
        "\n## CPU during the peak measurement\n\n{:.1} s, {} operations; CPU per process (user + system, stores with their children):\n\n| process | CPU s | cores busy | ms per op |\n|---|---:|---:|---:|\n",
        cpu.wall_s, cpu.ops
    );
    let mut rows = cpu.by_process.clone();
    rows.sort_by(|a, b| b.cpu_ms.total_cmp(&a.cpu_ms));
    for p in &rows {
        s.push_str(&format!(
            "| {} | {:.1} | {:.2} | {:.2} |\n",
            p.process,
            p.cpu_ms / 1000.0,
            p.cpu_ms / 1000.0 / cpu.wall_s.max(1e-9),
            cpu.per_op_ms(&p.process)
        ));
    }
    s.push_str(&format!(
        "| all | {:.1} | {:.2} | {:.2} |\n",
        cpu.total_ms() / 1000.0,
        cpu.total_ms() / 1000.0 / cpu.wall_s.max(1e-9),
        cpu.total_ms() / cpu.ops.max(1) as f64
    ));
    s
}

/// Sums a counter over a process's restarts: the last value seen of each incarnation.
#[derive(Default)]
struct CounterAcrossRestarts {
    done: BTreeMap<String, f64>,
    current: BTreeMap<String, f64>,
}

const RECOVERY_ACTIONS: [&str; 4] = ["claimed", "forward", "compensated", "waiting"];

impl CounterAcrossRestarts {
    async fn sample(&mut self, url: &str) {
        if let Ok(page) = scrape(url).await {
            for a in RECOVERY_ACTIONS {
                let label = format!("action=\"{a}\"");
                let v = metric_sum(&page, "checkout_recovery_total", &[&label]);
                self.current.insert(a.to_owned(), v);
            }
        }
    }
    fn restarted(&mut self) {
        for (k, v) in std::mem::take(&mut self.current) {
            *self.done.entry(k).or_default() += v;
        }
    }
    fn total(&self) -> BTreeMap<String, f64> {
        let mut t = self.done.clone();
        for (k, v) in &self.current {
            *t.entry(k.clone()).or_default() += v;
        }
        t.retain(|_, v| *v > 0.0);
        t
    }
}

/// Kills a random process every `min..=max` until `until`.
async fn chaos(
    sup: &mut Supervisor,
    start: Instant,
    until: Instant,
    min: Duration,
    max: Duration,
    recovery: &mut CounterAcrossRestarts,
) -> anyhow::Result<Vec<Crash>> {
    let mut crashes = Vec::new();
    let metrics = sup.addrs.user_metrics_url();
    loop {
        let wait = {
            let mut rng = rand::rng();
            Duration::from_millis(rng.random_range(min.as_millis()..=max.as_millis()) as u64)
        };
        // Keep sampling the counter while waiting, so a kill loses at most a second of it.
        let wake = Instant::now() + wait;
        if wake + Duration::from_secs(5) > until {
            return Ok(crashes);
        }
        while Instant::now() < wake {
            recovery.sample(&metrics).await;
            tokio::time::sleep(Duration::from_secs(1).min(wake - Instant::now())).await;
        }
        let p = Process::ALL[rand::rng().random_range(0..Process::ALL.len())];
        if p == Process::UserService {
            recovery.sample(&metrics).await;
        }
        let at = start.elapsed();
        let killed = Instant::now();
        sup.kill(p).await?;
        if p == Process::UserService {
            recovery.restarted();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        sup.start(p).await?;
        let c = Crash {
            at_s: at.as_secs_f64(),
            process: p.name().into(),
            down_s: killed.elapsed().as_secs_f64(),
        };
        eprintln!(
            "[soak] {:.0} s: SIGKILL {}, healthy again after {:.1} s",
            c.at_s, c.process, c.down_s
        );
        crashes.push(c);
        // A process that died by itself is no part of the plan: fail loudly.
        sup.check_alive()?;
    }
}

pub async fn run(opts: &Options) -> anyhow::Result<SoakReport> {
    let started = Instant::now();
    let started_at = now_rfc3339();
    let tuning = Tuning::SOAK;
    eprintln!(
        "[soak] starting the stack from {} (logs in {})",
        opts.bin_dir.display(),
        opts.log_dir.display()
    );
    let mut rig = Rig::start(&opts.bin_dir, &opts.log_dir, tuning.clone(), Vec::new())
        .await
        .context("starting the soak's stack")?;
    let result = soak(&mut rig, opts, started, started_at).await;
    let keep = result.as_ref().map_or(true, |r| !r.violations.is_empty());
    if keep {
        eprintln!(
            "[soak] keeping the databases for inspection: {}",
            rig.stores.describe()
        );
    }
    rig.shutdown(keep).await;
    let report = result?;
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating {}", opts.out_dir.display()))?;
    std::fs::write(
        opts.out_dir.join("soak.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(opts.out_dir.join("soak.md"), report.markdown())?;
    eprintln!(
        "[soak] wrote {0}/soak.md and {0}/soak.json",
        opts.out_dir.display()
    );
    Ok(report)
}

/// The soak's processes (as running now), its stores and the generator, for CPU
/// accounting.
fn watched(rig: &Rig) -> Processes {
    let mut procs = Processes::default().with_generator();
    for (name, pid) in rig.sup.pids() {
        procs.add(name, pid, false);
    }
    let notes = process_cpu::watch_stores(&mut procs, &rig.stores.mongo_server);
    for n in notes {
        eprintln!("[soak] {n}");
    }
    procs
}

async fn soak(
    rig: &mut Rig,
    opts: &Options,
    started: Instant,
    started_at: String,
) -> anyhow::Result<SoakReport> {
    // Customers and a small catalog of this run's own.
    let mut customers = Vec::new();
    for i in 0..16 {
        customers.push(rig.customer(1000 + i).await?);
    }
    let mut items = vec![rig.item_id.clone()];
    for i in 0..7 {
        let sku = format!(
            "SOAK-{}-{i}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        items.push(rig.client.create_item(&rig.admin, &sku).await?);
    }
    let sent = Arc::new(Mutex::new(Vec::new()));
    let workload = Arc::new(SoakWorkload {
        pool: Arc::new(HttpPool::new(rig.sup.addrs.gateway_target()?, 256)),
        items: Arc::new(items),
        customers: Arc::new(customers),
        mix: Mix::SHOP,
        strategy: opts.strategy.clone(),
        checkout_ep: ep_checkout(&opts.strategy),
        sent: sent.clone(),
        timeline: Arc::new(Timeline::new(Instant::now())),
    });

    let mut peak_cpu = None;
    let (peak, measured) = match (opts.peak, opts.rate) {
        (Some(p), _) => (p, false),
        (None, Some(r)) => (r * 2.0, false),
        (None, None) => {
            eprintln!("[soak] measuring the peak: closed model, 32 users, 10 s, no crashes");
            let mut spec = RunSpec::new(
                "soak peak",
                Model::Closed {
                    users: 32,
                    think_ms: 0,
                },
                Duration::from_secs(2),
                Duration::from_secs(10),
            );
            spec.progress = opts.progress;
            let procs = watched(rig);
            let before = procs.sample();
            let m = engine::run(&spec, workload.clone()).await;
            peak_cpu = before.zip(procs.sample()).map(|(a, b)| {
                process_cpu::spent(&a, &b, m.result.requests + m.result.warmup_requests)
            });
            // Goodput, not throughput: an overloaded stack that answers 503 fast (its
            // breakers open) would otherwise report a "peak" of refusals.
            if m.result.success_rate < 0.95 {
                eprintln!(
                    "[soak] warning: only {:.1}% of the peak run succeeded; the peak is its goodput",
                    m.result.success_rate * 100.0
                );
            }
            (m.result.goodput_rps, true)
        }
    };
    let rate = opts.rate.unwrap_or(peak / 2.0).max(1.0);
    eprintln!(
        "[soak] peak {peak:.1} ops/s ({}); soaking at {rate:.1} ops/s for {:?}, a SIGKILL every {:?}..{:?}",
        if measured { "measured" } else { "given" },
        opts.duration,
        opts.kill_min,
        opts.kill_max
    );
    let first_soak_checkout = sent.lock().unwrap_or_else(|p| p.into_inner()).len();

    let warmup = Duration::from_secs(2);
    let mut spec = RunSpec::new("soak", Model::Open { rate }, warmup, opts.duration);
    spec.progress = opts.progress;
    let load_start = Instant::now();
    workload.timeline.restart(load_start);
    let until = load_start + warmup + opts.duration;
    let mut recovery = CounterAcrossRestarts::default();
    let (measured_run, crashes) = tokio::join!(
        engine::run(&spec, workload.clone()),
        chaos(
            &mut rig.sup,
            load_start,
            until,
            opts.kill_min,
            opts.kill_max,
            &mut recovery
        )
    );
    let crashes = crashes?;
    let r = measured_run.result;
    let kills: Vec<Duration> = crashes
        .iter()
        .map(|c| Duration::from_secs_f64(c.at_s))
        .collect();
    let browse_kills: Vec<Duration> = crashes
        .iter()
        .filter(|c| SERVES_BROWSE.contains(&c.process.as_str()))
        .map(|c| Duration::from_secs_f64(c.at_s))
        .collect();
    let ok_rates = workload.timeline.rates(warmup, &kills, &browse_kills);
    let strays = workload.timeline.strays(warmup, &kills);
    eprintln!(
        "[soak] ok: {} overall, {} outside {:.0} s before to {:.0} s after each kill; browse {} (outside gateway/item-service kills; {} overall, {} outside every kill)",
        ok_rates.all.describe(),
        ok_rates.outside_kills.describe(),
        kill_windows::BEFORE.as_secs_f64(),
        kill_windows::AFTER.as_secs_f64(),
        ok_rates.browse_gated.describe(),
        ok_rates.browse.describe(),
        ok_rates.browse_outside_kills.describe(),
    );
    let shortfalls = ok_rates.shortfalls();

    // Every checkout of the soak (peak measurement included) must reach its ending.
    let all: Vec<(CheckoutRef, Option<u16>)> = sent
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|s| (s.co.clone(), s.status))
        .collect();
    eprintln!(
        "[soak] load done: {} checkouts sent; waiting up to {:?} for each to reach its ending",
        all.len(),
        opts.settle
    );
    let settle_deadline = Instant::now() + opts.settle;
    let probe = rig.probe.clone();
    let endings: Vec<(Option<u16>, Result<Ending, String>, String)> =
        futures::stream::iter(all.iter().cloned())
            .map(|(co, status)| {
                let probe = probe.clone();
                async move {
                    let left = settle_deadline.saturating_duration_since(Instant::now());
                    let (ending, _seen, _) = probe.settle(&co, left).await;
                    (status, ending, co.order_id().to_string())
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
    recovery.sample(&rig.sup.addrs.user_metrics_url()).await;

    let mut violations = Vec::new();
    let (mut after_201, mut after_err) = (Endings::default(), Endings::default());
    for (status, ending, order) in &endings {
        let bucket = if *status == Some(201) {
            &mut after_201
        } else {
            &mut after_err
        };
        match ending {
            Ok(Ending::Placed) => bucket.placed += 1,
            Ok(Ending::RefundedReleased) => bucket.refunded_released += 1,
            Ok(Ending::NeverCharged) => bucket.never_charged += 1,
            Err(state) => {
                bucket.unsettled += 1;
                violations.push(format!(
                    "order {order}: no acceptable ending within the settle time: {state}"
                ));
            }
        }
        if *status == Some(201)
            && let Ok(e) = ending
            && *e != Ending::Placed
        {
            violations.push(format!(
                "order {order}: the client was told placed (201) but it ended {}",
                e.name()
            ));
        }
    }
    let check = rig.check().await?;
    violations.extend(check.violations.iter().map(|v| format!("checker: {v}")));

    let soak_sent = &all[first_soak_checkout.min(all.len())..];
    let mut by_process = BTreeMap::new();
    for c in &crashes {
        *by_process.entry(c.process.clone()).or_default() += 1;
    }
    Ok(SoakReport {
        started_at,
        strategy: opts.strategy.clone(),
        tuning: rig.tuning.clone(),
        duration_s: opts.duration.as_secs_f64(),
        peak_rps: peak,
        peak_measured: measured,
        rate_rps: rate,
        crashes,
        crashes_by_process: by_process,
        requests: r.requests,
        requests_ok: r.ok,
        ok_rates,
        shortfalls,
        checkouts_attempted: soak_sent.len() as u64,
        checkouts_placed: soak_sent.iter().filter(|s| s.1 == Some(201)).count() as u64,
        checkouts_accepted: soak_sent.iter().filter(|s| s.1 == Some(202)).count() as u64,
        checkouts_failed: soak_sent
            .iter()
            .filter(|s| !matches!(s.1, Some(201 | 202)))
            .count() as u64,
        checkouts_no_answer: soak_sent.iter().filter(|s| s.1.is_none()).count() as u64,
        endings_after_201: after_201,
        endings_after_error: after_err,
        recovery_metrics: recovery.total(),
        checker_available: check.available,
        checker_summary: check.summary.clone(),
        violations,
        errors_by_kind: r.errors_by_kind.clone(),
        strays,
        peak_cpu,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}
