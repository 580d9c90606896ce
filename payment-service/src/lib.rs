//! payment-service: payments, refunds and idempotency records on MySQL/MariaDB in front of
//! a card processor (the `card-gateway` crate's mock; `card_processor` is its client).

pub mod access;
mod app;
pub mod card;
pub mod card_processor;
mod chained;
pub mod checkout;
pub mod compensation;
mod config;
mod error;
pub mod fingerprint;
mod grpc;
pub mod ids;
pub mod outbox;
pub mod payment;
pub mod service;
pub mod store;

pub use app::{Application, SERVICE_NAME, Transports};
pub use config::Config;
pub use error::Error;
pub use grpc::PaymentService;
