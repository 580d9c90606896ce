//! Gateway settings: every field is a CLI flag and an environment variable.

use std::time::Duration;

use platform::{
    balance::BalanceSettings, config::parse_switch, endpoints::ServiceUrls, http_server::HttpLimits,
};
use secrecy::SecretString;

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("expected a whole number: {e}")),
    }
}

/// The number of CPUs (1 when unknown): user-service's default number of hashing slots.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

fn parse_secret(s: &str) -> Result<SecretString, String> {
    if s.len() < 16 {
        return Err("must be at least 16 characters".into());
    }
    Ok(SecretString::from(s))
}

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gateway", about = "Shop REST gateway and web shop")]
pub struct Config {
    /// HTTP listen address: the public port (REST API, web shop, /openapi.json, /healthz).
    /// Port 0 picks one.
    #[arg(long, env = "GATEWAY_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// The operator listener: Prometheus /metrics and /debug/downstreams (the services'
    /// internal URLs and breaker states). For the scraper and operators only, never
    /// published beside the public port. Port 0 picks one.
    #[arg(long, env = "GATEWAY_METRICS_ADDR", default_value = "127.0.0.1:9094")]
    pub metrics_addr: String,
    /// Where each service is reached: one URL, several separated by commas (replicas), or
    /// a DNS name standing for several addresses (a Kubernetes headless Service); calls are
    /// balanced over all of them.
    #[arg(
        long,
        env = "USER_SERVICE_URL",
        value_parser = ServiceUrls::parse,
        default_value = "http://127.0.0.1:50051"
    )]
    pub user_service_url: ServiceUrls,
    #[arg(
        long,
        env = "ITEM_SERVICE_URL",
        value_parser = ServiceUrls::parse,
        default_value = "http://127.0.0.1:50052"
    )]
    pub item_service_url: ServiceUrls,
    #[arg(
        long,
        env = "PAYMENT_SERVICE_URL",
        value_parser = ServiceUrls::parse,
        default_value = "http://127.0.0.1:50053"
    )]
    pub payment_service_url: ServiceUrls,
    /// The card processor, whose public token endpoint the asynchronous checkout uses to
    /// swap the card for a token at the edge.
    #[arg(
        long,
        env = "CARD_GATEWAY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub card_gateway_url: String,
    /// The card processor's publishable key (`pk_test_...`): it opens `POST /v1/tokens` only,
    /// so the edge can tokenize cards but never charge, refund or read.
    #[arg(long, env = "CARD_GATEWAY_PUBLISHABLE_KEY", value_parser = parse_secret, hide_env_values = true)]
    pub card_publishable_key: Option<SecretString>,
    /// The publishable key from this file (`shopctl keys init` writes `card-publishable-key`).
    #[arg(long, env = "CARD_GATEWAY_PUBLISHABLE_KEY_FILE")]
    pub card_publishable_key_file: Option<std::path::PathBuf>,
    /// HS256 secret shared with user-service; tokens are verified here.
    #[arg(long, env = "USER_JWT_SECRET", value_parser = parse_secret, hide_env_values = true)]
    pub jwt_secret: SecretString,
    /// Deadline budget of one checkout, all hops included (ms).
    #[arg(long, env = "GATEWAY_CHECKOUT_BUDGET_MS", default_value_t = 2000)]
    pub checkout_budget_ms: u64,
    /// How long a checkout request owns its durable record before user-service's recovery
    /// may take the checkout over (ms). At least the checkout budget plus the compensation
    /// budget (twice the checkout budget) plus 1 s: a live request must never race the
    /// recovery.
    #[arg(long, env = "GATEWAY_CHECKOUT_LEASE_MS", default_value_t = 10_000)]
    pub checkout_lease_ms: u64,
    /// Deadline budget of every other request (ms).
    #[arg(long, env = "GATEWAY_READ_BUDGET_MS", default_value_t = 500)]
    pub read_budget_ms: u64,
    /// TCP connect timeout towards a service (ms).
    #[arg(long, env = "GATEWAY_CONNECT_TIMEOUT_MS", default_value_t = 250)]
    pub connect_timeout_ms: u64,
    /// Retries of idempotent calls (on/off).
    #[arg(long, env = "GATEWAY_RETRIES", default_value = "on", value_parser = parse_switch)]
    pub retries: bool,
    /// Attempts per call, the first included.
    #[arg(long, env = "GATEWAY_RETRY_MAX_ATTEMPTS", default_value_t = 3)]
    pub retry_max_attempts: u32,
    /// First backoff (ms); doubles per attempt, full jitter.
    #[arg(long, env = "GATEWAY_RETRY_BASE_MS", default_value_t = 25)]
    pub retry_base_ms: u64,
    /// Largest backoff (ms).
    #[arg(long, env = "GATEWAY_RETRY_MAX_BACKOFF_MS", default_value_t = 250)]
    pub retry_max_backoff_ms: u64,
    /// Retry budget per service (gRFC A6 `max_tokens`): retries stop while tokens <= half.
    #[arg(long, env = "GATEWAY_RETRY_BUDGET_TOKENS", default_value_t = 10.0)]
    pub retry_budget_tokens: f64,
    /// Tokens a success gives back (gRFC A6 `token_ratio`).
    #[arg(long, env = "GATEWAY_RETRY_TOKEN_RATIO", default_value_t = 0.1)]
    pub retry_token_ratio: f64,
    /// Circuit breakers per downstream service and kind of call (on/off).
    #[arg(long, env = "GATEWAY_BREAKERS", default_value = "on", value_parser = parse_switch)]
    pub breakers: bool,
    /// Consecutive failures that open a breaker.
    #[arg(long, env = "GATEWAY_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,
    /// The consecutive failures must span at least this long, first to last, to open a
    /// breaker (ms): one stall that times out every call in flight at once is not a
    /// dependency that keeps failing. 0: the count alone decides.
    #[arg(long, env = "GATEWAY_BREAKER_MIN_SPAN_MS", default_value_t = 250)]
    pub breaker_min_span_ms: u64,
    /// How long an open breaker rejects calls before its first probe (ms).
    #[arg(long, env = "GATEWAY_BREAKER_OPEN_MS", default_value_t = 1000)]
    pub breaker_open_ms: u64,
    /// The longest an open breaker waits before a probe (ms): each failed probe doubles the
    /// wait, from GATEWAY_BREAKER_OPEN_MS up to this. A service back after a restart is
    /// probed within a second; one that stays down is probed every few seconds.
    #[arg(long, env = "GATEWAY_BREAKER_MAX_OPEN_MS", default_value_t = 5000)]
    pub breaker_max_open_ms: u64,
    /// Successful probes in half-open needed to close again.
    #[arg(long, env = "GATEWAY_BREAKER_HALF_OPEN_PROBES", default_value_t = 1)]
    pub breaker_half_open_probes: u32,
    /// A timed-out call counts against its breaker only if it was sent with at least this
    /// much of its deadline left (ms): a call sent with less ran out of its caller's
    /// budget, which says nothing about the service.
    #[arg(long, env = "GATEWAY_BREAKER_TIMEOUT_FLOOR_MS", default_value_t = 200)]
    pub breaker_timeout_floor_ms: u64,
    /// Read calls (catalog, orders, profile, token checks) in flight per service at once;
    /// more are refused at once with 503 and Retry-After.
    #[arg(long, env = "GATEWAY_READ_CONCURRENCY", default_value_t = 256)]
    pub read_concurrency: usize,
    /// Write calls (stock, payments, checkout records, catalog edits) in flight per service
    /// at once; more are refused at once with 503 and Retry-After, before anything is sent.
    #[arg(long, env = "GATEWAY_WRITE_CONCURRENCY", default_value_t = 64)]
    pub write_concurrency: usize,
    /// Fault rules for the gateway's own routes (platform faults JSON); route keys are
    /// "METHOD /path/pattern", e.g. "GET /api/items", or "*".
    #[arg(long, env = "GATEWAY_FAULTS", default_value = "")]
    pub faults: String,
    /// Largest accepted request body (bytes); larger is 413.
    #[arg(long, env = "GATEWAY_BODY_LIMIT_BYTES", default_value_t = 64 * 1024)]
    pub body_limit_bytes: usize,
    /// A connection that has sent no byte within this long after it was accepted is
    /// closed (ms): silent sockets cannot hold connection slots.
    #[arg(long, env = "GATEWAY_FIRST_BYTE_TIMEOUT_MS", default_value_t = 5_000)]
    pub first_byte_timeout_ms: u64,
    /// A connection that has not sent a request's complete headers within this long is
    /// closed (ms), whatever the protocol (a partial HTTP/2 preface, a preface with no
    /// request, half an HTTP/1 request line): slow-header (slowloris) clients cannot hold
    /// sockets. On HTTP/1 each later request head gets as long again.
    #[arg(long, env = "GATEWAY_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed (ms).
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// HTTP/2: a PING after this long without a frame from the client (ms)...
    #[arg(
        long,
        env = "GATEWAY_HTTP2_KEEPALIVE_INTERVAL_MS",
        default_value_t = 20_000
    )]
    pub http2_keepalive_interval_ms: u64,
    /// ...and the connection is closed when the answer takes longer than this (ms).
    #[arg(
        long,
        env = "GATEWAY_HTTP2_KEEPALIVE_TIMEOUT_MS",
        default_value_t = 20_000
    )]
    pub http2_keepalive_timeout_ms: u64,
    /// A request body must be complete within this long after the request's headers (ms);
    /// a slower one is answered 408 and its HTTP/1 connection closed.
    #[arg(long, env = "GATEWAY_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,
    /// A request not answered within this long is answered 504 `deadline_exceeded` (ms).
    /// Never shorter than the checkout lease, so a checkout that owns its record is not
    /// cut off.
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// HTTP connections served at once; more wait in the listen backlog.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// HTTP connections served at once from one client address (IPv6: its /64); more are
    /// closed at once, so one address cannot take every slot. Trusted proxies are exempt.
    #[arg(
        long,
        env = "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 1_000
    )]
    pub max_connections_per_address: usize,
    /// Login throttling per account and per client address (on/off).
    #[arg(long, env = "GATEWAY_LOGIN_THROTTLE", default_value = "on", value_parser = parse_switch)]
    pub login_throttle: bool,
    /// Failed logins for one account within the window before its logins get 429.
    #[arg(long, env = "GATEWAY_LOGIN_ACCOUNT_FAILURES", default_value_t = 5)]
    pub login_account_failures: u32,
    /// Failed logins from one client address (IPv6: its /64) within the window before its
    /// logins get 429.
    #[arg(long, env = "GATEWAY_LOGIN_ADDRESS_FAILURES", default_value_t = 50)]
    pub login_address_failures: u32,
    /// The throttle's window, counted from the first failure (seconds).
    #[arg(long, env = "GATEWAY_LOGIN_WINDOW_SECS", default_value_t = 300)]
    pub login_window_secs: u64,
    /// Accounts and addresses the throttle tracks at most (bounds its memory).
    #[arg(long, env = "GATEWAY_LOGIN_TRACKED_KEYS", default_value_t = 100_000)]
    pub login_tracked_keys: usize,
    /// Comma-separated proxy IPs whose X-Forwarded-For names the client; from any other
    /// peer the header is ignored and the client is the socket peer.
    #[arg(long, env = "GATEWAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Logins and registrations in progress at once; more get 429 at once. Each costs
    /// user-service a password hash: keep this at most its hashing slots
    /// (USER_HASH_CONCURRENCY, by default the number of CPUs, as here; with replicas, all
    /// user-service slots divided by the gateway replicas), so none waits there.
    #[arg(long, env = "GATEWAY_AUTH_CONCURRENCY", default_value_t = cpus(), value_parser = at_least_one)]
    pub auth_concurrency: usize,
    /// Registration throttling per client address (on/off).
    #[arg(long, env = "GATEWAY_REGISTER_THROTTLE", default_value = "on", value_parser = parse_switch)]
    pub register_throttle: bool,
    /// Registrations from one client address (IPv6: its /64) within the window; more get
    /// 429 until the window ends.
    #[arg(long, env = "GATEWAY_REGISTER_ADDRESS_LIMIT", default_value_t = 10)]
    pub register_address_limit: u32,
    /// The registration throttle's window, counted from the address's first registration
    /// (seconds).
    #[arg(long, env = "GATEWAY_REGISTER_WINDOW_SECS", default_value_t = 600)]
    pub register_window_secs: u64,
    /// JSON log lines.
    #[arg(long, env = "LOG_JSON", default_value = "off", value_parser = parse_switch)]
    pub log_json: bool,
    /// Its own key (SHOP_IDENTITY_KEY_FILE: it signs every call to the services) and
    /// whether /api/admin/faults exists (SHOP_FAULT_ADMIN).
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
    pub fn checkout_budget(&self) -> Duration {
        Duration::from_millis(self.checkout_budget_ms)
    }
    /// The checkout record's lease, never shorter than what a request may still spend on it.
    pub fn checkout_lease(&self) -> Duration {
        let floor = self.checkout_budget() * 2 + Duration::from_secs(1);
        Duration::from_millis(self.checkout_lease_ms).max(floor)
    }
    /// Refuses a checkout budget whose lease user-service would refuse on every checkout
    /// (it must cover the checkout and its compensation: twice the budget plus 1 s).
    pub fn check_checkout_lease(&self) -> anyhow::Result<()> {
        let max = platform::cart::MAX_CHECKOUT_LEASE;
        if self.checkout_lease() > max {
            anyhow::bail!(
                "GATEWAY_CHECKOUT_BUDGET_MS={} (or GATEWAY_CHECKOUT_LEASE_MS={}) needs a checkout lease of {} ms, over user-service's limit of {} ms: use a budget of at most {} ms",
                self.checkout_budget_ms,
                self.checkout_lease_ms,
                self.checkout_lease().as_millis(),
                max.as_millis(),
                (max.as_millis() - 1000) / 2
            );
        }
        Ok(())
    }
    pub fn read_budget(&self) -> Duration {
        Duration::from_millis(self.read_budget_ms)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The request timeout actually applied: at least the checkout lease.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms).max(self.checkout_lease())
    }

    pub fn serve_limits(&self) -> HttpLimits {
        // 0 would mean "at once" (or, for the ping interval, a busy loop): 1 ms at least.
        let ms = |v: u64| Duration::from_millis(v.max(1));
        HttpLimits {
            first_byte_timeout: ms(self.first_byte_timeout_ms),
            header_read_timeout: ms(self.header_read_timeout_ms),
            idle_timeout: ms(self.idle_timeout_ms),
            keep_alive_interval: ms(self.http2_keepalive_interval_ms),
            keep_alive_timeout: ms(self.http2_keepalive_timeout_ms),
            body_timeout: ms(self.body_timeout_ms),
            request_timeout: Some(self.request_timeout()),
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            // A proxy's one address carries many clients.
            uncapped_addresses: self.trusted_proxies.clone(),
        }
    }

    pub fn login_throttle(&self) -> crate::throttle::ThrottleConfig {
        crate::throttle::ThrottleConfig {
            enabled: self.login_throttle,
            account_failures: self.login_account_failures,
            address_failures: self.login_address_failures,
            window: Duration::from_secs(self.login_window_secs),
            max_keys: self.login_tracked_keys,
            trusted_proxies: self.trusted_proxies.clone(),
        }
    }

    pub fn register_throttle(&self) -> crate::throttle::RegisterConfig {
        crate::throttle::RegisterConfig {
            enabled: self.register_throttle,
            per_address: self.register_address_limit,
            window: Duration::from_secs(self.register_window_secs),
            max_keys: self.login_tracked_keys,
        }
    }

    /// The card processor's publishable key, from its value or file.
    pub fn card_publishable_key(&self) -> anyhow::Result<SecretString> {
        platform::card_keys::read(
            platform::card_keys::Kind::Publishable,
            self.card_publishable_key.as_ref(),
            self.card_publishable_key_file.as_deref(),
        )
    }

    /// Defaults for tests and the monolith: every setting at its default, this secret.
    pub fn with_secret(secret: &str) -> Self {
        use clap::Parser;
        let mut c = Self::parse_from(["gateway", "--jwt-secret", "0123456789abcdef0123"]);
        c.jwt_secret = SecretString::from(secret);
        c
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    const SECRET: [&str; 2] = ["--jwt-secret", "0123456789abcdef0123"];

    #[test]
    fn a_service_url_may_list_several_replicas() {
        let c = Config::parse_from(
            [
                "gateway",
                "--item-service-url",
                "http://127.0.0.1:1, http://127.0.0.1:2",
            ]
            .into_iter()
            .chain(SECRET),
        );
        assert_eq!(c.item_service_url.targets().len(), 2);
        assert_eq!(
            c.item_service_url.to_string(),
            "http://127.0.0.1:1,http://127.0.0.1:2"
        );
    }

    #[test]
    fn a_bad_service_url_names_the_setting_and_the_problem() {
        let err = Config::try_parse_from(
            [
                "gateway",
                "--payment-service-url",
                "http://127.0.0.1:1,127.0.0.1:2",
            ]
            .into_iter()
            .chain(SECRET),
        )
        .expect_err("the second URL has no scheme")
        .to_string();
        assert!(err.contains("PAYMENT_SERVICE_URL"), "{err}");
        assert!(err.contains("\"127.0.0.1:2\" has no scheme"), "{err}");
    }

    /// A budget whose record lease user-service would refuse is refused at start, naming
    /// the setting (every checkout answered 400 before).
    #[test]
    fn a_checkout_budget_beyond_the_lease_limit_fails_at_start() {
        let budget = |ms: &str| {
            Config::parse_from(
                ["gateway", "--checkout-budget-ms", ms]
                    .into_iter()
                    .chain(SECRET),
            )
            .check_checkout_lease()
        };
        let err = budget("60000").expect_err("a 121 s lease").to_string();
        assert!(err.contains("GATEWAY_CHECKOUT_BUDGET_MS=60000"), "{err}");
        assert!(err.contains("at most 59500 ms"), "{err}");
        budget("59500").expect("a lease of exactly 120 s");
        budget("2000").expect("the default");
    }

    #[test]
    fn login_and_registration_limits_have_their_defaults_and_flags() {
        let c = Config::parse_from(["gateway"].into_iter().chain(SECRET));
        assert!(c.auth_concurrency >= 1);
        let r = c.register_throttle();
        assert!(r.enabled);
        assert_eq!(r.per_address, 10);
        assert_eq!(r.window, Duration::from_secs(600));
        let c = Config::parse_from(
            [
                "gateway",
                "--auth-concurrency",
                "3",
                "--register-address-limit",
                "2",
            ]
            .into_iter()
            .chain(SECRET),
        );
        assert_eq!(c.auth_concurrency, 3);
        assert_eq!(c.register_throttle().per_address, 2);
        let err = Config::try_parse_from(
            ["gateway", "--auth-concurrency", "0"]
                .into_iter()
                .chain(SECRET),
        )
        .expect_err("no logins at all is no setting");
        assert!(err.to_string().contains("at least 1"), "{err}");
    }

    /// A request timeout under the checkout lease would cut off a checkout that still
    /// owns its record: the lease wins.
    #[test]
    fn the_request_timeout_is_never_shorter_than_the_checkout_lease() {
        let short = Config::parse_from(
            ["gateway", "--request-timeout-ms", "1000"]
                .into_iter()
                .chain(SECRET),
        );
        assert_eq!(short.request_timeout(), short.checkout_lease());
        assert_eq!(
            short.serve_limits().request_timeout,
            Some(short.checkout_lease())
        );
        let default = Config::parse_from(["gateway"].into_iter().chain(SECRET));
        assert_eq!(default.request_timeout(), Duration::from_secs(30));
    }
}
