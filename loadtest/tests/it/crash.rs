//! The short crash test (issue 11): four representative combinations of the crash matrix
//! against the real processes built from this workspace, on throw-away databases of the
//! local stack. Each checkout is held inside a step with fault injection, the process gets
//! SIGKILL and is restarted, and with no client retry the checkout must end placed,
//! refunded and released, or never charged, with nothing for the checker to report.
//! `loadtest crash` runs the full matrix.

use std::path::PathBuf;

use loadtest::crash::{self, plan, probe::Ending};

/// The directory of the workspace's binaries in this test's profile, built if needed
/// (a no-op after `scripts/test`'s `cargo build --workspace --all-targets`), so the test
/// never runs stale services.
fn built_binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/it-<hash>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps")
        .to_owned();
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .args(["-p", "gateway", "-p", "user-service", "-p", "item-service"])
        .args(["-p", "payment-service", "--bins"]);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build for the services");
    assert!(status.success(), "building the services failed");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn representative_crashes_end_placed_refunded_or_never_charged() {
    // The stack's settings must be there (a clear failure otherwise, never a skip).
    for v in [
        "USER_DATABASE_URL",
        "PAYMENT_DATABASE_URL",
        "ITEM_MONGODB_URL",
    ] {
        test_support::env(v);
    }
    let bin_dir = tokio::task::spawn_blocking(built_binaries)
        .await
        .expect("build task");
    let logs = tempfile::tempdir().expect("log dir");
    let combos = plan::parse_list(&[
        // The reproduction: the gateway dies while CommitReservation is slow,
        // after the card was charged.
        "gateway:after-charge".into(),
        // The charge's outcome unknown to everyone when payment-service dies.
        "payment-service:after-reserve".into(),
        // Committed, the order being recorded when user-service dies.
        "user-service:during-order-recording".into(),
        // The commit failed and the refund is in flight when the gateway dies.
        "gateway:during-compensation".into(),
    ])
    .expect("valid combinations");
    let report = crash::run_matrix(&crash::Options {
        bin_dir,
        log_dir: logs.path().to_owned(),
        combos,
        strategy: "orchestrated".into(),
        out_dir: None,
        keep_databases: false,
    })
    .await
    .expect("the crash run itself works");

    let failures: Vec<String> = report
        .results
        .iter()
        .filter(|r| !r.ok())
        .map(|r| {
            format!(
                "{}: {:?} {:?}\n  timeline: {:?}",
                r.combo, r.harness_error, r.violations, r.timeline
            )
        })
        .collect();
    if !failures.is_empty() {
        // Keep the process logs for inspection.
        let kept = logs.keep();
        panic!(
            "crash combinations failed (process logs: {}):\n{}\n\n{}",
            kept.display(),
            failures.join("\n"),
            report.table()
        );
    }
    let repro = report
        .results
        .iter()
        .find(|r| r.combo == "gateway:after-charge")
        .expect("the reproduction ran");
    assert!(
        matches!(
            repro.ending,
            Some(Ending::Placed | Ending::RefundedReleased)
        ),
        "the issue's reproduction (charged, then the gateway died) must end with the order placed or the payment refunded and the stock released: {:?}",
        repro.last_seen
    );
}
