//! Open-model arrivals dispatched on time, and a record of how far off time they were.
//!
//! Tokio's timer wheel has a 1 ms resolution and rounds up, so `sleep_until(intended)` let
//! each request leave 1-2 ms late; since the open model (rightly) measures latency from the
//! intended start, a 0.2 ms Echo showed up as 1.5-1.9 ms. The pacer therefore runs on a
//! thread of its own: for each arrival it sleeps with the OS timer (an hrtimer, typically
//! tens of microseconds late) until [`SPIN`] before the hand-over time, spins on [`Instant`]
//! for the rest, and hands the arrival to the runtime through a channel [`HANDOFF_EARLY`]
//! before it is due, so the runtime has woken up by then; the request task yields until the
//! intended instant ([`arrive`]). The request task then records its own lateness (when it actually started minus when it was meant to) in
//! a [`Lateness`] histogram that every open-model result carries, so a reader sees the
//! instrument's error next to what it measured.

use std::{
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// How long before each arrival the pacer stops sleeping and starts spinning: above the OS
/// sleep's usual overshoot (about 60 us here, the default 50 us timer slack plus wake-up),
/// small enough that spinning costs a few percent of a core at moderate rates.
pub const SPIN: Duration = Duration::from_micros(300);

/// How long before its intended time each arrival is handed to the runtime. Waking a
/// parked runtime thread takes about 100 us on a small VM, which handing over at the
/// intended instant would add to every request; handed over early, the request task is
/// already running and waits out the rest itself ([`arrive`]).
pub const HANDOFF_EARLY: Duration = Duration::from_micros(400);

/// Waits, inside the request's task, until its intended start: yields to the runtime in a
/// loop, so the worker thread stays awake (no wake-up latency at the instant that counts)
/// while other tasks still run.
pub async fn arrive(intended: Instant) {
    while Instant::now() < intended {
        tokio::task::yield_now().await;
    }
}

/// One arrival: its number and when it is meant to start.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub n: u64,
    pub intended: Instant,
}

/// Starts the pacing thread: arrivals `0..total`, the n-th at `start + n / rate`, each sent
/// when its time has come. The channel closes after the last one; the thread stops early
/// when the receiver is dropped (the run was abandoned).
pub fn start(start: Instant, rate: f64, total: u64) -> mpsc::UnboundedReceiver<Arrival> {
    let (tx, rx) = mpsc::unbounded_channel();
    let spawned = thread::Builder::new()
        .name("loadtest-pacer".into())
        .spawn(move || {
            for n in 0..total {
                let intended = start + Duration::from_secs_f64(n as f64 / rate);
                wait_until(intended.checked_sub(HANDOFF_EARLY).unwrap_or(intended));
                if tx.send(Arrival { n, intended }).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        // Without a thread there is no pacing; the run ends at once with no samples,
        // which the result shows (0 requests) rather than a panic mid-experiment.
        eprintln!("[loadtest] could not start the pacing thread: {e}");
    }
    rx
}

/// Blocks until `t`: OS sleep for all but the last [`SPIN`], then a spin.
pub fn wait_until(t: Instant) {
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        let left = t - now;
        if left > SPIN {
            thread::sleep(left - SPIN);
        } else {
            std::hint::spin_loop();
        }
    }
}

/// The pacer's error over a run: actual start minus intended start, per request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Lateness {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Lateness {
    /// "p50 4 us, p99 38 us, max 410 us".
    pub fn summary(&self) -> String {
        format!(
            "p50 {:.0} us, p99 {:.0} us, max {:.0} us",
            self.p50_us, self.p99_us, self.max_us
        )
    }
}

/// Nanoseconds, up to a minute, 3 significant digits.
const MAX_NS: u64 = 60_000_000_000;

/// Collects lateness from the request tasks (arrivals intended before `measure_from`, the
/// warm-up, are left out like their latencies).
pub struct LatenessRecorder {
    hist: Mutex<Histogram<u64>>,
    measure_from: Instant,
}

impl LatenessRecorder {
    pub fn new(measure_from: Instant) -> Self {
        Self {
            hist: Mutex::new(
                Histogram::new_with_bounds(1, MAX_NS, 3)
                    .expect("constant histogram bounds are valid"),
            ),
            measure_from,
        }
    }

    /// Call as the request starts.
    pub fn record(&self, intended: Instant, started: Instant) {
        if intended < self.measure_from {
            return;
        }
        let ns = u64::try_from(started.saturating_duration_since(intended).as_nanos())
            .unwrap_or(MAX_NS)
            .clamp(1, MAX_NS);
        let _ = self
            .hist
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(ns);
    }

    pub fn lateness(&self) -> Lateness {
        let h = self.hist.lock().unwrap_or_else(|p| p.into_inner());
        if h.is_empty() {
            return Lateness::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Lateness {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_come_in_order_at_the_rate_and_never_early() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let t0 = Instant::now() + Duration::from_millis(5);
        let mut rx = start(t0, 1000.0, 20);
        let got: Vec<(Arrival, Instant)> = rt.block_on(async {
            let mut v = Vec::new();
            while let Some(a) = rx.recv().await {
                assert!(
                    Instant::now() + HANDOFF_EARLY >= a.intended,
                    "arrival {} handed over too early",
                    a.n
                );
                arrive(a.intended).await;
                v.push((a, Instant::now()));
            }
            v
        });
        assert_eq!(got.len(), 20);
        for (i, (a, seen)) in got.iter().enumerate() {
            assert_eq!(a.n, i as u64);
            assert_eq!(a.intended, t0 + Duration::from_millis(i as u64));
            assert!(*seen >= a.intended, "arrival {i} dispatched early");
        }
    }

    #[test]
    fn lateness_leaves_out_the_warmup() {
        let t0 = Instant::now();
        let rec = LatenessRecorder::new(t0 + Duration::from_secs(1));
        rec.record(t0, t0 + Duration::from_millis(5));
        let t1 = t0 + Duration::from_secs(2);
        rec.record(t1, t1 + Duration::from_micros(20));
        rec.record(t1, t1 + Duration::from_micros(40));
        let l = rec.lateness();
        assert_eq!(l.count, 2);
        assert!((l.max_us - 40.0).abs() < 0.1, "{l:?}");
        assert!(l.p50_us < 21.0, "{l:?}");
    }
}
