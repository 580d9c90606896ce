//! loadtest's integration tests, one binary so the engine and its dependencies link once:
//! the generator and report end to end against a toy target, and the fault guard against
//! the real fault endpoints, and the short crash test and the trace test against the real
//! processes.

mod check;
mod crash;
mod fault_guard;
mod report_smoke;
mod trace;
