//! The local stack's NATS server (NATS_URL), one namespace (streams and subjects of its
//! own) per test, and reading what was published.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures::StreamExt;
use platform::events::{Broker, Envelope, EventsConfig, EventsSettings};

/// A fresh namespace: no other test sees its events.
pub fn namespace() -> String {
    format!("t{}", crate::unique_suffix())
}

/// The settings that put a service on the stack's NATS in `namespace`.
pub fn settings(namespace: &str) -> EventsSettings {
    EventsSettings {
        nats_url: Some(crate::env("NATS_URL").into()),
        namespace: Some(namespace.to_owned()),
    }
}

pub fn config(namespace: &str) -> EventsConfig {
    EventsConfig::isolated(crate::env("NATS_URL"), namespace)
}

/// A broker on `namespace`, its streams created.
pub async fn broker(namespace: &str) -> Broker {
    let broker = Broker::connect(config(namespace), "test")
        .await
        .expect("connecting to the stack's NATS");
    broker
        .ensure_streams()
        .await
        .expect("creating the event streams");
    broker
}

/// `namespace`'s settings and its event stream (None before anything created it).
async fn stream(namespace: &str) -> Option<(EventsConfig, jetstream::stream::Stream)> {
    let config = config(namespace);
    let client = async_nats::connect(config.url.as_str())
        .await
        .expect("connecting to the stack's NATS");
    let stream = jetstream::new(client)
        .get_stream(&config.stream)
        .await
        .ok()?;
    Some((config, stream))
}

/// Every event of `kind` stored in `namespace` so far (read without a durable consumer, so
/// the services' consumers are not disturbed).
pub async fn published(namespace: &str, kind: &str) -> Vec<Envelope> {
    let Some((config, stream)) = stream(namespace).await else {
        return Vec::new();
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: config.subject(kind),
            deliver_policy: DeliverPolicy::All,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("an ephemeral reader");
    let mut out = Vec::new();
    let mut batch = consumer
        .fetch()
        .max_messages(10_000)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .expect("fetching");
    while let Some(Ok(m)) = batch.next().await {
        if let Ok(e) = Envelope::decode(&m.payload) {
            out.push(e);
        }
    }
    out
}

/// Waits (up to 30 s) until `namespace` holds at least `n` events of `kind`; returns them.
pub async fn wait_for(namespace: &str, kind: &str, n: usize) -> Vec<Envelope> {
    let mut last = Vec::new();
    for _ in 0..60 {
        last = published(namespace, kind).await;
        if last.len() >= n {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "expected {n} {kind} event(s) in namespace {namespace}, found {}",
        last.len()
    );
}

/// How far the durable consumers (the services', not this module's readers) of
/// `namespace` are behind: the sum of their waiting and unacknowledged messages, and how many
/// there are. A message waiting for its retry counts as unacknowledged.
pub async fn durable_lag(namespace: &str) -> (u64, usize) {
    let Some((_, stream)) = stream(namespace).await else {
        return (0, 0);
    };
    let mut consumers = stream.consumers();
    let (mut lag, mut durables) = (0, 0);
    while let Some(info) = consumers.next().await {
        let info = info.expect("listing the stream's consumers");
        if info.config.durable_name.is_none() {
            continue;
        }
        durables += 1;
        lag += info.num_pending + info.num_ack_pending as u64;
    }
    (lag, durables)
}

/// The sequence number of the last message on `namespace`'s stream (0 when empty).
async fn last_sequence(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.last_sequence).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Waits (up to 30 s) until `namespace` is quiet: every durable consumer has acknowledged
/// everything on the stream, `drained` (the caller's outbox query: no row waiting to be
/// relayed) holds, and the stream took nothing new meanwhile. Only then can a test say that
/// something did not happen, rather than that it has not happened yet.
///
/// Sound for one outbox: a relay marks a row only after the broker stored it, so once the
/// outbox is drained with the stream unchanged since the consumers were seen idle, every
/// event and every consequence of it has been applied.
pub async fn wait_quiet<F, Fut>(namespace: &str, mut drained: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let config = config(namespace);
    let client = async_nats::connect(config.url.as_str())
        .await
        .expect("connecting to the stack's NATS");
    let js = jetstream::new(client);
    let mut last = None;
    for _ in 0..300 {
        let before = last_sequence(&js, &config.stream).await;
        let (lag, durables) = durable_lag(namespace).await;
        let relayed = drained().await;
        let after = last_sequence(&js, &config.stream).await;
        if durables > 0 && lag == 0 && relayed && before == after {
            return;
        }
        last = Some((lag, durables, relayed));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("namespace {namespace} never went quiet: (lag, consumers, outbox drained) = {last:?}");
}

/// Waits (up to 30 s) until the durable consumer `durable` of `namespace` has delivered
/// `n` messages again (each was tried and put back for a retry): the handler has seen them
/// and decided not to apply them yet.
pub async fn wait_redelivered(namespace: &str, durable: &str, n: usize) {
    let config = config(namespace);
    let client = async_nats::connect(config.url.as_str())
        .await
        .expect("connecting to the stack's NATS");
    let js = jetstream::new(client);
    let mut seen = 0;
    for _ in 0..300 {
        if let Ok(stream) = js.get_stream(&config.stream).await
            && let Ok(mut consumer) = stream
                .get_consumer::<jetstream::consumer::pull::Config>(durable)
                .await
            && let Ok(info) = consumer.info().await
        {
            seen = info.num_redelivered;
            if seen >= n {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("consumer {durable} redelivered {seen} message(s), not {n}");
}
