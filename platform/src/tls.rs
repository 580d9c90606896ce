//! Internal gRPC over TLS: every call carries a service token, so wherever the calls cross
//! a network of several machines (compose, Kubernetes) they go encrypted, and each caller
//! checks that it talks to the service it meant to (the certificates come from a private
//! CA: [`crate::certs`], `shopctl certs init`).
//!
//! A server given a certificate and key (`USER_TLS_CERT`/`USER_TLS_KEY`, ...) serves TLS
//! only on its gRPC listener. A caller given the CA (`SHOP_TLS_CA`) needs `https://`
//! service URLs and trusts no other CA; `https://` without the CA, or the CA with an
//! `http://` URL, is refused at startup ([`check_scheme`]). Without either, everything
//! stays plaintext HTTP/2, as on loopback in development and tests.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::endpoints::ServiceUrls;

/// How long a server waits for a client's TLS handshake before dropping the connection
/// (a client that connects and says nothing holds no task for long).
const SERVER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting}: reading {path}: {source}")]
    Read {
        setting: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{setting}: {path} holds no {what} (expected PEM)")]
    Missing {
        setting: String,
        path: PathBuf,
        what: &'static str,
    },
    #[error("{given} is set but {missing} is not: give both or neither")]
    HalfSet {
        given: &'static str,
        missing: &'static str,
    },
    #[error("{settings}: the certificate and key cannot serve TLS: {reason}")]
    Unusable { settings: String, reason: String },
    #[error(
        "{service} is reached by https:// but SHOP_TLS_CA is not set: give the CA that signed the services' certificates"
    )]
    NoCa { service: String },
    #[error(
        "{service} is reached by http:// while SHOP_TLS_CA is set: its calls would go in plaintext; use https://"
    )]
    Plaintext { service: String },
}

/// A gRPC server's certificate chain and key.
#[derive(Debug, Clone)]
pub struct ServerTls(ServerTlsConfig);

impl ServerTls {
    /// From the files `cert_setting` and `key_setting` name, if both are given (neither:
    /// plaintext; one alone is an error). The pair is checked now, so a bad file stops the
    /// start with the setting's name rather than failing every connection.
    pub fn from_settings(
        cert: Option<&Path>,
        key: Option<&Path>,
        cert_setting: &'static str,
        key_setting: &'static str,
    ) -> Result<Option<Self>, TlsError> {
        let (cert, key) = match (cert, key) {
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(TlsError::HalfSet {
                    given: cert_setting,
                    missing: key_setting,
                });
            }
            (None, Some(_)) => {
                return Err(TlsError::HalfSet {
                    given: key_setting,
                    missing: cert_setting,
                });
            }
            (Some(c), Some(k)) => (c, k),
        };
        let cert_pem = read(cert_setting, cert)?;
        let key_pem = read(key_setting, key)?;
        if CertificateDer::pem_slice_iter(&cert_pem)
            .next()
            .is_none_or(|c| c.is_err())
        {
            return Err(missing(cert_setting, cert, "certificate"));
        }
        if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
            return Err(missing(key_setting, key, "private key"));
        }
        Self::from_pem(&cert_pem, &key_pem)
            .map_err(|reason| TlsError::Unusable {
                settings: format!("{cert_setting}/{key_setting}"),
                reason,
            })
            .map(Some)
    }

    /// From PEM text; the error says why rustls refuses the pair (e.g. a key that is not
    /// the certificate's).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, String> {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert_pem, key_pem))
            .timeout(SERVER_HANDSHAKE_TIMEOUT);
        // tonic builds the acceptor here: the same check a listener would make.
        tonic::transport::Server::builder()
            .tls_config(config.clone())
            .map_err(|e| crate::telemetry::chain(&e))?;
        Ok(Self(config))
    }

    pub(crate) fn config(&self) -> ServerTlsConfig {
        self.0.clone()
    }
}

/// The CA a caller trusts for internal gRPC.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsSettings {
    /// PEM file of the CA that signed the services' certificates (`ca.pem` of `shopctl
    /// certs init`). Set: every *_SERVICE_URL must be https:// and servers must present a
    /// certificate this CA signed for the name called. Unset: plaintext (loopback
    /// development).
    #[arg(long = "tls-ca", env = "SHOP_TLS_CA")]
    pub ca_file: Option<PathBuf>,
}

impl ClientTlsSettings {
    pub fn load(&self) -> Result<Option<ClientTls>, TlsError> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        let pem = read("SHOP_TLS_CA", path)?;
        ClientTls::from_pem(&pem)
            .ok_or_else(|| missing("SHOP_TLS_CA", path, "certificate"))
            .map(Some)
    }
}

/// What a caller verifies servers against: the internal CA, and nothing else.
#[derive(Debug, Clone)]
pub struct ClientTls {
    ca: Certificate,
}

impl ClientTls {
    /// The CA from PEM text; `None` when it holds no certificate.
    pub fn from_pem(pem: &[u8]) -> Option<Self> {
        let mut certs = CertificateDer::pem_slice_iter(pem);
        if !certs.all(|c| c.is_ok()) || CertificateDer::pem_slice_iter(pem).next().is_none() {
            return None;
        }
        Some(Self {
            ca: Certificate::from_pem(pem),
        })
    }

    /// The client config for a server reached as `name` (DNS name or IP address, which
    /// its certificate must carry).
    pub(crate) fn config(&self, name: &str, handshake_timeout: Duration) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .domain_name(name)
            .timeout(handshake_timeout)
    }
}

/// Refuses a service URL whose scheme does not match whether the caller has the CA
/// (`service` names the callee in the error).
pub fn check_scheme(
    service: &str,
    urls: &ServiceUrls,
    tls: Option<&ClientTls>,
) -> Result<(), TlsError> {
    match (urls.uses_tls(), tls.is_some()) {
        (true, false) => Err(TlsError::NoCa {
            service: service.to_owned(),
        }),
        (false, true) => Err(TlsError::Plaintext {
            service: service.to_owned(),
        }),
        _ => Ok(()),
    }
}

fn read(setting: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        setting: setting.to_owned(),
        path: path.to_owned(),
        source,
    })
}

fn missing(setting: &str, path: &Path, what: &'static str) -> TlsError {
    TlsError::Missing {
        setting: setting.to_owned(),
        path: path.to_owned(),
        what,
    }
}
