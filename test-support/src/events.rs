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

/// Every event of `kind` stored in `namespace` so far (read without a durable consumer, so
/// the services' consumers are not disturbed).
pub async fn published(namespace: &str, kind: &str) -> Vec<Envelope> {
    let config = config(namespace);
    let client = async_nats::connect(config.url.as_str())
        .await
        .expect("connecting to the stack's NATS");
    let js = jetstream::new(client);
    let Ok(stream) = js.get_stream(&config.stream).await else {
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
