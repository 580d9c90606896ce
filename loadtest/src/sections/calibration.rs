//! Section 0, calibration: loadtest against `wrk` on the same endpoint, connections and
//! duration, so the report shows whether the generator limits its own numbers.

use std::{sync::Arc, time::Duration};

use serde_json::json;

use crate::{
    engine::{self, Model, RunResult},
    experiment::Ctx,
    http::HttpPool,
    report::{Section, Table, f_ms},
    scenario, wrk,
    wrk::WrkResult,
};

/// Section 0: wrk and loadtest on the same endpoints, connections and duration.
pub(crate) async fn run(ctx: &mut Ctx) -> anyhow::Result<Section> {
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
    Ok(section(
        "the default gateway",
        p.calib_conns,
        p.calib_dur.as_secs_f64(),
        &pairs,
        (!have_wrk).then_some("`wrk` not found; apt-get install wrk"),
    ))
}

pub fn section(
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
