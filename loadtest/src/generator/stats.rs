//! Recording: one HdrHistogram per (endpoint, outcome), one for everything, errors counted
//! by kind, and a short-lived interval histogram the progress bar drains.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, up to an hour, 3 significant digits.
const MAX_US: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid")
}

/// How one operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A short machine-readable kind: "http_503", "grpc_unavailable", "timeout", "connect", ...
    Error(String),
}

impl Outcome {
    pub fn error(kind: impl Into<String>) -> Self {
        Self::Error(kind.into())
    }
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok)
    }
}

/// What a workload reports for one operation: which endpoint, how it ended.
#[derive(Debug, Clone)]
pub struct Sample {
    pub endpoint: String,
    pub outcome: Outcome,
}

impl Sample {
    pub fn new(endpoint: impl Into<String>, outcome: Outcome) -> Self {
        Self {
            endpoint: endpoint.into(),
            outcome,
        }
    }
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Figures for one endpoint and one outcome class.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointStats {
    pub endpoint: String,
    /// "ok" or "error".
    pub outcome: String,
    pub latency: Latency,
}

/// Live figures since the last call of [`Recorder::take_interval`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Interval {
    pub completed: u64,
    pub errors: u64,
    pub p99_ms: f64,
}

struct Inner {
    all: Histogram<u64>,
    ok: Histogram<u64>,
    per: BTreeMap<(String, bool), Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    errors_per_endpoint: BTreeMap<(String, String), u64>,
    warmup: u64,
    interval: Histogram<u64>,
    interval_errors: u64,
    total_errors: u64,
}

/// Thread-safe recorder for one run. Samples whose (intended) start lies before
/// `measure_from` are counted as warm-up and otherwise ignored.
pub struct Recorder {
    inner: Mutex<Inner>,
    measure_from: Instant,
}

impl Recorder {
    pub fn new(measure_from: Instant) -> Self {
        Self {
            inner: Mutex::new(Inner {
                all: new_histogram(),
                ok: new_histogram(),
                per: BTreeMap::new(),
                errors: BTreeMap::new(),
                errors_per_endpoint: BTreeMap::new(),
                warmup: 0,
                interval: new_histogram(),
                interval_errors: 0,
                total_errors: 0,
            }),
            measure_from,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, started: Instant, latency: Duration, sample: Sample) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(MAX_US)
            .clamp(1, MAX_US);
        let ok = sample.outcome.is_ok();
        let mut g = self.lock();
        let _ = g.interval.record(us);
        if !ok {
            g.interval_errors += 1;
        }
        if started < self.measure_from {
            g.warmup += 1;
            return;
        }
        let _ = g.all.record(us);
        if ok {
            let _ = g.ok.record(us);
        } else {
            g.total_errors += 1;
        }
        if let Outcome::Error(kind) = &sample.outcome {
            *g.errors.entry(kind.clone()).or_default() += 1;
            *g.errors_per_endpoint
                .entry((sample.endpoint.clone(), kind.clone()))
                .or_default() += 1;
        }
        let _ = g
            .per
            .entry((sample.endpoint, ok))
            .or_insert_with(new_histogram)
            .record(us);
    }

    /// Drains the interval histogram (for the progress bar).
    pub fn take_interval(&self) -> Interval {
        let mut g = self.lock();
        let out = Interval {
            completed: g.interval.len(),
            errors: g.interval_errors,
            p99_ms: if g.interval.is_empty() {
                0.0
            } else {
                ms(g.interval.value_at_quantile(0.99))
            },
        };
        g.interval.reset();
        g.interval_errors = 0;
        out
    }

    pub fn snapshot(&self) -> Snapshot {
        let g = self.lock();
        Snapshot {
            all: g.all.clone(),
            ok: g.ok.clone(),
            per: g.per.clone(),
            errors: g.errors.clone(),
            errors_per_endpoint: g.errors_per_endpoint.clone(),
            warmup: g.warmup,
        }
    }
}

/// Everything a run recorded (after warm-up).
#[derive(Clone)]
pub struct Snapshot {
    pub all: Histogram<u64>,
    pub ok: Histogram<u64>,
    pub per: BTreeMap<(String, bool), Histogram<u64>>,
    pub errors: BTreeMap<String, u64>,
    pub errors_per_endpoint: BTreeMap<(String, String), u64>,
    pub warmup: u64,
}

impl Snapshot {
    pub fn endpoints(&self) -> Vec<EndpointStats> {
        self.per
            .iter()
            .map(|((endpoint, ok), h)| EndpointStats {
                endpoint: endpoint.clone(),
                outcome: if *ok { "ok" } else { "error" }.to_owned(),
                latency: Latency::of(h),
            })
            .collect()
    }

    /// Fraction of all recorded operations at or above `threshold`.
    pub fn fraction_at_least(&self, threshold: Duration) -> f64 {
        fraction_at_least(&self.all, threshold)
    }
}

pub fn fraction_at_least(h: &Histogram<u64>, threshold: Duration) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    let t = u64::try_from(threshold.as_micros()).unwrap_or(MAX_US);
    let below: u64 = h
        .iter_recorded()
        .filter(|v| v.value_iterated_to() < h.lowest_equivalent(t))
        .map(|v| v.count_at_value())
        .sum();
    (h.len() - below) as f64 / h.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_excluded_and_errors_are_counted_by_kind() {
        let t0 = Instant::now();
        let rec = Recorder::new(t0 + Duration::from_secs(1));
        rec.record(t0, Duration::from_millis(5), Sample::new("a", Outcome::Ok));
        let later = t0 + Duration::from_secs(2);
        rec.record(
            later,
            Duration::from_millis(10),
            Sample::new("a", Outcome::Ok),
        );
        rec.record(
            later,
            Duration::from_millis(300),
            Sample::new("a", Outcome::error("http_503")),
        );
        let s = rec.snapshot();
        assert_eq!(s.warmup, 1);
        assert_eq!(s.all.len(), 2);
        assert_eq!(s.errors.get("http_503"), Some(&1));
        assert_eq!(s.endpoints().len(), 2);
        let f = s.fraction_at_least(Duration::from_millis(200));
        assert!((f - 0.5).abs() < 1e-9, "{f}");
    }
}
