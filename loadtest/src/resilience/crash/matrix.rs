//! The matrix driver: every chosen combination in one stack, the checker after each, a final
//! check once the recovery window has passed, and the report written.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    Tuning,
    plan::{self, Combo, window},
    report::{ComboResult, FinalCheck, MatrixReport},
    rig::{Rig, events_env},
    shop::ClientAnswer,
    supervisor::now_rfc3339,
};

#[derive(Debug, Clone)]
pub struct Options {
    pub bin_dir: PathBuf,
    /// Process logs (appended across restarts).
    pub log_dir: PathBuf,
    pub combos: Vec<Combo>,
    /// orchestrated | parallel | chained | async.
    pub strategy: String,
    /// Write crash.json and crash.md here.
    pub out_dir: Option<PathBuf>,
    /// Keep the throw-away SQL databases (their names are printed) instead of dropping them.
    pub keep_databases: bool,
    /// Settings every process of the shop gets on top of the run's (e.g. a test-only
    /// switch that breaks the recovery on purpose).
    pub extra_env: Vec<(String, String)>,
}

/// The whole matrix (or the chosen combinations), in one stack; prints as it goes.
pub async fn run_matrix(opts: &Options) -> anyhow::Result<MatrixReport> {
    let started = Instant::now();
    let started_at = now_rfc3339();
    let tuning = Tuning::crash(&opts.strategy);
    eprintln!(
        "[crash] starting the stack from {} (logs in {})",
        opts.bin_dir.display(),
        opts.log_dir.display()
    );
    let services_env = if opts.strategy == plan::ASYNC {
        events_env()?
    } else {
        Vec::new()
    };
    let mut rig = Rig::start_with_services_env(
        &opts.bin_dir,
        &opts.log_dir,
        tuning.clone(),
        opts.extra_env.clone(),
        services_env,
    )
    .await
    .context("starting the crash-test stack")?;
    eprintln!("[crash] stores: {}", rig.stores.describe());
    let mut results: Vec<ComboResult> = Vec::new();
    // Before any kill: the starting state must already be consistent.
    let baseline = match rig.check().await {
        Ok(b) => b,
        Err(e) => {
            rig.shutdown(true).await;
            return Err(e.context("the consistency checker cannot read the stores"));
        }
    };
    for v in &baseline.violations {
        eprintln!("[crash] before any kill: {v}");
    }
    for (i, c) in opts.combos.iter().enumerate() {
        eprintln!(
            "[crash] {}/{} {c}: {}",
            i + 1,
            opts.combos.len(),
            window(*c).what
        );
        let r = rig.run_combo(i, *c, &opts.strategy).await;
        let at = results.len();
        results.push(r);
        // The checker reads every store: each violation goes to the combination whose
        // order it names (this one's if none), however late it shows.
        match rig.check().await {
            Ok(check) => attribute(&mut results, at, check.violations, "checker"),
            Err(e) => {
                results[at]
                    .harness_error
                    .get_or_insert(format!("the checker failed: {e:#}"));
            }
        }
        attribute_followed(&mut results, at, rig.follow.take_found());
        let r = &results[at];
        eprintln!(
            "[crash]   -> {} (client {}; {:.1} s after the restart)",
            r.cell(),
            r.client
                .as_ref()
                .map_or_else(|| "-".to_owned(), ClientAnswer::summary),
            r.settled_after_s
        );
        for v in r.violations.iter().chain(&r.harness_error) {
            eprintln!("[crash]      {v}");
        }
        for e in results[..at].iter().filter(|e| !e.ok()) {
            eprintln!("[crash]      (still failing: {})", e.combo);
        }
    }
    let final_check = final_check(&mut rig, &mut results).await;
    let report = MatrixReport {
        started_at,
        strategy: opts.strategy.clone(),
        recovery_window_s: tuning.recovery_window().as_secs_f64(),
        tuning,
        stores: rig.stores.describe(),
        checker_available: baseline.available,
        baseline_violations: baseline.violations,
        checker_summary: final_check.1,
        results,
        final_check: final_check.0,
        followed: rig.follow.len(),
        kills: rig.sup.kills,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let keep = opts.keep_databases || report.failures() > 0;
    if keep {
        eprintln!(
            "[crash] keeping the databases for inspection: {}",
            rig.stores.describe()
        );
    }
    rig.shutdown(keep).await;
    if let Some(dir) = &opts.out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(
            dir.join("crash.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        std::fs::write(dir.join("crash.md"), report.markdown())?;
        eprintln!(
            "[crash] wrote {0}/crash.md and {0}/crash.json",
            dir.display()
        );
    }
    Ok(report)
}

/// Files each of `violations` with the combination whose order it names, or with the one at
/// `current` if it names none; a violation already filed there is not filed again.
fn attribute(results: &mut [ComboResult], current: usize, violations: Vec<String>, from: &str) {
    for v in violations {
        let owner = results
            .iter()
            .position(|r| !r.order_id.is_empty() && v.contains(&r.order_id))
            .unwrap_or(current);
        let line = format!("{from}: {v}");
        if !results[owner].violations.contains(&line) {
            if owner != current {
                eprintln!("[crash]      late, for {}: {line}", results[owner].combo);
            }
            results[owner].violations.push(line);
        }
    }
}

/// Files what following the checkouts found with the combination that started each.
fn attribute_followed(results: &mut [ComboResult], current: usize, found: Vec<(String, String)>) {
    for (combo, v) in found {
        let owner = results
            .iter()
            .position(|r| r.combo == combo)
            .unwrap_or(current);
        if owner != current {
            eprintln!("[crash]      late, for {}: {v}", results[owner].combo);
        }
        results[owner].violations.push(v);
    }
}

/// After the last combination: waits out the recovery window from the last restart while
/// following every checkout, then runs the checker once more; every violation is filed
/// with its combination and the check must be clean. Returns the check and the checker's
/// summary.
async fn final_check(rig: &mut Rig, results: &mut [ComboResult]) -> (FinalCheck, String) {
    let window = rig.tuning.recovery_window();
    let since = rig.last_restart.unwrap_or_else(Instant::now);
    eprintln!(
        "[crash] waiting out the recovery window ({:.0} s after the last restart), following {} checkouts",
        window.as_secs_f64(),
        rig.follow.len()
    );
    loop {
        rig.follow.look(&rig.probe).await;
        if since.elapsed() >= window {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1).min(window.saturating_sub(since.elapsed())))
            .await;
    }
    rig.follow.unreadable_at_last_look();
    let last = results.len().saturating_sub(1);
    let found = rig.follow.take_found();
    let mut check = FinalCheck {
        waited_s: since.elapsed().as_secs_f64(),
        ..FinalCheck::default()
    };
    let summary = match rig.check().await {
        Ok(c) => {
            check.violations = c.violations.clone();
            if !results.is_empty() {
                attribute(results, last, c.violations, "final checker");
            }
            c.summary
        }
        Err(e) => {
            check.error = Some(format!("the checker failed: {e:#}"));
            format!("the checker failed: {e:#}")
        }
    };
    // A followed checkout that left its ending is the final check's failure too.
    check
        .violations
        .extend(found.iter().map(|(combo, v)| format!("{combo}: {v}")));
    if !results.is_empty() {
        attribute_followed(results, last, found);
    }
    for v in check.error.iter().chain(&check.violations) {
        eprintln!("[crash] final check: {v}");
    }
    (check, summary)
}
