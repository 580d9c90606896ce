//! What the shop must survive, and the checks that say it did:
//!
//! - [`crash`]: `loadtest crash`, a SIGKILL at each step of a checkout in each process;
//! - [`chaos`]: `loadtest soak`, random SIGKILLs under load ([`kill_windows`] splits its ok
//!   rates around the kills);
//! - [`check`]: `loadtest check`, the consistency checker both run.

pub mod chaos;
pub mod check;
pub mod crash;
pub mod kill_windows;
