//! user-service's integration tests, in one binary (one link instead of one per file).
//! Each test runs a real user-service on 127.0.0.1:0 over its own throw-away PostgreSQL
//! database of the local stack (`eval "$(scripts/stack up)"`).

mod accounts;
mod admin;
mod async_checkout;
mod checkout_record;
mod grpc_surface;
mod harness;
mod hashing;
mod orders;
