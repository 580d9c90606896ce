//! The soak's ok rates with and without the seconds around each SIGKILL.
//!
//! A killed process takes its in-flight requests with it and its peers need a moment to
//! notice it is back, so the overall ok rate mixes two questions: "what does a crash cost"
//! and "does the shop serve well between crashes". Splitting requests by when they were sent
//! answers both: requests sent from [`BEFORE`] before a kill to [`AFTER`] after it are the
//! crash's; the rest show whether the shop recovered fully or stays degraded.
//!
//! Browsing gets a rate of its own that leaves out only the kills of the processes that
//! serve it (the gateway, item-service): a checkout's troubles or a crash of user- or
//! payment-service must cost the catalog nothing, so [`MIN_BROWSE_OK`] is strict.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Serialize;

/// A request sent this long before a kill may still be in flight when the process dies.
pub const BEFORE: Duration = Duration::from_secs(1);
/// How long after a kill requests count as the crash's (restart, reconnect, breakers).
pub const AFTER: Duration = Duration::from_secs(5);

/// The soak fails with fewer ok requests outside the kill windows than this (percent).
pub const MIN_OK_OUTSIDE_KILLS: f64 = 99.0;
/// The soak fails with fewer ok browse requests than this (percent), counted outside the
/// windows of the kills of the processes that serve browsing.
pub const MIN_BROWSE_OK: f64 = 99.9;

/// What a request was, for the split: browsing has no writes behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Browse,
    Checkout,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Browse => "browse",
            Self::Checkout => "checkout",
        }
    }
}

/// One finished request: when it was sent (since the load started) and, if it failed, how
/// (the generator's error kind: "http_503", "timeout", "connect", ...).
#[derive(Debug, Clone)]
struct Record {
    sent: Duration,
    kind: Kind,
    failure: Option<String>,
}

impl Record {
    fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// Failed requests outside every kill window, of one kind and one error, sent in one
/// second of the run: what the quiet rates lost, and when.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stray {
    /// Seconds since the load started (warm-up included), rounded down.
    pub second: u64,
    pub kind: &'static str,
    pub error: String,
    pub count: u64,
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

    /// Records a request sent at `sent` that ended with `failure` (None: ok); one sent
    /// before the timeline's start is ignored.
    pub fn record(&self, sent: Instant, kind: Kind, failure: Option<String>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sent) = sent.checked_duration_since(inner.start) {
            inner.records.push(Record {
                sent,
                kind,
                failure,
            });
        }
    }

    /// The failures sent from `from` on outside every kill window, grouped by second, kind
    /// and error, in time order.
    pub fn strays(&self, from: Duration, kills: &[Duration]) -> Vec<Stray> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut groups: std::collections::BTreeMap<(u64, &'static str, &str), u64> =
            std::collections::BTreeMap::new();
        for rec in inner.records.iter().filter(|r| r.sent >= from) {
            let Some(error) = rec.failure.as_deref() else {
                continue;
            };
            if !near(kills, rec.sent) {
                *groups
                    .entry((rec.sent.as_secs(), rec.kind.name(), error))
                    .or_default() += 1;
            }
        }
        groups
            .into_iter()
            .map(|((second, kind, error), count)| Stray {
                second,
                kind,
                error: error.to_owned(),
                count,
            })
            .collect()
    }

    /// The rates over the requests sent from `from` on (after the warm-up), with kills at
    /// `kills` (offsets from the timeline's start), of which `browse_kills` hit a process
    /// that browsing needs.
    pub fn rates(&self, from: Duration, kills: &[Duration], browse_kills: &[Duration]) -> OkRates {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let records = &inner.records;
        let near_kill = |t: Duration| near(kills, t);
        let mut r = OkRates {
            window_before_s: BEFORE.as_secs_f64(),
            window_after_s: AFTER.as_secs_f64(),
            ..OkRates::default()
        };
        for rec in records.iter().filter(|rec| rec.sent >= from) {
            let quiet = !near_kill(rec.sent);
            let ok = rec.ok();
            r.all.add(ok);
            if quiet {
                r.outside_kills.add(ok);
            }
            if rec.kind == Kind::Browse {
                r.browse.add(ok);
                if quiet {
                    r.browse_outside_kills.add(ok);
                }
                if !near(browse_kills, rec.sent) {
                    r.browse_gated.add(ok);
                }
            }
        }
        r
    }
}

/// Whether a request sent at `t` falls in the window of one of `kills`.
fn near(kills: &[Duration], t: Duration) -> bool {
    kills.iter().any(|k| t + BEFORE >= *k && t <= *k + AFTER)
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
    /// Browse requests outside the windows of the kills of the gateway and item-service
    /// only: what [`MIN_BROWSE_OK`] applies to.
    pub browse_gated: Count,
}

impl OkRates {
    /// Why the run fails its ok-rate bars (empty: it passes them). No requests in a bar's
    /// share is a failure too: nothing was shown.
    pub fn shortfalls(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut bar = |what: &str, count: &Count, min: f64| match count.percent() {
            Some(p) if p >= min => {}
            Some(p) => out.push(format!(
                "{what}: {p:.2}% ok ({} of {}), below the {min}% bar",
                count.ok, count.requests
            )),
            None => out.push(format!("{what}: no requests to judge")),
        };
        bar(
            "requests outside the kill windows",
            &self.outside_kills,
            MIN_OK_OUTSIDE_KILLS,
        );
        bar(
            "browse requests (outside gateway and item-service kills)",
            &self.browse_gated,
            MIN_BROWSE_OK,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: &Timeline, start: Instant, secs: f64, kind: Kind, ok: bool) {
        let failure = (!ok).then(|| "http_503".to_owned());
        t.record(start + Duration::from_secs_f64(secs), kind, failure);
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
        let r = t.rates(Duration::from_secs(2), &[Duration::from_secs(10)], &[]);
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
        let r = t.rates(Duration::ZERO, &[Duration::from_secs(10)], &[]);
        assert_eq!(r.all, Count::default());
        at(&t, start, 40.0, Kind::Browse, false);
        at(&t, start, 41.0, Kind::Browse, true);
        let r = t.rates(Duration::ZERO, &[Duration::from_secs(10)], &[]);
        assert_eq!(r.outside_kills, Count { requests: 2, ok: 1 });
        assert_eq!(r.outside_kills.percent(), Some(50.0));
        assert_eq!(Count::default().describe(), "no requests");
    }

    #[test]
    fn browsing_is_excused_only_around_kills_of_what_serves_it() {
        let start = Instant::now();
        let t = Timeline::new(start);
        let at = |secs, kind, ok| at(&t, start, secs, kind, ok);
        at(11.0, Kind::Browse, false); // after a payment-service kill at 10 s
        at(31.0, Kind::Browse, false); // after an item-service kill at 30 s
        for i in 0..2000 {
            at(50.0 + f64::from(i) * 0.01, Kind::Browse, true);
            at(50.0 + f64::from(i) * 0.01, Kind::Checkout, true);
        }
        let kills = [Duration::from_secs(10), Duration::from_secs(30)];
        let r = t.rates(Duration::ZERO, &kills, &kills[1..]);
        assert_eq!(
            r.browse_outside_kills,
            Count {
                requests: 2000,
                ok: 2000
            }
        );
        assert_eq!(
            r.browse_gated,
            Count {
                requests: 2001,
                ok: 2000
            }
        );
        assert!(r.shortfalls().is_empty(), "{:?}", r.shortfalls());

        // Three browse failures in 2003 (99.85%): the bar is not met.
        at(12.0, Kind::Browse, false);
        at(13.0, Kind::Browse, false);
        let r = t.rates(Duration::ZERO, &kills, &kills[1..]);
        let why = r.shortfalls();
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].starts_with("browse requests"), "{why:?}");

        // Too many failures between kills fails the other bar.
        for i in 0..60 {
            at(70.0 + f64::from(i) * 0.01, Kind::Checkout, false);
        }
        let r = t.rates(Duration::ZERO, &kills, &kills[1..]);
        assert_eq!(r.shortfalls().len(), 2, "{:?}", r.shortfalls());
        assert_eq!(
            OkRates::default().shortfalls().len(),
            2,
            "no requests: no pass"
        );
    }

    #[test]
    fn strays_are_the_failures_outside_every_kill_window_by_second() {
        let start = Instant::now();
        let t = Timeline::new(start);
        let at = |secs, kind, ok| at(&t, start, secs, kind, ok);
        at(1.0, Kind::Browse, false); // warm-up
        at(12.0, Kind::Browse, false); // in the window of the kill at 10 s
        at(30.2, Kind::Browse, false);
        at(30.9, Kind::Browse, false);
        at(30.5, Kind::Checkout, false);
        at(31.0, Kind::Browse, true);
        at(44.0, Kind::Browse, false);
        let strays = t.strays(Duration::from_secs(2), &[Duration::from_secs(10)]);
        let seen: Vec<(u64, &str, u64)> =
            strays.iter().map(|s| (s.second, s.kind, s.count)).collect();
        assert_eq!(
            seen,
            [(30, "browse", 2), (30, "checkout", 1), (44, "browse", 1)]
        );
        assert!(strays.iter().all(|s| s.error == "http_503"));
    }
}
