//! What the report's sections run with: the mode's parameters and the `Ctx` the runner
//! prepares (deployment, accounts, items, CPU accounting). A module of its own so the
//! sections need not import the runner, which imports them.

use std::{future::Future, sync::Arc, time::Duration};

use super::{
    deployment::Deployment,
    process_cpu::{self, CpuSpent, Processes},
};
use crate::generator::{
    engine::{self, Measured, Model, RunSpec, Workload},
    http::{HttpPool, Target},
    scenario::{Mix, ShopWorkload},
};

/// Durations, rates and sizes of one mode.
pub(crate) struct Params {
    pub warmup: Duration,
    pub dur: Duration,
    pub rate: f64,
    pub echo_rate: f64,
    pub tail_dur: Duration,
    /// Pause after a run with faults, so its leftovers do not spill into the next one.
    pub settle: Duration,
    /// Pause after a run that opened breakers (they stay open 5 s by default).
    pub recover: Duration,
    pub sweep: Vec<f64>,
    pub sweep_dur: Duration,
    pub users: usize,
    pub fails: Vec<f64>,
    pub avail_dur: Duration,
    pub cascade_dur: Duration,
    pub cascade_rate: f64,
    pub cascade_conns: usize,
    pub cascade_timeout: Duration,
    pub cache_rate: f64,
    pub calib_dur: Duration,
    pub calib_conns: usize,
    /// Section 1: rounds of strategies and monolith interleaved, and each run's length.
    pub rounds: usize,
    pub round_warmup: Duration,
    pub round_dur: Duration,
    /// Calibration: conditional updates timed on the store alone.
    pub store_updates: usize,
}

impl Params {
    pub(crate) fn new(quick: bool, rate: Option<f64>) -> Self {
        if quick {
            Self {
                warmup: Duration::from_millis(300),
                dur: Duration::from_millis(1500),
                rate: rate.unwrap_or(3.0),
                echo_rate: 20.0,
                tail_dur: Duration::from_secs(2),
                settle: Duration::ZERO,
                recover: Duration::from_millis(500),
                sweep: vec![2.0, 4.0],
                sweep_dur: Duration::from_millis(1200),
                users: 4,
                fails: vec![0.05, 0.2],
                avail_dur: Duration::from_millis(1500),
                cascade_dur: Duration::from_secs(3),
                cascade_rate: 10.0,
                cascade_conns: 4,
                cascade_timeout: Duration::from_secs(4),
                cache_rate: 40.0,
                calib_dur: Duration::from_secs(1),
                calib_conns: 8,
                rounds: 2,
                round_warmup: Duration::from_millis(200),
                round_dur: Duration::from_millis(800),
                store_updates: 200,
            }
        } else {
            // SecantusDB (a Python MongoDB) is the checkout bottleneck on this 2-core machine,
            // and it slows down as the catalog database grows: about 8 checkouts/s on a fresh
            // one, about 5 after a few thousand. Sections 1-3 stay well below either.
            let rate = rate.unwrap_or(3.0);
            Self {
                warmup: Duration::from_secs(2),
                dur: Duration::from_secs(15),
                rate,
                echo_rate: 50.0,
                // Enough checkouts that a 1-3% tail shows in p99.
                tail_dur: Duration::from_secs(40),
                settle: Duration::from_secs(2),
                recover: Duration::from_secs(8),
                sweep: vec![1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0],
                sweep_dur: Duration::from_secs(8),
                users: 16,
                fails: vec![0.01, 0.05, 0.10],
                avail_dur: Duration::from_secs(15),
                cascade_dur: Duration::from_secs(30),
                cascade_rate: 10.0,
                cascade_conns: 4,
                cascade_timeout: Duration::from_secs(15),
                cache_rate: 200.0,
                calib_dur: Duration::from_secs(10),
                calib_conns: 32,
                // 5 rounds of 4 runs of 1 + 6 s: about as long as the 6 runs of 2 + 15 s the
                // section ran one after the other.
                rounds: 5,
                round_warmup: Duration::from_secs(1),
                round_dur: Duration::from_secs(6),
                store_updates: 1000,
            }
        }
    }
}

/// What every section's runner works with: the mode's parameters, the deployment, the
/// accounts and items set up for the run, and the notes for the report.
pub(crate) struct Ctx {
    pub p: Params,
    pub progress: bool,
    pub dep: Deployment,
    pub browse_ids: Arc<Vec<String>>,
    pub buy_ids: Arc<Vec<String>>,
    pub tokens: Arc<Vec<String>>,
    pub notes: Vec<String>,
    /// Every process of the stack, the stores and the generator, for CPU accounting.
    pub procs: Processes,
}

impl Ctx {
    pub fn spec(&self, name: &str, model: Model, warmup: Duration, dur: Duration) -> RunSpec {
        let mut s = RunSpec::new(name, model, warmup, dur);
        s.progress = self.progress;
        s
    }

    pub fn shop(
        &self,
        target: &Target,
        conns: usize,
        mix: Mix,
        strategy: &str,
    ) -> Arc<dyn Workload> {
        Arc::new(ShopWorkload::new(
            Arc::new(HttpPool::new(target.clone(), conns)),
            self.browse_ids.clone(),
            self.buy_ids.clone(),
            self.tokens.clone(),
            mix,
            strategy,
        ))
    }

    pub async fn checkout_run(
        &self,
        name: &str,
        target: &Target,
        strategy: &str,
        rate: f64,
        warmup: Duration,
        dur: Duration,
    ) -> Measured {
        let spec = self.spec(name, Model::Open { rate }, warmup, dur);
        engine::run(&spec, self.shop(target, 512, Mix::CHECKOUT, strategy)).await
    }

    /// A run (e.g. [`Ctx::checkout_run`]) with the CPU every process of the stack used
    /// during it (none where `/proc` cannot be read).
    pub async fn with_cpu(
        &self,
        run: impl Future<Output = Measured>,
    ) -> (Measured, Option<CpuSpent>) {
        let before = self.procs.sample();
        let m = run.await;
        let cpu = before
            .zip(self.procs.sample())
            .map(|(a, b)| process_cpu::spent(&a, &b, m.result.requests + m.result.warmup_requests));
        (m, cpu)
    }
}
