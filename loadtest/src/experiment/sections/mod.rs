//! The report's sections, one module each: the runner that measures it against the stack
//! (`run`) and the pure function that turns measured runs into its tables, charts and
//! statements (`section`, re-exported here under the section's name; the smoke test feeds
//! it runs against a toy target). This module holds only what several sections share: the
//! hop counts, the strategy lists, and the guard that clears injected faults when a section
//! ends, however it ends.

pub mod availability;
pub mod cache;
pub mod calibration;
pub mod cascading_failure;
pub mod cost_per_hop;
pub mod sweep;
pub mod sync_vs_async;
pub mod tail_amplification;

use std::{any::Any, future::Future, panic::AssertUnwindSafe};

use anyhow::Context as _;
use futures::FutureExt as _;
use serde::{Deserialize, Serialize};

pub use availability::{AvailRun, section as availability};
pub use cache::{CacheRun, section as cache};
pub use calibration::section as calibration;
pub use cascading_failure::{CascadeRun, GroupStats, group, section as cascading_failure};
pub use cost_per_hop::{StrategyRun, section as cost_per_hop};
pub use sweep::SweepPoint;
pub use sync_vs_async::section as sync_vs_async;
pub use tail_amplification::{TailRun, section as tail_amplification};

use crate::{
    admin,
    experiment::report::{RUN_HEADERS, Table, run_row},
    generator::{engine::RunResult, http::Target},
};

/// gRPC calls the services served per checkout (measured from their
/// `grpc_server_requests_total` counters during a fault-free run).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Hops {
    pub user: f64,
    pub item: f64,
    pub payment: f64,
}

impl Hops {
    pub fn total(&self) -> f64 {
        self.user + self.item + self.payment
    }
}

/// The three checkout strategies the gateway offers.
pub const STRATEGIES: [&str; 3] = ["orchestrated", "parallel", "chained"];

/// Hop counts per strategy, as section 1 measured them (sections 2 and 3 predict from them).
pub type HopsByStrategy = [(String, Hops)];

pub fn run_table(caption: &str, runs: &[(String, RunResult)]) -> Table {
    let mut t = Table::new(caption, &RUN_HEADERS);
    for (l, r) in runs {
        t.row(run_row(l, r));
    }
    t
}

/// Every place a section can inject faults: the gRPC servers' `FaultAdmin` and the card
/// gateway's admin endpoints (faults and hangs).
#[derive(Debug, Clone, Default)]
pub struct FaultTargets {
    /// gRPC base URLs (`http://127.0.0.1:PORT`).
    pub grpc: Vec<String>,
    /// The card gateway.
    pub card: Option<Target>,
}

impl FaultTargets {
    /// Clears every rule everywhere. Tries every target even when one fails, and reports
    /// the failures together.
    pub async fn clear(&self) -> anyhow::Result<()> {
        let mut failed = Vec::new();
        for url in &self.grpc {
            if let Err(e) = admin::set_grpc_faults(url, &[]).await {
                failed.push(format!("{e:#}"));
            }
        }
        if let Some(card) = &self.card {
            for path in ["/admin/faults", "/admin/hangs"] {
                if let Err(e) = admin::set_http_faults(card, path, None, &[]).await {
                    failed.push(format!("{e:#}"));
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("clearing injected faults: {}", failed.join("; "))
        }
    }
}

/// Clears the faults when dropped while armed: the path taken when the section's future is
/// dropped before it finishes (cancelled, or its task aborted). `Drop` cannot wait, so the
/// reset is spawned on the runtime; [`with_faults_cleared`] disarms it and waits for its own
/// reset on every other path.
struct ClearOnDrop(Option<FaultTargets>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        if let Some(targets) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                if let Err(e) = targets.clear().await {
                    eprintln!("[loadtest] {e:#}");
                }
            });
        }
    }
}

/// Runs one section and clears every injected fault afterwards, whether it succeeded,
/// failed or panicked (the panic resumes after the reset), so a section that dies halfway
/// cannot leave a slow or failing service behind for the next one. If the section
/// succeeded but the reset failed, the result is that error: later sections would measure
/// a faulty stack.
pub async fn with_faults_cleared<T>(
    targets: &FaultTargets,
    section: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let mut on_drop = ClearOnDrop(Some(targets.clone()));
    let outcome: Result<anyhow::Result<T>, Box<dyn Any + Send>> =
        AssertUnwindSafe(section).catch_unwind().await;
    on_drop.0 = None;
    let cleared = targets.clear().await;
    match outcome {
        Err(panic) => std::panic::resume_unwind(panic),
        Ok(Err(e)) => {
            if let Err(c) = cleared {
                eprintln!("[loadtest] after a failed section: {c:#}");
            }
            Err(e)
        }
        Ok(Ok(v)) => cleared
            .context("the section finished, but its faults could not be cleared")
            .map(|()| v),
    }
}
