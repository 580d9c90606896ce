//! Key directories, as `shopctl keys init DIR` makes them: one PKCS#8 PEM Ed25519 private
//! key per identity (`DIR/NAME.pem`, readable by its owner only) and `DIR/trusted-keys`, the
//! trust file naming every identity's public key. Each process gets its own `.pem` as
//! SHOP_IDENTITY_KEY_FILE and the shared `trusted-keys` as SHOP_TRUSTED_KEYS_FILE. The card
//! processor's API keys are made here too (`card-secret-key`, `card-publishable-key`:
//! [`crate::card_keys`]).

use std::path::{Path, PathBuf};

use secrecy::SecretString;

use crate::identity::{self, IdentityError, Signer};

/// The trust file's name inside a key directory.
pub const TRUST_FILE: &str = "trusted-keys";

/// A key directory.
#[derive(Debug, Clone)]
pub struct KeyDir(PathBuf);

impl KeyDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self(dir.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Where `name`'s private key lives.
    pub fn key_file(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.pem"))
    }

    pub fn trust_file(&self) -> PathBuf {
        self.0.join(TRUST_FILE)
    }

    /// Where the card processor's key of `kind` lives.
    pub fn card_key_file(&self, kind: crate::card_keys::Kind) -> PathBuf {
        self.0.join(kind.file_name())
    }

    /// Makes a key for each of `names` that has none yet (existing keys are kept, so running
    /// it again changes nothing), then rewrites the trust file from every key there.
    /// Returns the names whose keys were made now.
    pub fn init(&self, names: &[&str]) -> Result<Vec<String>, IdentityError> {
        std::fs::create_dir_all(&self.0).map_err(|source| self.io(&self.0, source))?;
        let mut made = Vec::new();
        let mut signers = Vec::new();
        for name in names {
            let path = self.key_file(name);
            if !path.exists() {
                let pem = identity::generate_key()?;
                write_private(&path, secrecy::ExposeSecret::expose_secret(&pem))
                    .map_err(|source| self.io(&path, source))?;
                made.push((*name).to_owned());
            }
            signers.push(self.signer(name)?);
        }
        let trust = identity::trust_file(&signers.iter().collect::<Vec<_>>());
        let path = self.trust_file();
        std::fs::write(&path, trust).map_err(|source| self.io(&path, source))?;
        // The card processor's API keys live here too, so one init sets up every process.
        crate::card_keys::init(&self.0).map_err(|source| self.io(&self.0, source))?;
        Ok(made)
    }

    /// `name`'s signer from its key file.
    pub fn signer(&self, name: &str) -> Result<Signer, IdentityError> {
        let path = self.key_file(name);
        let pem = std::fs::read_to_string(&path).map_err(|source| self.io(&path, source))?;
        Signer::from_pem(name, &SecretString::from(pem))
            .map_err(|e| IdentityError::Key(format!("{}: {e}", path.display())))
    }

    fn io(&self, path: &Path, source: std::io::Error) -> IdentityError {
        IdentityError::Read {
            path: path.to_owned(),
            source,
        }
    }
}

/// Writes a private key only its owner can read (on Unix; elsewhere as the OS makes it).
pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{GATEWAY, OPERATOR, Trust};

    #[test]
    fn init_makes_keys_once_and_a_trust_file_that_verifies_them() {
        let dir = std::env::temp_dir().join(format!("shop-keys-{}", uuid::Uuid::new_v4()));
        let keys = KeyDir::new(&dir);
        let made = keys.init(&[GATEWAY, OPERATOR]).expect("init");
        assert_eq!(made, [GATEWAY, OPERATOR]);
        let before = std::fs::read_to_string(keys.key_file(OPERATOR)).expect("key");
        assert!(keys.init(&[GATEWAY, OPERATOR]).expect("again").is_empty());
        let after = std::fs::read_to_string(keys.key_file(OPERATOR)).expect("key");
        assert_eq!(before, after, "an existing key is kept");
        let trust = Trust::parse(&std::fs::read_to_string(keys.trust_file()).expect("trust"))
            .expect("parses");
        let token = keys
            .signer(OPERATOR)
            .expect("signer")
            .mint("item-service", "/shop.item.v1.ItemService/GetItem", None)
            .expect("mint");
        let caller = trust
            .verify(
                &token,
                &["item-service"],
                "/shop.item.v1.ItemService/GetItem",
            )
            .expect("verifies");
        assert_eq!(caller.service, OPERATOR);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(keys.key_file(GATEWAY))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "private keys are the owner's only");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
