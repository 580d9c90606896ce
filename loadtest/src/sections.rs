//! The report's sections, built from measured runs. Pure functions: the experiment feeds
//! them real runs against the stack, the smoke test feeds them runs against a toy target.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    charts::{BarSeries, Chart, ChartSpec, Curve},
    engine::RunResult,
    report::{RUN_HEADERS, Section, Table, f_ms, f_pct, run_row},
    stats::Latency,
    wrk::WrkResult,
};

/// gRPC calls the services served per checkout (measured from their
/// `grpc_server_requests_total` counters during a fault-free run).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Hops {
    pub user: f64,
    pub item: f64,
    pub payment: f64,
}

impl Hops {
    pub fn total(&self) -> f64 {
        self.user + self.item + self.payment
    }
}

/// One deployment/strategy row of section 1.
#[derive(Debug, Clone)]
pub struct StrategyRun {
    /// "orchestrated", "parallel", "chained", "monolith (orchestrated)".
    pub label: String,
    pub result: RunResult,
    pub hops: Option<Hops>,
}

/// One point of the latency-vs-load sweep.
#[derive(Debug, Clone)]
pub struct SweepPoint {
    pub series: String,
    pub result: RunResult,
}

pub fn calibration(
    endpoint: &str,
    connections: usize,
    duration_s: f64,
    pairs: &[(String, Option<WrkResult>, RunResult)],
    wrk_note: Option<&str>,
) -> Section {
    let mut t = Table::new(
        "Same endpoint, same connections, same duration (closed model, no think time)",
        &[
            "endpoint",
            "tool",
            "req/s",
            "p50",
            "p90",
            "p99",
            "loadtest / wrk",
        ],
    );
    let mut ratios = Vec::new();
    let mut figures = Vec::new();
    for (ep, wrk, lt) in pairs {
        let ratio = wrk
            .as_ref()
            .filter(|w| w.requests_per_sec > 0.0)
            .map(|w| lt.throughput_rps / w.requests_per_sec);
        if let Some(w) = wrk {
            let opt = |v: Option<f64>| v.map_or_else(|| "-".into(), f_ms);
            t.row(vec![
                ep.clone(),
                "wrk".into(),
                format!("{:.0}", w.requests_per_sec),
                opt(w.p50_ms),
                opt(w.p90_ms),
                opt(w.p99_ms),
                String::new(),
            ]);
        }
        t.row(vec![
            ep.clone(),
            "loadtest".into(),
            format!("{:.0}", lt.throughput_rps),
            f_ms(lt.latency.p50_ms),
            f_ms(lt.latency.p90_ms),
            f_ms(lt.latency.p99_ms),
            ratio.map_or_else(|| "-".into(), |r| format!("{:.0}%", r * 100.0)),
        ]);
        if let Some(r) = ratio {
            ratios.push((ep.clone(), r));
        }
        figures.push(
            json!({"endpoint": ep, "wrk": wrk, "loadtest_rps": lt.throughput_rps, "ratio": ratio}),
        );
    }
    let measurement = if ratios.is_empty() {
        format!(
            "wrk was not run ({}); loadtest alone reached {}.",
            wrk_note.unwrap_or("not installed"),
            pairs
                .iter()
                .map(|(ep, _, lt)| format!("{:.0} req/s on {ep}", lt.throughput_rps))
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        let parts: Vec<String> = ratios
            .iter()
            .map(|(ep, r)| {
                format!(
                    "{:.0}% of wrk's throughput on `{ep}` ({})",
                    r * 100.0,
                    if *r >= 0.9 {
                        "meets the 90% bar"
                    } else {
                        "below the 90% bar"
                    }
                )
            })
            .collect();
        let below = ratios.iter().any(|(_, r)| *r < 0.9);
        format!(
            "loadtest reached {}.{}",
            parts.join("; "),
            if below {
                " Where it falls short, the cause is CPU: generator and server share the same cores, and loadtest spends more per request than wrk (a Tokio task, HdrHistogram recording under a lock, and a timer per request) where wrk runs a tight C event loop; a cheap endpoint makes the generator's share dominant."
            } else {
                ""
            }
        )
    };
    Section {
        id: "calibration".into(),
        title: "Calibration against wrk".into(),
        setup: format!(
            "{connections} keep-alive connections for {duration_s:.0} s against {endpoint}; wrk with 2 threads, loadtest in closed mode with one virtual user per connection."
        ),
        prediction: "A load generator that is not the bottleneck reports the server's capacity; loadtest should reach at least 90% of wrk's request rate on the same endpoint.".into(),
        measurement,
        lesson: "Before trusting a load test's numbers, check that the generator is not what limits them.".into(),
        tables: vec![t],
        charts: vec![],
        figures: json!({"pairs": figures, "connections": connections, "duration_s": duration_s}),
        runs: pairs.iter().map(|(_, _, lt)| lt.clone()).collect(),
    }
}

pub fn cost_per_hop(echo: &RunResult, runs: &[StrategyRun], sweep: &[SweepPoint]) -> Section {
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
        "Per-hop overhead: (distributed p50 - monolith p50) / gRPC calls per checkout, beside the Echo p50",
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
    let mut by_series: BTreeMap<String, Vec<&RunResult>> = BTreeMap::new();
    for p in sweep {
        by_series
            .entry(p.series.clone())
            .or_default()
            .push(&p.result);
    }
    let mut curves = Vec::new();
    let mut st = Table::new(
        "Latency vs offered load (open model)",
        &[
            "series",
            "offered req/s",
            "throughput req/s",
            "ok %",
            "p50",
            "p99",
        ],
    );
    for (name, rs) in &by_series {
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        for r in rs {
            let x = r.offered_rps.unwrap_or(r.throughput_rps);
            p50.push((x, r.latency.p50_ms));
            p99.push((x, r.latency.p99_ms));
            st.row(vec![
                name.clone(),
                format!("{x:.0}"),
                format!("{:.1}", r.throughput_rps),
                f_pct(r.success_rate),
                f_ms(r.latency.p50_ms),
                f_ms(r.latency.p99_ms),
            ]);
        }
        curves.push(Curve {
            name: format!("{name} p99"),
            points: p99,
            predicted: false,
        });
        curves.push(Curve {
            name: format!("{name} p50"),
            points: p50,
            predicted: true,
        });
    }
    let sweep_chart = Chart {
        file: "latency_vs_load.svg".into(),
        title: "Checkout latency vs offered load".into(),
        spec: ChartSpec::Lines {
            x_label: "offered load (checkouts/s)".into(),
            y_label: "latency (ms)".into(),
            series: curves,
        },
    };
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
    let mut tables = vec![t];
    if !ot.rows.is_empty() {
        tables.push(ot);
    }
    if !st.rows.is_empty() {
        tables.push(st);
    }
    let mut runs_all = vec![echo.clone()];
    runs_all.extend(runs.iter().map(|r| r.result.clone()));
    runs_all.extend(sweep.iter().map(|p| p.result.clone()));
    Section {
        id: "cost_per_hop".into(),
        title: "Cost per hop".into(),
        setup: "Checkouts (fresh Idempotency-Key each, one logged-in account per virtual user) through the gateway with ?strategy=orchestrated|parallel|chained, and through the `shop` monolith (same code, services called in-process), at one offered load; a bare shop.admin.v1.Echo RPC measured in the same run. The latency-vs-load sweep (one series per deployment, stopped at the first saturated step) runs last, after sections 2-5, because past saturation it leaves a backlog that would spill into them; by then their checkouts have grown the databases and SecantusDB (Python) is slower, so the sweep's latencies sit above the table's: compare points within the sweep.".into(),
        prediction: "Every synchronous hop adds at least one Echo round trip (the floor: HTTP/2 framing, protobuf, two socket crossings) plus its own work. Orchestrated and chained make about the same number of calls, so they should cost about the same; parallel overlaps the user lookup with pricing and should save about one hop; the monolith removes the sockets and should be faster by roughly calls x Echo p50. Latency should stay flat with offered load until the 2 cores saturate, then climb steeply.".into(),
        measurement,
        lesson: "A network hop is cheap next to a database write but never free: its floor multiplies by the number of calls on the critical path, and parallelising independent calls is the cheapest way to win it back.".into(),
        tables,
        charts: vec![bars, sweep_chart],
        figures: json!({
            "echo": echo.latency,
            "strategies": runs.iter().map(|r| json!({"label": r.label, "latency": r.result.latency, "throughput_rps": r.result.throughput_rps, "hops": r.hops})).collect::<Vec<_>>(),
            "per_hop_overhead": overhead,
        }),
        runs: runs_all,
    }
}

/// One strategy before and after the slow tail.
#[derive(Debug, Clone)]
pub struct TailRun {
    pub label: String,
    pub baseline: RunResult,
    pub with_tail: RunResult,
    /// Calls per checkout to the service given the tail.
    pub calls_to_slow: f64,
    /// "Slow" means at or above this: the baseline's p50 plus half the injected delay.
    pub threshold_ms: f64,
    /// Share of checkouts at or above the threshold without the tail.
    pub share_before: f64,
    /// Measured share of checkouts at or above the threshold with the tail.
    pub fraction_slow: f64,
}

impl TailRun {
    /// The share of slow checkouts expected with the tail: those slow anyway, plus the
    /// others hit by at least one delayed call.
    pub fn predicted(&self, probability: f64) -> f64 {
        let hit = 1.0 - (1.0 - probability).powf(self.calls_to_slow);
        self.share_before + (1.0 - self.share_before) * hit
    }
}

pub fn tail_amplification(
    service: &str,
    probability: f64,
    delay_ms: u32,
    runs: &[TailRun],
) -> Section {
    let mut t = Table::new(
        &format!(
            "Checkout latency (ms) with {:.0}% of {service} calls delayed by {delay_ms} ms",
            probability * 100.0
        ),
        &[
            "strategy",
            "calls to slow hop",
            "slow = at least (ms)",
            "slow before",
            "predicted slow after",
            "measured slow after",
            "p50 before",
            "p99 before",
            "p50 after",
            "p90 after",
            "p99 after",
            "ok % after",
        ],
    );
    let mut figures = Vec::new();
    for r in runs {
        let predicted = r.predicted(probability);
        t.row(vec![
            r.label.clone(),
            format!("{:.1}", r.calls_to_slow),
            f_ms(r.threshold_ms),
            format!("{:.1}%", r.share_before * 100.0),
            format!("{:.1}%", predicted * 100.0),
            format!("{:.1}%", r.fraction_slow * 100.0),
            f_ms(r.baseline.latency.p50_ms),
            f_ms(r.baseline.latency.p99_ms),
            f_ms(r.with_tail.latency.p50_ms),
            f_ms(r.with_tail.latency.p90_ms),
            f_ms(r.with_tail.latency.p99_ms),
            f_pct(r.with_tail.success_rate),
        ]);
        figures.push(json!({"strategy": r.label, "calls_to_slow_hop": r.calls_to_slow, "predicted_share_slow": predicted, "measured_share_slow": r.fraction_slow, "share_slow_before": r.share_before, "slow_threshold_ms": r.threshold_ms, "p99_before_ms": r.baseline.latency.p99_ms, "p99_after_ms": r.with_tail.latency.p99_ms}));
    }
    let chart = Chart {
        file: "tail_amplification.svg".into(),
        title: format!(
            "Checkout p99 before/after a {:.0}% x {delay_ms} ms tail on {service}",
            probability * 100.0
        ),
        spec: ChartSpec::Bars {
            y_label: "p99 latency (ms)".into(),
            categories: runs.iter().map(|r| r.label.clone()).collect(),
            series: vec![
                BarSeries {
                    name: "p99 before".into(),
                    values: runs.iter().map(|r| r.baseline.latency.p99_ms).collect(),
                },
                BarSeries {
                    name: "p99 with tail".into(),
                    values: runs.iter().map(|r| r.with_tail.latency.p99_ms).collect(),
                },
            ],
        },
    };
    let measurement = runs
        .iter()
        .map(|r| {
            format!(
                "{}: p99 {} -> {} ms, checkouts slower than {} ms {:.1}% -> {:.1}% (predicted {:.1}%)",
                r.label,
                f_ms(r.baseline.latency.p99_ms),
                f_ms(r.with_tail.latency.p99_ms),
                f_ms(r.threshold_ms),
                r.share_before * 100.0,
                r.fraction_slow * 100.0,
                r.predicted(probability) * 100.0
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
        + ".";
    let mut all = Vec::new();
    for r in runs {
        all.push(r.baseline.clone());
        all.push(r.with_tail.clone());
    }
    Section {
        id: "tail_amplification".into(),
        title: "Tail amplification".into(),
        setup: format!("{service} given a slow tail through FaultAdmin (every method: with probability {probability} a call waits {delay_ms} ms), same offered load as section 1; each strategy runs once without the tail, then with it. A checkout counts as slow at or above the p50 of its run without the tail plus half the delay."),
        prediction: format!(
            "A checkout that makes k calls to the slow service is slow when any of them is: 1-(1-{probability})^k of checkouts, about k times the per-call {:.0}%. With k around 3 that is about 3%, past the 1% that p99 looks at, so every strategy's p99 should jump to about {delay_ms} ms plus its normal latency while p50 stays put.",
            probability * 100.0
        ),
        measurement,
        lesson: "Fan-out and call chains turn one service's rare slowness into a common experience: the tail of the whole is worse than the tail of any part, so tail latency budgets must be set per hop with the number of hops in mind.".into(),
        tables: vec![t],
        charts: vec![chart],
        figures: json!({"service": service, "probability": probability, "delay_ms": delay_ms, "strategies": figures}),
        runs: all,
    }
}

/// One availability measurement.
#[derive(Debug, Clone)]
pub struct AvailRun {
    pub strategy: String,
    /// Injected failure rate per call on every service.
    pub f: f64,
    pub retries: bool,
    /// gRPC calls per checkout (fault-free).
    pub hops: f64,
    pub result: RunResult,
}

pub fn availability(runs: &[AvailRun]) -> Section {
    let mut t = Table::new(
        "Checkout success vs injected failure per call (every service, every method)",
        &[
            "strategy",
            "f",
            "calls",
            "predicted (1-f)^calls",
            "measured, retries off",
            "measured, retries on",
            "p99 off",
            "p99 on",
            "errors off",
            "errors on",
        ],
    );
    let mut keys: Vec<(String, u64)> = runs
        .iter()
        .map(|r| (r.strategy.clone(), (r.f * 1e6) as u64))
        .collect();
    keys.dedup();
    keys.sort();
    keys.dedup();
    let mut figures = Vec::new();
    for (s, fk) in &keys {
        let get = |retries: bool| {
            runs.iter()
                .find(|r| &r.strategy == s && (r.f * 1e6) as u64 == *fk && r.retries == retries)
        };
        let Some(any) = get(false).or_else(|| get(true)) else {
            continue;
        };
        let predicted = (1.0 - any.f).powf(any.hops);
        let cell = |r: Option<&AvailRun>| {
            r.map_or_else(
                || "-".into(),
                |r| format!("{}%", f_pct(r.result.success_rate)),
            )
        };
        let p99 =
            |r: Option<&AvailRun>| r.map_or_else(|| "-".into(), |r| f_ms(r.result.latency.p99_ms));
        // 503 = an injected failure reached the client; 504 = the deadline passed (the
        // stack was overloaded or a retry ran out of budget).
        let kinds = |r: Option<&AvailRun>| -> String {
            r.map_or_else(
                || "-".into(),
                |r| {
                    r.result
                        .errors_by_kind
                        .iter()
                        .map(|(k, n)| format!("{n}x {}", k.trim_start_matches("http_")))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            )
        };
        t.row(vec![
            s.clone(),
            format!("{:.0}%", any.f * 100.0),
            format!("{:.1}", any.hops),
            format!("{}%", f_pct(predicted)),
            cell(get(false)),
            cell(get(true)),
            p99(get(false)),
            p99(get(true)),
            kinds(get(false)),
            kinds(get(true)),
        ]);
        figures.push(json!({
            "strategy": s, "f": any.f, "calls": any.hops, "predicted": predicted,
            "retries_off": get(false).map(|r| r.result.success_rate),
            "retries_on": get(true).map(|r| r.result.success_rate),
        }));
    }
    // Chart: success vs f per strategy and retry setting, and the predictions.
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut predicted: BTreeMap<String, (f64, Vec<(f64, f64)>)> = BTreeMap::new();
    for r in runs {
        let name = format!(
            "{} retries {}",
            r.strategy,
            if r.retries { "on" } else { "off" }
        );
        series
            .entry(name)
            .or_default()
            .push((r.f * 100.0, r.result.success_rate * 100.0));
        predicted
            .entry(r.strategy.clone())
            .or_insert((r.hops, Vec::new()));
    }
    let mut curves: Vec<Curve> = series
        .into_iter()
        .map(|(name, mut pts)| {
            pts.insert(0, (0.0, 100.0));
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            Curve {
                name,
                points: pts,
                predicted: false,
            }
        })
        .collect();
    let fmax = runs.iter().map(|r| r.f).fold(0.0, f64::max);
    for (s, (hops, _)) in predicted {
        let pts = (0..=20)
            .map(|i| {
                let f = fmax * f64::from(i) / 20.0;
                (f * 100.0, (1.0 - f).powf(hops) * 100.0)
            })
            .collect();
        curves.push(Curve {
            name: format!("{s} predicted (1-f)^{hops:.0}"),
            points: pts,
            predicted: true,
        });
    }
    let chart = Chart {
        file: "availability.svg".into(),
        title: "Checkout success rate vs injected failure per call".into(),
        spec: ChartSpec::Lines {
            x_label: "injected failure per call f (%)".into(),
            y_label: "checkout success (%)".into(),
            series: curves,
        },
    };
    let worst = runs
        .iter()
        .filter(|r| !r.retries)
        .max_by(|a, b| a.f.total_cmp(&b.f).then(a.hops.total_cmp(&b.hops)));
    let measurement = match worst {
        Some(w) => {
            let on = runs
                .iter()
                .find(|r| r.retries && r.strategy == w.strategy && r.f == w.f);
            format!(
                "At f = {:.0}% the {} checkout ({:.1} calls) succeeded {}% of the time without retries (predicted {}%){}. See the table for every strategy and rate.",
                w.f * 100.0,
                w.strategy,
                w.hops,
                f_pct(w.result.success_rate),
                f_pct((1.0 - w.f).powf(w.hops)),
                on.map_or_else(String::new, |on| format!(
                    " and {}% with the gateway's retries on",
                    f_pct(on.result.success_rate)
                ))
            )
        }
        None => "No runs.".into(),
    };
    Section {
        id: "availability".into(),
        title: "Availability of a chain".into(),
        setup: "Every service fails a fraction f of all calls with UNAVAILABLE (FaultAdmin, method \"*\"); checkouts through a gateway with retries off and one with retries on (3 attempts, jittered backoff, retry budget; only idempotent calls are retried).".into(),
        prediction: "A checkout needs every one of its calls to succeed, so without retries its success should follow the product rule (1-f)^calls: with 6 calls, 94% at f=1%, 74% at 5%, 53% at 10%. Retrying each idempotent call up to 3 times turns a per-call failure of f into about f^3 for those calls, so success should climb back close to 100%, limited by the calls that may not be retried.".into(),
        measurement,
        lesson: "Availability multiplies along a synchronous chain: services that are each 99% available make a 94% checkout, and only retries of idempotent calls (with a budget so they cannot amplify an outage) win it back.".into(),
        tables: vec![t],
        charts: vec![chart],
        figures: json!({"rows": figures}),
        runs: runs.iter().map(|r| r.result.clone()).collect(),
    }
}

/// Browse or checkout figures out of a mixed run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GroupStats {
    pub requests: u64,
    pub ok: u64,
    pub success_rate: f64,
    pub latency: Latency,
}

#[derive(Debug, Clone)]
pub struct CascadeRun {
    /// "baseline", "slow card gateway, protected", "slow card gateway, unprotected".
    pub label: String,
    pub result: RunResult,
    pub browse: GroupStats,
    pub checkout: GroupStats,
}

pub fn cascading_failure(delay_ms: u32, connections: usize, runs: &[CascadeRun]) -> Section {
    let mut t = Table::new(
        "Browse-heavy mix while the card gateway answers charges after the delay",
        &[
            "configuration",
            "browse ok %",
            "browse p50",
            "browse p99",
            "checkout ok %",
            "checkout p50",
            "checkout p99",
            "all req/s",
        ],
    );
    for r in runs {
        t.row(vec![
            r.label.clone(),
            f_pct(r.browse.success_rate),
            f_ms(r.browse.latency.p50_ms),
            f_ms(r.browse.latency.p99_ms),
            f_pct(r.checkout.success_rate),
            f_ms(r.checkout.latency.p50_ms),
            f_ms(r.checkout.latency.p99_ms),
            format!("{:.1}", r.result.throughput_rps),
        ]);
    }
    let chart = Chart {
        file: "cascading_failure.svg".into(),
        title: format!("Browse latency while card charges take {delay_ms} ms"),
        spec: ChartSpec::Bars {
            y_label: "browse latency (ms)".into(),
            categories: runs.iter().map(|r| r.label.clone()).collect(),
            series: vec![
                BarSeries {
                    name: "browse p50".into(),
                    values: runs.iter().map(|r| r.browse.latency.p50_ms).collect(),
                },
                BarSeries {
                    name: "browse p99".into(),
                    values: runs.iter().map(|r| r.browse.latency.p99_ms).collect(),
                },
            ],
        },
    };
    let measurement = runs
        .iter()
        .map(|r| {
            format!(
                "{}: browse {}% ok, p99 {} ms; checkout {}% ok, p99 {} ms",
                r.label,
                f_pct(r.browse.success_rate),
                f_ms(r.browse.latency.p99_ms),
                f_pct(r.checkout.success_rate),
                f_ms(r.checkout.latency.p99_ms)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
        + ".";
    let mut measurement = measurement;
    // A breaker that opened answers fast 503s; only 504s means it never did.
    if let Some(p) = runs
        .iter()
        .find(|r| r.label.contains("protected") && !r.label.contains("unprotected"))
    {
        let fast = p
            .result
            .errors_by_kind
            .get("http_503")
            .copied()
            .unwrap_or(0);
        let slow = p
            .result
            .errors_by_kind
            .get("http_504")
            .copied()
            .unwrap_or(0);
        if fast == 0 && slow > 0 {
            measurement.push_str(&format!(
                " In the protected run every failed checkout waited out its budget ({slow} x 504, no fast 503): no breaker opened within the run, so slow checkouts kept holding connections and browse queued behind them. A breaker opens after 5 failures in a row, which a run of a few seconds may not reach (--quick); otherwise look at the gateway's /debug/downstreams and payment-service's payment_circuit_state."
            ));
        } else if fast > 0 {
            measurement.push_str(&format!(
                " In the protected run {fast} checkouts failed fast (503: breaker open) and {slow} waited out their budget (504)."
            ));
        }
    }
    Section {
        id: "cascading_failure".into(),
        title: "Cascading failure".into(),
        setup: format!(
            "The card gateway answers every charge after {delay_ms} ms (its admin faults endpoint). A browse-heavy mix arrives at a fixed rate through one pool of {connections} client connections (a web tier's worker pool: browse and checkout share it). Protected: the defaults (2 s checkout budget propagated as grpc-timeout, payment-service's 2 s card-gateway timeout, a circuit breaker per downstream in the gateway and one on card-gateway charges in payment-service). Unprotected: budgets and card-gateway timeout 60 s, breakers and retries off."
        ),
        prediction: "Browsing never touches payment, so in a perfectly isolated system it would not notice. But slow checkouts hold shared capacity (connections, workers) for seconds each: without timeouts and breakers the slow charges pile up until they hold every connection, and browse requests queue behind them, so browse latency should climb by seconds and time out. With timeouts and a breaker, checkouts fail fast after the breaker opens, the pool drains, and browse should stay near its baseline.".into(),
        measurement,
        lesson: "A slow dependency is worse than a dead one: without timeouts and circuit breakers it spreads through shared resources to features that never call it.".into(),
        tables: vec![t],
        charts: vec![chart],
        figures: json!({"delay_ms": delay_ms, "connections": connections, "runs": runs.iter().map(|r| json!({"label": r.label, "browse": r.browse, "checkout": r.checkout})).collect::<Vec<_>>()}),
        runs: runs.iter().map(|r| r.result.clone()).collect(),
    }
}

#[derive(Debug, Clone)]
pub struct CacheRun {
    /// "cache on" / "cache off".
    pub label: String,
    pub result: RunResult,
    /// item_mongo_reads_total per second during the measurement window.
    pub mongo_reads_per_s: f64,
    pub cache_hit_ratio: Option<f64>,
}

pub fn cache(runs: &[CacheRun]) -> Section {
    let mut t = Table::new(
        "GetItem straight at item-service (gRPC), same ids, same rate",
        &[
            "item-service",
            "offered req/s",
            "ok %",
            "p50",
            "p90",
            "p99",
            "MongoDB reads/s",
            "cache hit ratio",
        ],
    );
    for r in runs {
        t.row(vec![
            r.label.clone(),
            r.result
                .offered_rps
                .map_or_else(|| "closed".into(), |v| format!("{v:.0}")),
            f_pct(r.result.success_rate),
            f_ms(r.result.latency.p50_ms),
            f_ms(r.result.latency.p90_ms),
            f_ms(r.result.latency.p99_ms),
            format!("{:.1}", r.mongo_reads_per_s),
            r.cache_hit_ratio
                .map_or_else(|| "-".into(), |h| format!("{:.1}%", h * 100.0)),
        ]);
    }
    let chart = Chart {
        file: "cache.svg".into(),
        title: "GetItem latency with ITEM_CACHE on and off".into(),
        spec: ChartSpec::Bars {
            y_label: "latency (ms)".into(),
            categories: runs.iter().map(|r| r.label.clone()).collect(),
            series: vec![
                BarSeries {
                    name: "p50".into(),
                    values: runs.iter().map(|r| r.result.latency.p50_ms).collect(),
                },
                BarSeries {
                    name: "p99".into(),
                    values: runs.iter().map(|r| r.result.latency.p99_ms).collect(),
                },
            ],
        },
    };
    let measurement = runs
        .iter()
        .map(|r| {
            format!(
                "{}: p50 {} ms, p99 {} ms, {:.1} MongoDB reads/s",
                r.label,
                f_ms(r.result.latency.p50_ms),
                f_ms(r.result.latency.p99_ms),
                r.mongo_reads_per_s
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
        + ".";
    Section {
        id: "cache".into(),
        title: "Cache".into(),
        setup: "Two item-service processes on the same MongoDB database, ITEM_CACHE=on (Redis in front of GetItem) and ITEM_CACHE=off; GetItem over gRPC for random ids out of 100 catalog items (each read once before the run) at a fixed rate; MongoDB reads counted from item-service's item_mongo_reads_total (scraped after warm-up and at the end).".into(),
        prediction: "With the cache on, after warm-up every id is in Redis: MongoDB reads should drop to about zero and GetItem latency to one Redis round trip; with it off, every GetItem is one MongoDB read (reads/s = request rate) and latency is the database's.".into(),
        measurement,
        lesson: "A read-through cache moves load off the database entirely for hot keys; the price is staleness and one more moving part that must fail open (item-service falls back to MongoDB when Redis is slow).".into(),
        tables: vec![t],
        charts: vec![chart],
        figures: json!({"runs": runs.iter().map(|r| json!({"label": r.label, "latency": r.result.latency, "mongo_reads_per_s": r.mongo_reads_per_s, "cache_hit_ratio": r.cache_hit_ratio})).collect::<Vec<_>>()}),
        runs: runs.iter().map(|r| r.result.clone()).collect(),
    }
}

/// Browse/checkout split of a mixed run's snapshot.
pub fn group(snap: &crate::stats::Snapshot, pred: impl Fn(&str) -> bool) -> GroupStats {
    let mut h = crate::stats::new_histogram();
    let mut ok = 0;
    for ((ep, is_ok), hist) in &snap.per {
        if pred(ep) {
            let _ = h.add(hist);
            if *is_ok {
                ok += hist.len();
            }
        }
    }
    let requests = h.len();
    GroupStats {
        requests,
        ok,
        success_rate: if requests == 0 {
            0.0
        } else {
            ok as f64 / requests as f64
        },
        latency: Latency::of(&h),
    }
}

pub fn run_table(caption: &str, runs: &[(String, RunResult)]) -> Table {
    let mut t = Table::new(caption, &RUN_HEADERS);
    for (l, r) in runs {
        t.row(run_row(l, r));
    }
    t
}
