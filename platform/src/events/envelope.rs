//! One event as it travels: an id that makes it unique forever, what happened, to which
//! checkout, and the data. JSON on the wire so `nats stream view` shows it to a human.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique per event, chosen by the writer when it stores the event in its outbox: the
    /// broker's de-duplication key and the consumers' "already applied" key.
    pub id: Uuid,
    /// What happened, dotted lower case ("checkout.requested"); the subject's suffix.
    pub kind: String,
    /// The aggregate the event belongs to (the order id); every event of one checkout has it.
    pub key: String,
    /// When the writer committed it (milliseconds since the Unix epoch): lag is measured from
    /// here.
    pub occurred_at_ms: i64,
    /// The W3C trace context of the request that caused it, so a trace continues across the
    /// stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub data: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("event kind {0:?} is not dotted lower-case words")]
    Kind(String),
    #[error("not an event envelope")]
    Decode(#[source] serde_json::Error),
}

impl Envelope {
    /// A new event with a fresh time-ordered id, stamped now.
    pub fn new(
        kind: &str,
        key: impl Into<String>,
        data: serde_json::Value,
    ) -> Result<Self, EnvelopeError> {
        check_kind(kind)?;
        Ok(Self {
            id: Uuid::now_v7(),
            kind: kind.to_owned(),
            key: key.into(),
            occurred_at_ms: now_ms(),
            traceparent: None,
            data,
        })
    }

    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising a struct of strings, numbers and a JSON value cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let envelope: Self = serde_json::from_slice(bytes).map_err(EnvelopeError::Decode)?;
        check_kind(&envelope.kind)?;
        Ok(envelope)
    }

    /// Milliseconds from when the event was written until now (0 if the clocks disagree).
    pub fn age_ms(&self) -> u64 {
        u64::try_from(now_ms().saturating_sub(self.occurred_at_ms)).unwrap_or(0)
    }
}

/// Subjects are built from kinds, so a kind must be a valid, wildcard-free subject suffix.
fn check_kind(kind: &str) -> Result<(), EnvelopeError> {
    let word = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    if kind.len() <= 64 && kind.split('.').all(word) {
        Ok(())
    } else {
        Err(EnvelopeError::Kind(kind.to_owned()))
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_its_id() {
        let e = Envelope::new("checkout.requested", "o-1", serde_json::json!({"a": 1}))
            .unwrap()
            .with_traceparent(Some("00-abc-def-01".into()));
        let back = Envelope::decode(&e.encode()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn refuses_kinds_that_would_be_wildcards_or_empty_tokens() {
        for bad in ["", "Checkout", "a.>", "a.*", "a..b", "a b", ".a"] {
            assert!(
                Envelope::new(bad, "k", serde_json::Value::Null).is_err(),
                "{bad:?}"
            );
        }
        let forged = br#"{"id":"0192f000-0000-7000-8000-000000000000","kind":"x.>","key":"k","occurred_at_ms":0,"data":null}"#;
        assert!(matches!(
            Envelope::decode(forged),
            Err(EnvelopeError::Kind(_))
        ));
        assert!(matches!(
            Envelope::decode(b"not json"),
            Err(EnvelopeError::Decode(_))
        ));
    }
}
