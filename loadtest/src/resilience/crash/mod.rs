//! `loadtest crash`: the crash test. For each process of the shop and each step
//! of a checkout, the existing fault injection holds a checkout inside that step, the
//! process gets SIGKILL and is started again on the same address, and then the checkout
//! must reach one of the acceptable endings (order placed / refunded and released / never
//! charged) within the recovery window, with no client retry, and the consistency checker
//! must find nothing. Every checkout is then followed to the end of the run (an ending is
//! final), the checker runs before the first kill and after every combination, and after
//! the last one the run waits out the recovery window and requires a clean final check.
//! Everything runs on loopback from the built binaries, on throw-away databases, and every
//! wait is bounded.

pub mod checker;
pub mod follow;
pub mod matrix;
pub mod plan;
pub mod probe;
pub mod report;
pub mod rig;
pub mod shop;
pub mod stores;
pub mod supervisor;
pub mod tuning;

// The crash test's entry points, and what the soak reuses of it.
pub use matrix::{Options, run_matrix};
pub use report::MatrixReport;
pub use rig::Rig;
pub use tuning::Tuning;
