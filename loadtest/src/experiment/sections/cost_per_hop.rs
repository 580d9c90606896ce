//! Section 1, cost per hop: checkouts per strategy (orchestrated, parallel, chained, and
//! the `shop` monolith) at one offered load beside the bare Echo floor, with the gRPC calls
//! per checkout counted from the services' own metrics, and the waterfall of a median
//! checkout per strategy from the `Server-Timing` headers. The latency-vs-load part of the
//! section is in [`super::sweep`].

use std::sync::Arc;

use serde_json::json;

use super::{Hops, STRATEGIES, SweepPoint};
use crate::{
    admin,
    experiment::{
        charts::{BarSeries, Chart, ChartSpec},
        ctx::Ctx,
        process_cpu::CpuSpent,
        report::{Section, Table, f_ms, run_row},
    },
    generator::{
        engine::{self, Measured, Model, RunResult},
        http::Target,
        scenario,
        stats::Latency,
        waterfall::Waterfall,
    },
};

/// One deployment/strategy row of section 1.
#[derive(Debug, Clone)]
pub struct StrategyRun {
    /// "orchestrated", "parallel", "chained", "monolith (orchestrated)".
    pub label: String,
    /// The representative run: the round with the median p50 (or the only run).
    pub result: RunResult,
    pub hops: Option<Hops>,
    /// Every interleaved round's run, in order (empty when it ran once).
    pub rounds: Vec<RunResult>,
    /// CPU every process used over all its rounds (none where `/proc` is unreadable).
    pub cpu: Option<CpuSpent>,
}

impl StrategyRun {
    /// The median over the rounds of each round's p50 (the run's p50 without rounds).
    pub fn p50_ms(&self) -> f64 {
        median(self.rounds.iter().map(|r| r.latency.p50_ms)).unwrap_or(self.result.latency.p50_ms)
    }
}

/// The median of some values (mean of the middle two for an even count).
pub fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// What the first part of section 1 measured; the sweep completes it at the end.
pub(crate) struct Strategies {
    pub echo: RunResult,
    pub runs: Vec<StrategyRun>,
    /// gRPC calls per checkout per strategy (sections 2 and 3 predict from them).
    pub hops: Vec<(String, Hops)>,
}

/// gRPC calls per service, from the services' own counters (admin RPCs excluded).
async fn grpc_calls(ctx: &Ctx) -> Hops {
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
        user: get(&ctx.dep.user_metrics).await,
        item: get(&ctx.dep.item_metrics).await,
        payment: get(&ctx.dep.payment_metrics).await,
    }
}

/// One strategy's (or the monolith's) rounds as they accumulate.
struct Lineup {
    label: String,
    target: Target,
    strategy: &'static str,
    /// Distributed: its gRPC calls are counted.
    counts_calls: bool,
    rounds: Vec<Measured>,
    calls: Hops,
    issued: f64,
    cpu: Option<CpuSpent>,
}

/// The strategies through the gateway and the monolith interleaved in rounds, each round
/// opened by the bare Echo floor (E A B C M E A B C M ...), all at one offered load. The
/// databases grow with every checkout (and the machine's other load comes and goes): one
/// after the other, a later run would pay for its place in the order; interleaved, every
/// deployment and the floor see the same drift, and the medians over the rounds compare
/// them.
pub(crate) async fn run(ctx: &mut Ctx) -> anyhow::Result<Strategies> {
    let (rate, warmup, dur) = (ctx.p.rate, ctx.p.round_warmup, ctx.p.round_dur);
    let ch = scenario::grpc_channel(&ctx.dep.item_grpc).await?;
    let mut echo_rounds = Vec::new();
    let new = |label: String, target: Target, strategy: &'static str, counts_calls| Lineup {
        label,
        target,
        strategy,
        counts_calls,
        rounds: Vec::new(),
        calls: Hops::default(),
        issued: 0.0,
        cpu: None,
    };
    let mut lineup: Vec<Lineup> = STRATEGIES
        .iter()
        .map(|s| new((*s).to_owned(), ctx.dep.gw.clone(), s, true))
        .collect();
    if let Some(shop) = &ctx.dep.shop {
        lineup.push(new(
            MONOLITH.to_owned(),
            shop.clone(),
            "orchestrated",
            false,
        ));
    }
    for round in 1..=ctx.p.rounds.max(1) {
        let echo_spec = ctx.spec(
            &format!("Echo (item-service) (round {round})"),
            Model::Open {
                rate: ctx.p.echo_rate,
            },
            warmup,
            dur,
        );
        let workload = Arc::new(scenario::EchoWorkload::new(ch.clone()));
        echo_rounds.push(engine::run(&echo_spec, workload).await.result);
        for l in &mut lineup {
            let before = if l.counts_calls {
                Some(grpc_calls(ctx).await)
            } else {
                None
            };
            let name = format!("{} (round {round})", l.label);
            let run = ctx.checkout_run(&name, &l.target, l.strategy, rate, warmup, dur);
            let (m, cpu) = ctx.with_cpu(run).await;
            if let Some(before) = before {
                let after = grpc_calls(ctx).await;
                // Per checkout issued; failures (rare here) make fewer calls, so count
                // every request only when nearly all succeed.
                let per = if m.result.success_rate > 0.99 {
                    m.result.requests + m.snapshot.warmup
                } else {
                    m.result.ok + m.snapshot.warmup
                };
                l.calls.user += after.user - before.user;
                l.calls.item += after.item - before.item;
                l.calls.payment += after.payment - before.payment;
                l.issued += per as f64;
            }
            if let Some(c) = cpu {
                l.cpu.get_or_insert_with(CpuSpent::default).add(&c);
            }
            l.rounds.push(m);
        }
    }
    let mut runs = Vec::new();
    let mut hops_out = Vec::new();
    for l in lineup {
        let hops = l.counts_calls.then(|| {
            let n = l.issued.max(1.0);
            Hops {
                user: l.calls.user / n,
                item: l.calls.item / n,
                payment: l.calls.payment / n,
            }
        });
        if let Some(h) = hops {
            hops_out.push((l.label.clone(), h));
        }
        let rounds: Vec<RunResult> = l.rounds.into_iter().map(|m| m.result).collect();
        let Some(result) = median_round(&rounds) else {
            continue;
        };
        runs.push(StrategyRun {
            label: l.label,
            result,
            hops,
            rounds,
            cpu: l.cpu,
        });
    }
    let echo =
        median_round(&echo_rounds).ok_or_else(|| anyhow::anyhow!("no Echo round was measured"))?;
    Ok(Strategies {
        echo,
        runs,
        hops: hops_out,
    })
}

/// The monolith's label in section 1.
pub const MONOLITH: &str = "monolith (orchestrated)";

/// Per-round p50s side by side, the median of each column, and the microservice tax per
/// round (orchestrated p50 / the monolith's in the same round).
pub fn rounds_table(runs: &[StrategyRun]) -> Option<Table> {
    let n = runs
        .iter()
        .map(|r| r.rounds.len())
        .max()
        .filter(|n| *n > 0)?;
    let mut headers = vec!["round (p50 ms)"];
    headers.extend(runs.iter().map(|r| r.label.as_str()));
    let orch = runs.iter().find(|r| r.label == "orchestrated");
    let mono = runs.iter().find(|r| r.label == MONOLITH);
    let tax = orch.zip(mono);
    if tax.is_some() {
        headers.push("orchestrated / monolith");
    }
    let mut t = Table::new(
        "Interleaved rounds (A B C M A B C M ...): each run's p50 per round, and the median over the rounds",
        &headers,
    );
    let ratio = |a: &RunResult, b: &RunResult| {
        (b.latency.p50_ms > 0.0).then(|| a.latency.p50_ms / b.latency.p50_ms)
    };
    for i in 0..n {
        let mut row = vec![format!("{}", i + 1)];
        row.extend(runs.iter().map(|r| {
            r.rounds
                .get(i)
                .map_or_else(|| "-".into(), |x| f_ms(x.latency.p50_ms))
        }));
        if let Some((o, m)) = tax {
            row.push(
                o.rounds
                    .get(i)
                    .zip(m.rounds.get(i))
                    .and_then(|(a, b)| ratio(a, b))
                    .map_or_else(|| "-".into(), |x| format!("{x:.2}x")),
            );
        }
        t.row(row);
    }
    let mut row = vec!["median of the rounds".to_owned()];
    row.extend(runs.iter().map(|r| f_ms(r.p50_ms())));
    if let Some((o, m)) = tax {
        row.push(
            round_ratios(o, m)
                .and_then(|v| median(v.into_iter()))
                .map_or_else(|| "-".into(), |x| format!("{x:.2}x")),
        );
    }
    t.row(row);
    Some(t)
}

/// Per round, `a`'s p50 over `b`'s.
fn round_ratios(a: &StrategyRun, b: &StrategyRun) -> Option<Vec<f64>> {
    let v: Vec<f64> = a
        .rounds
        .iter()
        .zip(&b.rounds)
        .filter(|(_, y)| y.latency.p50_ms > 0.0)
        .map(|(x, y)| x.latency.p50_ms / y.latency.p50_ms)
        .collect();
    (!v.is_empty()).then_some(v)
}

/// CPU milliseconds per checkout by process (rows) and strategy (columns), and the same as
/// stacked bars. None when no run was accounted.
pub fn cpu_table_and_chart(runs: &[StrategyRun]) -> Option<(Table, Chart)> {
    let with: Vec<(&str, &CpuSpent)> = runs
        .iter()
        .filter_map(|r| r.cpu.as_ref().map(|c| (r.label.as_str(), c)))
        .collect();
    if with.is_empty() {
        return None;
    }
    // Processes in order of the most CPU per checkout anywhere; idle ones left out.
    let mut procs: Vec<(String, f64)> = Vec::new();
    for (_, c) in &with {
        for p in &c.by_process {
            let per = c.per_op_ms(&p.process);
            match procs.iter_mut().find(|(n, _)| *n == p.process) {
                Some((_, m)) => *m = m.max(per),
                None => procs.push((p.process.clone(), per)),
            }
        }
    }
    procs.retain(|(_, m)| *m > 0.0);
    procs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut headers = vec!["process (CPU ms per checkout)"];
    headers.extend(with.iter().map(|(l, _)| *l));
    let mut t = Table::new(
        "Where a checkout's CPU goes: user + system CPU milliseconds per checkout issued, by process (/proc, over every round's run, warm-up included)",
        &headers,
    );
    for (p, _) in &procs {
        let mut row = vec![p.clone()];
        row.extend(with.iter().map(|(_, c)| f_ms(c.per_op_ms(p))));
        t.row(row);
    }
    let mut total = vec!["all processes".to_owned()];
    total.extend(
        with.iter()
            .map(|(_, c)| f_ms(c.total_ms() / c.ops.max(1) as f64)),
    );
    t.row(total);
    let chart = Chart {
        file: "cpu_per_checkout.svg".into(),
        title: "Where a checkout's CPU goes, by process".into(),
        spec: ChartSpec::Stacked {
            x_label: "CPU ms per checkout".into(),
            categories: with.iter().map(|(l, _)| (*l).to_owned()).collect(),
            series: procs
                .iter()
                .map(|(p, _)| BarSeries {
                    name: p.clone(),
                    values: with.iter().map(|(_, c)| c.per_op_ms(p)).collect(),
                })
                .collect(),
            marks: Vec::new(),
        },
    };
    Some((t, chart))
}

/// Stores as the header names them, with the name the report uses.
const STORE_NAMES: [(&str, &str); 5] = [
    ("store.postgres", "PostgreSQL"),
    ("store.mysql", "MariaDB"),
    ("store.mongodb", "MongoDB"),
    ("store.redis", "Redis"),
    ("store.card_gateway", "card gateway HTTP"),
];

/// The waterfall table: one column per strategy, one row per component (client-seen total,
/// gateway total, gateway itself, each call as the caller saw it, each handler, each store
/// with its round trips, then the derived rows). A component a strategy lacks shows "-".
pub fn waterfall_table(runs: &[(String, &Waterfall)]) -> Table {
    let mut headers = vec!["component (ms per median checkout)"];
    headers.extend(runs.iter().map(|(l, _)| l.as_str()));
    let mut t = Table::new(
        "Waterfall of a median checkout per strategy (ms; mean over the checkouts between the 40th and 60th percentile of client-seen latency; stores: ms, then round trips)",
        &headers,
    );
    let cell = |w: &Waterfall, name: &str| -> String {
        match w.get(name) {
            Some(c) if name.starts_with("store.") => format!("{} ({:.1}x)", f_ms(c.ms), c.count),
            Some(c) if c.count > 1.0 + 1e-9 => format!("{} ({:.1}x)", f_ms(c.ms), c.count),
            Some(c) => f_ms(c.ms),
            None => "-".into(),
        }
    };
    let mut row = |label: String, f: &dyn Fn(&Waterfall) -> String| {
        let mut r = vec![label];
        r.extend(runs.iter().map(|(_, w)| f(w)));
        t.row(r);
    };
    row("client-seen latency".into(), &|w| f_ms(w.client_ms));
    row("gateway total".into(), &|w| cell(w, "total"));
    row("gateway itself".into(), &|w| cell(w, "gateway.self"));
    let names = |prefix: &str| -> std::collections::BTreeSet<String> {
        runs.iter()
            .flat_map(|(_, w)| w.with_prefix(prefix).map(|c| c.name.clone()))
            .collect()
    };
    for prefix in ["call.", "handler."] {
        for n in names(prefix) {
            let label = if prefix == "call." {
                format!("{n} (as the caller saw it)")
            } else {
                n.clone()
            };
            row(label, &|w| cell(w, &n));
        }
    }
    let stores = names("store.");
    for (n, label) in STORE_NAMES {
        if stores.contains(n) {
            row(format!("{label} ({n})"), &|w| cell(w, n));
        }
    }
    for n in stores
        .iter()
        .filter(|n| !STORE_NAMES.iter().any(|(k, _)| k == n))
    {
        row(n.clone(), &|w| cell(w, n));
    }
    row("calls per checkout".into(), &|w| {
        format!("{:.1}", w.calls())
    });
    row(
        "network + serialisation, sum of (call - handler)".into(),
        &|w| w.derived_ms("net.all").map_or_else(|| "-".into(), f_ms),
    );
    row("per-call overhead (call - handler) / calls".into(), &|w| {
        per_call(w).map_or_else(|| "-".into(), f_ms)
    });
    for svc in ["user", "item", "payment"] {
        let n = format!("own.{svc}");
        row(
            format!("{svc}-service handlers' own time (minus stores and calls)"),
            &|w| w.derived_ms(&n).map_or_else(|| "-".into(), f_ms),
        );
    }
    t
}

fn per_call(w: &Waterfall) -> Option<f64> {
    let calls = w.calls();
    w.derived_ms("net.all")
        .filter(|_| calls > 0.0)
        .map(|n| n / calls)
}

/// Horizontal stacked bars: where a median checkout's time goes, per strategy.
pub fn waterfall_chart(runs: &[(String, &Waterfall)]) -> Chart {
    let own = |w: &Waterfall| -> f64 {
        w.derived
            .iter()
            .filter(|d| d.name.starts_with("own."))
            .map(|d| d.ms)
            .sum()
    };
    let mut series = vec![
        (
            "client <-> gateway (HTTP, queueing)".to_owned(),
            runs.iter()
                .map(|(_, w)| (w.client_ms - w.ms("total")).max(0.0))
                .collect::<Vec<_>>(),
        ),
        (
            "gateway itself".to_owned(),
            runs.iter().map(|(_, w)| w.ms("gateway.self")).collect(),
        ),
        (
            "network + serialisation (call - handler)".to_owned(),
            runs.iter().map(|(_, w)| w.network_ms()).collect(),
        ),
        (
            "handlers' own work".to_owned(),
            runs.iter().map(|(_, w)| own(w)).collect(),
        ),
    ];
    for (n, label) in STORE_NAMES {
        series.push((
            label.to_owned(),
            runs.iter().map(|(_, w)| w.ms(n)).collect(),
        ));
    }
    Chart {
        file: "checkout_waterfall.svg".into(),
        title: "Where a median checkout's time goes (tick: client-seen latency)".into(),
        spec: ChartSpec::Stacked {
            x_label: "ms per checkout (overlapping calls, as in parallel, stack end to end)".into(),
            categories: runs.iter().map(|(l, _)| l.clone()).collect(),
            series: series
                .into_iter()
                .map(|(name, values)| BarSeries { name, values })
                .collect(),
            marks: runs.iter().map(|(_, w)| w.client_ms).collect(),
        },
    }
}

/// The round whose p50 is nearest the median of the rounds' p50s: a deployment's (or the
/// floor's) representative run.
fn median_round(rounds: &[RunResult]) -> Option<RunResult> {
    let mid = median(rounds.iter().map(|r| r.latency.p50_ms))?;
    rounds
        .iter()
        .min_by(|a, b| {
            let d = |r: &RunResult| (r.latency.p50_ms - mid).abs();
            d(a).total_cmp(&d(b))
        })
        .cloned()
}

/// Sentence comparing each strategy's per-call overhead with the Echo floor.
fn waterfall_prose(runs: &[(String, &Waterfall)], echo_p50: f64) -> String {
    let parts: Vec<String> = runs
        .iter()
        .filter_map(|(l, w)| {
            let per = per_call(w)?;
            let vs = if echo_p50 > 0.0 {
                format!(", {:.1}x the Echo p50", per / echo_p50)
            } else {
                String::new()
            };
            Some(format!(
                "{l} {} ms over {:.1} calls = {} ms per call{vs}",
                f_ms(w.network_ms()),
                w.calls(),
                f_ms(per)
            ))
        })
        .collect();
    if parts.is_empty() {
        return String::new();
    }
    format!(
        " From the services' own Server-Timing (median checkouts, mean over the 40th-60th percentile band), network and serialisation (each call as the caller saw it minus its handler) add up to: {}; the Echo floor measured here is {} ms per round trip.",
        parts.join("; "),
        f_ms(echo_p50)
    )
}

/// Builds section 1 from the Echo floor, the strategy runs and the latency-vs-load sweep.
pub fn section(echo: &RunResult, runs: &[StrategyRun], sweep: &[SweepPoint]) -> Section {
    let echo_p50 = echo.latency.p50_ms;
    let mut t = Table::new(
        "Checkout latency (ms) per strategy at the same offered load, and the Echo floor",
        &[
            "strategy",
            "offered req/s",
            "throughput req/s",
            "ok %",
            "p50",
            "p90",
            "p99",
            "max",
            "gRPC calls / checkout",
        ],
    );
    let mut e = run_row("bare tonic Echo (floor)", echo);
    e.push("1".into());
    t.row(e);
    for r in runs {
        let mut row = run_row(&r.label, &r.result);
        row.push(r.hops.map_or_else(
            || "in-process".into(),
            |h| {
                format!(
                    "{:.1} (user {:.1}, item {:.1}, payment {:.1})",
                    h.total(),
                    h.user,
                    h.item,
                    h.payment
                )
            },
        ));
        t.row(row);
    }
    // Per-hop overhead: distributed minus monolith, per gRPC call, beside the floor.
    let find = |label: &str| runs.iter().find(|r| r.label == label);
    let mono = runs.iter().find(|r| r.label.starts_with("monolith"));
    let mut overhead = Vec::new();
    let mut ot = Table::new(
        "Per-hop overhead: (distributed p50 - the monolith's p50, each the median over the interleaved rounds) / gRPC calls per checkout, beside the Echo p50",
        &[
            "strategy",
            "p50 distributed",
            "p50 monolith",
            "calls",
            "overhead per call",
            "Echo p50",
            "overhead / Echo",
        ],
    );
    if let Some(m) = mono {
        for r in runs.iter().filter(|r| !r.label.starts_with("monolith")) {
            let Some(h) = r.hops else { continue };
            if h.total() <= 0.0 {
                continue;
            }
            // The same strategy in the monolith where it was measured, else its
            // orchestrated checkout (the same work in-process).
            let twin = format!("monolith ({})", r.label);
            let m = runs.iter().find(|x| x.label == twin).unwrap_or(m);
            let per = (r.p50_ms() - m.p50_ms()) / h.total();
            overhead.push(json!({"strategy": r.label, "per_call_ms": per, "calls": h.total()}));
            ot.row(vec![
                r.label.clone(),
                f_ms(r.p50_ms()),
                f_ms(m.p50_ms()),
                format!("{:.1}", h.total()),
                f_ms(per),
                f_ms(echo_p50),
                if echo_p50 > 0.0 {
                    format!("{:.1}x", per / echo_p50)
                } else {
                    "-".into()
                },
            ]);
        }
    }
    let mut categories = vec!["Echo".to_owned()];
    categories.extend(runs.iter().map(|r| r.label.clone()));
    let pick = |f: fn(&Latency) -> f64| -> Vec<f64> {
        std::iter::once(f(&echo.latency))
            .chain(runs.iter().map(|r| f(&r.result.latency)))
            .collect()
    };
    let bars = Chart {
        file: "latency_per_strategy.svg".into(),
        title: "Checkout latency per strategy (same offered load)".into(),
        spec: ChartSpec::Bars {
            y_label: "latency (ms)".into(),
            categories,
            series: vec![
                BarSeries {
                    name: "p50".into(),
                    values: pick(|l| l.p50_ms),
                },
                BarSeries {
                    name: "p90".into(),
                    values: pick(|l| l.p90_ms),
                },
                BarSeries {
                    name: "p99".into(),
                    values: pick(|l| l.p99_ms),
                },
            ],
        },
    };
    let (st, sweep_chart) = super::sweep::table_and_chart(sweep);
    let orch = find("orchestrated");
    let par = find("parallel");
    let chained = find("chained");
    let fmt_p50 = |r: Option<&StrategyRun>| r.map_or_else(|| "-".into(), |r| f_ms(r.p50_ms()));
    let rounds = runs.iter().map(|r| r.rounds.len()).max().unwrap_or(0);
    let mut measurement = format!(
        "Echo p50 {} ms (p99 {} ms). Checkout p50{}: orchestrated {} ms, parallel {} ms, chained {} ms, monolith {} ms.",
        f_ms(echo_p50),
        f_ms(echo.latency.p99_ms),
        if rounds > 1 {
            format!(", median over {rounds} interleaved rounds")
        } else {
            String::new()
        },
        fmt_p50(orch),
        fmt_p50(par),
        fmt_p50(chained),
        fmt_p50(mono),
    );
    if overhead.is_empty() {
        measurement.push_str(" No monolith run, so the per-hop overhead could not be isolated.");
    } else {
        let per: Vec<String> = overhead
            .iter()
            .map(|o| {
                format!(
                    "{} {:.2} ms",
                    o["strategy"].as_str().unwrap_or("?"),
                    o["per_call_ms"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        measurement.push_str(&format!(
            " Per gRPC call, the distributed deployment costs {} more than the monolith, against an Echo floor of {} ms.",
            per.join(", "),
            f_ms(echo_p50)
        ));
    }
    measurement.push_str(&targets_prose(orch, mono, &overhead, echo_p50));
    measurement.push_str(&cpu_prose(runs));
    measurement.push_str(&super::sweep::knee_prose(sweep));
    let waterfalls: Vec<(String, &Waterfall)> = runs
        .iter()
        .filter_map(|r| r.result.waterfall.as_ref().map(|w| (r.label.clone(), w)))
        .collect();
    measurement.push_str(&waterfall_prose(&waterfalls, echo_p50));
    let mut tables = vec![t];
    tables.extend(rounds_table(runs));
    if !ot.rows.is_empty() {
        tables.push(ot);
    }
    let mut charts = vec![bars];
    let cpu = cpu_table_and_chart(runs);
    if let Some((ct, cc)) = &cpu {
        tables.push(ct.clone());
        charts.push(cc.clone());
    }
    if !waterfalls.is_empty() {
        tables.push(waterfall_table(&waterfalls));
        charts.push(waterfall_chart(&waterfalls));
    }
    charts.push(sweep_chart);
    if !st.rows.is_empty() {
        tables.push(st);
    }
    let mut runs_all = vec![echo.clone()];
    for r in runs {
        if r.rounds.is_empty() {
            runs_all.push(r.result.clone());
        } else {
            runs_all.extend(r.rounds.iter().cloned());
        }
    }
    runs_all.extend(sweep.iter().map(|p| p.result.clone()));
    Section {
        id: "cost_per_hop".into(),
        title: "Cost per hop".into(),
        setup: "Checkouts (fresh Idempotency-Key each, one logged-in account per virtual user) through the gateway with ?strategy=orchestrated|parallel|chained, and through the `shop` monolith (same code, services called in-process), at one offered load; beside them the floor, a bare shop.admin.v1.Echo RPC from loadtest to item-service. The floor and the deployments run interleaved in rounds (Echo, orchestrated, parallel, chained, monolith, then again), so the databases' growth and the machine's other load fall on every deployment and on the floor alike, whatever the order; each p50 compared is the median over the rounds of the rounds' p50s (the Echo floor's too), and a row in the first table is its median round. Around every run, loadtest reads each process's user + system CPU time from /proc (gateways, services, card gateway, each store with its child processes, and itself). The latency-vs-load sweep (one series per deployment, stopped at the first saturated step) runs last, after sections 2-5, because past saturation it leaves a backlog that would spill into them; by then their checkouts have grown the databases and SecantusDB (Python) is slower, so the sweep's latencies sit above the table's: compare points within the sweep. The waterfall comes from the `Server-Timing` header every gateway (and monolith) response carries, built from the services' own measurements: per successful checkout, time in the gateway itself, each downstream call as the caller saw it, each handler, and each store with its round trips; a strategy's waterfall averages them over its checkouts between the 40th and 60th percentile of client-seen latency.".into(),
        prediction: "Every synchronous hop adds at least one Echo round trip (the floor: HTTP/2 framing, protobuf, two socket crossings) plus its own work. Orchestrated and chained make about the same number of calls, so they should cost about the same; parallel overlaps the user lookup with pricing and should save about one hop; the monolith removes the sockets and should be faster by roughly calls x Echo p50. Latency should stay flat with offered load until the 2 cores saturate, then climb steeply.".into(),
        measurement,
        lesson: "A network hop is cheap next to a database write but never free: its floor multiplies by the number of calls on the critical path, and parallelising independent calls is the cheapest way to win it back.".into(),
        tables,
        charts,
        figures: json!({
            "echo": echo.latency,
            "strategies": runs.iter().map(|r| json!({"label": r.label, "latency": r.result.latency, "throughput_rps": r.result.throughput_rps, "hops": r.hops, "round_p50_ms": r.rounds.iter().map(|x| x.latency.p50_ms).collect::<Vec<_>>(), "median_p50_ms": r.p50_ms(), "cpu": r.cpu})).collect::<Vec<_>>(),
            "knee": sweep.iter().filter(|p| super::sweep::saturated(&p.result)).map(|p| json!({"series": p.series, "offered_rps": p.result.offered_rps, "busiest": p.cpu.as_ref().and_then(|c| c.busiest()).map(|(n, cores, share)| json!({"process": n, "cores": cores, "share": share}))})).collect::<Vec<_>>(),
            "per_hop_overhead": overhead,
            "waterfalls": waterfalls.iter().map(|(l, w)| json!({"label": l, "per_call_overhead_ms": per_call(w), "waterfall": w})).collect::<Vec<_>>(),
        }),
        runs: runs_all,
    }
}

/// The busiest process per strategy, from the CPU accounting.
fn cpu_prose(runs: &[StrategyRun]) -> String {
    let parts: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            let c = r.cpu.as_ref()?;
            let (name, _, share) = c.busiest()?;
            Some(format!(
                "{} {} ms per checkout in all, {:.0}% of it in {name}",
                r.label,
                f_ms(c.total_ms() / c.ops.max(1) as f64),
                share * 100.0
            ))
        })
        .collect();
    if parts.is_empty() {
        return String::new();
    }
    format!(
        " CPU per checkout (every process of the stack, /proc): {}.",
        parts.join("; ")
    )
}

/// The project's two targets for this section, stated against the figures: orchestrated
/// p50 at most 1.5x the monolith's, and the per-call overhead over the monolith within 2x
/// of the Echo floor. A miss is stated with its size, never hidden.
fn targets_prose(
    orch: Option<&StrategyRun>,
    mono: Option<&StrategyRun>,
    overhead: &[serde_json::Value],
    echo_p50: f64,
) -> String {
    let mut out = String::new();
    if let (Some(o), Some(m)) = (orch, mono)
        && m.p50_ms() > 0.0
    {
        let ratio = o.p50_ms() / m.p50_ms();
        let per_round = round_ratios(o, m).map_or_else(String::new, |v| {
            format!(
                " (the ratio of the medians; per round {}, median {:.2}x)",
                v.iter()
                    .map(|x| format!("{x:.2}x"))
                    .collect::<Vec<_>>()
                    .join(", "),
                median(v.iter().copied()).unwrap_or(f64::NAN)
            )
        });
        out.push_str(&format!(
            " Target 1, orchestrated p50 at most 1.5x the monolith's (the microservice tax, medians over the rounds): {ratio:.2}x{per_round}: {}.",
            if ratio <= 1.5 {
                "met".to_owned()
            } else {
                format!("missed by {:.2}x", ratio - 1.5)
            }
        ));
    }
    let per_orch = overhead
        .iter()
        .find(|o| o["strategy"].as_str() == Some("orchestrated"))
        .and_then(|o| o["per_call_ms"].as_f64());
    if let Some(per) = per_orch
        && echo_p50 > 0.0
    {
        let ratio = per / echo_p50;
        out.push_str(&format!(
            " Target 2, orchestrated's per-call overhead over the monolith within 2x of the Echo floor: {} ms per call = {ratio:.2}x Echo ({}).",
            f_ms(per),
            if ratio <= 2.0 {
                "met".to_owned()
            } else {
                format!("missed by {:.2}x", ratio - 2.0)
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::waterfall::{Waterfall, parse};

    fn waterfall(header: &str, client_ms: f64) -> Waterfall {
        Waterfall::build(&[(client_ms, parse(header))]).expect("one sample")
    }

    #[test]
    fn median_of_odd_and_even_counts_ignores_what_is_not_a_number() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), Some(2.5));
        assert_eq!(median([f64::NAN, 5.0].into_iter()), Some(5.0));
        assert_eq!(median(std::iter::empty()), None);
    }

    #[test]
    fn waterfall_table_puts_strategies_side_by_side() {
        let orch = waterfall(
            "total;dur=15, gateway.self;dur=2, call.item.ReserveStock;dur=10, handler.item.ReserveStock;dur=8, call.user.ValidateToken;dur=3, handler.user.ValidateToken;dur=1, store.mongodb;dur=6;n=4, store.postgres;dur=0.5;n=1",
            22.0,
        );
        let mono = waterfall(
            "total;dur=9.5, gateway.self;dur=1, call.item.ReserveStock;dur=8.5, handler.item.ReserveStock;dur=8, store.mongodb;dur=6;n=4",
            13.0,
        );
        let runs = vec![
            ("orchestrated".to_owned(), &orch),
            ("monolith (orchestrated)".to_owned(), &mono),
        ];
        let t = waterfall_table(&runs);
        assert_eq!(
            t.headers,
            [
                "component (ms per median checkout)",
                "orchestrated",
                "monolith (orchestrated)"
            ]
        );
        let row = |label: &str| -> Vec<String> {
            t.rows
                .iter()
                .find(|r| r[0] == label)
                .unwrap_or_else(|| panic!("row {label:?} in {:?}", t.rows))
                .clone()
        };
        assert_eq!(row("client-seen latency")[1..], ["22.0", "13.0"]);
        assert_eq!(row("gateway itself")[1..], ["2.00", "1.00"]);
        // A call only one strategy makes: "-" for the other.
        assert_eq!(
            row("call.user.ValidateToken (as the caller saw it)")[1..],
            ["3.00", "-"]
        );
        assert_eq!(
            row("MongoDB (store.mongodb)")[1..],
            ["6.00 (4.0x)", "6.00 (4.0x)"]
        );
        // (10 - 8) + (3 - 1) = 4 ms over 2 calls; the monolith's in-process call 0.5 ms.
        assert_eq!(
            row("network + serialisation, sum of (call - handler)")[1..],
            ["4.00", "0.50"]
        );
        assert_eq!(
            row("per-call overhead (call - handler) / calls")[1..],
            ["2.00", "0.50"]
        );
        assert_eq!(
            row("item-service handlers' own time (minus stores and calls)")[1..],
            ["2.00", "2.00"]
        );
        assert!(t.rows.iter().all(|r| r.len() == 3));

        let chart = waterfall_chart(&runs);
        let ChartSpec::Stacked {
            categories,
            series,
            marks,
            ..
        } = &chart.spec
        else {
            panic!("stacked chart expected, got {:?}", chart.spec);
        };
        assert_eq!(categories.len(), 2);
        assert_eq!(marks, &vec![22.0, 13.0]);
        // Sequential orchestrated checkout: the segments add up to the client-seen time.
        let sum: f64 = series.iter().map(|s| s.values[0]).sum();
        assert!((sum - 22.0).abs() < 1e-9, "{sum}");

        let prose = waterfall_prose(&runs, 1.0);
        assert!(
            prose.contains(
                "orchestrated 4.00 ms over 2.0 calls = 2.00 ms per call, 2.0x the Echo p50"
            ),
            "{prose}"
        );
    }
}
