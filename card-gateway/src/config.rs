//! The card gateway's settings (flags and environment).

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "card-gateway",
    about = "Mock card gateway with a Stripe-like JSON API"
)]
pub struct Config {
    /// HTTP listen address; port 0 picks a free port.
    #[arg(long, env = "CARD_GATEWAY_ADDR", default_value = "127.0.0.1:8081")]
    pub addr: String,
    /// Injected latency and HTTP 500s: JSON list of platform fault rules whose `method` is a
    /// route key ("POST /v1/charges", "POST /v1/refunds", "POST /v1/tokens",
    /// "GET /v1/charges/{id}", "GET /v1/charges") or "*". Example:
    /// [{"method":"POST /v1/charges","latency":{"kind":"fixed","ms":200},"error_rate":0.1}]
    #[arg(long, env = "CARD_GATEWAY_FAULTS", default_value = "")]
    pub faults: String,
    /// Injected hangs: same format; `error_rate` is the probability that a request is never
    /// answered (and never executed).
    #[arg(long, env = "CARD_GATEWAY_HANGS", default_value = "")]
    pub hangs: String,
    /// Charges, refunds, tokens and idempotency records kept in memory, each; past that the
    /// oldest finished ones are dropped.
    #[arg(long, env = "CARD_GATEWAY_MAX_ENTRIES", default_value_t = DEFAULT_MAX_ENTRIES)]
    pub max_entries: usize,
    /// Keep the books in this file too (JSON lines, synced per change) and load it at
    /// start, so a killed and restarted gateway still knows its charges, as a real card
    /// processor would. Unset: memory only.
    #[arg(long, env = "CARD_GATEWAY_JOURNAL")]
    pub journal: Option<std::path::PathBuf>,
    /// Log as JSON lines.
    #[arg(long, env = "LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// `/admin/*` exists only with SHOP_FAULT_ADMIN=on, and then needs an operator token
    /// (audience `card-gateway`) in `x-shop-caller`, checked against SHOP_TRUSTED_KEYS_FILE.
    #[command(flatten)]
    pub identity: platform::identity::IdentitySettings,
}

/// The audience of operator tokens for the card gateway's admin API.
pub const AUDIENCE: &str = "card-gateway";

/// Default of [`Config::max_entries`].
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

impl Config {
    /// Defaults with the given listen address (tests use "127.0.0.1:0").
    pub fn on(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            faults: String::new(),
            hangs: String::new(),
            max_entries: DEFAULT_MAX_ENTRIES,
            journal: None,
            log_json: false,
            identity: platform::identity::IdentitySettings::default(),
        }
    }
}
