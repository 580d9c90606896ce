//! The card gateway's settings (flags and environment).

use secrecy::SecretString;

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

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
    /// The secret key (`sk_test_...`): charges, refunds and reads. payment-service holds it.
    #[arg(long, env = "CARD_GATEWAY_SECRET_KEY", value_parser = secret, hide_env_values = true)]
    pub secret_key: Option<SecretString>,
    /// The secret key from this file (`shopctl keys init` writes `card-secret-key`).
    #[arg(long, env = "CARD_GATEWAY_SECRET_KEY_FILE")]
    pub secret_key_file: Option<std::path::PathBuf>,
    /// The publishable key (`pk_test_...`): `POST /v1/tokens` only. The gateway holds it.
    #[arg(long, env = "CARD_GATEWAY_PUBLISHABLE_KEY", value_parser = secret, hide_env_values = true)]
    pub publishable_key: Option<SecretString>,
    /// The publishable key from this file (`card-publishable-key`).
    #[arg(long, env = "CARD_GATEWAY_PUBLISHABLE_KEY_FILE")]
    pub publishable_key_file: Option<std::path::PathBuf>,
    /// How long a token can be charged after it was made (seconds).
    #[arg(long, env = "CARD_GATEWAY_TOKEN_TTL_SECS", default_value_t = crate::ledger::DEFAULT_TOKEN_TTL_SECS)]
    pub token_ttl_secs: u64,
    /// Tokens kept at most; while that many are pending (unused, unexpired) new ones are
    /// refused (429) rather than pending ones dropped.
    #[arg(long, env = "CARD_GATEWAY_MAX_TOKENS", default_value_t = DEFAULT_MAX_ENTRIES)]
    pub max_tokens: usize,
    /// Other merchants on the same processor, each a (secret, publishable) key pair: their
    /// tokens are theirs alone. Tests use it; the shop has one account.
    #[arg(skip)]
    pub other_accounts: Vec<(SecretString, SecretString)>,
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
            secret_key: None,
            secret_key_file: None,
            publishable_key: None,
            publishable_key_file: None,
            token_ttl_secs: crate::ledger::DEFAULT_TOKEN_TTL_SECS,
            max_tokens: DEFAULT_MAX_ENTRIES,
            other_accounts: Vec::new(),
            log_json: false,
            identity: platform::identity::IdentitySettings::default(),
        }
    }

    /// These settings with the shop's key pair given as values.
    pub fn with_keys(mut self, secret: SecretString, publishable: SecretString) -> Self {
        self.secret_key = Some(secret);
        self.publishable_key = Some(publishable);
        self
    }
}
