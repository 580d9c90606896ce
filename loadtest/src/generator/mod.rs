//! The load generator, whole: what a reader who wants only load generation needs.
//!
//! - [`engine`]: the open and closed models and what a run measured;
//! - [`pacer`]: open-model arrivals dispatched on time;
//! - [`scenario`]: what the virtual users do (browse, checkout, mixes, gRPC workloads);
//! - [`http`]: the lean HTTP/1.1 client the scenarios call through;
//! - [`stats`]: the histograms and error counts a run records;
//! - [`completion`]: time to a completed order, for asynchronous checkouts;
//! - [`waterfall`]: where a checkout's time goes, from the `Server-Timing` header.

pub mod completion;
pub mod engine;
pub mod http;
pub mod pacer;
pub mod scenario;
pub mod stats;
pub mod waterfall;
