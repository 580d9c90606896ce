//! Against the stack's real NATS server (NATS_URL), each test on a stream of its own.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream;
use futures::StreamExt;

use super::{consumer, *};

fn config() -> EventsConfig {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| {
        panic!(
            "NATS_URL is not set: start the local stack first, with eval \"$(scripts/stack up)\" \
             (or run the tests through scripts/test)"
        )
    });
    let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    EventsConfig::isolated(url, &name)
}

async fn broker() -> Broker {
    let broker = Broker::connect(config(), "platform-test").await.unwrap();
    broker.ensure_streams().await.unwrap();
    broker
}

fn event(kind: &str, key: &str) -> Envelope {
    Envelope::new(kind, key, serde_json::json!({ "key": key })).unwrap()
}

/// Waits up to 20 s for `done`, polling.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..400 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn credentials_in_the_url_stay_out_of_debug_output() {
    let config = EventsConfig::new("nats://shop:s3cret-pass@nats:4222");
    let shown = format!("{config:?}");
    assert!(!shown.contains("s3cret-pass"), "{shown}");
    assert!(shown.contains("nats:4222"), "{shown}");
    let settings = EventsSettings {
        nats_url: Some("nats://shop:s3cret-pass@nats:4222".into()),
        namespace: None,
    };
    assert!(!format!("{settings:?}").contains("s3cret-pass"));
    assert_eq!(
        settings.config().map(|c| c.url),
        Some("nats://shop:s3cret-pass@nats:4222".to_owned())
    );
}

#[tokio::test]
async fn streams_are_created_idempotently_and_a_republished_event_is_stored_once() {
    let broker = broker().await;
    // A second process starting up finds the streams and leaves them alone.
    let other = Broker::connect(broker.config().clone(), "second")
        .await
        .unwrap();
    other.ensure_streams().await.unwrap();

    let e = event("checkout.requested", "o-1");
    let first = broker.publish(&e).await.unwrap();
    // The relay died before marking it published: whoever relays it next sends it again.
    let again = other.publish(&e).await.unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate, "same id inside the duplicate window");
    assert_eq!(again.sequence, first.sequence);
    broker
        .publish(&event("checkout.requested", "o-2"))
        .await
        .unwrap();
    assert_eq!(broker.stored_events().await.unwrap(), 2);
}

#[tokio::test]
async fn a_failing_event_is_delivered_again_and_applied_once() {
    let broker = broker().await;
    let spec = ConsumerSpec {
        retry_delay: Duration::from_millis(50),
        ..ConsumerSpec::new("test", "stock.reserved")
    };
    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let applied: Arc<Mutex<Vec<String>>> = Arc::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let (attempts, applied) = (attempts.clone(), applied.clone());
        tokio::spawn(consumer::run(
            broker.clone(),
            spec.clone(),
            move |e: Envelope| {
                let (attempts, applied) = (attempts.clone(), applied.clone());
                async move {
                    let n = {
                        let mut a = attempts.lock().unwrap();
                        let n = a.entry(e.key.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    // The store is "down" for the first two deliveries of o-1.
                    if e.key == "o-1" && n <= 2 {
                        return Err(HandlerError::Retry("store unreachable".into()));
                    }
                    applied.lock().unwrap().push(e.key);
                    Ok(Outcome::Applied)
                }
            },
            async {
                let _ = stopped.await;
            },
        ))
    };
    broker
        .publish(&event("stock.reserved", "o-1"))
        .await
        .unwrap();
    broker
        .publish(&event("stock.reserved", "o-2"))
        .await
        .unwrap();
    // Another kind on the same stream is not this consumer's business.
    broker
        .publish(&event("payment.succeeded", "o-3"))
        .await
        .unwrap();

    until("both applied", || applied.lock().unwrap().len() == 2).await;
    // Quiet first: every message acknowledged (a second application would come before its ack).
    let mut lag = u64::MAX;
    for _ in 0..400 {
        lag = consumer::lag(&broker, &spec).await.unwrap();
        if lag == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lag, 0);
    let mut keys = applied.lock().unwrap().clone();
    keys.sort();
    assert_eq!(keys, ["o-1", "o-2"], "each applied once, nothing else seen");
    assert_eq!(attempts.lock().unwrap()["o-1"], 3);
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test]
async fn poison_is_parked_with_its_reason_and_the_consumer_moves_on() {
    let broker = broker().await;
    let spec = ConsumerSpec {
        max_attempts: 3,
        retry_delay: Duration::from_millis(20),
        ..ConsumerSpec::new("test", "payment.declined")
    };
    let applied: Arc<Mutex<Vec<String>>> = Arc::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let applied = applied.clone();
        tokio::spawn(consumer::run(
            broker.clone(),
            spec.clone(),
            move |e: Envelope| {
                let applied = applied.clone();
                async move {
                    match e.key.as_str() {
                        "always-fails" => Err(HandlerError::Retry("bug".into())),
                        "impossible" => {
                            Err(HandlerError::Reject("order has no reservation".into()))
                        }
                        _ => {
                            applied.lock().unwrap().push(e.key);
                            Ok(Outcome::Applied)
                        }
                    }
                }
            },
            async {
                let _ = stopped.await;
            },
        ))
    };
    broker
        .publish(&event("payment.declined", "always-fails"))
        .await
        .unwrap();
    broker
        .publish(&event("payment.declined", "impossible"))
        .await
        .unwrap();
    broker
        .publish(&event("payment.declined", "fine"))
        .await
        .unwrap();
    // Not an envelope at all (someone published by hand).
    broker
        .publish_raw(
            &broker.config().subject("payment.declined"),
            async_nats::HeaderMap::new(),
            b"{not json".to_vec(),
        )
        .await
        .unwrap();

    until("the good one applied", || {
        !applied.lock().unwrap().is_empty()
    })
    .await;

    // Three parked messages, each with why.
    let js = jetstream::new(
        async_nats::connect(broker.config().url.as_str())
            .await
            .unwrap(),
    );
    let parked = js
        .get_stream(broker.config().parked_stream())
        .await
        .unwrap();
    let reader = parked
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut reasons = Vec::new();
    let mut messages = reader
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    while reasons.len() < 3 {
        let Some(m) = tokio::time::timeout(Duration::from_secs(20), messages.next())
            .await
            .expect("three parked messages")
        else {
            messages = reader
                .fetch()
                .max_messages(10)
                .expires(Duration::from_secs(5))
                .messages()
                .await
                .unwrap();
            continue;
        };
        let m = m.unwrap();
        let headers = m.headers.clone().unwrap_or_default();
        let reason = headers
            .get(consumer::PARKED_REASON)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let attempts = headers
            .get(consumer::PARKED_ATTEMPTS)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        reasons.push((reason, attempts));
        m.ack().await.unwrap();
    }
    reasons.sort();
    assert!(
        reasons[0].0.contains("failed 3 times") && reasons[0].1 == "3",
        "{reasons:?}"
    );
    assert!(
        reasons[1].0.starts_with("not an event envelope") && reasons[1].1 == "1",
        "{reasons:?}"
    );
    assert!(
        reasons[2].0 == "order has no reservation" && reasons[2].1 == "1",
        "{reasons:?}"
    );
    assert_eq!(applied.lock().unwrap().as_slice(), ["fine"]);
    assert_eq!(
        consumer::lag(&broker, &spec).await.unwrap(),
        0,
        "nothing left hanging"
    );
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test]
async fn a_consumer_that_dies_before_acknowledging_gets_the_event_again() {
    let broker = broker().await;
    let spec = ConsumerSpec {
        ack_wait: Duration::from_secs(1),
        ..ConsumerSpec::new("test", "order.completed")
    };
    let seen: Arc<Mutex<Vec<i64>>> = Arc::default();
    let handler = |seen: Arc<Mutex<Vec<i64>>>, hang: bool| {
        move |e: Envelope| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(e.occurred_at_ms);
                if hang {
                    // The process dies here: after its work began, before the ack.
                    std::future::pending::<()>().await;
                }
                Ok(Outcome::Applied)
            }
        }
    };
    let dying = tokio::spawn(consumer::run(
        broker.clone(),
        spec.clone(),
        handler(seen.clone(), true),
        std::future::pending(),
    ));
    broker
        .publish(&event("order.completed", "o-1"))
        .await
        .unwrap();
    until("first delivery", || seen.lock().unwrap().len() == 1).await;
    dying.abort();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let again = tokio::spawn(consumer::run(
        broker.clone(),
        spec.clone(),
        handler(seen.clone(), false),
        async {
            let _ = stopped.await;
        },
    ));
    until("redelivery after the ack wait", || {
        seen.lock().unwrap().len() == 2
    })
    .await;
    let mut lag = u64::MAX;
    for _ in 0..40 {
        lag = consumer::lag(&broker, &spec).await.unwrap();
        if lag == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lag, 0);
    let _ = stop.send(());
    again.await.unwrap();
}
