//! Shop's load-test tool. Three parts, one top-level module each, over a few shared helpers:
//!
//! - [`generator`]: the load generator alone: open (constant arrival rate, coordinated
//!   omission corrected) and closed (N virtual users) models, the scenarios, HdrHistograms
//!   per endpoint and outcome.
//! - [`experiment`]: the experiment that measures the stack with the generator and writes
//!   `report/` (Markdown + JSON + SVG charts), one module per report section; and `drift`.
//! - [`resilience`]: what the shop must survive: the crash test, the chaos soak and the
//!   consistency checker both run.
//!
//! Shared: the stack started from the built binaries ([`stack`], [`mongo_server`]), who the
//! tool is to the services ([`identity`]), and setting up and steering the target
//! ([`admin`]).

pub mod admin;
pub mod experiment;
pub mod generator;
pub mod identity;
pub mod mongo_server;
pub mod resilience;
pub mod stack;
