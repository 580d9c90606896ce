//! Deadline budgets: each request gets one at the edge (checkout longer than reads); every
//! downstream call is sent with what is left as its `grpc-timeout`, so the budget shrinks
//! hop by hop and nobody waits for an answer the browser has given up on.

use std::time::Duration;

use platform::{CallContext, context::TraceContext};

#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    pub checkout: Duration,
    pub read: Duration,
    /// How long a checkout owns its durable record (GATEWAY_CHECKOUT_LEASE_MS).
    pub lease: Duration,
}

impl Budgets {
    /// A root context for a request, continuing the caller's trace if it sent one.
    pub fn context(budget: Duration, headers: &http::HeaderMap) -> CallContext {
        CallContext {
            // The edge put this request's own span in `traceparent`.
            trace: TraceContext::of_this_hop(headers),
            deadline: Some(std::time::Instant::now() + budget),
            user: None,
        }
    }

    pub fn read_ctx(&self, headers: &http::HeaderMap) -> CallContext {
        Self::context(self.read, headers)
    }

    pub fn checkout_ctx(&self, headers: &http::HeaderMap) -> CallContext {
        Self::context(self.checkout, headers)
    }

    /// A fresh budget for compensation, which must run to the end even when the
    /// request's own budget is spent; it keeps the trace and the user.
    pub fn compensation_ctx(&self, parent: &CallContext) -> CallContext {
        CallContext {
            trace: parent.trace.clone(),
            deadline: Some(std::time::Instant::now() + self.checkout),
            user: parent.user,
        }
    }
}
