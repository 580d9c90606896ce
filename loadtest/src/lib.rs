//! Shop's load generator: open (constant arrival rate, coordinated omission corrected) and
//! closed (N virtual users) models, HdrHistograms per endpoint and outcome, and the
//! sync-chain experiment that writes `report/` (Markdown + JSON + SVG charts).

pub mod admin;
pub mod chaos;
pub mod charts;
pub mod check;
pub mod completion;
pub mod cpu;
pub mod crash;
pub mod deployment;
pub mod drift;
pub mod engine;
pub mod experiment;
pub mod http;
pub mod identity;
pub mod kill_windows;
pub mod mongo_server;
pub mod pacer;
pub mod process_cpu;
pub mod report;
pub mod scenario;
pub mod sections;
pub mod stack;
pub mod stats;
pub mod waterfall;
pub mod wrk;
