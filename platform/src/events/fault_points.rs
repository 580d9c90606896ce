//! Fault injection for the event flow, on the service's own fault rules (the same
//! [`FaultInjector`] and `shop.admin.v1.FaultAdmin` API as its gRPC faults, so the same
//! `SHOP_FAULT_ADMIN=on` and operator token): a rule's `method` names a point of a consumer
//! or of the relay instead of a gRPC method. Off unless a rule names the point (one relaxed
//! atomic load per point otherwise).
//!
//! Points (the keys of [`consumer_key`] and [`relay_key`]):
//! - `event:<service>:<kind>:before-handling`: a delivered event, before its handler runs;
//!   an injected error is a transient failure (delivered again after the retry delay).
//! - `event:<service>:<kind>:before-ack`: the handler's write committed, the event not yet
//!   acknowledged; an injected error loses the acknowledgement (delivered again after the
//!   ack wait, and the handler must find it a duplicate).
//! - `relay:<service>:before-publish`: events claimed, not published; an injected error
//!   fails the round (the claims run out and the events are published later).
//! - `relay:<service>:before-mark`: events published, not marked published; an injected
//!   error leaves them unmarked (published again after the claim lease, same ids).
//!
//! Only a rule naming the point's key applies (a "*" rule is for calls). A rule's latency
//! delays the point; its error rate fails it. A *hang* is a rule on the
//! point's key with `:hang` appended, whose error rate is the probability of hanging (the
//! card gateway's convention): the point then waits as long as a hang rule for it is set,
//! so clearing the rules (or killing the process) ends it.

use std::time::Duration;

use crate::faults::{FaultInjector, Verdict};

/// Where in a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerPoint {
    BeforeHandling,
    BeforeAck,
}

/// Where in a relay round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayPoint {
    BeforePublish,
    BeforeMark,
}

impl ConsumerPoint {
    pub fn name(self) -> &'static str {
        match self {
            Self::BeforeHandling => "before-handling",
            Self::BeforeAck => "before-ack",
        }
    }
}

impl RelayPoint {
    pub fn name(self) -> &'static str {
        match self {
            Self::BeforePublish => "before-publish",
            Self::BeforeMark => "before-mark",
        }
    }
}

/// The rule key of `service`'s consumer of `kind` at `point`.
pub fn consumer_key(service: &str, kind: &str, point: ConsumerPoint) -> String {
    format!("event:{service}:{kind}:{}", point.name())
}

/// The rule key of `service`'s relay at `point`.
pub fn relay_key(service: &str, point: RelayPoint) -> String {
    format!("relay:{service}:{}", point.name())
}

/// The key of a hang at the point `key`.
pub fn hang_key(key: &str) -> String {
    format!("{key}:hang")
}

/// How often a hanging point looks whether its rule is still set.
const HANG_POLL: Duration = Duration::from_millis(50);

/// Applies the rules at the point `key`: a hang first (while its rule stays), then the
/// point's latency and error. [`Verdict::Fail`] means the point fails.
pub async fn at(faults: &FaultInjector, key: &str) -> Verdict {
    if !faults.is_active() {
        return Verdict::Proceed;
    }
    let hang = hang_key(key);
    if faults.inject_named(&hang).await == Verdict::Fail {
        metrics::counter!("events_fault_hangs_total", "point" => key.to_owned()).increment(1);
        tracing::warn!(point = key, "injected hang: held while its rule is set");
        while faults.names(&hang) {
            tokio::time::sleep(HANG_POLL).await;
        }
        tracing::info!(point = key, "injected hang released");
    }
    faults.inject_named(key).await
}
