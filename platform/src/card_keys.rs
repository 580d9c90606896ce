//! The card processor's API keys, as Stripe has them: a secret key (`sk_...`, payment-service
//! only: charges, refunds, reads) and a publishable key (`pk_...`, the gateway: tokens only).
//! `shopctl keys init DIR` writes them next to the identity keys ([`SECRET_KEY_FILE`],
//! [`PUBLISHABLE_KEY_FILE`]); each process takes its key as a value or from a file.

use std::path::Path;

use rand::{Rng as _, distr::Alphanumeric};
use secrecy::{ExposeSecret as _, SecretString};

/// The secret key's file name inside a key directory.
pub const SECRET_KEY_FILE: &str = "card-secret-key";
/// The publishable key's file name inside a key directory.
pub const PUBLISHABLE_KEY_FILE: &str = "card-publishable-key";

/// Which of the two keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Secret,
    Publishable,
}

impl Kind {
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Secret => "sk_test_",
            Self::Publishable => "pk_test_",
        }
    }

    fn setting(self) -> &'static str {
        match self {
            Self::Secret => "CARD_GATEWAY_SECRET_KEY(_FILE)",
            Self::Publishable => "CARD_GATEWAY_PUBLISHABLE_KEY(_FILE)",
        }
    }

    pub fn file_name(self) -> &'static str {
        match self {
            Self::Secret => SECRET_KEY_FILE,
            Self::Publishable => PUBLISHABLE_KEY_FILE,
        }
    }
}

/// A new random key of `kind` (32 random alphanumerics after the prefix).
pub fn generate(kind: Kind) -> SecretString {
    let tail: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    SecretString::from(format!("{}{tail}", kind.prefix()))
}

/// A secret (and publishable) pair, fresh: what the monolith and the tests use.
pub fn generate_pair() -> (SecretString, SecretString) {
    (generate(Kind::Secret), generate(Kind::Publishable))
}

/// The key of `kind` from its value or, without one, its file; checked for its prefix and
/// length so a swapped or truncated key fails at start, not at the first charge.
pub fn read(
    kind: Kind,
    value: Option<&SecretString>,
    file: Option<&Path>,
) -> anyhow::Result<SecretString> {
    let key = match (value, file) {
        (Some(v), _) => v.expose_secret().trim().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{} {}: {e}", kind.setting(), path.display()))?
            .trim()
            .to_owned(),
        (None, None) => anyhow::bail!(
            "{} is not set: the card processor's API wants it (shopctl keys init makes {})",
            kind.setting(),
            kind.file_name()
        ),
    };
    check(kind, &key)?;
    Ok(SecretString::from(key))
}

/// Whether `key` has the shape of a key of `kind`.
pub fn check(kind: Kind, key: &str) -> anyhow::Result<()> {
    let tail = key.strip_prefix(kind.prefix()).unwrap_or_default();
    if tail.len() < 16 || !tail.bytes().all(|b| b.is_ascii_alphanumeric()) {
        anyhow::bail!(
            "{}: not a {} key ({}... and at least 16 letters or digits)",
            kind.setting(),
            match kind {
                Kind::Secret => "secret",
                Kind::Publishable => "publishable",
            },
            kind.prefix()
        );
    }
    Ok(())
}

/// Writes both keys into `dir` unless there already; returns the files made now.
pub fn init(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut made = Vec::new();
    for kind in [Kind::Secret, Kind::Publishable] {
        let path = dir.join(kind.file_name());
        if !path.exists() {
            crate::keys::write_private(&path, &format!("{}\n", generate(kind).expose_secret()))?;
            made.push(path);
        }
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_read_back_and_a_swapped_key_is_refused() {
        let dir = std::env::temp_dir().join(format!("shop-card-keys-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        assert_eq!(init(&dir).expect("init").len(), 2);
        assert!(
            init(&dir).expect("again").is_empty(),
            "existing keys are kept"
        );
        let sk = read(Kind::Secret, None, Some(&dir.join(SECRET_KEY_FILE))).expect("secret");
        assert!(sk.expose_secret().starts_with("sk_test_"));
        let swapped = read(Kind::Secret, None, Some(&dir.join(PUBLISHABLE_KEY_FILE)));
        assert!(swapped.is_err(), "a publishable key is not a secret key");
        assert!(read(Kind::Publishable, None, None).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
