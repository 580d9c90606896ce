//! argon2id password hashing (OWASP parameters), always off the async runtime.

use std::sync::OnceLock;

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::{SaltString, rand_core::OsRng},
};
use secrecy::{ExposeSecret, SecretString};

use crate::domain::Password;

/// OWASP: m = 19456 KiB, t = 2, p = 1.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19_456, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("hashing failed: {0}")]
    Hash(argon2::password_hash::Error),
    #[error("hashing task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// Hashes a password into a PHC string (kept secret: it must never be logged).
pub async fn hash(password: Password) -> Result<SecretString, HashError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        argon2()
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|h| SecretString::from(h.to_string()))
            .map_err(HashError::Hash)
    })
    .await?
}

/// Checks a password against a stored hash. When the user does not exist, pass `None`:
/// a dummy hash is verified instead so that both failures take the same time.
pub async fn verify(password: String, stored: Option<SecretString>) -> Result<bool, HashError> {
    tokio::task::spawn_blocking(move || {
        let (phc, real) = match &stored {
            Some(s) => (s.expose_secret().to_owned(), true),
            None => (dummy_hash().to_owned(), false),
        };
        let parsed = PasswordHash::new(&phc).map_err(HashError::Hash)?;
        let ok = argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(ok && real)
    })
    .await?
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        argon2()
            .hash_password(b"not a real password, only spends time", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_is_argon2id_with_owasp_parameters_and_verifies() {
        let h = hash(Password::parse("correct horse".into()).expect("valid"))
            .await
            .expect("hash");
        assert!(
            h.expose_secret()
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        );
        assert!(
            verify("correct horse".into(), Some(h.clone()))
                .await
                .expect("verify")
        );
        assert!(!verify("wrong horse".into(), Some(h)).await.expect("verify"));
        assert!(!verify("anything".into(), None).await.expect("verify"));
    }
}
