//! Settings, from flags or `ITEM_*` environment variables (names item-service/README.md documents).

use std::{path::PathBuf, time::Duration};

use secrecy::SecretString;

/// Whether the Redis cache sits in front of MongoDB reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheMode {
    #[value(alias = "true", alias = "1")]
    On,
    #[value(alias = "false", alias = "0")]
    Off,
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "item-service",
    about = "Shop catalog, stock and reservations (gRPC)"
)]
pub struct Config {
    /// gRPC listen address; port 0 picks a free port.
    #[arg(long, env = "ITEM_GRPC_ADDR", default_value = "127.0.0.1:50052")]
    pub grpc_addr: String,

    /// Prometheus `/metrics` listen address; port 0 picks a free port.
    #[arg(long, env = "ITEM_METRICS_ADDR", default_value = "127.0.0.1:9092")]
    pub metrics_addr: String,
    /// Its TLS certificate (PEM, the chain), for gRPC over TLS only; with ITEM_TLS_KEY.
    /// Unset: plaintext HTTP/2 (loopback development).
    #[arg(long, env = "ITEM_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM); with ITEM_TLS_CERT.
    #[arg(long, env = "ITEM_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// A plaintext listener serving the gRPC health service alone, for probes that cannot
    /// speak TLS (Kubernetes' gRPC probes); unset: none.
    #[arg(long, env = "ITEM_HEALTH_ADDR")]
    pub health_addr: Option<String>,

    /// MongoDB connection string (may hold credentials).
    #[arg(
        long,
        env = "ITEM_MONGODB_URL",
        default_value = "mongodb://127.0.0.1:27017/?directConnection=true",
        value_parser = parse_secret,
        hide_default_value = true
    )]
    pub mongodb_url: SecretString,

    /// Database that holds the `items` and `reservations` collections.
    #[arg(long, env = "ITEM_MONGODB_DATABASE", default_value = "shop_item")]
    pub mongodb_database: String,

    /// Redis connection string (may hold a password).
    #[arg(
        long,
        env = "ITEM_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        value_parser = parse_secret,
        hide_default_value = true
    )]
    pub redis_url: SecretString,

    /// Redis cache in front of GetItem/BatchGetItems/ListItems: on or off.
    #[arg(long, env = "ITEM_CACHE", value_enum, default_value = "on")]
    pub cache: CacheMode,

    /// Base TTL of a cached item (a random +-20% is added so entries don't expire together).
    #[arg(long, env = "ITEM_CACHE_TTL_SECS", default_value_t = 300)]
    pub cache_ttl_secs: u64,

    /// TTL of a cached "not found".
    #[arg(long, env = "ITEM_CACHE_NEGATIVE_TTL_SECS", default_value_t = 5)]
    pub cache_negative_ttl_secs: u64,

    /// Upper bound on any one Redis operation; past it the request goes to MongoDB.
    #[arg(long, env = "ITEM_CACHE_TIMEOUT_MS", default_value_t = 50)]
    pub cache_timeout_ms: u64,

    /// TTL of a cached ListItems page (0 = list pages are not cached). Catalog edits show
    /// at once regardless; stock shown in lists may lag by up to this.
    #[arg(long, env = "ITEM_LIST_CACHE_TTL_MS", default_value_t = 2000)]
    pub list_cache_ttl_ms: u64,

    /// How long an uncommitted reservation holds stock before the sweeper releases it.
    #[arg(long, env = "ITEM_RESERVATION_TTL_SECS", default_value_t = 600)]
    pub reservation_ttl_secs: u64,

    /// How long a reservation made for an asynchronous checkout (on `checkout.requested`)
    /// holds stock. Separate from, and longer than, the synchronous TTL: the order goes on
    /// through the event stream, so the payment that commits it may wait for a
    /// payment-service outage of minutes to end, and expiring meanwhile would return stock
    /// the customer is about to pay for.
    #[arg(long, env = "ITEM_ASYNC_RESERVATION_TTL_SECS", default_value_t = 900)]
    pub async_reservation_ttl_secs: u64,

    /// How often the sweeper looks for expired reservations.
    #[arg(long, env = "ITEM_SWEEP_INTERVAL_MS", default_value_t = 5000)]
    pub sweep_interval_ms: u64,

    /// Server-side upper bound on one request, whatever the caller's deadline.
    #[arg(long, env = "ITEM_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// Fault-injection rules (JSON list, see platform::faults); empty means none.
    #[arg(long, env = "ITEM_FAULTS", default_value = "")]
    pub faults: String,

    /// Load the demo catalog at start-up (idempotent: existing SKUs are left alone).
    #[arg(long, env = "ITEM_SEED", default_value_t = false)]
    pub seed: bool,

    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "LOG_JSON", default_value_t = false)]
    pub log_json: bool,

    /// Whom this service trusts (SHOP_TRUSTED_KEYS_FILE) and whether its fault admin
    /// exists (SHOP_FAULT_ADMIN). It calls nobody, so it needs no key of its own.
    #[command(flatten)]
    pub identity: platform::identity::IdentitySettings,

    /// The event stream of the asynchronous checkout (NATS_URL). With it, item-service
    /// consumes `checkout.requested`, `order.completed` and `order.cancelled` and relays its
    /// outbox; without it, it serves only the synchronous calls.
    #[command(flatten)]
    pub events: platform::events::EventsSettings,
}

fn parse_secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s))
}

impl Config {
    /// The gRPC listener's TLS (ITEM_TLS_CERT and ITEM_TLS_KEY), if given.
    pub fn server_tls(&self) -> Result<Option<platform::tls::ServerTls>, platform::tls::TlsError> {
        platform::tls::ServerTls::from_settings(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            "ITEM_TLS_CERT",
            "ITEM_TLS_KEY",
        )
    }

    /// From `ITEM_*` environment variables alone (no command line), e.g. for the monolith,
    /// whose own flags would clash with these.
    pub fn from_env() -> Result<Self, clap::Error> {
        use clap::Parser;
        Self::try_parse_from(["item-service"])
    }

    /// Defaults (and `ITEM_*` environment variables) with the given store URLs: what tests
    /// start from.
    pub fn for_stores(mongodb_url: &str, database: &str, redis_url: &str) -> Self {
        use clap::Parser;
        let mut c = Self::parse_from(["item-service"]);
        c.mongodb_url = SecretString::from(mongodb_url);
        c.mongodb_database = database.to_owned();
        c.redis_url = SecretString::from(redis_url);
        c
    }

    pub fn reservation_ttl(&self) -> Duration {
        Duration::from_secs(self.reservation_ttl_secs)
    }

    pub fn async_reservation_ttl(&self) -> Duration {
        Duration::from_secs(self.async_reservation_ttl_secs)
    }

    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms.max(10))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }
}
