//! Access-token verification at the edge: HS256 only, issuer and audience pinned, expiry
//! required, with the secret user-service signs with. Handlers take [`AuthUser`] or
//! [`AdminUser`] as extractors.

use axum::extract::FromRequestParts;
use http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use platform::identity::{UserAssertion, UserRole};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use uuid::Uuid;

use crate::{error::ApiError, state::AppState};

pub const ISSUER: &str = "shop-user-service";
pub const AUDIENCE: &str = "shop";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Customer,
    Admin,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    role: String,
    /// Required (jsonwebtoken's spec-claim check does not cover `iat`): a token without
    /// it cannot be told apart from one minted before a secret rotation.
    #[allow(dead_code)]
    iat: u64,
}

pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenVerifier(HS256)")
    }
}

/// The authenticated caller. `Debug` leaves the token out.
#[derive(Clone)]
pub struct AuthUser {
    pub user_id: Uuid,
    pub role: Role,
    /// The bearer token as sent (the chained checkout passes it on).
    pub token: String,
}

impl AuthUser {
    /// What the gateway asserts to the services it calls for this user.
    pub fn assertion(&self) -> UserAssertion {
        UserAssertion {
            user_id: self.user_id,
            role: match self.role {
                Role::Admin => UserRole::Admin,
                Role::Customer => UserRole::Customer,
            },
        }
    }
}

impl std::fmt::Debug for AuthUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthUser")
            .field("user_id", &self.user_id)
            .field("role", &self.role)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// The authenticated caller, known to be an admin.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl TokenVerifier {
    pub fn new(secret: &SecretString) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        // `iat` is required by `Claims`. Clocks of one deployment agree within seconds.
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Self {
            key: DecodingKey::from_secret(secret.expose_secret().as_bytes()),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<AuthUser, ApiError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the access token has expired; log in again",
                    _ => "the access token is invalid",
                };
                ApiError::unauthenticated(why)
            })?;
        let user_id = Uuid::parse_str(&data.claims.sub)
            .map_err(|_| ApiError::unauthenticated("the access token is invalid"))?;
        let role = match data.claims.role.as_str() {
            "admin" => Role::Admin,
            "customer" => Role::Customer,
            _ => return Err(ApiError::unauthenticated("the access token is invalid")),
        };
        Ok(AuthUser {
            user_id,
            role,
            token: token.to_owned(),
        })
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthenticated("log in first (missing Authorization header)"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthenticated("malformed Authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthenticated("expected Authorization: Bearer <token>"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthenticated(
            "expected Authorization: Bearer <token>",
        ));
    }
    Ok(token.trim())
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        state.verifier.verify(token)
    }
}

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.role != Role::Admin {
            return Err(ApiError::forbidden("this needs an admin account"));
        }
        Ok(Self(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "test-secret-test-secret";

    fn token(claims: serde_json::Value, alg: Algorithm, secret: &str) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    #[test]
    fn pins_algorithm_issuer_audience_and_expiry() {
        let v = TokenVerifier::new(&SecretString::from(SECRET));
        let sub = Uuid::new_v4().to_string();
        let good = json!({"sub": sub, "role": "admin", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 60, "iat": now()});
        let u = v
            .verify(&token(good.clone(), Algorithm::HS256, SECRET))
            .expect("valid");
        assert_eq!(u.role, Role::Admin);

        assert!(
            v.verify(&token(good.clone(), Algorithm::HS384, SECRET))
                .is_err()
        );
        assert!(
            v.verify(&token(good.clone(), Algorithm::HS256, "other-secret-other"))
                .is_err()
        );
        let mut bad_iss = good.clone();
        bad_iss["iss"] = json!("someone-else");
        assert!(v.verify(&token(bad_iss, Algorithm::HS256, SECRET)).is_err());
        let mut bad_aud = good.clone();
        bad_aud["aud"] = json!("other");
        assert!(v.verify(&token(bad_aud, Algorithm::HS256, SECRET)).is_err());
        let mut expired = good.clone();
        expired["exp"] = json!(now() - 3600);
        assert!(v.verify(&token(expired, Algorithm::HS256, SECRET)).is_err());
        // A few seconds of clock difference only.
        let mut just_expired = good.clone();
        just_expired["exp"] = json!(now() - 10);
        assert!(
            v.verify(&token(just_expired, Algorithm::HS256, SECRET))
                .is_err()
        );
        // No issued-at: refused.
        let mut no_iat = good;
        no_iat.as_object_mut().map(|o| o.remove("iat"));
        assert!(v.verify(&token(no_iat, Algorithm::HS256, SECRET)).is_err());
    }

    #[test]
    fn debug_of_the_caller_and_the_verifier_hides_token_and_secret() {
        let t = token(
            json!({"sub": uuid::Uuid::new_v4(), "role": "customer"}),
            Algorithm::HS256,
            SECRET,
        );
        let user = AuthUser {
            user_id: uuid::Uuid::new_v4(),
            role: Role::Customer,
            token: t.clone(),
        };
        let shown = format!("{:?}", AdminUser(user));
        assert!(!shown.contains(&t), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        let verifier = TokenVerifier::new(&SecretString::from(SECRET));
        assert!(!format!("{verifier:?}").contains(SECRET));
        let config = crate::Config::with_secret(SECRET);
        let shown = format!("{config:?}");
        assert!(!shown.contains(SECRET), "{shown}");
    }
}
