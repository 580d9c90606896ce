//! Which failed calls say a dependency is unhealthy (and count against its circuit
//! breaker), as opposed to load being shed: one classification for every breaker in the
//! shop, so an overloaded service that refuses work (or a caller whose own budget ran
//! out) never opens a circuit that would then refuse the calls the service could answer.
//!
//! - RESOURCE_EXHAUSTED is shedding: the service is alive and protecting itself.
//! - A refusal marked [`SHED`] (a bulkhead or an open circuit, ours or a hop's) is shedding.
//! - DEADLINE_EXCEEDED / CANCELLED count only when the call was sent with ample time
//!   ([`Attempt::ample`]): a call sent with the budget nearly spent timed out because of
//!   its caller, not its callee.
//! - UNAVAILABLE and UNKNOWN (failure to reach, or a service that cannot serve) count.
//!
//! Decisions are taken on codes and metadata only, never on message text.

use std::time::Duration;

use tonic::{Code, Status};

/// Metadata marker on a refusal made to shed load (the call was never served): callers
/// must not count it against the refusing service's health.
pub const SHED: &str = "x-shop-shed";

/// Metadata: how long (ms) the refuser suggests waiting before trying again.
pub const RETRY_AFTER_MS: &str = "x-shop-retry-after-ms";

/// Marks `status` as shed, with a suggested wait.
pub fn mark_shed(mut status: Status, retry_after: Duration) -> Status {
    let md = status.metadata_mut();
    md.insert(SHED, tonic::metadata::MetadataValue::from_static("1"));
    let ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
    md.insert(RETRY_AFTER_MS, tonic::metadata::MetadataValue::from(ms));
    status
}

/// Whether `status` is a marked refusal to shed load.
pub fn is_shed(status: &Status) -> bool {
    status.metadata().contains_key(SHED)
}

/// The wait a refusal suggested, if any.
pub fn retry_after(status: &Status) -> Option<Duration> {
    status
        .metadata()
        .get(RETRY_AFTER_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// What is known about how one attempt was made.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// What was left of the caller's deadline when the call was sent (None: no deadline).
    pub budget_at_send: Option<Duration>,
    /// A callee given at least this long must answer in time: a timeout with less is the
    /// caller's budget running out, not the callee failing.
    pub ample: Duration,
    /// The answer came from the callee (not from the transport failing to reach it).
    pub reached: bool,
    /// The callee relays further hops (a chain entry): an UNAVAILABLE it answers with
    /// speaks for those hops, not for itself.
    pub relays: bool,
}

/// How a failed call is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symptom {
    /// An answer (business error or success): says nothing against the service.
    Answer,
    /// Load was shed (by the callee, a hop behind it, or the caller's own budget).
    Shed,
    /// The service could not be reached or could not serve.
    Unhealthy,
}

impl Symptom {
    pub fn counts_against(self) -> bool {
        self == Self::Unhealthy
    }
}

/// Classifies a gRPC outcome (`None` = success).
pub fn classify(status: Option<&Status>, attempt: &Attempt) -> Symptom {
    let Some(status) = status else {
        return Symptom::Answer;
    };
    if is_shed(status) {
        return Symptom::Shed;
    }
    classify_code(status.code(), attempt)
}

/// [`classify`] on the code alone (for callers that keep no status, or an HTTP dependency
/// mapped to codes).
pub fn classify_code(code: Code, attempt: &Attempt) -> Symptom {
    match code {
        Code::ResourceExhausted => Symptom::Shed,
        // tonic's client answers CANCELLED when its own timer (the grpc-timeout we set)
        // fires first: a timeout like DEADLINE_EXCEEDED.
        Code::DeadlineExceeded | Code::Cancelled => {
            if attempt
                .budget_at_send
                .is_none_or(|left| left >= attempt.ample)
            {
                Symptom::Unhealthy
            } else {
                Symptom::Shed
            }
        }
        Code::Unavailable | Code::Unknown if attempt.relays && attempt.reached => Symptom::Answer,
        Code::Unavailable | Code::Unknown => Symptom::Unhealthy,
        _ => Symptom::Answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(left_ms: Option<u64>) -> Attempt {
        Attempt {
            budget_at_send: left_ms.map(Duration::from_millis),
            ample: Duration::from_millis(200),
            reached: true,
            relays: false,
        }
    }

    #[test]
    fn shedding_never_counts() {
        let a = attempt(Some(1000));
        assert_eq!(
            classify(Some(&Status::resource_exhausted("busy")), &a),
            Symptom::Shed
        );
        let marked = mark_shed(Status::unavailable("full"), Duration::from_millis(1500));
        assert_eq!(classify(Some(&marked), &a), Symptom::Shed);
        assert_eq!(retry_after(&marked), Some(Duration::from_millis(1500)));
        assert_eq!(
            classify(Some(&Status::unavailable("down")), &a),
            Symptom::Unhealthy
        );
        assert_eq!(classify(None, &a), Symptom::Answer);
        assert_eq!(classify(Some(&Status::not_found("x")), &a), Symptom::Answer);
    }

    #[test]
    fn a_timeout_counts_only_when_the_callee_had_ample_time() {
        for code in [Code::DeadlineExceeded, Code::Cancelled] {
            assert_eq!(classify_code(code, &attempt(Some(50))), Symptom::Shed);
            assert_eq!(classify_code(code, &attempt(Some(200))), Symptom::Unhealthy);
            assert_eq!(classify_code(code, &attempt(None)), Symptom::Unhealthy);
        }
    }

    #[test]
    fn a_relaying_hop_answers_for_the_hops_behind_it() {
        let mut a = attempt(Some(1000));
        a.relays = true;
        assert_eq!(classify_code(Code::Unavailable, &a), Symptom::Answer);
        a.reached = false;
        assert_eq!(classify_code(Code::Unavailable, &a), Symptom::Unhealthy);
    }
}
