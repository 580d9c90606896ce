//! The connection to NATS JetStream, the streams, and publishing with de-duplication.
//!
//! Two streams: the events (`<prefix>.<kind>`) and the parked messages that consumers gave
//! up on (`<prefix>_parked.<consumer>.<kind>`), kept apart so no consumer of events ever
//! sees a parked one. Both are created idempotently by whoever starts first, and again
//! after a broker restart lost them.

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{self, stream},
};

use super::envelope::Envelope;
use crate::faults::FaultInjector;

/// Where the events live. Tests give each run its own stream and prefix so they never see
/// each other's events on a shared server.
#[derive(Clone)]
pub struct EventsConfig {
    /// `nats://127.0.0.1:4222`
    pub url: String,
    /// The JetStream stream holding every event (`SHOP_EVENTS`).
    pub stream: String,
    /// Subjects are `<prefix>.<kind>` (`shop.checkout.requested`).
    pub subject_prefix: String,
    /// How long JetStream remembers an event id to drop a re-publication of it. A relay that
    /// died after publishing and before marking the row republishes within seconds.
    pub duplicate_window: Duration,
    /// How long events are kept: long enough for a consumer that was down to catch up.
    pub max_age: Duration,
}

impl std::fmt::Debug for EventsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsConfig")
            .field("url", &self.display_url())
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .finish_non_exhaustive()
    }
}

impl EventsConfig {
    /// The URL without its credentials, for logs and errors.
    pub fn display_url(&self) -> String {
        match self.url.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}"),
                None => self.url.clone(),
            },
            None => self.url.clone(),
        }
    }

    /// The NATS user and password the URL names (`nats://user:password@host:4222`,
    /// percent-decoded). async-nats does not log in with a URL's credentials by itself, so
    /// [`Broker::connect`] passes them as options.
    pub fn credentials(&self) -> Option<(String, String)> {
        let addr: async_nats::ServerAddr = self.url.parse().ok()?;
        let user = percent_decode(addr.username()?);
        Some((user, percent_decode(addr.password().unwrap_or_default())))
    }

    /// The prefix of this client's reply subjects: `_INBOX_<user>` when the URL names a
    /// NATS user, so each user may be allowed to subscribe to its own replies only (and not
    /// read another service's JetStream answers or fetched messages); `_INBOX` otherwise.
    pub fn inbox_prefix(&self) -> String {
        match self.credentials() {
            Some((user, _)) => format!("_INBOX_{user}"),
            None => "_INBOX".to_owned(),
        }
    }

    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: "SHOP_EVENTS".to_owned(),
            subject_prefix: "shop".to_owned(),
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// The same server, a stream and subjects of its own (`name` must be a valid token:
    /// letters, digits, `_`).
    pub fn isolated(url: impl Into<String>, name: &str) -> Self {
        Self {
            stream: format!("SHOP_EVENTS_{}", name.to_ascii_uppercase()),
            subject_prefix: format!("shop_{name}"),
            ..Self::new(url)
        }
    }

    pub fn parked_stream(&self) -> String {
        format!("{}_PARKED", self.stream)
    }

    pub fn subject(&self, kind: &str) -> String {
        format!("{}.{kind}", self.subject_prefix)
    }

    pub fn parked_subject(&self, consumer: &str, kind: &str) -> String {
        format!("{}_parked.{consumer}.{kind}", self.subject_prefix)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("cannot reach NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot create or find stream {stream}")]
    Stream {
        stream: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("publishing {subject} was not acknowledged by JetStream")]
    Publish {
        subject: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("consumer {consumer}")]
    Consumer {
        consumer: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What JetStream answered to a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub sequence: u64,
    /// JetStream already had an event with this id (inside the duplicate window) and did not
    /// store it again.
    pub duplicate: bool,
}

#[derive(Clone)]
pub struct Broker {
    client: async_nats::Client,
    js: jetstream::Context,
    config: EventsConfig,
    /// The service's fault rules, for the event flow's fault points (none by default).
    faults: FaultInjector,
}

/// A URL's user or password with its `%XX` escapes decoded.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("url", &self.config.display_url())
            .field("stream", &self.config.stream)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Connects as `client_name`. A broker that is down does not stop the caller: the client
    /// keeps reconnecting in the background, the outbox keeps the events meanwhile, and
    /// publications fail (and are retried) until it is back.
    pub async fn connect(config: EventsConfig, client_name: &str) -> Result<Self, EventsError> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some((user, password)) = config.credentials() {
            options = options.user_and_password(user, password);
        }
        let client = options
            .name(client_name)
            .custom_inbox_prefix(config.inbox_prefix())
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(config.url.as_str())
            .await
            .map_err(|source| EventsError::Connect {
                url: config.display_url(),
                source,
            })?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            client,
            js,
            config,
            faults: FaultInjector::default(),
        })
    }

    /// This broker with the service's fault rules applied at its consumers' and relay's
    /// fault points ([`super::fault_points`]); pass the injector the service's fault admin
    /// API changes.
    pub fn with_faults(mut self, faults: FaultInjector) -> Self {
        self.faults = faults;
        self
    }

    pub fn faults(&self) -> &FaultInjector {
        &self.faults
    }

    pub fn config(&self) -> &EventsConfig {
        &self.config
    }

    pub(crate) fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Creates both streams if they are missing; leaves existing ones as they are.
    pub async fn ensure_streams(&self) -> Result<(), EventsError> {
        let c = &self.config;
        for (name, subjects) in [
            (c.stream.clone(), format!("{}.>", c.subject_prefix)),
            (c.parked_stream(), format!("{}_parked.>", c.subject_prefix)),
        ] {
            self.js
                .get_or_create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![subjects],
                    storage: stream::StorageType::File,
                    duplicate_window: c.duplicate_window,
                    max_age: c.max_age,
                    ..Default::default()
                })
                .await
                .map_err(|e| EventsError::Stream {
                    stream: name,
                    source: Box::new(e),
                })?;
        }
        Ok(())
    }

    /// Publishes `event` and waits until JetStream has stored it (or recognised its id).
    pub async fn publish(&self, event: &Envelope) -> Result<Published, EventsError> {
        let subject = self.config.subject(&event.kind);
        let ack = self
            .publish_raw(&subject, headers_of(event), event.encode())
            .await?;
        metrics::counter!(
            "events_published_total",
            "kind" => event.kind.clone(),
            "duplicate" => if ack.duplicate { "true" } else { "false" },
        )
        .increment(1);
        Ok(ack)
    }

    pub(crate) async fn publish_raw(
        &self,
        subject: &str,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<Published, EventsError> {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| EventsError::Publish {
            subject: subject.to_owned(),
            source,
        };
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), headers, body.into())
            .await
            .map_err(|e| failed(Box::new(e)))?
            .await
            .map_err(|e| failed(Box::new(e)))?;
        Ok(Published {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Flushes what the client buffered (before a graceful stop).
    pub async fn flush(&self) {
        let _ = self.client.flush().await;
    }

    /// How many events the stream holds (for tests and the report).
    pub async fn stored_events(&self) -> Result<u64, EventsError> {
        let mut stream =
            self.js
                .get_stream(&self.config.stream)
                .await
                .map_err(|e| EventsError::Stream {
                    stream: self.config.stream.clone(),
                    source: Box::new(e),
                })?;
        let info = stream.info().await.map_err(|e| EventsError::Stream {
            stream: self.config.stream.clone(),
            source: Box::new(e),
        })?;
        Ok(info.state.messages)
    }
}

fn headers_of(event: &Envelope) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, event.id.to_string());
    if let Some(tp) = &event.traceparent {
        headers.insert("traceparent", tp.as_str());
    }
    headers
}

#[cfg(test)]
mod inbox_tests {
    use super::EventsConfig;

    #[test]
    fn the_inbox_is_the_nats_users_own() {
        let prefix = |url: &str| EventsConfig::new(url).inbox_prefix();
        assert_eq!(
            prefix("nats://item-service:s3cret@nats:4222"),
            "_INBOX_item-service"
        );
        assert_eq!(prefix("nats://monolith@nats:4222"), "_INBOX_monolith");
        assert_eq!(prefix("nats://127.0.0.1:4222"), "_INBOX");
        assert_eq!(prefix("nats://:token@127.0.0.1:4222"), "_INBOX");
    }

    #[test]
    fn the_urls_user_and_password_are_the_login() {
        let login = |url: &str| EventsConfig::new(url).credentials();
        assert_eq!(
            login("nats://payment-service:p%40ss%2Fw0rd@nats:4222"),
            Some(("payment-service".into(), "p@ss/w0rd".into()))
        );
        assert_eq!(login("nats://127.0.0.1:4222"), None);
    }
}
