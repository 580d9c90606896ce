//! Section 2, tail amplification: a rare delay on one service (1% of item-service calls
//! +200 ms) against each strategy's p99 and share of slow checkouts.

use std::time::Duration;

use serde_json::json;

use super::{HopsByStrategy, STRATEGIES};
use crate::{
    admin::{self, Rule},
    experiment::{
        charts::{BarSeries, Chart, ChartSpec},
        ctx::Ctx,
        report::{Section, Table, f_ms, f_pct},
    },
    generator::engine::RunResult,
};

/// Each strategy without, then with, a slow tail on item-service.
pub(crate) async fn run(ctx: &mut Ctx, hops: &HopsByStrategy) -> anyhow::Result<Section> {
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
    Ok(section("item-service", prob, delay, &runs))
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

/// Builds section 2 from each strategy's runs without and with the tail.
pub fn section(service: &str, probability: f64, delay_ms: u32, runs: &[TailRun]) -> Section {
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
