//! argon2id password hashing (OWASP parameters), always off the async runtime, and at most
//! a configured number at a time: each hash takes ~19 MiB and a core for tens of
//! milliseconds, so a flood of logins must queue briefly and then be refused
//! (RESOURCE_EXHAUSTED), not pile up blocking threads and memory.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::{SaltString, rand_core::OsRng},
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    /// Every hashing slot stayed busy for the whole wait.
    #[error("too many password checks in progress; try again shortly")]
    Busy,
}

/// How many hashes may run at once and how long a request waits for a slot.
#[derive(Debug, Clone, Copy)]
pub struct HashLimits {
    pub concurrency: usize,
    pub wait: Duration,
}

impl Default for HashLimits {
    /// One hash per CPU (hashing is CPU-bound: more would only queue in the blocking pool),
    /// waiting up to two seconds.
    fn default() -> Self {
        Self {
            concurrency: default_concurrency(),
            wait: Duration::from_secs(2),
        }
    }
}

/// The number of CPUs this process may use (1 when unknown).
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Hashes and verifies passwords, at most `HashLimits::concurrency` at a time.
#[derive(Debug, Clone)]
pub struct Hasher {
    slots: Arc<Semaphore>,
    wait: Duration,
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new(HashLimits::default())
    }
}

impl Hasher {
    pub fn new(limits: HashLimits) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            wait: limits.wait,
        }
    }

    /// A hashing slot, or Busy when none frees up within the wait. The permit moves into
    /// the blocking task, so the slot stays taken until the hash really ends even if the
    /// request is dropped meanwhile.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, HashError> {
        let slots = Arc::clone(&self.slots);
        if let Ok(p) = Arc::clone(&slots).try_acquire_owned() {
            return Ok(p);
        }
        match tokio::time::timeout(self.wait, slots.acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            // Closed never happens (nothing closes it); timed out: refuse.
            Ok(Err(_)) | Err(_) => {
                metrics::counter!("user_password_hash_rejected_total").increment(1);
                Err(HashError::Busy)
            }
        }
    }

    /// Hashes a password into a PHC string (kept secret: it must never be logged).
    pub async fn hash(&self, password: Password) -> Result<SecretString, HashError> {
        let slot = self.slot().await?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            // Counted where the work really happens, so floods can be measured from here.
            metrics::counter!("user_password_hashes_total").increment(1);
            hash_now(&password)
        })
        .await?
    }

    /// Checks a password against a stored hash. When the user does not exist, pass `None`:
    /// a dummy hash is verified instead so that both failures take the same time.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<SecretString>,
    ) -> Result<bool, HashError> {
        let slot = self.slot().await?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            metrics::counter!("user_password_verifications_total").increment(1);
            verify_now(&password, stored.as_ref())
        })
        .await?
    }
}

fn hash_now(password: &Password) -> Result<SecretString, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|h| SecretString::from(h.to_string()))
        .map_err(HashError::Hash)
}

fn verify_now(password: &str, stored: Option<&SecretString>) -> Result<bool, HashError> {
    let (phc, real) = match stored {
        Some(s) => (s.expose_secret(), true),
        None => (dummy_hash(), false),
    };
    let parsed = PasswordHash::new(phc).map_err(HashError::Hash)?;
    let ok = argon2()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    Ok(ok && real)
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
        let hasher = Hasher::default();
        let h = hasher
            .hash(Password::parse("correct horse".into()).expect("valid"))
            .await
            .expect("hash");
        assert!(
            h.expose_secret()
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        );
        assert!(
            hasher
                .verify("correct horse".into(), Some(h.clone()))
                .await
                .expect("verify")
        );
        assert!(
            !hasher
                .verify("wrong horse".into(), Some(h))
                .await
                .expect("verify")
        );
        assert!(
            !hasher
                .verify("anything".into(), None)
                .await
                .expect("verify")
        );
    }

    fn limited(concurrency: usize, wait: Duration) -> Hasher {
        Hasher::new(HashLimits { concurrency, wait })
    }

    #[tokio::test]
    async fn all_slots_busy_past_the_wait_is_refused() {
        let hasher = limited(2, Duration::ZERO);
        let _a = hasher.slot().await.expect("first slot");
        let _b = hasher.slot().await.expect("second slot");
        let refused = hasher
            .verify("whatever1".into(), None)
            .await
            .expect_err("no slot left");
        assert!(matches!(refused, HashError::Busy), "{refused:?}");
        let refused = hasher
            .hash(Password::parse("whatever1".into()).expect("valid"))
            .await
            .expect_err("no slot left");
        assert!(matches!(refused, HashError::Busy), "{refused:?}");
    }

    #[tokio::test]
    async fn a_waiting_check_runs_once_a_slot_frees_up() {
        let hasher = limited(1, Duration::from_secs(600));
        let held = hasher.slot().await.expect("the one slot");
        let waiting = tokio::spawn({
            let hasher = hasher.clone();
            async move { hasher.verify("anything".into(), None).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "waits while the slot is held");
        drop(held);
        let answer = waiting.await.expect("task").expect("got a slot");
        assert!(!answer, "no such user");
        // And the slot is free again afterwards.
        drop(hasher.slot().await.expect("slot released after the check"));
    }
}
