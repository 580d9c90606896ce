//! Service identity: who is calling. Each service (and the operator) has its own Ed25519
//! key pair; a caller proves its name with a short-lived compact JWS (EdDSA) in the
//! `x-shop-caller` metadata, with the target service as audience and, optionally, the end
//! user it acts for (`act`). Every server trusts a set of public keys by service name.
//!
//! Tokens rather than mutual TLS because the monolith's in-process calls go through the same
//! tower stack: they carry the same tokens and meet the same checks, so the policy is one
//! piece of code in both deployments.

use std::{collections::HashMap, fmt, path::PathBuf, sync::Arc, time::Duration};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::KeyPair as _;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::token_cache::{Checked, MintKey, Minted, Verified, now};

/// The metadata key the service token travels in (not `authorization`: that stays free
/// for whatever an end user sends).
pub const CALLER_HEADER: &str = "x-shop-caller";

pub const GATEWAY: &str = "gateway";
pub const USER_SERVICE: &str = "user-service";
pub const ITEM_SERVICE: &str = "item-service";
pub const PAYMENT_SERVICE: &str = "payment-service";
/// A person operating the shop (grpcurl, the load test, the experiment): allowed every RPC.
pub const OPERATOR: &str = "operator";

/// Every identity `shopctl keys init` makes a key for.
pub const IDENTITIES: [&str; 5] = [
    GATEWAY,
    USER_SERVICE,
    ITEM_SERVICE,
    PAYMENT_SERVICE,
    OPERATOR,
];

/// How long a token minted for one call lives.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Clock difference tolerated between caller and callee: a token is good for at most
/// [`TOKEN_TTL`] plus this after it was minted (the window a sniffed token can be replayed
/// in, and only at the method it names).
pub const CLOCK_SKEW: Duration = Duration::from_secs(5);
/// The longest lifetime a server accepts (an operator's token for a grpcurl session).
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Key(String),
    #[error("signing a service token")]
    Sign(#[from] jsonwebtoken::errors::Error),
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The end user's role, as the caller asserts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    Customer,
    Admin,
}

/// "I call on behalf of this user": made by the caller that authenticated the user (the
/// gateway after verifying the user's access token; a chained hop passing on what it was
/// told by a caller it verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserAssertion {
    pub user_id: Uuid,
    pub role: UserRole,
}

impl UserAssertion {
    pub fn is_admin(&self) -> bool {
        self.role == UserRole::Admin
    }
}

/// The verified caller of a gRPC request, in its extensions for handlers to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub service: String,
    pub user: Option<UserAssertion>,
}

impl Caller {
    pub fn is(&self, service: &str) -> bool {
        self.service == service
    }

    /// The end user as an admin, when the caller is the one that authenticates end users
    /// (the gateway, which checked the user's own access token and its role). Another
    /// service's `act` claim names a user it acts for, never a role anybody may believe.
    pub fn admin_user(&self) -> Option<UserAssertion> {
        self.user.filter(|u| u.is_admin() && self.is(GATEWAY))
    }

    /// The caller of `req`, as the server's identity layer verified it.
    pub fn of<T>(req: &tonic::Request<T>) -> Option<&Caller> {
        req.extensions().get::<Caller>()
    }
}

/// What a handler decided about the end user of a call (see [`authorize_user`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acting {
    /// The call is for this user, and the caller asserted so.
    Owner,
    /// An admin user, or the operator: may see and act on anyone's data.
    Privileged,
    /// A service acting for itself (a recovery or reconciler), allowed by the caller list.
    System,
}

/// May the caller of this request act on `owner`'s data? Allowed: the asserted user is the
/// owner, or an admin; the operator; or, with no user asserted, one of `system` callers
/// (services that act on their own, like user-service's recovery). A missing identity or a
/// missing user is UNAUTHENTICATED, somebody else's data PERMISSION_DENIED.
pub fn authorize_user(
    caller: Option<&Caller>,
    owner: Uuid,
    system: &[&str],
) -> Result<Acting, tonic::Status> {
    let caller = caller.ok_or_else(|| tonic::Status::unauthenticated("no verified caller"))?;
    if caller.is(OPERATOR) {
        return Ok(Acting::Privileged);
    }
    // Their own data first: an admin buying for themselves is the owner (a charge is made
    // only for its owner), not a privileged stranger.
    if caller.user.is_some_and(|u| u.user_id == owner) {
        return Ok(Acting::Owner);
    }
    if caller.admin_user().is_some() {
        return Ok(Acting::Privileged);
    }
    match caller.user {
        Some(_) => Err(tonic::Status::permission_denied(
            "this belongs to another user",
        )),
        None if system.contains(&caller.service.as_str()) => Ok(Acting::System),
        None => Err(tonic::Status::unauthenticated(
            "this call needs the end user it is made for (act claim in x-shop-caller)",
        )),
    }
}

/// The caller must be the operator or act for an admin user.
pub fn require_admin(caller: Option<&Caller>) -> Result<(), tonic::Status> {
    let caller = caller.ok_or_else(|| tonic::Status::unauthenticated("no verified caller"))?;
    if caller.is(OPERATOR) {
        return Ok(());
    }
    if caller.admin_user().is_some() {
        return Ok(());
    }
    match caller.user {
        Some(_) => Err(tonic::Status::permission_denied(
            "this needs an admin account",
        )),
        None => Err(tonic::Status::unauthenticated(
            "this call needs the admin user it is made for (act claim in x-shop-caller)",
        )),
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    iat: u64,
    exp: u64,
    /// The gRPC path the token was minted for; only the operator's session tokens (grpcurl)
    /// name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    act: Option<UserAssertion>,
}

/// A new Ed25519 private key, PKCS#8 PEM (what `openssl genpkey -algorithm ed25519` writes).
pub fn generate_key() -> Result<SecretString, IdentityError> {
    let rng = ring::rand::SystemRandom::new();
    let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| IdentityError::Key("generating an Ed25519 key failed".into()))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(doc.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(SecretString::from(pem))
}

fn pem_der(pem: &str) -> Result<Vec<u8>, IdentityError> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    if !pem.contains("-----BEGIN PRIVATE KEY-----") {
        return Err(IdentityError::Key(
            "not a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----)".into(),
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| IdentityError::Key("the private key PEM is not valid base64".into()))
}

/// Signs tokens as one identity.
#[derive(Clone)]
pub struct Signer(Arc<SignerInner>);

struct SignerInner {
    name: String,
    key: EncodingKey,
    public: String,
    minted: Minted,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({}, <private key>)", self.0.name)
    }
}

impl Signer {
    /// `name`'s signer from its PKCS#8 PEM Ed25519 private key.
    pub fn from_pem(name: &str, pem: &SecretString) -> Result<Self, IdentityError> {
        let der = pem_der(pem.expose_secret())?;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|_| IdentityError::Key("not an Ed25519 private key".into()))?;
        let public =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        Ok(Self(Arc::new(SignerInner {
            name: name.to_owned(),
            key: EncodingKey::from_ed_der(&der),
            public,
            minted: Minted::default(),
        })))
    }

    /// A signer with a fresh key that lives only in this process (the monolith's internal
    /// identities, tests).
    pub fn ephemeral(name: &str) -> Result<Self, IdentityError> {
        Self::from_pem(name, &generate_key()?)
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The public key, base64url (the form trust files hold).
    pub fn public_key(&self) -> &str {
        &self.0.public
    }

    /// A token for one call of `method` (its gRPC path, "/shop.item.v1.ItemService/GetItem")
    /// at `audience`, on behalf of `user` when given: the one minted earlier for the same
    /// claims while more than half its life remains, else a new one (see
    /// [`crate::token_cache`]).
    pub fn mint(
        &self,
        audience: &str,
        method: &str,
        user: Option<UserAssertion>,
    ) -> Result<String, IdentityError> {
        let key = MintKey {
            audience: audience.to_owned(),
            method: Some(method.to_owned()),
            user,
            ttl: TOKEN_TTL,
        };
        let iat = now();
        if let Some(token) = self.0.minted.get(&key, iat) {
            return Ok(token);
        }
        let token = self.mint_at(audience, Some(method), user, iat, TOKEN_TTL)?;
        self.0.minted.put(key, token.clone(), iat);
        Ok(token)
    }

    /// A newly signed token that lives `ttl` (capped at [`MAX_LIFETIME`]) for `method`, or
    /// for every method when None (servers accept that only from the operator: a grpcurl
    /// session, an HTTP admin API); never cached.
    pub fn mint_for(
        &self,
        audience: &str,
        method: Option<&str>,
        user: Option<UserAssertion>,
        ttl: Duration,
    ) -> Result<String, IdentityError> {
        self.mint_at(audience, method, user, now(), ttl.min(MAX_LIFETIME))
    }

    fn mint_at(
        &self,
        audience: &str,
        method: Option<&str>,
        user: Option<UserAssertion>,
        iat: u64,
        ttl: Duration,
    ) -> Result<String, IdentityError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.0.name.clone());
        let claims = Claims {
            iss: self.0.name.clone(),
            sub: self.0.name.clone(),
            aud: audience.to_owned(),
            iat,
            exp: iat + ttl.as_secs(),
            mth: method.map(str::to_owned),
            act: user,
        };
        Ok(jsonwebtoken::encode(&header, &claims, &self.0.key)?)
    }
}

/// Why a token was refused (said to the caller as UNAUTHENTICATED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("missing {CALLER_HEADER} service token")]
    Missing,
    #[error("malformed {CALLER_HEADER} service token")]
    Malformed,
    #[error("service token of an unknown caller {0:?}")]
    UnknownCaller(String),
    #[error("service token signature or claims invalid")]
    Invalid,
    #[error("service token expired")]
    Expired,
    #[error("service token is for another service")]
    WrongAudience,
    #[error("service token is for another method")]
    WrongMethod,
}

/// The public keys a server trusts, by service name, and the tokens it already checked.
#[derive(Clone, Default)]
pub struct Trust {
    keys: Arc<HashMap<String, Vec<DecodingKey>>>,
    verified: Arc<Verified>,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.keys.keys().collect();
        names.sort();
        write!(f, "Trust({names:?})")
    }
}

impl Trust {
    /// Parses a trust file: one `NAME PUBLIC-KEY` per line (base64url Ed25519 key), `#`
    /// comments; a name may have several keys (rotation).
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let mut keys: HashMap<String, Vec<DecodingKey>> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(name), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(IdentityError::Key(format!(
                    "trusted keys line {}: expected `NAME PUBLIC-KEY`",
                    n + 1
                )));
            };
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(key)
                .ok()
                .filter(|r| r.len() == 32)
                .ok_or_else(|| {
                    IdentityError::Key(format!(
                        "trusted keys line {}: not a base64url Ed25519 public key",
                        n + 1
                    ))
                })?;
            keys.entry(name.to_owned())
                .or_default()
                .push(DecodingKey::from_ed_der(&raw));
        }
        Ok(Self::with_keys(keys))
    }

    fn with_keys(keys: HashMap<String, Vec<DecodingKey>>) -> Self {
        Self {
            keys: Arc::new(keys),
            verified: Arc::default(),
        }
    }

    /// Trusts exactly these signers' public keys.
    pub fn of(signers: &[&Signer]) -> Self {
        Self::parse(&trust_file(signers)).unwrap_or_default()
    }

    /// Both sets of keys.
    pub fn union(&self, other: &Trust) -> Self {
        let mut keys = (*self.keys).clone();
        for (name, more) in other.keys.iter() {
            keys.entry(name.clone())
                .or_default()
                .extend(more.iter().cloned());
        }
        Self::with_keys(keys)
    }

    pub fn trusts(&self, name: &str) -> bool {
        self.keys.contains_key(name)
    }

    /// Verifies `token` for a server known as any of `audiences`. A token whose signature
    /// was checked before is not checked again: only its times and audience are (see
    /// [`crate::token_cache`]).
    pub fn verify(
        &self,
        token: &str,
        audiences: &[&str],
        method: &str,
    ) -> Result<Caller, TokenError> {
        let now = now();
        if let Some(c) = self.verified.get(token) {
            return accept(c, audiences, method, now);
        }
        let checked = self.check(token, audiences)?;
        self.verified.put(
            token,
            checked.clone(),
            now.saturating_sub(CLOCK_SKEW.as_secs()),
        );
        accept(checked, audiences, method, now)
    }

    /// The full check of `token` (signature, issuer, subject, audience, times), remembering
    /// nothing: what every call paid before tokens were cached.
    pub fn verify_uncached(
        &self,
        token: &str,
        audiences: &[&str],
        method: &str,
    ) -> Result<Caller, TokenError> {
        let checked = self.check(token, audiences)?;
        accept(checked, audiences, method, now())
    }

    fn check(&self, token: &str, audiences: &[&str]) -> Result<Checked, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let name = header.kid.ok_or(TokenError::Malformed)?;
        let keys = self
            .keys
            .get(&name)
            .ok_or_else(|| TokenError::UnknownCaller(name.clone()))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.set_audience(audiences);
        validation.set_issuer(&[&name]);
        validation.sub = Some(name.clone());
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.leeway = CLOCK_SKEW.as_secs();
        let mut last = TokenError::Invalid;
        for key in keys {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    let c = data.claims;
                    if c.exp.saturating_sub(c.iat) > MAX_LIFETIME.as_secs() {
                        return Err(TokenError::Invalid);
                    }
                    return Ok(Checked {
                        service: name,
                        user: c.act,
                        method: c.mth,
                        aud: c.aud,
                        iat: c.iat,
                        exp: c.exp,
                    });
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => TokenError::Expired,
                        ErrorKind::InvalidAudience => TokenError::WrongAudience,
                        _ => TokenError::Invalid,
                    };
                }
            }
        }
        Err(last)
    }
}

/// The checks of a token that depend on the moment, the server and the call, made on every
/// call (the same time rules jsonwebtoken applies: expired once `exp` is more than the
/// clock skew behind `now`). A token names the method it was minted for, and only that
/// method accepts it; only the operator's session tokens name none.
fn accept(c: Checked, audiences: &[&str], method: &str, now: u64) -> Result<Caller, TokenError> {
    let skew = CLOCK_SKEW.as_secs();
    if c.exp.saturating_add(skew) < now {
        return Err(TokenError::Expired);
    }
    if !audiences.contains(&c.aud.as_str()) {
        return Err(TokenError::WrongAudience);
    }
    if c.iat > now + skew {
        return Err(TokenError::Invalid);
    }
    match c.method.as_deref() {
        Some(m) if m == method => {}
        None if c.service == OPERATOR => {}
        _ => return Err(TokenError::WrongMethod),
    }
    Ok(Caller {
        service: c.service,
        user: c.user,
    })
}

/// The trust file naming these signers' public keys.
pub fn trust_file(signers: &[&Signer]) -> String {
    let mut out = String::from("# Shop service identities: NAME ED25519-PUBLIC-KEY (base64url)\n");
    for s in signers {
        out.push_str(&format!("{} {}\n", s.name(), s.public_key()));
    }
    out
}

/// On/off switch for an environment setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Switch {
    On,
    #[default]
    Off,
}

/// A process's identity settings: its own private key and the public keys it trusts, and
/// whether its fault/admin APIs exist. Every service flattens this into its config.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct IdentitySettings {
    /// This process's Ed25519 private key (PKCS#8 PEM file), to sign its calls.
    #[arg(long, env = "SHOP_IDENTITY_KEY_FILE")]
    pub identity_key_file: Option<PathBuf>,
    /// The same key as a value (instead of the file).
    #[arg(long, env = "SHOP_IDENTITY_KEY", hide_env_values = true)]
    pub identity_key: Option<SecretString>,
    /// The public keys this process trusts, by service name (a trust file).
    #[arg(long, env = "SHOP_TRUSTED_KEYS_FILE")]
    pub trusted_keys_file: Option<PathBuf>,
    /// The same trust file as a value.
    #[arg(long, env = "SHOP_TRUSTED_KEYS")]
    pub trusted_keys: Option<String>,
    /// Serve the fault-injection admin APIs (operator credential required). Off: they do
    /// not exist.
    #[arg(long, env = "SHOP_FAULT_ADMIN", value_enum, default_value = "off")]
    pub fault_admin: Switch,
}

impl IdentitySettings {
    /// Settings with a key and a trust file given as values.
    pub fn with_values(key: Option<SecretString>, trusted: &str) -> Self {
        Self {
            identity_key: key,
            trusted_keys: Some(trusted.to_owned()),
            ..Self::default()
        }
    }

    pub fn fault_admin(&self) -> bool {
        self.fault_admin == Switch::On
    }

    /// The signer for `name`, from the key value or file. Required for a process that calls
    /// other services.
    pub fn signer(&self, name: &str) -> Result<Signer, IdentityError> {
        let pem = match (&self.identity_key, &self.identity_key_file) {
            (Some(k), _) => k.clone(),
            (None, Some(path)) => {
                SecretString::from(std::fs::read_to_string(path).map_err(|source| {
                    IdentityError::Read {
                        path: path.clone(),
                        source,
                    }
                })?)
            }
            (None, None) => {
                return Err(IdentityError::Key(format!(
                    "SHOP_IDENTITY_KEY_FILE is not set: {name} signs its calls with its own \
                     private key (make keys with `shopctl keys init DIR`)"
                )));
            }
        };
        Signer::from_pem(name, &pem)
            .map_err(|e| IdentityError::Key(format!("SHOP_IDENTITY_KEY(_FILE) of {name}: {e}")))
    }

    /// The keys this process trusts; required for a process that serves calls.
    pub fn trust(&self) -> Result<Trust, IdentityError> {
        let text = match (&self.trusted_keys, &self.trusted_keys_file) {
            (Some(t), _) => t.clone(),
            (None, Some(path)) => {
                std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
                    path: path.clone(),
                    source,
                })?
            }
            (None, None) => {
                return Err(IdentityError::Key(
                    "SHOP_TRUSTED_KEYS_FILE is not set: a server accepts only callers whose \
                     public keys it trusts (make keys with `shopctl keys init DIR`)"
                        .into(),
                ));
            }
        };
        Trust::parse(&text)
            .map_err(|e| IdentityError::Key(format!("SHOP_TRUSTED_KEYS(_FILE): {e}")))
    }
}

#[cfg(test)]
mod tests {
    /// The method the tests' tokens are for.
    const M: &str = "/shop.payment.v1.PaymentService/GetPayment";
    use super::*;

    fn user(role: UserRole) -> UserAssertion {
        UserAssertion {
            user_id: Uuid::new_v4(),
            role,
        }
    }

    #[test]
    fn a_minted_token_verifies_with_its_audience_and_carries_the_user() {
        let gw = Signer::ephemeral(GATEWAY).expect("key");
        let trust = Trust::of(&[&gw]);
        let u = user(UserRole::Customer);
        let token = gw.mint(PAYMENT_SERVICE, M, Some(u)).expect("mint");
        let caller = trust.verify(&token, &[PAYMENT_SERVICE], M).expect("valid");
        assert_eq!(caller.service, GATEWAY);
        assert_eq!(caller.user, Some(u));
        assert_eq!(
            trust.verify(&token, &[ITEM_SERVICE], M),
            Err(TokenError::WrongAudience)
        );
    }

    #[test]
    fn a_token_is_reused_only_for_the_same_audience_and_end_user() {
        let gw = Signer::ephemeral(GATEWAY).expect("key");
        let trust = Trust::of(&[&gw]);
        let alice = user(UserRole::Customer);
        let bob = user(UserRole::Customer);
        let a1 = gw.mint(PAYMENT_SERVICE, M, Some(alice)).expect("mint");
        let a2 = gw.mint(PAYMENT_SERVICE, M, Some(alice)).expect("mint");
        assert_eq!(a1, a2, "the same claims reuse the token");
        let b = gw.mint(PAYMENT_SERVICE, M, Some(bob)).expect("mint");
        let none = gw.mint(PAYMENT_SERVICE, M, None).expect("mint");
        let item = gw.mint(ITEM_SERVICE, M, Some(alice)).expect("mint");
        assert!(b != a1 && none != a1 && item != a1 && none != b);
        // Each still says whom it is for, checked the first time and from the cache alike.
        for _ in 0..2 {
            assert_eq!(
                trust.verify(&b, &[PAYMENT_SERVICE], M).map(|c| c.user),
                Ok(Some(bob))
            );
            assert_eq!(
                trust.verify(&none, &[PAYMENT_SERVICE], M).map(|c| c.user),
                Ok(None)
            );
            assert_eq!(
                trust.verify(&item, &[PAYMENT_SERVICE], M),
                Err(TokenError::WrongAudience)
            );
        }
    }

    #[test]
    fn a_checked_token_is_refused_for_another_audience_and_once_expired() {
        let gw = Signer::ephemeral(GATEWAY).expect("key");
        let trust = Trust::of(&[&gw]);
        let token = gw.mint(PAYMENT_SERVICE, M, None).expect("mint");
        assert!(trust.verify(&token, &[PAYMENT_SERVICE], M).is_ok());
        assert_eq!(
            trust.verify(&token, &[ITEM_SERVICE], M),
            Err(TokenError::WrongAudience)
        );
        let cached = trust.verified.get(&token).expect("remembered");
        let later = cached.exp + CLOCK_SKEW.as_secs() + 1;
        assert_eq!(
            accept(cached, &[PAYMENT_SERVICE], M, later),
            Err(TokenError::Expired)
        );
        // Another trust (another server) has checked nothing yet and checks in full.
        let other = Trust::of(&[&Signer::ephemeral(GATEWAY).expect("key")]);
        assert_eq!(
            other.verify(&token, &[PAYMENT_SERVICE], M),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn expired_forged_and_unknown_tokens_are_refused() {
        let gw = Signer::ephemeral(GATEWAY).expect("key");
        let trust = Trust::of(&[&gw]);
        let old = gw
            .mint_at(PAYMENT_SERVICE, Some(M), None, now() - 600, TOKEN_TTL)
            .expect("mint");
        assert_eq!(
            trust.verify(&old, &[PAYMENT_SERVICE], M),
            Err(TokenError::Expired)
        );
        // Signed by another key under the gateway's name.
        let impostor = Signer::ephemeral(GATEWAY).expect("key");
        let forged = impostor.mint(PAYMENT_SERVICE, M, None).expect("mint");
        assert_eq!(
            trust.verify(&forged, &[PAYMENT_SERVICE], M),
            Err(TokenError::Invalid)
        );
        // A name nobody trusts.
        let stranger = Signer::ephemeral("stranger").expect("key");
        let token = stranger.mint(PAYMENT_SERVICE, M, None).expect("mint");
        assert!(matches!(
            trust.verify(&token, &[PAYMENT_SERVICE], M),
            Err(TokenError::UnknownCaller(_))
        ));
        // The claimed name in the header must be the issuer the claims name.
        let mut parts = gw.mint(PAYMENT_SERVICE, M, None).expect("mint");
        parts.push('x');
        assert!(trust.verify(&parts, &[PAYMENT_SERVICE], M).is_err());
        assert_eq!(
            trust.verify("garbage", &[PAYMENT_SERVICE], M),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn tokens_living_too_long_or_from_the_future_are_refused() {
        let op = Signer::ephemeral(OPERATOR).expect("key");
        let trust = Trust::of(&[&op]);
        let long = op
            .mint_at(
                ITEM_SERVICE,
                Some(M),
                None,
                now(),
                Duration::from_secs(86_400),
            )
            .expect("mint");
        assert_eq!(
            trust.verify(&long, &[ITEM_SERVICE], M),
            Err(TokenError::Invalid)
        );
        let future = op
            .mint_at(ITEM_SERVICE, Some(M), None, now() + 600, TOKEN_TTL)
            .expect("mint");
        assert_eq!(
            trust.verify(&future, &[ITEM_SERVICE], M),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn trust_files_round_trip_and_bad_lines_name_the_line() {
        let a = Signer::ephemeral(GATEWAY).expect("key");
        let b = Signer::ephemeral(OPERATOR).expect("key");
        let trust = Trust::parse(&trust_file(&[&a, &b])).expect("parse");
        assert!(trust.trusts(GATEWAY) && trust.trusts(OPERATOR) && !trust.trusts(ITEM_SERVICE));
        let err = Trust::parse("gateway\n").expect_err("refused").to_string();
        assert!(err.contains("line 1"), "{err}");
        let err = Trust::parse("# c\ngateway abc\n")
            .expect_err("refused")
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn user_checks_tell_owner_admin_system_and_strangers_apart() {
        let owner = Uuid::new_v4();
        let as_user = |id, role| Caller {
            service: GATEWAY.into(),
            user: Some(UserAssertion { user_id: id, role }),
        };
        let c = as_user(owner, UserRole::Customer);
        assert_eq!(
            authorize_user(Some(&c), owner, &[]).ok(),
            Some(Acting::Owner)
        );
        let c = as_user(Uuid::new_v4(), UserRole::Customer);
        assert_eq!(
            authorize_user(Some(&c), owner, &[]).map_err(|s| s.code()),
            Err(tonic::Code::PermissionDenied)
        );
        let c = as_user(Uuid::new_v4(), UserRole::Admin);
        assert_eq!(
            authorize_user(Some(&c), owner, &[]).ok(),
            Some(Acting::Privileged)
        );
        let c = Caller {
            service: GATEWAY.into(),
            user: None,
        };
        assert_eq!(
            authorize_user(Some(&c), owner, &[USER_SERVICE]).map_err(|s| s.code()),
            Err(tonic::Code::Unauthenticated)
        );
        let c = Caller {
            service: USER_SERVICE.into(),
            user: None,
        };
        assert_eq!(
            authorize_user(Some(&c), owner, &[USER_SERVICE]).ok(),
            Some(Acting::System)
        );
        assert!(authorize_user(None, owner, &[USER_SERVICE]).is_err());
    }

    #[test]
    fn only_the_gateway_is_believed_about_an_admin() {
        let admin = UserAssertion {
            user_id: Uuid::new_v4(),
            role: UserRole::Admin,
        };
        let by = |service: &str| Caller {
            service: service.into(),
            user: Some(admin),
        };
        assert_eq!(by(GATEWAY).admin_user(), Some(admin));
        assert_eq!(by(USER_SERVICE).admin_user(), None);
        assert!(require_admin(Some(&by(GATEWAY))).is_ok());
        assert_eq!(
            require_admin(Some(&by(PAYMENT_SERVICE))).map_err(|s| s.code()),
            Err(tonic::Code::PermissionDenied)
        );
        let stranger = Uuid::new_v4();
        assert_eq!(
            authorize_user(Some(&by(USER_SERVICE)), stranger, &[]).map_err(|s| s.code()),
            Err(tonic::Code::PermissionDenied)
        );
        // An admin's own data is theirs as the owner (a charge is only for its owner).
        assert_eq!(
            authorize_user(Some(&by(GATEWAY)), admin.user_id, &[]).ok(),
            Some(Acting::Owner)
        );
        assert_eq!(
            authorize_user(Some(&by(GATEWAY)), stranger, &[]).ok(),
            Some(Acting::Privileged)
        );
    }

    #[test]
    fn a_token_ten_seconds_past_expiry_is_refused() {
        let gw = Signer::ephemeral(GATEWAY).expect("key");
        let trust = Trust::of(&[&gw]);
        let ttl = TOKEN_TTL.as_secs();
        let stale = gw
            .mint_at(PAYMENT_SERVICE, Some(M), None, now() - ttl - 10, TOKEN_TTL)
            .expect("mint");
        assert_eq!(
            trust.verify(&stale, &[PAYMENT_SERVICE], M),
            Err(TokenError::Expired)
        );
        let just = gw
            .mint_at(PAYMENT_SERVICE, Some(M), None, now() - ttl - 2, TOKEN_TTL)
            .expect("mint");
        assert!(
            trust.verify(&just, &[PAYMENT_SERVICE], M).is_ok(),
            "within the skew"
        );
    }
}
