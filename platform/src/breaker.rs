//! A circuit breaker per dependency: closed -> (N consecutive failures) -> open ->
//! (after a cool-down) half-open -> (probes succeed) closed, or (a probe fails) open again,
//! for twice as long as the last time (up to a limit): a process that restarts in a second
//! is probed a second after it died, not left refused for the whole limit, while a
//! dependency that stays down is probed ever less often.
//! While open, calls fail at once instead of waiting on a dead or slow dependency. The
//! gateway keeps one per downstream service and kind of call (read, write, auth: saturated
//! writes must not open the circuit for reads), payment-service one for the card gateway:
//! each hop protects itself, so a slow card processor makes payment-service answer
//! UNAVAILABLE at once instead of holding every caller up the chain.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    pub enabled: bool,
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// ... and how long they must span, first to last: one stall of the machine times out
    /// every call in flight at once, which is one event, not a dependency that keeps failing.
    /// Zero: the count alone decides.
    pub min_failure_span: Duration,
    /// How long it stays open before letting probes through, the first time.
    pub open_for: Duration,
    /// The longest cool-down: each failed probe doubles the last one up to this (never
    /// below `open_for`).
    pub max_open_for: Duration,
    /// Successful probes needed in half-open to close.
    pub half_open_probes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    /// When the current run of consecutive failures began.
    first_failure_at: Option<Instant>,
    opened_at: Option<Instant>,
    /// The cool-down of the current opening.
    cool_down: Duration,
    probes_in_flight: u32,
    probe_successes: u32,
    rejected: u64,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    /// Shared with the probe permits, which must reach the state when they are dropped.
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Metric names start with it: `{prefix}_circuit_state`, `{prefix}_circuit_rejected_total`.
    metric_prefix: &'static str,
    service: &'static str,
    /// The kind of call this breaker guards (a `kind` label), when a service has several.
    kind: Option<&'static str>,
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Success,
    Failure,
    /// A probe dropped without an answer (see `Permit`'s Drop).
    Abandoned,
}

enum Admission {
    Call,
    /// The cool-down is over: this call is the first probe.
    FirstProbe,
    Probe,
    Refuse,
}

/// Admission to call; hand it back with the outcome. A probe permit dropped without an
/// outcome (its caller went away, e.g. a client disconnect dropped the future) counts as a
/// failed probe: otherwise its half-open slot would stay taken and the breaker would refuse
/// every call until restart.
#[derive(Debug)]
#[must_use]
pub struct Permit {
    /// Set for a half-open probe until its outcome is recorded.
    probe: Option<Arc<Shared>>,
}

impl Permit {
    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(shared) = self.probe.take() {
            tracing::warn!(
                service = shared.service,
                "circuit probe abandoned before it answered: counted as failed"
            );
            shared.record(true, Outcome::Abandoned);
        }
    }
}

/// A view of one breaker (the gateway's /debug/downstreams).
#[derive(Debug, Clone, Serialize)]
pub struct BreakerSnapshot {
    pub enabled: bool,
    pub state: BreakerState,
    pub consecutive_failures: u32,
    pub failure_threshold: u32,
    /// Milliseconds until an open breaker lets a probe through (0 unless open).
    pub retry_in_ms: u64,
    /// Calls refused while open since start.
    pub rejected: u64,
}

impl CircuitBreaker {
    pub fn new(metric_prefix: &'static str, service: &'static str, config: BreakerConfig) -> Self {
        Self::build(metric_prefix, service, None, config)
    }

    /// One of several breakers of `service`, one per kind of call: its metrics carry a
    /// `kind` label next to `service`.
    pub fn for_kind(
        metric_prefix: &'static str,
        service: &'static str,
        kind: &'static str,
        config: BreakerConfig,
    ) -> Self {
        Self::build(metric_prefix, service, Some(kind), config)
    }

    fn build(
        metric_prefix: &'static str,
        service: &'static str,
        kind: Option<&'static str>,
        config: BreakerConfig,
    ) -> Self {
        let shared = Shared {
            metric_prefix,
            service,
            kind,
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                first_failure_at: None,
                opened_at: None,
                cool_down: config.open_for,
                probes_in_flight: 0,
                probe_successes: 0,
                rejected: 0,
            }),
        };
        shared.publish(BreakerState::Closed);
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Whether a call made now would be admitted, without taking a permit: lets a caller
    /// skip work that is pointless while the breaker refuses (a checkout need not reserve
    /// stock it cannot pay for). A cooled-down open breaker admits (its probe).
    pub fn admits(&self) -> bool {
        let s = &self.shared;
        !s.config.enabled || !matches!(s.admission(&s.lock()), Admission::Refuse)
    }

    /// Asks to make a call. None: the breaker is open, fail fast.
    pub fn try_acquire(&self) -> Option<Permit> {
        let s = &self.shared;
        let call = Some(Permit { probe: None });
        let probe = || {
            Some(Permit {
                probe: Some(Arc::clone(s)),
            })
        };
        if !s.config.enabled {
            return call;
        }
        let mut g = s.lock();
        match s.admission(&g) {
            Admission::Call => call,
            Admission::FirstProbe => {
                g.state = BreakerState::HalfOpen;
                g.probes_in_flight = 1;
                g.probe_successes = 0;
                drop(g);
                s.publish(BreakerState::HalfOpen);
                tracing::info!(service = s.service, "circuit half-open: probing");
                probe()
            }
            Admission::Probe => {
                g.probes_in_flight += 1;
                probe()
            }
            Admission::Refuse => {
                g.rejected += 1;
                drop(g);
                ::metrics::counter!(
                    format!("{}_circuit_rejected_total", s.metric_prefix),
                    s.labels()
                )
                .increment(1);
                None
            }
        }
    }

    /// Reports the outcome of a call admitted by `permit`. `failure` means the service
    /// looked unhealthy (unavailable, timed out), not that it answered with a business error.
    pub fn record(&self, mut permit: Permit, failure: bool) {
        // Taken out so that dropping the permit does not report it a second time.
        let probe = permit.probe.take().is_some();
        let outcome = if failure {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        self.shared.record(probe, outcome);
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        let s = &self.shared;
        let g = s.lock();
        let retry_in_ms = match (g.state, g.opened_at) {
            (BreakerState::Open, Some(t)) => {
                g.cool_down.saturating_sub(t.elapsed()).as_millis() as u64
            }
            _ => 0,
        };
        BreakerSnapshot {
            enabled: s.config.enabled,
            state: g.state,
            consecutive_failures: g.consecutive_failures,
            failure_threshold: s.config.failure_threshold,
            retry_in_ms,
            rejected: g.rejected,
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn labels(&self) -> Vec<::metrics::Label> {
        let mut labels = vec![::metrics::Label::new("service", self.service)];
        if let Some(kind) = self.kind {
            labels.push(::metrics::Label::new("kind", kind));
        }
        labels
    }

    fn publish(&self, state: BreakerState) {
        ::metrics::gauge!(
            format!("{}_circuit_state", self.metric_prefix),
            self.labels()
        )
        .set(state.gauge());
    }

    /// What a call made now would get.
    fn admission(&self, g: &Inner) -> Admission {
        let probes = self.config.half_open_probes.max(1);
        match g.state {
            BreakerState::Closed => Admission::Call,
            BreakerState::Open if g.opened_at.is_none_or(|t| t.elapsed() >= g.cool_down) => {
                Admission::FirstProbe
            }
            BreakerState::HalfOpen if g.probes_in_flight < probes => Admission::Probe,
            BreakerState::Open | BreakerState::HalfOpen => Admission::Refuse,
        }
    }

    fn record(&self, probe: bool, outcome: Outcome) {
        if !self.config.enabled {
            return;
        }
        let mut g = self.lock();
        if probe {
            g.probes_in_flight = g.probes_in_flight.saturating_sub(1);
        }
        let before = g.state;
        match (g.state, outcome) {
            (BreakerState::Closed, Outcome::Success) => {
                g.consecutive_failures = 0;
                g.first_failure_at = None;
            }
            (BreakerState::Closed, Outcome::Failure) => {
                g.consecutive_failures += 1;
                let now = Instant::now();
                let first = *g.first_failure_at.get_or_insert(now);
                if g.consecutive_failures >= self.config.failure_threshold.max(1)
                    && now.duration_since(first) >= self.config.min_failure_span
                {
                    g.state = BreakerState::Open;
                    g.opened_at = Some(Instant::now());
                    g.cool_down = self.config.open_for;
                }
            }
            (BreakerState::HalfOpen, Outcome::Success) if probe => {
                g.probe_successes += 1;
                if g.probe_successes >= self.config.half_open_probes.max(1) {
                    g.state = BreakerState::Closed;
                    g.consecutive_failures = 0;
                    g.first_failure_at = None;
                    g.opened_at = None;
                }
            }
            // A probe whose caller went away proved nothing: assume the worst and cool
            // down again rather than keep its slot forever.
            (BreakerState::HalfOpen, Outcome::Failure | Outcome::Abandoned) => {
                g.state = BreakerState::Open;
                g.opened_at = Some(Instant::now());
                g.cool_down = (g.cool_down * 2)
                    .min(self.config.max_open_for)
                    .max(self.config.open_for);
                g.consecutive_failures += 1;
            }
            // Late answers of calls admitted before the breaker opened, and probes abandoned
            // after another probe settled the state, change nothing.
            _ => {}
        }
        let after = g.state;
        drop(g);
        if before != after {
            self.publish(after);
            let mut labels = self.labels();
            labels.push(::metrics::Label::new("to", format!("{after:?}")));
            ::metrics::counter!(
                format!("{}_circuit_transitions_total", self.metric_prefix),
                labels
            )
            .increment(1);
            tracing::warn!(service = self.service, kind = self.kind, from = ?before, to = ?after, "circuit state changed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(open_for_ms: u64) -> CircuitBreaker {
        CircuitBreaker::new(
            "test",
            "test",
            BreakerConfig {
                enabled: true,
                failure_threshold: 3,
                min_failure_span: Duration::ZERO,
                open_for: Duration::from_millis(open_for_ms),
                max_open_for: Duration::ZERO,
                half_open_probes: 1,
            },
        )
    }

    /// Three failures in a row: the threshold of `breaker`.
    fn trip(b: &CircuitBreaker) {
        for _ in 0..3 {
            let p = b.try_acquire().expect("closed");
            b.record(p, true);
        }
    }

    #[test]
    fn opens_after_threshold_and_closes_after_probe() {
        let b = breaker(0);
        trip(&b);
        assert_eq!(b.snapshot().state, BreakerState::Open);
        // open_for = 0: the next call is a probe.
        let p = b.try_acquire().expect("probe");
        assert_eq!(b.snapshot().state, BreakerState::HalfOpen);
        assert!(b.try_acquire().is_none(), "only one probe at a time");
        b.record(p, false);
        assert_eq!(b.snapshot().state, BreakerState::Closed);
    }

    #[test]
    fn admits_tells_without_taking_the_probe() {
        let b = breaker(60_000);
        assert!(b.admits());
        trip(&b);
        assert!(!b.admits(), "open and not cooled down");
        assert_eq!(b.snapshot().rejected, 0, "asking is not a rejected call");

        let b = breaker(0);
        trip(&b);
        assert!(b.admits(), "cooled down: the next call is the probe");
        assert!(b.admits(), "asking twice does not use the probe up");
        let p = b.try_acquire().expect("probe");
        assert!(!b.admits(), "the one probe is in flight");
        b.record(p, false);
        assert!(b.admits());
    }

    #[test]
    fn open_rejects_and_failed_probe_reopens() {
        let b = breaker(60_000);
        trip(&b);
        assert!(b.try_acquire().is_none());
        assert_eq!(b.snapshot().rejected, 1);

        let b = breaker(0);
        trip(&b);
        let p = b.try_acquire().expect("probe");
        b.record(p, true);
        assert_eq!(b.snapshot().state, BreakerState::Open);
    }

    #[test]
    fn success_resets_the_count_and_disabled_never_opens() {
        let b = breaker(60_000);
        for _ in 0..10 {
            let p = b.try_acquire().expect("closed");
            b.record(p, true);
            let p = b.try_acquire().expect("closed");
            b.record(p, false);
            if b.snapshot().state != BreakerState::Closed {
                break;
            }
        }
        let off = CircuitBreaker::new(
            "test",
            "off",
            BreakerConfig {
                enabled: false,
                failure_threshold: 1,
                min_failure_span: Duration::ZERO,
                open_for: Duration::from_secs(60),
                max_open_for: Duration::ZERO,
                half_open_probes: 1,
            },
        );
        for _ in 0..5 {
            let p = off.try_acquire().expect("disabled admits");
            off.record(p, true);
        }
        assert_eq!(off.snapshot().state, BreakerState::Closed);
    }

    #[test]
    fn a_dropped_probe_frees_its_slot() {
        let b = breaker(0);
        trip(&b);
        let p = b.try_acquire().expect("probe");
        assert!(p.is_probe());
        assert!(b.try_acquire().is_none(), "the one probe is in flight");
        drop(p);
        assert_eq!(
            b.snapshot().state,
            BreakerState::Open,
            "an abandoned probe counts as failed"
        );
        let p = b.try_acquire().expect("a new probe after the cool-down");
        assert!(p.is_probe());
        b.record(p, false);
        assert_eq!(b.snapshot().state, BreakerState::Closed);
    }

    #[test]
    fn a_recorded_probe_is_not_counted_again_when_dropped() {
        let b = breaker(0);
        trip(&b);
        let p = b.try_acquire().expect("probe");
        b.record(p, false);
        let p = b.try_acquire().expect("closed");
        assert!(!p.is_probe());
        drop(p);
        assert_eq!(b.snapshot().state, BreakerState::Closed);
        assert_eq!(b.snapshot().consecutive_failures, 0);
    }

    #[tokio::test]
    async fn a_probe_whose_caller_goes_away_lets_the_next_probe_through() {
        let b = Arc::new(breaker(0));
        trip(&b);
        let (taken_tx, taken_rx) = tokio::sync::oneshot::channel();
        let caller = tokio::spawn({
            let b = Arc::clone(&b);
            async move {
                let permit = b.try_acquire().expect("probe");
                let _ = taken_tx.send(());
                // The dependency never answers; the caller is dropped while waiting.
                std::future::pending::<()>().await;
                b.record(permit, false);
            }
        });
        taken_rx.await.expect("the caller took the probe");
        assert!(b.try_acquire().is_none(), "the probe is in flight");
        caller.abort();
        assert!(caller.await.expect_err("aborted").is_cancelled());
        let p = b
            .try_acquire()
            .expect("the slot of the abandoned probe is free again");
        assert!(p.is_probe());
        b.record(p, false);
        assert_eq!(b.snapshot().state, BreakerState::Closed);
    }

    #[test]
    fn a_burst_of_failures_shorter_than_the_span_does_not_open() {
        let b = CircuitBreaker::new(
            "test",
            "span",
            BreakerConfig {
                enabled: true,
                failure_threshold: 3,
                min_failure_span: Duration::from_secs(3600),
                open_for: Duration::from_secs(60),
                max_open_for: Duration::ZERO,
                half_open_probes: 1,
            },
        );
        for _ in 0..10 {
            let p = b.try_acquire().expect("closed");
            b.record(p, true);
        }
        assert_eq!(b.snapshot().state, BreakerState::Closed);
        assert_eq!(b.snapshot().consecutive_failures, 10);
    }

    #[test]
    fn each_failed_probe_doubles_the_cool_down_up_to_its_limit_and_a_close_resets_it() {
        let b = CircuitBreaker::new(
            "test",
            "svc",
            BreakerConfig {
                enabled: true,
                failure_threshold: 1,
                min_failure_span: Duration::ZERO,
                open_for: Duration::from_secs(1),
                max_open_for: Duration::from_secs(5),
                half_open_probes: 1,
            },
        );
        let retry_s = |b: &CircuitBreaker| (b.snapshot().retry_in_ms as f64 / 1000.0).round();
        let fail = |b: &CircuitBreaker| {
            let p = b.try_acquire().expect("admitted");
            b.record(p, true);
        };
        // Back-date the opening, as if its cool-down had passed.
        let cooled = |b: &CircuitBreaker| {
            let mut g = b.shared.lock();
            g.opened_at = Some(Instant::now() - g.cool_down);
        };
        fail(&b);
        assert_eq!(b.snapshot().state, BreakerState::Open);
        assert_eq!(retry_s(&b), 1.0);
        for expected in [2.0, 4.0, 5.0, 5.0] {
            cooled(&b);
            fail(&b); // the probe fails
            assert_eq!(b.snapshot().state, BreakerState::Open);
            assert_eq!(retry_s(&b), expected);
        }
        cooled(&b);
        let p = b.try_acquire().expect("probe");
        b.record(p, false);
        assert_eq!(b.snapshot().state, BreakerState::Closed);
        fail(&b);
        assert_eq!(
            retry_s(&b),
            1.0,
            "a new opening starts from the first cool-down"
        );
    }
}
