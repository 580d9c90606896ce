//! payment-service's integration tests, in one binary (one link instead of one per file).
//! Each test runs a real payment-service on 127.0.0.1:0 with its own mock card gateway and
//! throw-away MariaDB database on the local stack (`eval "$(scripts/stack up)"`);
//! ChainedCharge tests add a real item-service.

mod cancelled;
mod chained;
mod checkout;
mod gateway;
mod harness;
mod logs;
mod orders;
mod payments;
mod replicas;
mod tokens;
mod trust;
