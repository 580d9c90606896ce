//! What a crash run found: each combination's result and the matrix report, rendered as
//! Markdown (crash.md) and serialized as JSON (crash.json).

use serde::Serialize;

use super::{
    Tuning,
    plan::{Process, Step},
    probe::{Ending, Observed},
    shop::ClientAnswer,
};

/// One event of a combination, in ms since its checkout was sent.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at_ms: u64,
    pub what: String,
}

/// The restarted process's counters for the event its killed predecessor held before the ack.
#[derive(Debug, Clone, Serialize)]
pub struct Redelivery {
    pub consumer: String,
    pub duplicate: u64,
    pub applied: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComboResult {
    pub combo: String,
    pub process: String,
    pub step: String,
    pub window: String,
    pub order_id: String,
    pub client: Option<ClientAnswer>,
    pub ending: Option<Ending>,
    pub last_seen: Observed,
    /// From the restart to the ending (or to giving up).
    pub settled_after_s: f64,
    /// Everything wrong with this combination's checkout, whenever it showed: while it
    /// ran, or later in the run (the checker naming its order, or the checkout leaving its
    /// ending).
    pub violations: Vec<String>,
    /// The harness could not run this combination as planned (counts as a failure).
    pub harness_error: Option<String>,
    /// For a consumer killed between its commit and its ack: what the restarted process
    /// did with the event delivered again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivery: Option<Redelivery>,
    pub timeline: Vec<Event>,
}

impl ComboResult {
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.harness_error.is_none()
    }

    pub fn cell(&self) -> String {
        match (&self.harness_error, self.violations.len(), self.ending) {
            (Some(e), 0, Some(end)) if e.starts_with("window missed") => {
                format!("window missed ({})", end.name())
            }
            (Some(_), _, _) => "HARNESS ERROR".into(),
            (None, 0, Some(e)) => format!("ok ({})", e.name()),
            (None, n, _) => format!("{n} VIOLATION{}", if n == 1 { "" } else { "S" }),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MatrixReport {
    pub started_at: String,
    pub strategy: String,
    pub tuning: Tuning,
    pub recovery_window_s: f64,
    pub stores: String,
    pub checker_available: bool,
    /// The checker's violations before any kill (the fresh stores must be consistent).
    pub baseline_violations: Vec<String>,
    /// The checker's summary after the last combination.
    pub checker_summary: String,
    pub results: Vec<ComboResult>,
    /// The check after the last combination, once the recovery window has passed.
    pub final_check: FinalCheck,
    /// Checkouts followed from their ending to the end of the run.
    pub followed: usize,
    pub kills: u32,
    pub elapsed_s: f64,
}

/// The last check of a run: after the recovery window, nothing may be left in flight or
/// inconsistent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FinalCheck {
    /// From the last restart to the check.
    pub waited_s: f64,
    /// Every violation the checker reported (each is also filed with the combination
    /// whose order it names).
    pub violations: Vec<String>,
    /// The checker could not run.
    pub error: Option<String>,
}

impl FinalCheck {
    pub fn clean(&self) -> bool {
        self.violations.is_empty() && self.error.is_none()
    }
}

impl MatrixReport {
    /// Failed combinations, plus one if the stores were inconsistent before any kill and
    /// one if the final check was not clean.
    pub fn failures(&self) -> usize {
        self.results.iter().filter(|r| !r.ok()).count()
            + usize::from(!self.baseline_violations.is_empty())
            + usize::from(!self.final_check.clean())
    }

    /// One line per failure ([`MatrixReport::failures`] of them): empty on a pass.
    pub fn failure_list(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .results
            .iter()
            .filter(|r| !r.ok())
            .map(|r| {
                let mut why: Vec<String> = r.harness_error.iter().cloned().collect();
                why.extend(r.violations.iter().cloned());
                format!("{}: {}", r.combo, why.join("; "))
            })
            .collect();
        if !self.baseline_violations.is_empty() {
            out.push(format!(
                "before any kill: {}",
                self.baseline_violations.join("; ")
            ));
        }
        if !self.final_check.clean() {
            let mut why: Vec<String> = self.final_check.error.iter().cloned().collect();
            why.extend(self.final_check.violations.iter().cloned());
            out.push(format!("final check: {}", why.join("; ")));
        }
        out
    }

    /// The process x step table (markdown).
    pub fn table(&self) -> String {
        let steps = Step::of(&self.strategy);
        let mut s = String::from("| process |");
        for st in steps {
            s.push_str(&format!(" {} |", st.name()));
        }
        s.push_str("\n|---|");
        s.push_str(&"---|".repeat(steps.len()));
        s.push('\n');
        for p in Process::ALL {
            let row: Vec<&ComboResult> = self
                .results
                .iter()
                .filter(|r| r.process == p.name())
                .collect();
            if row.is_empty() {
                continue;
            }
            s.push_str(&format!("| {} |", p.name()));
            for st in steps {
                let cell = row
                    .iter()
                    .find(|r| r.step == st.name())
                    .map_or_else(|| "-".to_owned(), |r| r.cell());
                s.push_str(&format!(" {cell} |"));
            }
            s.push('\n');
        }
        s
    }

    /// Per-combination details: the client's answer, the ending, the violations.
    pub fn details(&self) -> String {
        let mut s = String::new();
        for r in &self.results {
            s.push_str(&format!(
                "- {}: client {}; {} after {:.1} s ({})\n",
                r.combo,
                r.client
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), ClientAnswer::summary),
                r.ending.map_or("NO ACCEPTABLE ENDING", Ending::name),
                r.settled_after_s,
                r.last_seen
            ));
            if let Some(e) = &r.harness_error {
                s.push_str(&format!("  - harness error: {e}\n"));
            }
            if let Some(d) = &r.redelivery {
                s.push_str(&format!(
                    "  - redelivered to the restarted {}: {} duplicate, {} applied\n",
                    d.consumer, d.duplicate, d.applied
                ));
            }
            for v in &r.violations {
                s.push_str(&format!("  - violation: {v}\n"));
            }
        }
        s
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Crash test ({})\n\nStarted {}; strategy `{}`; {} combinations, {} failed; {} SIGKILLs; {:.0} s.\n\n\
             Tuning: reservation TTL {} s, recovery every {} ms, gateway checkout lease {} ms (granted: {} ms), checkout budget {} ms; each checkout must end within {:.0} s of the restart.\n\n\
             Stores: {}.\n\nConsistency checker: {}.\n\n\
             Final check ({:.0} s after the last restart, {} checkouts followed to the end): {}.\n\n",
            if self.failures() == 0 { "pass" } else { "FAIL" },
            self.started_at,
            self.strategy,
            self.results.len(),
            self.failures(),
            self.kills,
            self.elapsed_s,
            self.tuning.reservation_ttl_secs,
            self.tuning.recovery_interval_ms,
            self.tuning.checkout_lease_ms,
            self.tuning.effective_lease_ms(),
            self.tuning.checkout_budget_ms,
            self.recovery_window_s,
            self.stores,
            if self.checker_available {
                format!(
                    "run after every combination; last: {}",
                    self.checker_summary
                )
            } else {
                "not run".to_owned()
            },
            self.final_check.waited_s,
            self.followed,
            if self.final_check.clean() {
                "clean".to_owned()
            } else {
                format!(
                    "FAILED: {}",
                    self.final_check
                        .error
                        .iter()
                        .chain(&self.final_check.violations)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
        );
        s.push_str(&self.table());
        s.push_str("\n## Each combination\n\n");
        s.push_str(&self.details());
        s
    }
}
