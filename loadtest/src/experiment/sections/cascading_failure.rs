//! Section 4, cascading failure: the card gateway answering charges after 2 s, and what
//! that does to browsing (which never calls it) with and without timeouts and breakers.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    admin::{self, Rule},
    experiment::{
        charts::{BarSeries, Chart, ChartSpec},
        ctx::Ctx,
        report::{Section, Table, f_ms, f_pct},
    },
    generator::{
        engine::{self, Model, RunResult},
        scenario::{EP_GET, EP_LIST, Mix},
        stats::{Latency, Snapshot, new_histogram},
    },
};

/// A browse-heavy mix through the protected and the unprotected gateway while the card gateway is slow.
pub(crate) async fn run(ctx: &mut Ctx) -> anyhow::Result<Section> {
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
            browse: group(&m.snapshot, is_browse),
            checkout: group(&m.snapshot, is_checkout),
            result: m.result,
        });
        // Let breakers close and in-flight charges finish before the next configuration.
        admin::set_http_faults(&ctx.dep.card, "/admin/faults", None, &[]).await?;
        tokio::time::sleep(ctx.p.recover).await;
    }
    Ok(section(delay, conns, &runs))
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

/// Builds section 4 from the baseline, protected and unprotected runs.
pub fn section(delay_ms: u32, connections: usize, runs: &[CascadeRun]) -> Section {
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
            "The card gateway answers every charge after {delay_ms} ms (its admin faults endpoint). A browse-heavy mix arrives at a fixed rate through one pool of {connections} client connections (a web tier's worker pool: browse and checkout share it). Protected: the defaults (2 s checkout budget propagated as grpc-timeout, payment-service's 2 s card-gateway timeout, a circuit breaker per downstream in the gateway and one on card-gateway charges in payment-service). Unprotected: a 55 s checkout budget, 60 s read budget and card-gateway timeout, breakers and retries off."
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

/// Browse/checkout split of a mixed run's snapshot.
pub fn group(snap: &Snapshot, pred: impl Fn(&str) -> bool) -> GroupStats {
    let mut h = new_histogram();
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
