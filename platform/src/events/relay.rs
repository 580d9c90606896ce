//! The outbox relay: publishes the events a service stored with its own writes, then marks
//! them published.
//!
//! Each service keeps its outbox in its own database (the event is written in the same
//! transaction as the state change, so neither exists without the other) and implements
//! [`Outbox`] for it. Rows are *claimed* for a lease before they are published, so several
//! replicas of a service relay different rows; a relay that dies mid-batch leaves its claims
//! to expire, and whoever claims them next publishes them again with the same ids, which
//! JetStream drops as duplicates (and consumers would ignore anyway).

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::Notify;

use super::{
    broker::Broker,
    envelope::Envelope,
    fault_points::{self, RelayPoint},
};
use crate::faults::Verdict;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A service's outbox table (or collection).
pub trait Outbox: Send + Sync + 'static {
    /// Up to `limit` unpublished events, oldest first, that no other relay holds a live claim
    /// on; claims them for `lease`.
    fn claim(
        &self,
        limit: usize,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<Envelope>, BoxError>> + Send;

    /// Marks `ids` published (after JetStream acknowledged them).
    fn mark_published(
        &self,
        ids: &[uuid::Uuid],
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// How many events are stored and not yet published (a gauge: the relay's backlog).
    fn backlog(&self) -> impl Future<Output = Result<u64, BoxError>> + Send;
}

/// Wakes the relay right after a commit that stored events, so the event does not wait for
/// the next poll; the poll remains for events written by another replica or before a crash.
#[derive(Debug, Clone, Default)]
pub struct RelayWaker(Arc<Notify>);

impl RelayWaker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

pub struct Relay<O> {
    outbox: O,
    broker: Broker,
    waker: RelayWaker,
    /// Which service's outbox (the metrics label).
    name: &'static str,
    pub poll_every: Duration,
    pub batch: usize,
    pub lease: Duration,
}

impl<O: Outbox> Relay<O> {
    pub fn new(name: &'static str, outbox: O, broker: Broker) -> Self {
        Self::with_waker(name, outbox, broker, RelayWaker::default())
    }

    /// A relay woken through `waker` (made before the relay, for the code that writes).
    pub fn with_waker(name: &'static str, outbox: O, broker: Broker, waker: RelayWaker) -> Self {
        Self {
            outbox,
            broker,
            waker,
            name,
            poll_every: Duration::from_millis(500),
            batch: 100,
            lease: Duration::from_secs(10),
        }
    }

    pub fn waker(&self) -> RelayWaker {
        self.waker.clone()
    }

    /// Claims and publishes one batch; returns how many were published. Stops at the first
    /// event JetStream does not acknowledge: the rest keep their order for the next round.
    pub async fn relay_once(&self) -> Result<usize, BoxError> {
        let events = self.outbox.claim(self.batch, self.lease).await?;
        if events.is_empty() {
            return Ok(0);
        }
        let faults = self.broker.faults();
        if fault_points::at(
            faults,
            &fault_points::relay_key(self.name, RelayPoint::BeforePublish),
        )
        .await
            == Verdict::Fail
        {
            return Err("injected fault before publishing".into());
        }
        let mut published = Vec::with_capacity(events.len());
        let mut failure = None;
        for event in &events {
            match self.broker.publish(event).await {
                Ok(_) => published.push(event.id),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if !published.is_empty() {
            if fault_points::at(
                faults,
                &fault_points::relay_key(self.name, RelayPoint::BeforeMark),
            )
            .await
                == Verdict::Fail
            {
                return Err("injected fault before marking the events published".into());
            }
            self.outbox.mark_published(&published).await?;
        }
        match failure {
            Some(e) => Err(Box::new(e)),
            None => Ok(published.len()),
        }
    }

    /// Relays until `shutdown` resolves: right after each wake-up, every `poll_every`
    /// otherwise, and at once again while batches come back full.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut streams_ready = false;
        loop {
            if !streams_ready {
                match self.broker.ensure_streams().await {
                    Ok(()) => streams_ready = true,
                    Err(e) => tracing::warn!(
                        outbox = self.name,
                        error = %crate::telemetry::chain(&e),
                        "event streams not ready; the outbox keeps the events"
                    ),
                }
            }
            let mut full = false;
            if streams_ready {
                match self.relay_once().await {
                    Ok(n) => full = n == self.batch,
                    Err(e) => {
                        metrics::counter!("events_relay_errors_total", "outbox" => self.name)
                            .increment(1);
                        tracing::warn!(
                            outbox = self.name,
                            error = %crate::telemetry::chain(e.as_ref()),
                            "relaying events failed; retrying"
                        );
                        // The stream may have been lost with a broker restart.
                        streams_ready = false;
                    }
                }
                if let Ok(n) = self.outbox.backlog().await {
                    metrics::gauge!("events_outbox_backlog", "outbox" => self.name).set(n as f64);
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = self.waker.0.notified() => {}
                () = tokio::time::sleep(self.poll_every) => {}
            }
        }
    }
}
