//! `loadtest drift`: does the store slow down as a run fills it? Many checkouts in one run
//! (closed model, a few users) on a freshly started stack; for each block of checkouts (in
//! the order they finished), the mean store time per checkout from the services' own
//! `Server-Timing` (the sum of the `store.*` entries except the card gateway, which is an
//! HTTP call, not a store), and the last block against the first as a ratio. Store time is
//! wall time, so it includes the store's queueing for a busy machine's cores; beside it, the
//! CPU the run's own MongoDB server used per checkout (from `/proc`), which the machine's
//! other load does not inflate. A benchmark, not a test: it prints figures and asserts
//! nothing about them.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::{
    experiment::{
        ctx::Params,
        process_cpu::{self, Processes},
        runner::{self, Prepared},
    },
    generator::{
        engine::Workload,
        scenario::Mix,
        stats::{Latency, Outcome, new_histogram},
        waterfall::{self, Metric},
    },
};

#[derive(Debug, Clone)]
pub struct Options {
    pub bin_dir: PathBuf,
    pub checkouts: usize,
    pub block: usize,
    pub users: usize,
    pub strategy: String,
    pub timeout: Duration,
    pub progress: bool,
}

/// One block of checkouts, in the order they finished.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Block {
    /// 1-based.
    pub index: usize,
    pub checkouts: usize,
    pub ok: usize,
    /// Mean per successful checkout that carried a Server-Timing header.
    pub store_ms: f64,
    pub mongodb_ms: f64,
    /// CPU milliseconds the run's own MongoDB server used per checkout of the block (none
    /// on a shared server or without `/proc`).
    pub mongodb_cpu_ms: Option<f64>,
    /// Client-seen latency of the block's checkouts, successful or not.
    pub latency: Latency,
    /// Checkouts per second while the block's checkouts finished.
    pub rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    pub checkouts: usize,
    pub users: usize,
    pub strategy: String,
    /// Where item-service's store ran.
    pub store: String,
    pub blocks: Vec<Block>,
    /// The last block's store time per checkout over the first's.
    pub last_vs_first: Option<f64>,
    /// Failed checkouts by kind ("http_503", "timeout", ...).
    pub errors: BTreeMap<String, usize>,
}

/// One finished checkout.
#[derive(Debug, Clone)]
pub struct Done {
    pub at: Instant,
    pub ok: bool,
    /// Why it failed.
    pub error: Option<String>,
    pub latency: Duration,
    /// Store time from its Server-Timing (successful checkouts that carried one).
    pub store_ms: Option<f64>,
    pub mongodb_ms: Option<f64>,
}

/// Milliseconds in stores (every `store.*` entry but the card gateway's HTTP call) and
/// in MongoDB alone, from one response's metrics.
pub fn store_time(metrics: &[Metric]) -> (f64, f64) {
    let stores = metrics
        .iter()
        .filter(|m| m.name.starts_with("store.") && m.name != "store.card_gateway");
    let all = stores.clone().map(|m| m.ms).sum();
    let mongo = stores
        .filter(|m| m.name == "store.mongodb")
        .map(|m| m.ms)
        .sum();
    (all, mongo)
}

/// Blocks of `size` finished checkouts (a last partial block is dropped: it would compare
/// fewer checkouts), each against the time the previous one ended (`start` for the first).
/// `cpu[i]`, when given, is the store's CPU milliseconds during block `i`.
pub fn blocks(done: &[Done], size: usize, start: Instant, cpu: &[f64]) -> Vec<Block> {
    let mut out = Vec::new();
    let mut from = start;
    for (i, chunk) in done.chunks(size.max(1)).enumerate() {
        if chunk.len() < size {
            break;
        }
        let mean = |f: fn(&Done) -> Option<f64>| {
            let v: Vec<f64> = chunk.iter().filter_map(f).collect();
            if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let mut h = new_histogram();
        for d in chunk {
            h.saturating_record(
                u64::try_from(d.latency.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1),
            );
        }
        let end = chunk.last().map_or(from, |d| d.at);
        out.push(Block {
            index: i + 1,
            checkouts: chunk.len(),
            ok: chunk.iter().filter(|d| d.ok).count(),
            store_ms: mean(|d| d.store_ms),
            mongodb_ms: mean(|d| d.mongodb_ms),
            mongodb_cpu_ms: cpu.get(i).map(|ms| ms / chunk.len() as f64),
            latency: Latency::of(&h),
            rate: chunk.len() as f64 / end.duration_since(from).as_secs_f64().max(1e-9),
        });
        from = end;
    }
    out
}

/// The last block's store time over the first's.
pub fn last_vs_first(blocks: &[Block]) -> Option<f64> {
    let (first, last) = (blocks.first()?, blocks.last()?);
    (blocks.len() > 1 && first.store_ms > 0.0 && last.store_ms.is_finite())
        .then(|| last.store_ms / first.store_ms)
}

impl DriftReport {
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} {} checkouts, closed model, {} users; item-service's store: {}\n\n",
            self.checkouts, self.strategy, self.users, self.store
        );
        out.push_str(&format!(
            "{:>5} {:>9} {:>6} {:>17} {:>10} {:>14} {:>10} {:>10} {:>11}\n",
            "block",
            "checkouts",
            "ok",
            "store ms/checkout",
            "MongoDB ms",
            "MongoDB CPU ms",
            "p50 ms",
            "p99 ms",
            "checkouts/s"
        ));
        for b in &self.blocks {
            out.push_str(&format!(
                "{:>5} {:>9} {:>6} {:>17.2} {:>10.2} {:>14} {:>10.1} {:>10.1} {:>11.1}\n",
                b.index,
                b.checkouts,
                b.ok,
                b.store_ms,
                b.mongodb_ms,
                b.mongodb_cpu_ms
                    .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
                b.latency.p50_ms,
                b.latency.p99_ms,
                b.rate
            ));
        }
        match self.last_vs_first {
            Some(r) => out.push_str(&format!(
                "\nstore time per checkout, last block / first: {r:.3} ({}; the goal is within 10%)\n",
                if (r - 1.0).abs() <= 0.10 {
                    "within 10%"
                } else {
                    "more than 10% apart"
                }
            )),
            None => out.push_str(
                "\nno ratio: fewer than two complete blocks, or a block without a successful checkout\n",
            ),
        }
        for (kind, n) in &self.errors {
            out.push_str(&format!("failed checkouts: {n} {kind}\n"));
        }
        if let (Some(a), Some(b)) = (
            self.blocks.first().and_then(|b| b.mongodb_cpu_ms),
            self.blocks.last().and_then(|b| b.mongodb_cpu_ms),
        ) && a > 0.0
        {
            out.push_str(&format!(
                "MongoDB server CPU per checkout, last block / first: {:.3}\n",
                b / a
            ));
        }
        out
    }
}

/// Starts the stack (a store of the run's own where it can), runs the checkouts, reports
/// the blocks.
pub async fn run(opts: &Options) -> anyhow::Result<DriftReport> {
    if opts.block == 0 || opts.users == 0 || opts.checkouts < opts.block {
        anyhow::bail!(
            "--checkouts must be at least --block, and both --block and --users positive"
        );
    }
    let mut p = Params::new(true, None);
    p.users = opts.users;
    let Prepared {
        mut stack,
        mongo,
        ctx,
        ..
    } = runner::prepare(&opts.bin_dir, None, p, opts.progress).await?;
    let store = mongo.describe();
    let mut procs = Processes::default();
    if let Some(pid) = mongo.pid() {
        procs.add("MongoDB server", pid, true);
    }
    // Through the default gateway, as a customer would come. (The experiment's unprotected
    // gateway, whose breakers could not refuse fast on a slow machine, answers checkouts
    // 400 as of this writing.)
    let workload = ctx.shop(&ctx.dep.gw, opts.users, Mix::CHECKOUT, &opts.strategy);
    eprintln!(
        "[drift] {} {} checkouts, {} users, blocks of {}",
        opts.checkouts, opts.strategy, opts.users, opts.block
    );
    let start = Instant::now();
    // Ctrl-C stops the processes this run started before it exits.
    let outcome = tokio::select! {
        r = checkouts(workload, opts, start, &procs) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    stack.stop_all().await;
    mongo.stop().await;
    let Some((done, cpu)) = outcome else {
        anyhow::bail!("interrupted");
    };
    let blocks = blocks(&done, opts.block, start, &cpu);
    Ok(DriftReport {
        checkouts: done.len(),
        users: opts.users,
        strategy: opts.strategy.clone(),
        store,
        last_vs_first: last_vs_first(&blocks),
        errors: done.iter().fold(BTreeMap::new(), |mut m, d| {
            if let Some(e) = &d.error {
                *m.entry(e.clone()).or_default() += 1;
            }
            m
        }),
        blocks,
    })
}

/// `opts.checkouts` checkouts by `opts.users` closed-model users, in the order they
/// finished, and the CPU milliseconds `procs` used during each block (empty when they
/// could not be sampled).
async fn checkouts(
    workload: Arc<dyn Workload>,
    opts: &Options,
    start: Instant,
    procs: &Processes,
) -> (Vec<Done>, Vec<f64>) {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Mutex::new(Vec::with_capacity(opts.checkouts)));
    // A sample at the start and at every block's end.
    let procs = Arc::new(procs.clone());
    let samples = Arc::new(Mutex::new(Vec::from_iter(procs.sample())));
    let mut users = JoinSet::new();
    for user in 0..opts.users {
        let (workload, next, done) = (workload.clone(), next.clone(), done.clone());
        let (procs, samples) = (procs.clone(), samples.clone());
        let (total, block, timeout, progress) =
            (opts.checkouts, opts.block, opts.timeout, opts.progress);
        users.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let (_, op) = workload.call(n as u64, user);
                let t = Instant::now();
                let (error, timing) =
                    match tokio::time::timeout(timeout, waterfall::capture(op)).await {
                        Ok((Outcome::Ok, timing)) => (None, timing),
                        Ok((Outcome::Error(kind), _)) => (Some(kind), None),
                        Err(_) => (Some("timeout".to_owned()), None),
                    };
                let times = timing.as_deref().map(store_time);
                let d = Done {
                    at: Instant::now(),
                    ok: error.is_none(),
                    error,
                    latency: t.elapsed(),
                    store_ms: times.map(|t| t.0),
                    mongodb_ms: times.map(|t| t.1),
                };
                let mut all = done.lock().unwrap_or_else(|p| p.into_inner());
                all.push(d);
                if all.len() % block != 0 {
                    continue;
                }
                let cpu = {
                    let mut samples = samples.lock().unwrap_or_else(|p| p.into_inner());
                    samples.extend(procs.sample());
                    let n = samples.len();
                    (n >= 2).then(|| process_cpu::spent(&samples[n - 2], &samples[n - 1], 1))
                };
                if progress {
                    let cpu_ms: Vec<f64> = cpu.iter().map(|c| c.total_ms()).collect();
                    let b = blocks(&all[all.len() - block..], block, start, &cpu_ms);
                    if let Some(b) = b.first() {
                        eprintln!(
                            "[drift] {:>6} done ({:.0} s): last {block}: store {:.2} ms/checkout (MongoDB {:.2}, its CPU {}), p50 {:.1} ms, {} ok",
                            all.len(),
                            start.elapsed().as_secs_f64(),
                            b.store_ms,
                            b.mongodb_ms,
                            b.mongodb_cpu_ms
                                .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
                            b.latency.p50_ms,
                            b.ok
                        );
                    }
                }
            }
        });
    }
    while users.join_next().await.is_some() {}
    let mut all = done.lock().unwrap_or_else(|p| p.into_inner());
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner());
    // Only when every block boundary was sampled; otherwise the blocks would not line up.
    let cpu = if samples.len() == all.len() / opts.block.max(1) + 1 {
        samples
            .windows(2)
            .map(|w| process_cpu::spent(&w[0], &w[1], 1).total_ms())
            .collect()
    } else {
        Vec::new()
    };
    (std::mem::take(&mut *all), cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::waterfall::parse;

    #[test]
    fn store_time_sums_the_stores_but_not_the_card_gateway() {
        let m = parse(
            "total;dur=30, store.mongodb;dur=6;n=4, store.postgres;dur=1.5, store.mysql;dur=2, store.card_gateway;dur=9, handler.item.ReserveStock;dur=8",
        );
        assert_eq!(store_time(&m), (9.5, 6.0));
    }

    #[test]
    fn blocks_compare_the_last_with_the_first() {
        let start = Instant::now();
        let done: Vec<Done> = (0..25)
            .map(|i| Done {
                at: start + Duration::from_millis(100 * (i + 1)),
                ok: i != 3,
                error: (i == 3).then(|| "http_503".to_owned()),
                latency: Duration::from_millis(20),
                // Failed checkouts carry no timing; store time grows by block.
                store_ms: (i != 3).then_some(10.0 + (i / 10) as f64),
                mongodb_ms: (i != 3).then_some(5.0),
            })
            .collect();
        let b = blocks(&done, 10, start, &[500.0]);
        assert_eq!(b.len(), 2, "the partial third block is dropped");
        assert_eq!((b[0].checkouts, b[0].ok), (10, 9));
        assert_eq!((b[0].store_ms, b[1].store_ms), (10.0, 11.0));
        // CPU for the first block only: 500 ms over its 10 checkouts.
        assert_eq!(
            (b[0].mongodb_cpu_ms, b[1].mongodb_cpu_ms),
            (Some(50.0), None)
        );
        assert!((b[0].rate - 10.0).abs() < 1e-6, "{}", b[0].rate);
        let r = last_vs_first(&b).expect("ratio");
        assert!((r - 1.1).abs() < 1e-9, "{r}");
        assert!(
            DriftReport {
                checkouts: 25,
                users: 2,
                strategy: "orchestrated".into(),
                store: "test".into(),
                blocks: b,
                last_vs_first: Some(r),
                errors: BTreeMap::from([("http_503".to_owned(), 1)]),
            }
            .text()
            .contains("last block / first: 1.100")
        );
    }
}
