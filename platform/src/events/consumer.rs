//! Durable consumers: each service reads the kinds that concern it, applies them, and
//! acknowledges only after its own write committed.
//!
//! Delivery is at least once: a message whose acknowledgement was lost (the process died
//! after its commit) comes back, so handlers must recognise an event they already applied
//! (by its id, recorded in the same transaction as their write) and answer
//! [`Outcome::Duplicate`]. A handler that fails transiently gets the message again after a
//! delay; after `max_attempts`, or at once when the event can never apply, the message is
//! parked (kept in the parked stream with the reason) and the consumer moves on.

use std::{future::Future, time::Duration};

use async_nats::{
    HeaderMap,
    jetstream::{
        AckKind, Message,
        consumer::{PullConsumer, pull},
    },
};
use futures::StreamExt;

use super::{
    broker::{Broker, EventsError},
    envelope::Envelope,
    fault_points::{self, ConsumerPoint},
};
use crate::faults::Verdict;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a handler did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its effect is now committed.
    Applied,
    /// Its id was already recorded: nothing done again.
    Duplicate,
    /// Not for this consumer's state (e.g. an order it has no part in): acknowledged.
    Ignored,
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Might work later (a store or service unreachable): delivered again.
    #[error("transient")]
    Retry(#[source] BoxError),
    /// Can never apply (malformed data, a state that rules it out): parked at once.
    #[error("rejected: {0}")]
    Reject(String),
}

/// One durable consumer: a name that survives restarts (replicas share it and split the
/// messages) and the one kind it reads.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// `item-service.checkout-requested`: unique per (service, kind).
    pub durable: String,
    pub kind: String,
    /// Deliveries before a failing message is parked.
    pub max_attempts: i64,
    /// Delay before a failed message is delivered again.
    pub retry_delay: Duration,
    /// Unacknowledged this long (the handler's process died), the message is delivered again.
    pub ack_wait: Duration,
}

impl ConsumerSpec {
    /// The service half of the durable name (`item-service` of
    /// `item-service-checkout-requested`).
    pub fn service(&self) -> &str {
        self.durable
            .strip_suffix(&format!("-{}", self.kind.replace('.', "-")))
            .unwrap_or(&self.durable)
    }

    /// The fault rule key of this consumer at `point` ([`fault_points`]).
    pub fn fault_key(&self, point: ConsumerPoint) -> String {
        fault_points::consumer_key(self.service(), &self.kind, point)
    }

    pub fn new(service: &str, kind: &str) -> Self {
        Self {
            durable: format!("{service}-{}", kind.replace('.', "-")),
            kind: kind.to_owned(),
            // About five minutes of transient failure (a store or service down, an event
            // that overtook the one it depends on) before a message is parked: parking is
            // for poison, not for outages.
            max_attempts: 300,
            retry_delay: Duration::from_secs(1),
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// Header names of a parked message (the original body is kept as it was).
pub const PARKED_REASON: &str = "Shop-Parked-Reason";
pub const PARKED_ATTEMPTS: &str = "Shop-Parked-Attempts";

/// Creates the durable consumer if it is missing; changes nothing when it exists.
pub async fn ensure(broker: &Broker, spec: &ConsumerSpec) -> Result<PullConsumer, EventsError> {
    let failed = |source: BoxError| EventsError::Consumer {
        consumer: spec.durable.clone(),
        source,
    };
    broker.ensure_streams().await?;
    let stream = broker
        .jetstream()
        .get_stream(&broker.config().stream)
        .await
        .map_err(|e| failed(Box::new(e)))?;
    stream
        .get_or_create_consumer(
            &spec.durable,
            pull::Config {
                durable_name: Some(spec.durable.clone()),
                filter_subject: broker.config().subject(&spec.kind),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                ack_wait: spec.ack_wait,
                // Parking is decided here (with a reason); the server must not drop first.
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| failed(Box::new(e)))
}

/// Consumes `spec.kind` with `handler` until `shutdown` resolves; reconnects after errors.
pub async fn run<H, Fut>(
    broker: Broker,
    spec: ConsumerSpec,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Envelope) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Outcome, HandlerError>> + Send,
{
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let session = consume(&broker, &spec, &handler);
        tokio::select! {
            () = &mut shutdown => return,
            result = session => {
                if let Err(e) = result {
                    tracing::warn!(
                        consumer = %spec.durable,
                        error = %crate::telemetry::chain(&e),
                        "event consumer stopped; starting again"
                    );
                }
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn consume<H, Fut>(
    broker: &Broker,
    spec: &ConsumerSpec,
    handler: &H,
) -> Result<(), EventsError>
where
    H: Fn(Envelope) -> Fut,
    Fut: Future<Output = Result<Outcome, HandlerError>>,
{
    let failed = |source: BoxError| EventsError::Consumer {
        consumer: spec.durable.clone(),
        source,
    };
    let consumer = ensure(broker, spec).await?;
    let mut messages = consumer.messages().await.map_err(|e| failed(Box::new(e)))?;
    while let Some(next) = messages.next().await {
        let message = next.map_err(|e| failed(Box::new(e)))?;
        if let Some(pending) = message.info().ok().map(|i| i.pending) {
            metrics::gauge!("events_consumer_pending", "consumer" => spec.durable.clone())
                .set(pending as f64);
        }
        handle_one(broker, spec, handler, message).await;
    }
    Ok(())
}

async fn handle_one<H, Fut>(broker: &Broker, spec: &ConsumerSpec, handler: &H, message: Message)
where
    H: Fn(Envelope) -> Fut,
    Fut: Future<Output = Result<Outcome, HandlerError>>,
{
    let attempts = message.info().map(|i| i.delivered).unwrap_or(1);
    let count = |outcome: &'static str| {
        metrics::counter!("events_consumed_total", "consumer" => spec.durable.clone(), "outcome" => outcome)
            .increment(1);
    };
    let envelope = match Envelope::decode(&message.payload) {
        Ok(e) => e,
        Err(e) => {
            park(
                broker,
                spec,
                &message,
                attempts,
                &crate::telemetry::chain(&e),
            )
            .await;
            return;
        }
    };
    let faults = broker.faults();
    let handled =
        match fault_points::at(faults, &spec.fault_key(ConsumerPoint::BeforeHandling)).await {
            Verdict::Proceed => handler(envelope.clone()).await,
            Verdict::Fail => Err(HandlerError::Retry("injected fault before handling".into())),
        };
    match handled {
        Ok(outcome) => {
            metrics::histogram!("events_delivery_delay_seconds", "consumer" => spec.durable.clone())
                .record(envelope.age_ms() as f64 / 1000.0);
            count(match outcome {
                Outcome::Applied => "applied",
                Outcome::Duplicate => "duplicate",
                Outcome::Ignored => "ignored",
            });
            // Lost acknowledgements are fine: the handler answers Duplicate next time.
            if fault_points::at(faults, &spec.fault_key(ConsumerPoint::BeforeAck)).await
                == Verdict::Fail
            {
                tracing::warn!(consumer = %spec.durable, event_id = %envelope.id, "injected fault: acknowledgement dropped; it will be delivered again");
                return;
            }
            if let Err(e) = message.ack().await {
                tracing::warn!(consumer = %spec.durable, event_id = %envelope.id, error = %e, "ack failed; it will be delivered again");
            }
        }
        Err(HandlerError::Reject(reason)) => {
            park(broker, spec, &message, attempts, &reason).await;
        }
        Err(HandlerError::Retry(cause)) if attempts >= spec.max_attempts => {
            let reason = format!(
                "failed {attempts} times: {}",
                crate::telemetry::chain(cause.as_ref())
            );
            park(broker, spec, &message, attempts, &reason).await;
        }
        Err(HandlerError::Retry(cause)) => {
            count("retry");
            tracing::info!(
                consumer = %spec.durable,
                event_id = %envelope.id,
                key = %envelope.key,
                attempts,
                error = %crate::telemetry::chain(cause.as_ref()),
                "event not applied yet; delivering it again"
            );
            let _ = message.ack_with(AckKind::Nak(Some(spec.retry_delay))).await;
        }
    }
}

/// Moves a message to the parked stream (with why and how often it was tried), then
/// terminates its delivery. If parking itself fails, the message is delivered again later.
async fn park(
    broker: &Broker,
    spec: &ConsumerSpec,
    message: &Message,
    attempts: i64,
    reason: &str,
) {
    let kind = message
        .subject
        .as_str()
        .strip_prefix(&format!("{}.", broker.config().subject_prefix))
        .unwrap_or("unknown");
    let mut headers: HeaderMap = message.headers.clone().unwrap_or_default();
    // A parked copy must not be dropped as a duplicate of the original id in its own stream.
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!(
            "parked-{}-{}",
            spec.durable,
            message.info().map(|i| i.stream_sequence).unwrap_or(0)
        ),
    );
    headers.insert(PARKED_REASON, reason);
    headers.insert(PARKED_ATTEMPTS, attempts.to_string().as_str());
    let subject = broker.config().parked_subject(&spec.durable, kind);
    match broker
        .publish_raw(&subject, headers, message.payload.to_vec())
        .await
    {
        Ok(_) => {
            metrics::counter!("events_parked_total", "consumer" => spec.durable.clone())
                .increment(1);
            tracing::error!(
                consumer = %spec.durable,
                subject = %message.subject,
                attempts,
                reason,
                "event parked: it will not be applied until someone replays it"
            );
            let _ = message.ack_with(AckKind::Term).await;
        }
        Err(e) => {
            tracing::warn!(consumer = %spec.durable, error = %crate::telemetry::chain(&e), "parking an event failed; it will be delivered again");
            let _ = message.ack_with(AckKind::Nak(Some(spec.retry_delay))).await;
        }
    }
}

/// Messages not yet acknowledged by `spec`'s consumer: waiting plus in flight (the lag).
pub async fn lag(broker: &Broker, spec: &ConsumerSpec) -> Result<u64, EventsError> {
    let mut consumer = ensure(broker, spec).await?;
    let info = consumer.info().await.map_err(|e| EventsError::Consumer {
        consumer: spec.durable.clone(),
        source: Box::new(e),
    })?;
    Ok(info.num_pending + info.num_ack_pending as u64)
}
