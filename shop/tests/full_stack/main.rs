//! The whole shop against the real services and databases, reached over HTTP like a
//! browser: the distributed stack (every service on its own listener) and the monolith.
//! One test binary, so the services are linked once.

mod api;
mod async_checkout;
mod attacker;
mod checkout;
mod common;
mod endings;
mod lab;
mod monolith;
mod recovery;
mod replicas;
mod resilience;
mod throttle;
mod timing;
mod tls;
