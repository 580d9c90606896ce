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

/// Against the stack's real NATS server (NATS_URL), on a stream of its own.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use tokio::sync::oneshot;

    use super::*;
    use crate::{grpc::ServerOptions, host::Host, policy::ServicePolicy};

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    /// Unpublished events in memory.
    #[derive(Clone, Default)]
    struct MemoryOutbox(Arc<Mutex<Vec<Envelope>>>);

    impl Outbox for MemoryOutbox {
        async fn claim(&self, limit: usize, _lease: Duration) -> Result<Vec<Envelope>, BoxError> {
            Ok(self.0.lock().unwrap().iter().take(limit).cloned().collect())
        }

        async fn mark_published(&self, ids: &[uuid::Uuid]) -> Result<(), BoxError> {
            self.0.lock().unwrap().retain(|e| !ids.contains(&e.id));
            Ok(())
        }

        async fn backlog(&self) -> Result<u64, BoxError> {
            Ok(self.0.lock().unwrap().len() as u64)
        }
    }

    #[tokio::test]
    async fn a_hosted_relay_publishes_what_the_hosted_consumer_handles_until_shutdown() {
        let url = std::env::var("NATS_URL").unwrap_or_else(|_| {
            panic!("NATS_URL is not set: start the local stack first, with eval \"$(scripts/stack up)\"")
        });
        let name = format!("h{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let outbox = MemoryOutbox::default();
        let handled = Arc::new(Mutex::new(Vec::new()));
        let seen = handled.clone();
        let tasks = EventTasks::connect(
            EventsConfig::isolated(url, &name),
            "test-service",
            outbox.clone(),
        )
        .await
        .unwrap()
        .consume(
            "order.completed consumer",
            ConsumerSpec::new("test-service", "order.completed"),
            move |event| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(event.key);
                    Ok(Outcome::Applied)
                }
            },
        );
        let (_, health) = tonic_health::server::health_reporter();
        let policy = ServicePolicy {
            service: "grpc.health.v1.Health",
            audience: None,
            rules: &[],
        };
        let hosted = tasks.host(Hosted::new(health, policy), &FaultInjector::default());
        assert_eq!(
            hosted.task_names(),
            ["event relay", "order.completed consumer"]
        );
        let mut host = Host::new(ServerOptions::default());
        host.host(hosted);
        let (stop, stopped) = oneshot::channel::<()>();
        let run = tokio::spawn(host.run_until_stopped(async {
            let _ = stopped.await;
        }));

        let event = Envelope::new("order.completed", "o-1", serde_json::json!({})).unwrap();
        outbox.0.lock().unwrap().push(event);
        tasks.waker().wake();
        for _ in 0..400 {
            if !handled.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(*handled.lock().unwrap(), ["o-1"]);
        assert_eq!(outbox.backlog().await.unwrap(), 0, "marked published");

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the relay and the consumer stop at shutdown")
            .unwrap()
            .unwrap();
    }
}
