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
    charts::{BarSeries, Chart, ChartSpec},
    engine::{self, Model, RunResult},
    experiment::Ctx,
    report::{Section, Table, f_ms, run_row},
    scenario,
    stats::Latency,
    waterfall::Waterfall,
};

/// One deployment/strategy row of section 1.
#[derive(Debug, Clone)]
pub struct StrategyRun {
    /// "orchestrated", "parallel", "chained", "monolith (orchestrated)".
    pub label: String,
    pub result: RunResult,
    pub hops: Option<Hops>,
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

/// Echo, then every strategy through the gateway and the monolith, at one offered load.
pub(crate) async fn run(ctx: &mut Ctx) -> anyhow::Result<Strategies> {
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
    let mut hops_out = Vec::new();
    // Each strategy's distributed run is followed at once by its monolith run: the
    // databases grow with every checkout and SecantusDB slows down as they do, so runs
    // far apart in time would compare database states, not deployments.
    let shop = ctx.dep.shop.clone();
    for s in STRATEGIES {
        let before = grpc_calls(ctx).await;
        let m = ctx.checkout_run(s, &ctx.dep.gw, s, rate, warmup, dur).await;
        let after = grpc_calls(ctx).await;
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
        if let Some(shop) = &shop {
            let label = format!("monolith ({s})");
            let m = ctx.checkout_run(&label, shop, s, rate, warmup, dur).await;
            runs.push(StrategyRun {
                label,
                result: m.result,
                hops: None,
            });
        }
    }
    // Tables list the distributed strategies first, then the monolith's.
    runs.sort_by_key(|r| r.label.starts_with("monolith"));
    Ok(Strategies {
        echo,
        runs,
        hops: hops_out,
    })
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
        "Per-hop overhead: (distributed p50 - the same strategy's monolith p50) / gRPC calls per checkout, beside the Echo p50",
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
            // The same strategy in the monolith, measured right after it.
            let twin = format!("monolith ({})", r.label);
            let m = runs.iter().find(|x| x.label == twin).unwrap_or(m);
            let per = (r.result.latency.p50_ms - m.result.latency.p50_ms) / h.total();
            overhead.push(json!({"strategy": r.label, "per_call_ms": per, "calls": h.total()}));
            ot.row(vec![
                r.label.clone(),
                f_ms(r.result.latency.p50_ms),
                f_ms(m.result.latency.p50_ms),
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
    let fmt_p50 =
        |r: Option<&StrategyRun>| r.map_or_else(|| "-".into(), |r| f_ms(r.result.latency.p50_ms));
    let mut measurement = format!(
        "Echo p50 {} ms (p99 {} ms). Checkout p50: orchestrated {} ms, parallel {} ms, chained {} ms, monolith {} ms.",
        f_ms(echo_p50),
        f_ms(echo.latency.p99_ms),
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
    let waterfalls: Vec<(String, &Waterfall)> = runs
        .iter()
        .filter_map(|r| r.result.waterfall.as_ref().map(|w| (r.label.clone(), w)))
        .collect();
    measurement.push_str(&waterfall_prose(&waterfalls, echo_p50));
    let mut tables = vec![t];
    if !ot.rows.is_empty() {
        tables.push(ot);
    }
    let mut charts = vec![bars];
    if !waterfalls.is_empty() {
        tables.push(waterfall_table(&waterfalls));
        charts.push(waterfall_chart(&waterfalls));
    }
    charts.push(sweep_chart);
    if !st.rows.is_empty() {
        tables.push(st);
    }
    let mut runs_all = vec![echo.clone()];
    runs_all.extend(runs.iter().map(|r| r.result.clone()));
    runs_all.extend(sweep.iter().map(|p| p.result.clone()));
    Section {
        id: "cost_per_hop".into(),
        title: "Cost per hop".into(),
        setup: "Checkouts (fresh Idempotency-Key each, one logged-in account per virtual user) through the gateway with ?strategy=orchestrated|parallel|chained, and through the `shop` monolith (same code, services called in-process), at one offered load; a bare shop.admin.v1.Echo RPC measured in the same run. The latency-vs-load sweep (one series per deployment, stopped at the first saturated step) runs last, after sections 2-5, because past saturation it leaves a backlog that would spill into them; by then their checkouts have grown the databases and SecantusDB (Python) is slower, so the sweep's latencies sit above the table's: compare points within the sweep. The waterfall comes from the `Server-Timing` header every gateway (and monolith) response carries, built from the services' own measurements: per successful checkout, time in the gateway itself, each downstream call as the caller saw it, each handler, and each store with its round trips; a strategy's waterfall averages them over its checkouts between the 40th and 60th percentile of client-seen latency.".into(),
        prediction: "Every synchronous hop adds at least one Echo round trip (the floor: HTTP/2 framing, protobuf, two socket crossings) plus its own work. Orchestrated and chained make about the same number of calls, so they should cost about the same; parallel overlaps the user lookup with pricing and should save about one hop; the monolith removes the sockets and should be faster by roughly calls x Echo p50. Latency should stay flat with offered load until the 2 cores saturate, then climb steeply.".into(),
        measurement,
        lesson: "A network hop is cheap next to a database write but never free: its floor multiplies by the number of calls on the critical path, and parallelising independent calls is the cheapest way to win it back.".into(),
        tables,
        charts,
        figures: json!({
            "echo": echo.latency,
            "strategies": runs.iter().map(|r| json!({"label": r.label, "latency": r.result.latency, "throughput_rps": r.result.throughput_rps, "hops": r.hops})).collect::<Vec<_>>(),
            "per_hop_overhead": overhead,
            "waterfalls": waterfalls.iter().map(|(l, w)| json!({"label": l, "per_call_overhead_ms": per_call(w), "waterfall": w})).collect::<Vec<_>>(),
        }),
        runs: runs_all,
    }
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
        && m.result.latency.p50_ms > 0.0
    {
        let ratio = o.result.latency.p50_ms / m.result.latency.p50_ms;
        out.push_str(&format!(
            " Target 1, orchestrated p50 at most 1.5x the monolith's: {ratio:.2}x ({}).",
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
    use crate::waterfall::{Waterfall, parse};

    fn waterfall(header: &str, client_ms: f64) -> Waterfall {
        Waterfall::build(&[(client_ms, parse(header))]).expect("one sample")
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
