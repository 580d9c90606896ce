//! The consistency checker ([`crate::resilience::check`]) as the crash test and the soak
//! run it: on this run's own stores, with the run's recovery window.

use std::time::Duration;

use serde::Serialize;

use super::stores::Stores;
use crate::resilience::check;

/// What the checker said.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// False if no checker ran (kept so reports stay comparable with runs made before
    /// the checker existed).
    pub available: bool,
    pub violations: Vec<String>,
    /// What was checked (the checker's one-line summary).
    pub summary: String,
}

/// Reads every store of this run read-only and returns the violations, one line each.
pub async fn run_checker(
    stores: &Stores,
    recovery_window: Duration,
) -> anyhow::Result<CheckResult> {
    let urls = check::Urls {
        user_database_url: stores.user_db_url.clone(),
        payment_database_url: stores.payment_db_url.clone(),
        item_mongodb_url: stores.mongo_url.clone(),
        item_mongodb_database: stores.mongo_db.clone(),
    };
    let report = check::check(&urls, &check::Options { recovery_window }).await?;
    Ok(CheckResult {
        available: true,
        violations: report.violations.iter().map(ToString::to_string).collect(),
        summary: report.summary(),
    })
}
