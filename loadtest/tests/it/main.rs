//! loadtest's integration tests, one binary so the engine and its dependencies link once:
//! the generator and report end to end against a toy target, and the fault guard against
//! the real fault endpoints, the short crash test and the trace test against the real
//! processes, and Prometheus scraping them (the dashboard's queries against the real
//! metrics).

mod check;
mod crash;
mod fault_guard;
mod observe;
mod report_smoke;
mod sync_vs_async;
mod trace;

/// The stack's store URLs must be set: a clear failure otherwise, never a skip.
fn require_stores() {
    for v in [
        "USER_DATABASE_URL",
        "PAYMENT_DATABASE_URL",
        "ITEM_MONGODB_URL",
    ] {
        test_support::env(v);
    }
}
