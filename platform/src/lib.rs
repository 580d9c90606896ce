//! What every Shop service shares, so each service holds only its own domain:
//! tracing setup, the gRPC server bootstrap (health, reflection, timeouts, request
//! context, metrics, graceful shutdown), how a process hosts services and their background
//! tasks, the Prometheus endpoint, field errors and failure reasons, and the domain types
//! more than one service parses (money, pages, cart lines).

pub mod balance;
pub mod breaker;
pub mod card_keys;
pub mod cart;
pub mod certs;
pub mod checkout_failure;
pub mod config;
pub mod context;
pub mod endpoints;
pub mod error;
#[cfg(feature = "events")]
pub mod events;
pub mod faults;
pub mod grpc;
pub mod host;
pub mod http_server;
pub mod identity;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod money;
pub mod net;
pub mod paging;
pub mod policy;
pub mod reason;
pub mod shedding;
pub mod shutdown;
pub mod sql;
pub mod telemetry;
pub mod text;
pub mod timing;
pub mod tls;
pub mod token_cache;
pub mod transport;

pub use context::CallContext;
pub use error::{FieldError, internal_error};
pub use reason::{ErrorReason, reason_of, with_reason};
