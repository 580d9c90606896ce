//! The event-stream settings every service shares (flattened into its clap `Config`).

use secrecy::{ExposeSecret, SecretString};

use super::broker::EventsConfig;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct EventsSettings {
    /// NATS server with JetStream for the asynchronous checkout (nats://host:4222). Unset:
    /// no event relay and no consumers; the synchronous strategies do not need it.
    /// May carry credentials (nats://user:password@host:4222), hence a secret.
    #[arg(long = "nats-url", env = "NATS_URL", value_parser = secret, hide_env_values = true)]
    pub nats_url: Option<SecretString>,
    /// Gives this deployment streams and subjects of its own on a shared NATS server
    /// (letters, digits, `_`): tests, or several shops on one broker.
    #[arg(long = "events-namespace", env = "SHOP_EVENTS_NAMESPACE", value_parser = namespace)]
    pub namespace: Option<String>,
}

fn secret(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(raw.to_owned()))
}

fn namespace(raw: &str) -> Result<String, String> {
    if !raw.is_empty()
        && raw.len() <= 32
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err("must be 1 to 32 letters, digits or _".into())
    }
}

impl EventsSettings {
    /// Where the events live, if the stream is configured.
    pub fn config(&self) -> Option<EventsConfig> {
        let url = self
            .nats_url
            .as_ref()
            .map(|u| u.expose_secret())
            .filter(|u| !u.trim().is_empty())?;
        Some(match &self.namespace {
            Some(ns) => EventsConfig::isolated(url, ns),
            None => EventsConfig::new(url),
        })
    }
}
