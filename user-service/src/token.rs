//! Signed, expiring access tokens (JWT, HS256). Verification pins the algorithm, issuer
//! and audience, and requires every claim, so `alg=none`, forged, expired and foreign
//! tokens all fail the same way.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{Role, UserId};

pub const ISSUER: &str = "shop-user-service";
pub const AUDIENCE: &str = "shop";
/// Shortest secret accepted: HS256 keys below 256 bits are guessable.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the signing secret must be at least {MIN_SECRET_BYTES} bytes")]
    WeakSecret,
    #[error("signing failed")]
    Sign(#[source] jsonwebtoken::errors::Error),
    #[error("invalid token")]
    Invalid(#[source] jsonwebtoken::errors::Error),
}

/// Issues and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl TokenKeys {
    pub fn new(secret: &SecretString, ttl: Duration) -> Result<Self, TokenError> {
        let bytes = secret.expose_secret().as_bytes();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(TokenError::WeakSecret);
        }
        Ok(Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation: validation(),
            ttl,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(&self, user: UserId, role: Role) -> Result<(String, Claims), TokenError> {
        let now = now_secs();
        let claims = Claims {
            sub: user.0,
            role,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(TokenError::Sign)?;
        Ok((token, claims))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token.trim(), &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(TokenError::Invalid)
    }
}

/// The rules every verifier of Shop tokens uses (the gateway builds the same).
pub fn validation() -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[AUDIENCE]);
    v.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
    v.leeway = 0;
    v.validate_exp = true;
    v
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(
            &SecretString::from("0123456789abcdef0123456789abcdef"),
            Duration::from_secs(60),
        )
        .expect("keys")
    }

    #[test]
    fn round_trip() {
        let k = keys();
        let id = UserId(Uuid::new_v4());
        let (t, _) = k.issue(id, Role::Admin).expect("issue");
        let c = k.verify(&t).expect("verify");
        assert_eq!((c.sub, c.role), (id.0, Role::Admin));
    }

    #[test]
    fn rejects_weak_secret() {
        assert!(TokenKeys::new(&SecretString::from("short"), Duration::from_secs(1)).is_err());
    }

    #[test]
    fn rejects_alg_none_and_garbage() {
        let k = keys();
        let (t, _) = k
            .issue(UserId(Uuid::new_v4()), Role::Customer)
            .expect("issue");
        let payload = t.split('.').nth(1).expect("payload");
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(k.verify(&format!("{header}.{payload}.")).is_err());
        assert!(k.verify("garbage").is_err());
        assert!(k.verify("").is_err());
    }
}
