//! What a service runs on the event stream: its outbox relay and one durable consumer per
//! kind it reads. Every service hosts them the same way: as named tasks of its [`Hosted`],
//! so whichever process hosts the service (its own, the monolith) starts them, and they
//! stop on the process's shutdown signal.

use std::{future::Future, sync::Arc};

use futures::{FutureExt as _, future::BoxFuture};

use super::{
    Broker, ConsumerSpec, Envelope, EventsConfig, EventsError, HandlerError, Outbox, Outcome,
    Relay, RelayWaker, consumer,
};
use crate::{faults::FaultInjector, host::Hosted};

type Handler =
    Arc<dyn Fn(Envelope) -> BoxFuture<'static, Result<Outcome, HandlerError>> + Send + Sync>;

/// One consumer task: its name among the host's tasks, its durable consumer, its handler.
#[derive(Clone)]
struct Consumer {
    task: &'static str,
    spec: ConsumerSpec,
    handler: Handler,
}

/// A service's relay (over its outbox `O`) and consumers, ready to be hosted.
#[derive(Clone)]
pub struct EventTasks<O> {
    /// The relay's metrics label and the broker's client name.
    service: &'static str,
    broker: Broker,
    outbox: O,
    /// Wakes the relay after a commit that stored an event.
    waker: RelayWaker,
    consumers: Vec<Consumer>,
}

impl<O> std::fmt::Debug for EventTasks<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventTasks")
            .field("service", &self.service)
            .field(
                "consumers",
                &self.consumers.iter().map(|c| c.task).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<O: Outbox + Clone> EventTasks<O> {
    /// Connects to NATS as `service` (in the background while it is down: the outbox keeps
    /// the events and the consumers start when it is back). No consumers yet: add them
    /// with [`EventTasks::consume`] once the state their handlers need exists (which is
    /// given [`EventTasks::waker`] first).
    pub async fn connect(
        config: EventsConfig,
        service: &'static str,
        outbox: O,
    ) -> Result<Self, EventsError> {
        let broker = Broker::connect(config, service).await?;
        Ok(Self {
            service,
            broker,
            outbox,
            waker: RelayWaker::default(),
            consumers: Vec::new(),
        })
    }

    /// What the code writing the outbox wakes the relay with.
    pub fn waker(&self) -> RelayWaker {
        self.waker.clone()
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Adds a consumer of `spec.kind`, hosted as the task `task`, handling each event
    /// with `handler` (idempotent: delivery is at least once).
    pub fn consume<H, Fut>(mut self, task: &'static str, spec: ConsumerSpec, handler: H) -> Self
    where
        H: Fn(Envelope) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outcome, HandlerError>> + Send + 'static,
    {
        self.consumers.push(Consumer {
            task,
            spec,
            handler: Arc::new(move |event| handler(event).boxed()),
        });
        self
    }

    /// `hosted` with the relay ("event relay") and every consumer as tasks, `faults` (the
    /// server's fault rules) applied at their fault points (`fault_points`).
    pub fn host(&self, hosted: Hosted, faults: &FaultInjector) -> Hosted {
        let broker = self.broker.clone().with_faults(faults.clone());
        let relay = Relay::with_waker(
            self.service,
            self.outbox.clone(),
            broker.clone(),
            self.waker.clone(),
        );
        let mut hosted = hosted.with_task("event relay", move |stop| relay.run(stop));
        for Consumer {
            task,
            spec,
            handler,
        } in self.consumers.iter().cloned()
        {
            let broker = broker.clone();
            hosted = hosted.with_task(task, move |stop| {
                consumer::run(broker, spec, move |event| handler(event), stop)
            });
        }
        hosted
    }
}
