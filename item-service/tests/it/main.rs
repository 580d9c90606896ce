//! item-service's integration tests, in one binary (one link instead of one per file).
//! Each test runs a real item-service on 127.0.0.1:0 over its own throw-away database on
//! the local stack's SecantusDB and Redis (`eval "$(scripts/stack up)"`); the asynchronous
//! checkout's tests also use its NATS, each on a stream of its own.

mod accounting;
mod cache;
mod checkout_events;
mod costs;
mod harness;
mod inventory;
mod items;
mod replicas;
mod reservations;
