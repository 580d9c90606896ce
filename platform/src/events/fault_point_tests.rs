//! The event flow's fault points against the stack's real NATS server (NATS_URL), each test
//! on a stream of its own: a lost acknowledgement is delivered again and found a duplicate;
//! a hang holds the relay between publishing and marking until its rule is cleared.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{
    consumer,
    fault_points::{ConsumerPoint, RelayPoint, consumer_key, hang_key, relay_key},
    *,
};
use crate::faults::{FaultInjector, FaultRule};

async fn broker(faults: &FaultInjector) -> Broker {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| {
        panic!(
            "NATS_URL is not set: start the local stack first, with eval \"$(scripts/stack up)\""
        )
    });
    let name = format!("f{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let broker = Broker::connect(EventsConfig::isolated(url, &name), "fault-point-test")
        .await
        .unwrap()
        .with_faults(faults.clone());
    broker.ensure_streams().await.unwrap();
    broker
}

fn fail(key: String) -> FaultRule {
    FaultRule {
        method: key,
        latency: None,
        error_rate: 1.0,
    }
}

/// Waits up to 30 s for `done`, polling.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    for _ in 0..600 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn an_acknowledgement_lost_after_the_commit_is_delivered_again_and_applied_once() {
    let faults = FaultInjector::default();
    let broker = broker(&faults).await;
    let spec = ConsumerSpec {
        ack_wait: Duration::from_secs(1),
        ..ConsumerSpec::new("test-service", "order.completed")
    };
    assert_eq!(
        spec.fault_key(ConsumerPoint::BeforeAck),
        "event:test-service:order.completed:before-ack"
    );
    // The handler's "store": event ids applied, and what each delivery answered.
    let applied: Arc<Mutex<HashSet<uuid::Uuid>>> = Arc::default();
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    faults
        .set(vec![fail(consumer_key(
            "test-service",
            "order.completed",
            ConsumerPoint::BeforeAck,
        ))])
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let (applied, outcomes) = (applied.clone(), outcomes.clone());
        tokio::spawn(consumer::run(
            broker.clone(),
            spec.clone(),
            move |e: Envelope| {
                let (applied, outcomes) = (applied.clone(), outcomes.clone());
                async move {
                    let outcome = if applied.lock().unwrap().insert(e.id) {
                        Outcome::Applied
                    } else {
                        Outcome::Duplicate
                    };
                    outcomes.lock().unwrap().push(outcome);
                    Ok(outcome)
                }
            },
            async {
                let _ = stopped.await;
            },
        ))
    };
    let e = Envelope::new("order.completed", "o-1", serde_json::json!({})).unwrap();
    broker.publish(&e).await.unwrap();
    // Applied (committed) with the acknowledgement lost, then delivered again.
    until("a delivery after the lost acknowledgement", || async {
        outcomes.lock().unwrap().len() >= 2
    })
    .await;
    faults.set(vec![]).unwrap();
    until("the event acknowledged", || async {
        consumer::lag(&broker, &spec).await.unwrap() == 0
    })
    .await;
    let outcomes = outcomes.lock().unwrap().clone();
    assert_eq!(outcomes[0], Outcome::Applied);
    assert!(
        outcomes[1..].iter().all(|o| *o == Outcome::Duplicate),
        "every later delivery is a duplicate: {outcomes:?}"
    );
    assert_eq!(applied.lock().unwrap().len(), 1);
    let _ = stop.send(());
    task.await.unwrap();
}

/// An outbox in memory: (event, published).
#[derive(Clone, Default)]
struct MemoryOutbox(Arc<Mutex<Vec<(Envelope, bool)>>>);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Outbox for MemoryOutbox {
    async fn claim(&self, limit: usize, _lease: Duration) -> Result<Vec<Envelope>, BoxError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, published)| !published)
            .take(limit)
            .map(|(e, _)| e.clone())
            .collect())
    }

    async fn mark_published(&self, ids: &[uuid::Uuid]) -> Result<(), BoxError> {
        for (e, published) in self.0.lock().unwrap().iter_mut() {
            if ids.contains(&e.id) {
                *published = true;
            }
        }
        Ok(())
    }

    async fn backlog(&self) -> Result<u64, BoxError> {
        Ok(self.0.lock().unwrap().iter().filter(|(_, p)| !p).count() as u64)
    }
}

#[tokio::test]
async fn a_hang_holds_the_relay_between_publishing_and_marking_until_it_is_cleared() {
    let faults = FaultInjector::default();
    let broker = broker(&faults).await;
    let key = relay_key("test-service", RelayPoint::BeforeMark);
    assert_eq!(key, "relay:test-service:before-mark");
    faults.set(vec![fail(hang_key(&key))]).unwrap();
    let outbox = MemoryOutbox::default();
    let relay = Relay::new("test-service", outbox.clone(), broker.clone());
    let waker = relay.waker();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(relay.run(async {
        let _ = stopped.await;
    }));
    let e = Envelope::new("stock.reserved", "o-1", serde_json::json!({})).unwrap();
    outbox.0.lock().unwrap().push((e, false));
    waker.wake();
    until("the event published", || async {
        broker.stored_events().await.unwrap() == 1
    })
    .await;
    // Held inside the window: published, not marked, for as long as the hang is set.
    assert_eq!(outbox.backlog().await.unwrap(), 1);
    faults.set(vec![]).unwrap();
    until("the event marked published", || async {
        outbox.backlog().await.unwrap() == 0
    })
    .await;
    assert_eq!(broker.stored_events().await.unwrap(), 1, "published once");
    let _ = stop.send(());
    task.await.unwrap();
}
