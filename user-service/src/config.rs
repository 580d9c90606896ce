//! user-service settings: CLI flags with environment fallbacks (the names user-service/README.md documents).

use std::{path::PathBuf, time::Duration};

use platform::{balance::BalanceSettings, endpoints::ServiceUrls};
use secrecy::SecretString;

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("expected a whole number: {e}")),
    }
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "user-service",
    about = "Shop accounts, sessions and order history (gRPC)"
)]
pub struct Config {
    /// gRPC listen address; port 0 picks a free port.
    #[arg(long, env = "USER_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: String,
    /// Prometheus /metrics listen address; port 0 picks a free port.
    #[arg(long, env = "USER_METRICS_ADDR", default_value = "127.0.0.1:9091")]
    pub metrics_addr: String,
    /// Its TLS certificate (PEM, the chain), for gRPC over TLS only; with USER_TLS_KEY.
    /// Unset: plaintext HTTP/2 (loopback development).
    #[arg(long, env = "USER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM); with USER_TLS_CERT.
    #[arg(long, env = "USER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// A plaintext listener serving the gRPC health service alone, for probes that cannot
    /// speak TLS (Kubernetes' gRPC probes); unset: none.
    #[arg(long, env = "USER_HEALTH_ADDR")]
    pub health_addr: Option<String>,
    /// postgres://user:password@host:port/database
    #[arg(long, env = "USER_DATABASE_URL", value_parser = secret, hide_env_values = true)]
    pub database_url: SecretString,
    #[arg(long, env = "USER_DATABASE_MAX_CONNECTIONS", default_value_t = 20)]
    pub database_max_connections: u32,
    /// HS256 signing secret, at least 32 bytes. Or give a file with --jwt-secret-file.
    #[arg(long, env = "USER_JWT_SECRET", value_parser = secret, hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,
    #[arg(long, env = "USER_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Access token lifetime in seconds.
    #[arg(long, env = "USER_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub token_ttl_secs: u64,
    /// At most this many password hashes/verifications at once (each takes ~19 MiB and a
    /// core for tens of milliseconds); default: the number of CPUs.
    #[arg(long, env = "USER_HASH_CONCURRENCY", default_value_t = crate::password::default_concurrency(), value_parser = at_least_one)]
    pub hash_concurrency: usize,
    /// How long a login or registration waits for a hashing slot before it is refused
    /// with RESOURCE_EXHAUSTED, in milliseconds.
    #[arg(long, env = "USER_HASH_WAIT_MS", default_value_t = 2_000)]
    pub hash_wait_ms: u64,
    /// payment-service, called by the `chained` checkout. Like every *_SERVICE_URL: one
    /// URL, several separated by commas, or a DNS name with several addresses.
    #[arg(
        long,
        env = "PAYMENT_SERVICE_URL",
        value_parser = ServiceUrls::parse,
        default_value = "http://127.0.0.1:50053"
    )]
    pub payment_service_url: ServiceUrls,
    /// item-service, called by the checkout recovery (commit, release, reservation status).
    #[arg(
        long,
        env = "ITEM_SERVICE_URL",
        value_parser = ServiceUrls::parse,
        default_value = "http://127.0.0.1:50052"
    )]
    pub item_service_url: ServiceUrls,
    /// Pause between checkout-recovery rounds (ms). A checkout whose driver died is
    /// finished within its lease (GATEWAY_CHECKOUT_LEASE_MS) plus about one round.
    #[arg(long, env = "USER_RECOVERY_INTERVAL_MS", default_value_t = 2000)]
    pub recovery_interval_ms: u64,
    /// Cap on each call the recovery makes to another service (ms).
    #[arg(long, env = "USER_RECOVERY_CALL_TIMEOUT_MS", default_value_t = 5000)]
    pub recovery_call_timeout_ms: u64,
    /// An unfinished checkout older than this counts as stuck (metric checkout_recovery_stuck).
    #[arg(long, env = "USER_RECOVERY_STUCK_SECS", default_value_t = 60)]
    pub recovery_stuck_secs: u64,
    /// Abandoned checkouts one recovery round claims at most (at least 1).
    #[arg(long, env = "USER_RECOVERY_BATCH", default_value_t = 50)]
    pub recovery_batch: i64,
    /// Upper bound for any one request, in milliseconds.
    #[arg(long, env = "USER_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Fault injection rules (JSON list, see README); empty for none.
    #[arg(long, env = "USER_FAULTS", default_value = "")]
    pub faults: String,
    /// Log JSON lines instead of text.
    #[arg(long, env = "LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// Its own key (SHOP_IDENTITY_KEY_FILE: it calls payment- and item-service), whom it
    /// trusts (SHOP_TRUSTED_KEYS_FILE) and whether its fault admin exists (SHOP_FAULT_ADMIN).
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
    /// The event stream of the asynchronous checkout (NATS_URL); without it RequestCheckout
    /// answers UNAVAILABLE.
    #[command(flatten)]
    pub events: platform::events::EventsSettings,
}

impl Config {
    /// The gRPC listener's TLS (USER_TLS_CERT and USER_TLS_KEY), if given.
    pub fn server_tls(&self) -> Result<Option<platform::tls::ServerTls>, platform::tls::TlsError> {
        platform::tls::ServerTls::from_settings(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            "USER_TLS_CERT",
            "USER_TLS_KEY",
        )
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn hash_limits(&self) -> crate::password::HashLimits {
        crate::password::HashLimits {
            concurrency: self.hash_concurrency,
            wait: Duration::from_millis(self.hash_wait_ms),
        }
    }

    pub fn recovery(&self) -> crate::recovery::RecoverySettings {
        crate::recovery::RecoverySettings {
            interval: Duration::from_millis(self.recovery_interval_ms.max(10)),
            call_timeout: Duration::from_millis(self.recovery_call_timeout_ms.max(10)),
            stuck_after: Duration::from_secs(self.recovery_stuck_secs),
            batch: self.recovery_batch.max(1),
        }
    }

    /// The signing secret, from the flag/env or the key file.
    pub fn jwt_secret(&self) -> anyhow::Result<SecretString> {
        match (&self.jwt_secret, &self.jwt_secret_file) {
            (Some(s), None) => Ok(s.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("reading the JWT secret file {}: {e}", path.display())
                })?;
                Ok(SecretString::from(text.trim().to_owned()))
            }
            (Some(_), Some(_)) => {
                anyhow::bail!("give either USER_JWT_SECRET or USER_JWT_SECRET_FILE, not both")
            }
            (None, None) => anyhow::bail!("USER_JWT_SECRET or USER_JWT_SECRET_FILE is required"),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn debug_hides_the_jwt_secret_and_the_database_password() {
        let secret = "jwt-secret-0123456789-abcdefghijklmnop";
        let config = Config::parse_from([
            "user-service",
            "--database-url",
            "postgres://shop:db-password-42@localhost/shop",
            "--jwt-secret",
            secret,
        ]);
        let shown = format!("{config:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(!shown.contains("db-password-42"), "{shown}");
    }

    #[test]
    fn hash_concurrency_defaults_to_the_cpus_and_refuses_zero() {
        let args = ["user-service", "--database-url", "postgres://x@y/z"];
        let config = Config::parse_from(args);
        assert_eq!(
            config.hash_concurrency,
            crate::password::default_concurrency()
        );
        let zero = Config::try_parse_from(args.iter().copied().chain(["--hash-concurrency", "0"]));
        assert!(zero.is_err());
    }
}
