//! How a checkout is driven: the four strategies the shop compares (docs/architecture.md).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The gateway calls each service in turn (saga orchestrator).
    #[default]
    Orchestrated,
    /// As orchestrated, with the user lookup and the pricing run concurrently.
    Parallel,
    /// gateway -> user-service -> payment-service -> item-service and back.
    Chained,
    /// Accepted at once (202, order pending), completed through the event stream.
    Async,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Self::Orchestrated => "orchestrated",
            Self::Parallel => "parallel",
            Self::Chained => "chained",
            Self::Async => "async",
        }
    }
}
