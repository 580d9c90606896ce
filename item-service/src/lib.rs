//! item-service: the Shop catalog, stock and stock reservations on MongoDB, with a Redis
//! cache in front of item reads.
//!
//! Library shape: [`Application`] is the standalone server; [`ItemService`] is the service
//! itself, which the `shop` monolith hosts in-process; [`seed_catalog`] loads the demo
//! catalog.

pub mod access;
mod app;
pub mod cache;
pub mod checkout;
pub mod config;
pub mod cursor;
pub mod error;
pub mod grpc;
pub mod input;
pub mod inventory;
pub mod migration;
pub mod outbox;
pub mod reservations;
pub mod seed;
pub mod store;

pub use app::{Application, SERVICE_NAME};
pub use config::{CacheMode, Config};
pub use error::Error;
pub use grpc::ItemService;
pub use seed::{SeedReport, seed_catalog};
