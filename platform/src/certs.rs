//! The internal TLS certificates, as `shopctl certs init --out DIR` makes them: a private
//! CA (`DIR/ca.pem`) and, per gRPC server, a certificate it signed (`DIR/NAME.crt`) with
//! the server's own private key (`DIR/NAME.key`, readable by its owner only). Each server
//! gets its `.crt` and `.key` (`USER_TLS_CERT`/`USER_TLS_KEY`, ...), each caller the CA
//! (`SHOP_TLS_CA`): see [`crate::tls`].
//!
//! The CA's private key is never written: nobody can sign another certificate the servers'
//! callers would trust. Adding a name or renewing means making a new set (and rolling it
//! out to every process).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use secrecy::{ExposeSecret as _, SecretString};

use crate::identity::{ITEM_SERVICE, PAYMENT_SERVICE, USER_SERVICE};

/// The processes that serve gRPC between themselves (the gateway only calls).
pub const SERVERS: [&str; 3] = [USER_SERVICE, ITEM_SERVICE, PAYMENT_SERVICE];

/// The Kubernetes namespace of deploy/kubernetes.
pub const DEFAULT_NAMESPACE: &str = "shop";

/// How long a set is valid unless told otherwise.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The CA certificate's file name inside a certificate directory.
pub const CA_FILE: &str = "ca.pem";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0:?} is not a valid Kubernetes namespace (lower-case letters, digits and '-')")]
    Namespace(String),
    #[error(
        "{dir} holds part of a certificate set ({missing} is missing); remove the directory to make a new set"
    )]
    Partial { dir: PathBuf, missing: PathBuf },
}

/// Every name `server` is reached by: its compose service name, its Kubernetes Service
/// names in `namespace` (short and fully qualified), and this machine's loopback for a
/// local try.
pub fn names(server: &str, namespace: &str) -> Vec<String> {
    vec![
        server.to_owned(),
        format!("{server}.{namespace}"),
        format!("{server}.{namespace}.svc"),
        format!("{server}.{namespace}.svc.cluster.local"),
        "localhost".to_owned(),
        IpAddr::from([127, 0, 0, 1]).to_string(),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST).to_string(),
    ]
}

/// One server's certificate and private key, PEM.
pub struct Issued {
    pub server: String,
    pub cert_pem: String,
    pub key_pem: SecretString,
}

/// A CA certificate and the certificates it signed.
pub struct CertSet {
    pub ca_pem: String,
    pub issued: Vec<Issued>,
}

/// A fresh CA and a certificate for each of `servers` ([`names`] in `namespace`), valid
/// from now for `validity`. The CA's key is dropped at the end.
pub fn generate(
    servers: &[&str],
    namespace: &str,
    validity: Duration,
) -> Result<CertSet, CertError> {
    let valid_name = !namespace.is_empty()
        && namespace.len() <= 63
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !namespace.starts_with('-')
        && !namespace.ends_with('-');
    if !valid_name {
        return Err(CertError::Namespace(namespace.to_owned()));
    }
    // A minute back: a host whose clock is slightly behind still accepts a fresh set.
    let not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let not_after = not_before + validity;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "Shop internal gRPC CA");
    // Signs server certificates only, never another CA.
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut issued = Vec::with_capacity(servers.len());
    for server in servers {
        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(names(server, namespace))?;
        leaf.distinguished_name.push(DnType::CommonName, *server);
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        leaf.not_before = not_before;
        leaf.not_after = not_after;
        let cert = leaf.signed_by(&key, &issuer)?;
        issued.push(Issued {
            server: (*server).to_owned(),
            cert_pem: cert.pem(),
            key_pem: SecretString::from(key.serialize_pem()),
        });
    }
    Ok(CertSet {
        ca_pem: ca_cert.pem(),
        issued,
    })
}

/// A certificate directory.
#[derive(Debug, Clone)]
pub struct CertDir(PathBuf);

/// What [`CertDir::init`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    Made,
    /// A complete set was there already and is kept.
    Kept,
}

impl CertDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self(dir.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn ca_file(&self) -> PathBuf {
        self.0.join(CA_FILE)
    }

    /// `server`'s certificate.
    pub fn cert_file(&self, server: &str) -> PathBuf {
        self.0.join(format!("{server}.crt"))
    }

    /// `server`'s private key.
    pub fn key_file(&self, server: &str) -> PathBuf {
        self.0.join(format!("{server}.key"))
    }

    fn files(&self, servers: &[&str]) -> Vec<PathBuf> {
        let mut files = vec![self.ca_file()];
        for s in servers {
            files.push(self.cert_file(s));
            files.push(self.key_file(s));
        }
        files
    }

    /// Makes a set for `servers` unless the directory has a complete one already (kept,
    /// so running it again changes nothing). Part of a set is an error rather than
    /// something to fill in: new certificates would be signed by a CA the old ones' callers
    /// do not know.
    pub fn init(
        &self,
        servers: &[&str],
        namespace: &str,
        validity: Duration,
    ) -> Result<Init, CertError> {
        let files = self.files(servers);
        let present = files.iter().filter(|f| f.exists()).count();
        if present == files.len() {
            return Ok(Init::Kept);
        }
        if present > 0 {
            let missing = files
                .iter()
                .find(|f| !f.exists())
                .cloned()
                .unwrap_or_default();
            return Err(CertError::Partial {
                dir: self.0.clone(),
                missing,
            });
        }
        let set = generate(servers, namespace, validity)?;
        std::fs::create_dir_all(&self.0).map_err(|source| self.io(&self.0, source))?;
        for issued in &set.issued {
            let key = self.key_file(&issued.server);
            crate::keys::write_private(&key, issued.key_pem.expose_secret())
                .map_err(|source| self.io(&key, source))?;
            let cert = self.cert_file(&issued.server);
            std::fs::write(&cert, &issued.cert_pem).map_err(|source| self.io(&cert, source))?;
        }
        let ca = self.ca_file();
        std::fs::write(&ca, &set.ca_pem).map_err(|source| self.io(&ca, source))?;
        Ok(Init::Made)
    }

    fn io(&self, path: &Path, source: std::io::Error) -> CertError {
        CertError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
