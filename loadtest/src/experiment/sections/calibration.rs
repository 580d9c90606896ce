//! Section 0, calibration: loadtest against `wrk` on the same endpoint, connections and
//! duration, so the report shows whether the generator limits its own numbers; and the
//! MongoDB-wire store's own cost for one plain conditional update in the same run, so the
//! checkouts' store time can be read against what the store costs by itself.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use mongodb::bson::{Document, doc};
use serde::Serialize;
use serde_json::json;

use crate::{
    experiment::{
        cpu::{self, Generator, Usage},
        ctx::Ctx,
        report::{Section, Table, f_ms},
        wrk,
        wrk::WrkResult,
    },
    generator::{
        engine::{self, Model, RunResult},
        http::HttpPool,
        scenario,
        stats::{Latency, new_histogram},
    },
};

/// One endpoint measured by both tools, with the CPU each run used.
pub struct Pair {
    pub endpoint: String,
    pub wrk: Option<(WrkResult, Option<Usage>)>,
    pub loadtest: RunResult,
    pub loadtest_cpu: Option<Usage>,
}

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
            let before = cpu::sample();
            match wrk::run(&full, 2, p.calib_conns, p.calib_dur).await {
                Ok(w) => {
                    let used = before
                        .zip(cpu::sample())
                        .map(|(a, b)| cpu::usage(a, b, Generator::Children));
                    Some((w, used))
                }
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
        let before = cpu::sample();
        let lt = engine::run(&spec, workload).await.result;
        let lt_cpu = before
            .zip(cpu::sample())
            .map(|(a, b)| cpu::usage(a, b, Generator::ThisProcess));
        let label = if path.starts_with("/api/items/") {
            "GET /api/items/{id}".to_owned()
        } else {
            format!("GET {path}")
        };
        pairs.push(Pair {
            endpoint: label,
            wrk: w,
            loadtest: lt,
            loadtest_cpu: lt_cpu,
        });
    }
    let base = section(
        "the default gateway",
        p.calib_conns,
        p.calib_dur.as_secs_f64(),
        &pairs,
        (!have_wrk).then_some("`wrk` not found; apt-get install wrk"),
    );
    let pacing = pacing_check(ctx).await?;
    let base = with_pacing(base, &pacing);
    eprintln!("[loadtest] the store's own cost of a conditional update");
    let db = format!("{}_calibration", ctx.dep.mongo_db);
    let cost = store_cost(&ctx.dep.mongo_url, &db, ctx.p.store_updates).await?;
    Ok(with_store_cost(base, &cost))
}

/// Documents in the store calibration's collection (about the size of the seeded catalog).
const STORE_DOCS: usize = 1000;

/// The store's own cost for one conditional update (`$inc` with a filter on the current
/// value, as a stock take does), timed by a plain driver loop, one at a time.
#[derive(Debug, Clone, Serialize)]
pub struct StoreCost {
    pub documents: usize,
    /// All updates, in milliseconds.
    pub latency: Latency,
}

/// Times `updates` conditional updates on a fresh collection of [`STORE_DOCS`] documents
/// with only the `_id` index, in database `db` (dropped afterwards).
pub async fn store_cost(url: &str, db: &str, updates: usize) -> anyhow::Result<StoreCost> {
    let client = mongodb::Client::with_uri_str(url)
        .await
        .context("connecting to the MongoDB server")?;
    let database = client.database(db);
    let coll = database.collection::<Document>("conditional_updates");
    let docs: Vec<Document> = (0..STORE_DOCS as i64)
        .map(|i| doc! {"_id": i, "stock": 1_000_000_000_i64})
        .collect();
    coll.insert_many(docs)
        .await
        .context("creating the calibration collection")?;
    let mut h = new_histogram();
    for i in 0..updates {
        let id = (i % STORE_DOCS) as i64;
        let t = Instant::now();
        let r = coll
            .update_one(
                doc! {"_id": id, "stock": {"$gte": 1_i64}},
                doc! {"$inc": {"stock": -1_i64}},
            )
            .await
            .context("conditional update")?;
        let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
        if r.modified_count != 1 {
            anyhow::bail!(
                "the conditional update of document {id} changed {} documents, not 1",
                r.modified_count
            );
        }
        h.saturating_record(us.max(1));
    }
    database
        .drop()
        .await
        .context("dropping the calibration database")?;
    Ok(StoreCost {
        documents: STORE_DOCS,
        latency: Latency::of(&h),
    })
}

/// Adds the store's own cost to the calibration section: a table, figures, a sentence.
pub fn with_store_cost(mut s: Section, cost: &StoreCost) -> Section {
    let l = &cost.latency;
    let mut t = Table::new(
        "The store's own cost: one conditional update ($inc with a filter) on a collection with only the _id index, plain driver loop, one at a time, on the run's MongoDB server",
        &["updates", "documents", "p50", "p90", "p99", "max", "mean"],
    );
    t.row(vec![
        l.count.to_string(),
        cost.documents.to_string(),
        f_ms(l.p50_ms),
        f_ms(l.p90_ms),
        f_ms(l.p99_ms),
        f_ms(l.max_ms),
        f_ms(l.mean_ms),
    ]);
    s.measurement.push_str(&format!(
        " The store by itself: one conditional update costs p50 {} ms, p99 {} ms ({} updates on {} documents, measured in this run on the server the checkouts use), the floor under every stock change a checkout makes.",
        f_ms(l.p50_ms),
        f_ms(l.p99_ms),
        l.count,
        cost.documents
    ));
    if let Some(obj) = s.figures.as_object_mut() {
        obj.insert("store_update".into(), json!(cost));
    }
    s.tables.push(t);
    s
}

/// The open model's own error, measured on the cheapest call there is: Echo with one
/// closed-model user (no pacer involved) against Echo offered at a fixed rate by the pacer.
pub struct PacingCheck {
    pub rate: f64,
    pub closed: RunResult,
    /// One closed-model user idling between calls as long as the open model's gaps: no
    /// pacer involved, so what it adds over `closed` is the cost of idle threads waking.
    pub closed_idle: RunResult,
    pub open: RunResult,
}

async fn pacing_check(ctx: &mut Ctx) -> anyhow::Result<PacingCheck> {
    let dur = ctx.p.calib_dur;
    let warmup = Duration::from_secs(1).min(dur);
    let rate = 200.0;
    let ch = scenario::grpc_channel(&ctx.dep.item_grpc).await?;
    let closed_spec = ctx.spec(
        "Echo closed, 1 user",
        Model::Closed {
            users: 1,
            think_ms: 0,
        },
        warmup,
        dur,
    );
    let closed = engine::run(
        &closed_spec,
        Arc::new(scenario::EchoWorkload::new(ch.clone())),
    )
    .await
    .result;
    let gap_ms = (1000.0 / rate) as u64;
    let idle_spec = ctx.spec(
        &format!("Echo closed, 1 user, {gap_ms} ms think time"),
        Model::Closed {
            users: 1,
            think_ms: gap_ms,
        },
        warmup,
        dur,
    );
    let closed_idle = engine::run(
        &idle_spec,
        Arc::new(scenario::EchoWorkload::new(ch.clone())),
    )
    .await
    .result;
    let open_spec = ctx.spec("Echo open, 200 req/s", Model::Open { rate }, warmup, dur);
    let open = engine::run(&open_spec, Arc::new(scenario::EchoWorkload::new(ch)))
        .await
        .result;
    Ok(PacingCheck {
        rate,
        closed,
        closed_idle,
        open,
    })
}

/// Adds the pacing check to the calibration section: its table, figures and a sentence.
pub fn with_pacing(mut s: Section, check: &PacingCheck) -> Section {
    let mut t = Table::new(
        "The open model's instrument error: Echo (item-service) with one closed-model user vs offered by the pacer",
        &[
            "run",
            "req/s",
            "p50",
            "p90",
            "p99",
            "pacer lateness p50 / p99 / max (us)",
        ],
    );
    for r in [&check.closed, &check.closed_idle, &check.open] {
        t.row(vec![
            r.name.clone(),
            format!("{:.0}", r.throughput_rps),
            f_ms(r.latency.p50_ms),
            f_ms(r.latency.p90_ms),
            f_ms(r.latency.p99_ms),
            r.pacer_lateness.as_ref().map_or_else(
                || "- (no pacer)".into(),
                |l| format!("{:.0} / {:.0} / {:.0}", l.p50_us, l.p99_us, l.max_us),
            ),
        ]);
    }
    let gap = check.open.latency.p50_ms - check.closed.latency.p50_ms;
    let lateness = check
        .open
        .pacer_lateness
        .as_ref()
        .map_or_else(|| "not recorded".into(), |l| l.summary());
    s.measurement.push_str(&format!(
        " Pacing: Echo p50 {} ms with one closed-model user, {} ms offered at {:.0} req/s by the open model's pacer, a gap of {:.2} ms ({} the 0.1 ms target); the pacer itself dispatched {}. One closed-model user that idles between calls as long as the open model's gaps, with no pacer at all, sees p50 {} ms: latency is timed from the intended send, so the gap is what the open model adds, the pacer's lateness plus waking idle threads on both sides (client and server), which a closed loop that never idles does not pay; where the idling closed user shows about the same gap, it is the machine's wake-up cost, not the pacer.",
        f_ms(check.closed.latency.p50_ms),
        f_ms(check.open.latency.p50_ms),
        check.rate,
        gap,
        if gap <= 0.1 { "within" } else { "over" },
        lateness,
        f_ms(check.closed_idle.latency.p50_ms),
    ));
    if let Some(obj) = s.figures.as_object_mut() {
        obj.insert(
            "pacing".into(),
            json!({
                "rate": check.rate,
                "closed_p50_ms": check.closed.latency.p50_ms,
                "open_p50_ms": check.open.latency.p50_ms,
                "closed_idle_p50_ms": check.closed_idle.latency.p50_ms,
                "gap_ms": gap,
                "pacer_lateness": check.open.pacer_lateness,
            }),
        );
    }
    s.tables.push(t);
    s.runs.push(check.closed.clone());
    s.runs.push(check.closed_idle.clone());
    s.runs.push(check.open.clone());
    s
}

pub fn section(
    endpoint: &str,
    connections: usize,
    duration_s: f64,
    pairs: &[Pair],
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
            "generator CPU (cores)",
            "machine busy",
        ],
    );
    let mut ratios = Vec::new();
    let mut figures = Vec::new();
    let cpu_cells = |u: &Option<Usage>| match u {
        Some(u) => (
            format!("{:.2} of {}", u.generator_cores, u.cores),
            format!("{:.0}%", u.machine_busy * 100.0),
        ),
        None => ("-".into(), "-".into()),
    };
    let mut shares = Vec::new();
    for pair in pairs {
        let (ep, lt) = (&pair.endpoint, &pair.loadtest);
        let wrk = pair.wrk.as_ref().map(|(w, _)| w);
        let wrk_cpu = pair.wrk.as_ref().and_then(|(_, u)| *u);
        let ratio = wrk
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
                cpu_cells(&wrk_cpu).0,
                cpu_cells(&wrk_cpu).1,
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
            cpu_cells(&pair.loadtest_cpu).0,
            cpu_cells(&pair.loadtest_cpu).1,
        ]);
        if let (Some(r), Some(lc), Some(wc)) = (ratio, pair.loadtest_cpu, wrk_cpu) {
            shares.push((ep.clone(), r, lc, wc));
        }
        if let Some(r) = ratio {
            ratios.push((ep.clone(), r));
        }
        figures.push(
            json!({"endpoint": ep, "wrk": wrk, "wrk_cpu": wrk_cpu, "loadtest_rps": lt.throughput_rps,
                "loadtest_cpu": pair.loadtest_cpu, "ratio": ratio}),
        );
    }
    let measurement = if ratios.is_empty() {
        format!(
            "wrk was not run ({}); loadtest alone reached {}.",
            wrk_note.unwrap_or("not installed"),
            pairs
                .iter()
                .map(|p| format!("{:.0} req/s on {}", p.loadtest.throughput_rps, p.endpoint))
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
        let cpu_text: Vec<String> = shares
            .iter()
            .map(|(ep, _, lc, wc)| {
                format!(
                    "on `{ep}` loadtest used {:.2} cores and wrk {:.2} cores of {}, with the machine {:.0}% / {:.0}% busy",
                    lc.generator_cores,
                    wc.generator_cores,
                    lc.cores,
                    lc.machine_busy * 100.0,
                    wc.machine_busy * 100.0
                )
            })
            .collect();
        let below = ratios.iter().any(|(_, r)| *r < 0.9);
        let saturated = shares
            .iter()
            .any(|(_, r, lc, _)| *r < 0.9 && lc.machine_busy > 0.9);
        format!(
            "loadtest reached {}.{}{}",
            parts.join("; "),
            if cpu_text.is_empty() {
                String::new()
            } else {
                format!(" CPU while measuring: {}.", cpu_text.join("; "))
            },
            if below && saturated {
                " Where loadtest falls short the machine was saturated: generator, gateway, services and stores share its cores, so every core-second the generator spends is taken from the server it measures, and loadtest spends more per request than wrk (a Tokio task and an HdrHistogram record per request, where wrk runs a tight C event loop)."
            } else if below {
                " Where loadtest falls short the machine still had idle CPU, so the shortfall is the generator's own (per-request overhead or pacing), not CPU sharing."
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
        runs: pairs.iter().map(|p| p.loadtest.clone()).collect(),
    }
}
