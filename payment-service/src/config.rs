//! payment-service settings (env or the CLI flag of the same meaning).

use std::path::PathBuf;

use platform::{balance::BalanceSettings, endpoints::ServiceUrls};
use secrecy::SecretString;

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "payment-service",
    about = "Payments, refunds and idempotency records (gRPC)"
)]
pub struct Config {
    /// gRPC listen address; port 0 picks a free port.
    #[arg(long, env = "PAYMENT_GRPC_ADDR", default_value = "127.0.0.1:50053")]
    pub grpc_addr: String,
    /// Prometheus `/metrics` listen address; port 0 picks a free port.
    #[arg(long, env = "PAYMENT_METRICS_ADDR", default_value = "127.0.0.1:9093")]
    pub metrics_addr: String,
    /// Its TLS certificate (PEM, the chain), for gRPC over TLS only; with PAYMENT_TLS_KEY.
    /// Unset: plaintext HTTP/2 (loopback development).
    #[arg(long, env = "PAYMENT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM); with PAYMENT_TLS_CERT.
    #[arg(long, env = "PAYMENT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// A plaintext listener serving the gRPC health service alone, for probes that cannot
    /// speak TLS (Kubernetes' gRPC probes); unset: none.
    #[arg(long, env = "PAYMENT_HEALTH_ADDR")]
    pub health_addr: Option<String>,
    /// mysql://user:password@host:port/database (MySQL or MariaDB).
    #[arg(long, env = "PAYMENT_DATABASE_URL")]
    pub database_url: SecretString,
    /// Maximum pooled database connections.
    #[arg(long, env = "PAYMENT_DATABASE_MAX_CONNECTIONS", default_value_t = 20)]
    pub database_max_connections: u32,
    /// Base URL of the card gateway.
    #[arg(
        long,
        env = "CARD_GATEWAY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub card_gateway_url: String,
    /// The card processor's secret key (`sk_test_...`): charges, refunds and reads.
    #[arg(long, env = "CARD_GATEWAY_SECRET_KEY", value_parser = secret, hide_env_values = true)]
    pub card_secret_key: Option<SecretString>,
    /// The secret key from this file (`shopctl keys init` writes `card-secret-key`).
    #[arg(long, env = "CARD_GATEWAY_SECRET_KEY_FILE")]
    pub card_secret_key_file: Option<std::path::PathBuf>,
    /// How long one charge or refund may wait for the card gateway (all retries included)
    /// before the payment is left PENDING for reconciliation.
    #[arg(long, env = "PAYMENT_GATEWAY_TIMEOUT_MS", default_value_t = 2000)]
    pub processor_timeout_ms: u64,
    /// Circuit breaker on card-gateway charges (on/off): after `card_breaker_failures`
    /// charges in a row time out or fail, new charges are refused at once (UNAVAILABLE,
    /// nothing written) for `card_breaker_open_ms`, then one probe charge is let through.
    #[arg(long, env = "PAYMENT_CARD_BREAKER", default_value = "on", value_parser = platform::config::parse_switch)]
    pub card_breaker: bool,
    /// Consecutive failed charges that open the card-gateway breaker.
    #[arg(long, env = "PAYMENT_CARD_BREAKER_FAILURES", default_value_t = 5)]
    pub card_breaker_failures: u32,
    /// How long the open breaker refuses charges before a probe (ms).
    #[arg(long, env = "PAYMENT_CARD_BREAKER_OPEN_MS", default_value_t = 5000)]
    pub card_breaker_open_ms: u64,
    /// Largest accepted charge, in minor units.
    #[arg(long, env = "PAYMENT_MAX_AMOUNT_MINOR", default_value_t = 1_000_000)]
    pub max_amount_minor: i64,
    /// item-service gRPC URL (ChainedCharge only; connected lazily): one URL, several
    /// separated by commas, or a DNS name with several addresses.
    #[arg(
        long,
        env = "ITEM_SERVICE_URL",
        value_parser = ServiceUrls::parse,
        default_value = "http://127.0.0.1:50052"
    )]
    pub item_service_url: ServiceUrls,
    /// Cap on each item-service call (the caller's remaining deadline applies too).
    #[arg(long, env = "PAYMENT_ITEM_TIMEOUT_MS", default_value_t = 2000)]
    pub item_timeout_ms: u64,
    /// user-service gRPC URL (asked, before a refund no end user asked for, whether its
    /// checkout is being cancelled; connected lazily): one URL, several, or a DNS name.
    #[arg(
        long,
        env = "USER_SERVICE_URL",
        value_parser = ServiceUrls::parse,
        default_value = "http://127.0.0.1:50051"
    )]
    pub user_service_url: ServiceUrls,
    /// Cap on that call (the caller's remaining deadline applies too).
    #[arg(long, env = "PAYMENT_USER_TIMEOUT_MS", default_value_t = 2000)]
    pub user_timeout_ms: u64,
    /// How often PENDING payments and refunds are reconciled with the gateway; 0 turns the
    /// timer off (the Reconcile RPC still works).
    #[arg(long, env = "PAYMENT_RECONCILE_INTERVAL_MS", default_value_t = 10_000)]
    pub reconcile_interval_ms: u64,
    /// How long idempotency keys are kept, in hours (at least 24).
    #[arg(long, env = "PAYMENT_IDEMPOTENCY_TTL_HOURS", default_value_t = 24)]
    pub idempotency_ttl_hours: u32,
    /// Injected faults for this service's gRPC methods: JSON list of platform fault rules.
    #[arg(long, env = "PAYMENT_FAULTS", default_value = "")]
    pub faults: String,
    /// Upper bound on any one gRPC request, in milliseconds.
    #[arg(long, env = "PAYMENT_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Log as JSON lines.
    #[arg(long, env = "LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// The event stream of the asynchronous checkout (NATS_URL, SHOP_EVENTS_NAMESPACE): with
    /// it the service consumes `stock.reserved` and relays its outbox; unset, it runs without
    /// them (the synchronous checkouts do not need it).
    #[command(flatten)]
    pub events: platform::events::EventsSettings,
    /// Its own key (SHOP_IDENTITY_KEY_FILE: it calls item-service), whom it trusts
    /// (SHOP_TRUSTED_KEYS_FILE) and whether its fault admin exists (SHOP_FAULT_ADMIN).
    #[command(flatten)]
    pub identity: platform::identity::IdentitySettings,
    /// DNS re-resolution and ejection of failed replicas (SHOP_RESOLVE_INTERVAL_MS,
    /// SHOP_EJECT_MS).
    #[command(flatten)]
    pub balance: BalanceSettings,
    /// The CA the services' certificates are checked against (SHOP_TLS_CA); set, every
    /// *_SERVICE_URL must be https://.
    #[command(flatten)]
    pub tls: platform::tls::ClientTlsSettings,
}

impl Config {
    /// Defaults for everything but the database (tests, the monolith).
    pub fn with_database(database_url: impl Into<String>) -> Self {
        Self {
            grpc_addr: "127.0.0.1:50053".into(),
            metrics_addr: "127.0.0.1:9093".into(),
            tls_cert: None,
            tls_key: None,
            health_addr: None,
            database_url: SecretString::from(database_url.into()),
            database_max_connections: 20,
            card_gateway_url: "http://127.0.0.1:8081".into(),
            card_secret_key: None,
            card_secret_key_file: None,
            processor_timeout_ms: 2000,
            card_breaker: true,
            card_breaker_failures: 5,
            card_breaker_open_ms: 5000,
            max_amount_minor: 1_000_000,
            item_service_url: std::net::SocketAddr::from(([127, 0, 0, 1], 50052)).into(),
            item_timeout_ms: 2000,
            user_service_url: std::net::SocketAddr::from(([127, 0, 0, 1], 50051)).into(),
            user_timeout_ms: 2000,
            reconcile_interval_ms: 10_000,
            idempotency_ttl_hours: 24,
            faults: String::new(),
            request_timeout_ms: 30_000,
            log_json: false,
            events: Default::default(),
            identity: platform::identity::IdentitySettings::default(),
            balance: BalanceSettings::default(),
            tls: Default::default(),
        }
    }

    /// The gRPC listener's TLS (PAYMENT_TLS_CERT and PAYMENT_TLS_KEY), if given.
    pub fn server_tls(&self) -> Result<Option<platform::tls::ServerTls>, platform::tls::TlsError> {
        platform::tls::ServerTls::from_settings(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            "PAYMENT_TLS_CERT",
            "PAYMENT_TLS_KEY",
        )
    }

    /// The event stream, if one is configured.
    pub fn events_config(&self) -> Option<platform::events::EventsConfig> {
        self.events.config()
    }
}
