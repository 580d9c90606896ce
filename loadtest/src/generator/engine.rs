//! The two load models.
//!
//! Open: operations arrive at a constant rate whatever the target does; each one's latency
//! runs from its *intended* start, so time spent queueing (for a connection, or because the
//! generator fell behind) is counted, never hidden (coordinated omission corrected, as wrk2
//! does). Arrivals are dispatched by [`crate::generator::pacer`], which keeps them within tens of
//! microseconds of their intended time and reports how far off it was. Closed: N virtual
//! users, each sends, waits for the answer, (thinks,) sends again.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::generator::{
    pacer::{self, Lateness, LatenessRecorder},
    stats::{Latency, Outcome, Recorder, Sample, Snapshot},
    waterfall::{self, Collector, Metric, Waterfall},
};

tokio::task_local! {
    static INTENDED: Instant;
}

/// The intended start of the operation being run (open model: its arrival time; closed
/// model: when the user sent it), for workloads that measure more than the answer.
pub fn intended_start() -> Option<Instant> {
    INTENDED.try_with(|t| *t).ok()
}

/// Something the engine can drive: one call = one operation (usually one request).
pub trait Workload: Send + Sync + 'static {
    /// `n` numbers the operation (arrival number, or per-user counter); `user` is the
    /// virtual user (closed) or `n` (open). Returns the endpoint label at once (so a timed
    /// out operation still counts against its endpoint) and the operation itself.
    fn call(&self, n: u64, user: usize) -> (String, BoxFuture<'static, Outcome>);
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Model {
    /// Constant arrival rate (operations per second).
    Open { rate: f64 },
    /// `users` virtual users, each waiting `think_ms` between operations.
    Closed { users: usize, think_ms: u64 },
}

impl Model {
    pub fn describe(&self) -> String {
        match *self {
            Self::Open { rate } => format!("open, {rate} req/s"),
            Self::Closed { users, think_ms: 0 } => format!("closed, {users} users"),
            Self::Closed { users, think_ms } => {
                format!("closed, {users} users, {think_ms} ms think time")
            }
        }
    }
}

/// One run's settings. Runs are bounded in time (warm-up + duration + at most one timeout
/// to drain) and, optionally, in count.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub name: String,
    pub model: Model,
    pub warmup: Duration,
    pub duration: Duration,
    /// Per operation, from its intended start; past it the operation counts as "timeout".
    pub timeout: Duration,
    /// Stop issuing after this many operations (warm-up included).
    pub max_ops: Option<u64>,
    pub progress: bool,
}

impl RunSpec {
    pub fn new(
        name: impl Into<String>,
        model: Model,
        warmup: Duration,
        duration: Duration,
    ) -> Self {
        Self {
            name: name.into(),
            model,
            warmup,
            duration,
            timeout: Duration::from_secs(10),
            max_ops: None,
            progress: true,
        }
    }
}

/// Everything one run measured (warm-up excluded). Latencies in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    pub name: String,
    pub model: Model,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Arrival rate asked for (open model).
    pub offered_rps: Option<f64>,
    /// Operations recorded after warm-up.
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub success_rate: f64,
    /// Recorded operations per second of the measurement window.
    pub throughput_rps: f64,
    /// Successful operations per second.
    pub goodput_rps: f64,
    /// All outcomes.
    pub latency: Latency,
    /// Successful operations only.
    pub latency_ok: Latency,
    pub endpoints: Vec<crate::generator::stats::EndpointStats>,
    pub errors_by_kind: std::collections::BTreeMap<String, u64>,
    /// "endpoint: kind" -> count.
    pub errors_by_endpoint: std::collections::BTreeMap<String, u64>,
    pub warmup_requests: u64,
    /// Open model: how late the pacer started each request (actual minus intended start);
    /// the measuring instrument's own error, already part of every latency above.
    /// Closed model: none (a user sends when the previous answer arrives).
    #[serde(default)]
    pub pacer_lateness: Option<Lateness>,
    /// Where the median successful checkout's time went, from the `Server-Timing` headers
    /// (none when the target sent none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waterfall: Option<Waterfall>,
    /// Checkouts: time to the answer and time to a completed order, and how orders ended
    /// (set by the caller that tracked them; see [`crate::generator::completion`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<crate::generator::completion::CompletionStats>,
}

impl RunResult {
    fn from_snapshot(
        spec: &RunSpec,
        snap: &Snapshot,
        window: Duration,
        pacer_lateness: Option<Lateness>,
        waterfall: Option<Waterfall>,
    ) -> Self {
        let requests = snap.all.len();
        let ok = snap.ok.len();
        let secs = window.as_secs_f64().max(1e-9);
        Self {
            name: spec.name.clone(),
            model: spec.model,
            warmup_s: spec.warmup.as_secs_f64(),
            duration_s: window.as_secs_f64(),
            offered_rps: match spec.model {
                Model::Open { rate } => Some(rate),
                Model::Closed { .. } => None,
            },
            requests,
            ok,
            errors: requests - ok,
            success_rate: if requests == 0 {
                0.0
            } else {
                ok as f64 / requests as f64
            },
            throughput_rps: requests as f64 / secs,
            goodput_rps: ok as f64 / secs,
            latency: Latency::of(&snap.all),
            latency_ok: Latency::of(&snap.ok),
            endpoints: snap.endpoints(),
            errors_by_kind: snap.errors.clone(),
            errors_by_endpoint: snap
                .errors_per_endpoint
                .iter()
                .map(|((e, k), n)| (format!("{e}: {k}"), *n))
                .collect(),
            warmup_requests: snap.warmup,
            pacer_lateness,
            waterfall,
            completion: None,
        }
    }
}

/// A run's result plus its raw histograms (for figures computed after the fact).
pub struct Measured {
    pub result: RunResult,
    pub snapshot: Snapshot,
}

/// Runs one operation; returns its sample and, if it succeeded and noted one, its
/// response's Server-Timing.
async fn one(
    workload: &Arc<dyn Workload>,
    n: u64,
    user: usize,
    deadline: tokio::time::Instant,
) -> (Sample, Option<Vec<Metric>>) {
    let (endpoint, op) = workload.call(n, user);
    match tokio::time::timeout_at(deadline, waterfall::capture(op)).await {
        Ok((outcome, timing)) => {
            let timing = timing.filter(|_| outcome.is_ok());
            (Sample::new(endpoint, outcome), timing)
        }
        Err(_) => (Sample::new(endpoint, Outcome::error("timeout")), None),
    }
}

fn record(
    recorder: &Recorder,
    timings: &Collector,
    started: Instant,
    latency: Duration,
    (sample, timing): (Sample, Option<Vec<Metric>>),
) {
    if let Some(t) = timing {
        timings.record(started, latency.as_secs_f64() * 1e3, t);
    }
    recorder.record(started, latency, sample);
}

fn progress_bar(spec: &RunSpec) -> ProgressBar {
    let total = (spec.warmup + spec.duration).as_millis() as u64;
    let pb = ProgressBar::with_draw_target(
        Some(total),
        if spec.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    pb.set_style(
        ProgressStyle::with_template("{prefix:>28} [{bar:30}] {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(spec.name.clone());
    pb
}

/// Runs `workload` under `spec`.
pub async fn run(spec: &RunSpec, workload: Arc<dyn Workload>) -> Measured {
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = start + spec.warmup + spec.duration;
    let recorder = Arc::new(Recorder::new(measure_from));
    let timings = Arc::new(Collector::new(measure_from));
    let pb = progress_bar(spec);

    // Live rate and p99 of the last half second.
    let ticker = {
        let recorder = recorder.clone();
        let pb = pb.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis(500);
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let i = recorder.take_interval();
                let phase = if Instant::now() < measure_from {
                    "warm-up "
                } else {
                    ""
                };
                pb.set_position(start.elapsed().as_millis() as u64);
                pb.set_message(format!(
                    "{phase}{:.0} req/s  p99 {:.1} ms  errors {}",
                    i.completed as f64 / every.as_secs_f64(),
                    i.p99_ms,
                    i.errors
                ));
            }
        })
    };

    let mut tasks = JoinSet::new();
    let mut open_window = spec.duration;
    let lateness = Arc::new(LatenessRecorder::new(measure_from));
    match spec.model {
        Model::Open { rate } => {
            let rate = rate.max(0.001);
            let total = ((spec.warmup + spec.duration).as_secs_f64() * rate).floor() as u64;
            let total = spec.max_ops.map_or(total, |m| total.min(m));
            open_window = Duration::from_secs_f64(total as f64 / rate)
                .saturating_sub(spec.warmup)
                .max(Duration::from_millis(1));
            let mut arrivals = pacer::start(start, rate, total);
            while let Some(a) = arrivals.recv().await {
                let workload = workload.clone();
                let recorder = recorder.clone();
                let timings = timings.clone();
                let lateness = lateness.clone();
                let deadline = tokio::time::Instant::from_std(a.intended + spec.timeout);
                tasks.spawn(async move {
                    pacer::arrive(a.intended).await;
                    lateness.record(a.intended, Instant::now());
                    let done = INTENDED
                        .scope(a.intended, one(&workload, a.n, a.n as usize, deadline))
                        .await;
                    record(&recorder, &timings, a.intended, a.intended.elapsed(), done);
                });
                // Reap finished tasks as we go so the set stays small.
                while tasks.try_join_next().is_some() {}
            }
        }
        Model::Closed { users, think_ms } => {
            let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
            for user in 0..users.max(1) {
                let workload = workload.clone();
                let recorder = recorder.clone();
                let timings = timings.clone();
                let issued = issued.clone();
                let max_ops = spec.max_ops;
                let timeout = spec.timeout;
                tasks.spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < end {
                        let total = issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if max_ops.is_some_and(|m| total >= m) {
                            break;
                        }
                        let t0 = tokio::time::Instant::now();
                        let done = INTENDED
                            .scope(t0.into_std(), one(&workload, n, user, t0 + timeout))
                            .await;
                        record(&recorder, &timings, t0.into_std(), t0.elapsed(), done);
                        n += 1;
                        if think_ms > 0 {
                            tokio::time::sleep(Duration::from_millis(think_ms)).await;
                        }
                    }
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    ticker.abort();
    let snapshot = recorder.snapshot();
    // The measurement window: from the end of warm-up to the last intended start (open) or
    // the end of the run (closed), never counting the drain.
    let window = match spec.model {
        Model::Open { .. } => open_window,
        Model::Closed { .. } => end
            .min(Instant::now())
            .saturating_duration_since(measure_from)
            .max(Duration::from_millis(1)),
    };
    let pacer_lateness = match spec.model {
        Model::Open { .. } => Some(lateness.lateness()),
        Model::Closed { .. } => None,
    };
    let result =
        RunResult::from_snapshot(spec, &snapshot, window, pacer_lateness, timings.waterfall());
    pb.finish_and_clear();
    if spec.progress {
        eprintln!(
            "{:>28}  {:>8.1} req/s  ok {:>6.2}%  p50 {:>8.2} ms  p90 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.1} ms",
            spec.name,
            result.throughput_rps,
            result.success_rate * 100.0,
            result.latency.p50_ms,
            result.latency.p90_ms,
            result.latency.p99_ms,
            result.latency.max_ms
        );
        if let Some(l) = &result.pacer_lateness {
            eprintln!("{:>28}  pacer lateness {}", "", l.summary());
        }
    }
    Measured { result, snapshot }
}
