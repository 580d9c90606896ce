//! The soak's ok rates with and without the seconds around each SIGKILL.
//!
//! A killed process takes its in-flight requests with it and its peers need a moment to
//! notice it is back, so the overall ok rate mixes two questions: "what does a crash cost"
//! and "does the shop serve well between crashes". Splitting requests by when they were sent
//! answers both: requests sent from [`BEFORE`] before a kill to [`AFTER`] after it are the
//! crash's; the rest show whether the shop recovered fully or stays degraded.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Serialize;

/// A request sent this long before a kill may still be in flight when the process dies.
pub const BEFORE: Duration = Duration::from_secs(1);
/// How long after a kill requests count as the crash's (restart, reconnect, breakers).
pub const AFTER: Duration = Duration::from_secs(5);

/// What a request was, for the split: browsing has no writes behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Browse,
    Checkout,
}

/// One finished request: when it was sent (since the load started) and whether it was ok.
#[derive(Debug, Clone, Copy)]
struct Record {
    sent: Duration,
    kind: Kind,
    ok: bool,
}

/// Every request of a run, as the workload finishes them.
#[derive(Debug)]
pub struct Timeline {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    start: Instant,
    records: Vec<Record>,
}

impl Timeline {
    pub fn new(start: Instant) -> Self {
        Self {
            inner: Mutex::new(Inner {
                start,
                records: Vec::new(),
            }),
        }
    }

    /// Forgets what was recorded and counts from `start` on (a run before the soak, such
    /// as the peak measurement, is no part of it).
    pub fn restart(&self, start: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.start = start;
        inner.records.clear();
    }

    /// Records a request sent at `sent`; one sent before the timeline's start is ignored.
    pub fn record(&self, sent: Instant, kind: Kind, ok: bool) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sent) = sent.checked_duration_since(inner.start) {
            inner.records.push(Record { sent, kind, ok });
        }
    }

    /// The rates over the requests sent from `from` on (after the warm-up), with kills at
    /// `kills` (offsets from the timeline's start).
    pub fn rates(&self, from: Duration, kills: &[Duration]) -> OkRates {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let records = &inner.records;
        let near_kill = |t: Duration| kills.iter().any(|k| t + BEFORE >= *k && t <= *k + AFTER);
        let mut r = OkRates {
            window_before_s: BEFORE.as_secs_f64(),
            window_after_s: AFTER.as_secs_f64(),
            ..OkRates::default()
        };
        for rec in records.iter().filter(|rec| rec.sent >= from) {
            let quiet = !near_kill(rec.sent);
            r.all.add(rec.ok);
            if quiet {
                r.outside_kills.add(rec.ok);
            }
            if rec.kind == Kind::Browse {
                r.browse.add(rec.ok);
                if quiet {
                    r.browse_outside_kills.add(rec.ok);
                }
            }
        }
        r
    }
}

/// Requests and how many of them were ok.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Count {
    pub requests: u64,
    pub ok: u64,
}

impl Count {
    fn add(&mut self, ok: bool) {
        self.requests += 1;
        self.ok += u64::from(ok);
    }

    /// The ok share in percent; None with no requests.
    pub fn percent(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.ok as f64 * 100.0 / self.requests as f64)
    }

    /// "99.2% (1234 of 1244)", or "no requests".
    pub fn describe(&self) -> String {
        match self.percent() {
            Some(p) => format!("{p:.1}% ({} of {})", self.ok, self.requests),
            None => "no requests".to_owned(),
        }
    }
}

/// The soak's ok rates: overall, outside the windows around the kills, and the same for
/// browse requests alone.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct OkRates {
    pub window_before_s: f64,
    pub window_after_s: f64,
    pub all: Count,
    pub outside_kills: Count,
    pub browse: Count,
    pub browse_outside_kills: Count,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: &Timeline, start: Instant, secs: f64, kind: Kind, ok: bool) {
        t.record(start + Duration::from_secs_f64(secs), kind, ok);
    }

    #[test]
    fn requests_near_a_kill_are_left_out_of_the_quiet_rate_only() {
        let start = Instant::now();
        let t = Timeline::new(start);
        let at = |secs, kind, ok| at(&t, start, secs, kind, ok);
        at(1.0, Kind::Browse, true); // warm-up: not counted at all
        at(3.0, Kind::Browse, true);
        at(9.5, Kind::Checkout, false); // 0.5 s before the kill at 10 s
        at(12.0, Kind::Browse, false); // 2 s after it
        at(15.0, Kind::Checkout, false); // the window's last instant
        at(15.5, Kind::Browse, true); // past it
        at(20.0, Kind::Checkout, true);
        let r = t.rates(Duration::from_secs(2), &[Duration::from_secs(10)]);
        assert_eq!(r.all, Count { requests: 6, ok: 3 });
        assert_eq!(r.outside_kills, Count { requests: 3, ok: 3 });
        assert_eq!(r.browse, Count { requests: 3, ok: 2 });
        assert_eq!(r.browse_outside_kills, Count { requests: 2, ok: 2 });
        assert_eq!(r.outside_kills.describe(), "100.0% (3 of 3)");
    }

    #[test]
    fn a_failure_far_from_every_kill_counts_against_the_quiet_rate() {
        let start = Instant::now();
        let t = Timeline::new(start);
        at(&t, start, 30.0, Kind::Browse, false);
        at(&t, start, 31.0, Kind::Browse, true);
        // A request of an earlier run (before a restart) is not the soak's.
        t.restart(start + Duration::from_secs(1));
        at(&t, start, 0.5, Kind::Browse, false);
        let r = t.rates(Duration::ZERO, &[Duration::from_secs(10)]);
        assert_eq!(r.all, Count::default());
        at(&t, start, 40.0, Kind::Browse, false);
        at(&t, start, 41.0, Kind::Browse, true);
        let r = t.rates(Duration::ZERO, &[Duration::from_secs(10)]);
        assert_eq!(r.outside_kills, Count { requests: 2, ok: 1 });
        assert_eq!(r.outside_kills.percent(), Some(50.0));
        assert_eq!(Count::default().describe(), "no requests");
    }
}
