//! Section 1, continued: checkout latency vs offered load (open model), one series per
//! deployment, each stopped at its first saturated step. It runs after every other section:
//! past saturation it leaves work behind (stock reservations finishing, payments to
//! reconcile) that would disturb them.

use std::{collections::BTreeMap, time::Duration};

use crate::{
    experiment::{
        charts::{Chart, ChartSpec, Curve},
        ctx::Ctx,
        process_cpu::CpuSpent,
        report::{Table, f_ms, f_pct},
    },
    generator::engine::RunResult,
};

/// One point of the latency-vs-load sweep.
#[derive(Debug, Clone)]
pub struct SweepPoint {
    pub series: String,
    pub result: RunResult,
    /// CPU every process used during the step (none where `/proc` is unreadable).
    pub cpu: Option<CpuSpent>,
}

/// A step past what the deployment sustains: the tail explodes or requests fail.
pub fn saturated(r: &RunResult) -> bool {
    r.latency.p99_ms > 3000.0 || r.success_rate < 0.9
}

/// Per series, the process that used the most CPU at the knee (the first saturated step;
/// the last step when none saturated).
pub fn knee_prose(sweep: &[SweepPoint]) -> String {
    let mut series: Vec<&str> = sweep.iter().map(|p| p.series.as_str()).collect();
    series.dedup();
    let parts: Vec<String> = series
        .iter()
        .filter_map(|s| {
            let steps: Vec<&SweepPoint> = sweep.iter().filter(|p| p.series == *s).collect();
            let knee = steps.iter().find(|p| saturated(&p.result));
            let at = knee.or(steps.last())?;
            let (name, cores, share) = at.cpu.as_ref()?.busiest()?;
            let rate = at.result.offered_rps.unwrap_or(at.result.throughput_rps);
            Some(format!(
                "{s} {} {rate:.0}/s, where {name} used {cores:.2} cores ({:.0}% of the stack's CPU)",
                if knee.is_some() {
                    "saturated at"
                } else {
                    "did not saturate; at its last step,"
                },
                share * 100.0
            ))
        })
        .collect();
    if parts.is_empty() {
        return String::new();
    }
    format!(
        " What saturates at the knee of the latency-vs-load sweep (the busiest process at the first saturated step): {}.",
        parts.join("; ")
    )
}

/// Latency vs offered load, run last: pushing past capacity leaves work behind (stock
/// reservations finishing, payments to reconcile) that would disturb later sections.
pub(crate) async fn run(ctx: &mut Ctx) -> Vec<SweepPoint> {
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
            let name = format!("{series} @ {r:.0}/s");
            let run = ctx.checkout_run(&name, &target, strategy, r, sweep_warm, sweep_dur);
            let (m, cpu) = ctx.with_cpu(run).await;
            let stop = saturated(&m.result);
            sweep.push(SweepPoint {
                series: series.clone(),
                result: m.result,
                cpu,
            });
            if stop {
                // Past saturation every further step only queues more; stop this series.
                break;
            }
        }
    }
    sweep
}

/// The sweep's table and its latency-vs-load chart (p50 and p99 per series).
pub fn table_and_chart(sweep: &[SweepPoint]) -> (Table, Chart) {
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
    (st, sweep_chart)
}
