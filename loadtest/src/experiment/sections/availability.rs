//! Section 3, availability of a chain: every service failing a fraction of its calls,
//! checkout success against the product rule (1-f)^calls, with retries off and on.

use std::{collections::BTreeMap, time::Duration};

use serde_json::json;

use super::HopsByStrategy;
use crate::{
    admin::{self, Rule},
    experiment::{
        charts::{Chart, ChartSpec, Curve},
        ctx::Ctx,
        report::{Section, Table, f_ms, f_pct},
    },
    generator::engine::RunResult,
};

/// The two ends of the hop count (6 and 5 calls); parallel makes the same calls as
/// orchestrated.
const AVAIL_STRATEGIES: [&str; 2] = ["orchestrated", "chained"];

/// The same rules on user-, item- and payment-service.
async fn faults_everywhere(ctx: &Ctx, rules: &[Rule]) -> anyhow::Result<()> {
    for u in [
        &ctx.dep.user_grpc,
        &ctx.dep.item_grpc,
        &ctx.dep.payment_grpc,
    ] {
        admin::set_grpc_faults(u, rules).await?;
    }
    Ok(())
}

/// Every service failing a fraction f of calls; checkouts with the gateway's retries off and on.
pub(crate) async fn run(ctx: &mut Ctx, hops: &HopsByStrategy) -> anyhow::Result<Section> {
    let (rate, dur) = (ctx.p.rate, ctx.p.avail_dur);
    let warm = ctx.p.warmup.min(Duration::from_secs(1));
    let mut runs = Vec::new();
    for f in ctx.p.fails.clone() {
        faults_everywhere(ctx, &[Rule::error_rate("*", f)]).await?;
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
    faults_everywhere(ctx, &[]).await?;
    Ok(section(&runs))
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

/// Builds section 3 from one run per strategy, failure rate and retry setting.
pub fn section(runs: &[AvailRun]) -> Section {
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
