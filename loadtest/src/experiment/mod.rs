//! The experiment and its report: [`runner`] starts the stack ([`deployment`]) and runs the
//! report's [`sections`] with the load generator, each with what [`ctx`] gives it; [`report`]
//! and [`charts`] write `report/`. Also `loadtest drift` ([`drift`]), and the CPU accounting
//! the sections report ([`cpu`], [`process_cpu`]) with the `wrk` calibration ([`wrk`]).

pub mod charts;
pub mod cpu;
pub mod ctx;
pub mod deployment;
pub mod drift;
pub mod process_cpu;
pub mod report;
pub mod runner;
pub mod sections;
pub mod wrk;

// `loadtest experiment`'s entry point.
pub use runner::{Options, run};
