//! user-service: accounts, credentials, sessions (JWT) and order history on PostgreSQL.
//! The gRPC implementation is a library type, so the `shop` monolith can host it too.

pub mod access;
pub mod admin;
mod app;
pub mod async_checkout;
pub mod broken_recovery;
mod chained;
pub mod checkout_record;
pub mod config;
pub mod domain;
mod error;
pub mod orders;
mod outbox;
pub mod password;
pub mod recovery;
mod service;
mod store;
pub mod token;

pub use app::{Application, SERVICE_NAME, UserService};
pub use config::Config;
pub use service::Downstreams;
