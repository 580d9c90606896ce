//! The boundary to the consistency checker of issue 11 (`loadtest check`, module
//! `loadtest::check`, written on branch `checker`): the crash test and the soak call
//! [`run_checker`] and nothing else, so swapping the stub for the real checker is one
//! function body.

use serde::Serialize;

use super::stores::Stores;

/// What the checker said.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// False while this is the stub (no checker on this branch yet): the run's verdict then
    /// rests on the per-checkout endings alone.
    pub available: bool,
    pub violations: Vec<String>,
}

/// STUB until `loadtest::check` is merged: checks nothing and says so.
pub async fn run_checker(_stores: &Stores) -> anyhow::Result<CheckResult> {
    Ok(CheckResult {
        available: false,
        violations: Vec::new(),
    })
}
