//! `shopctl certs init`, run as the operator runs it: the files it writes are what the
//! services' TLS accepts.

use std::{path::Path, process::Command, sync::Arc};

use rustls::{
    RootCertStore,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier as _},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _};

const SERVERS: [&str; 3] = ["user-service", "item-service", "payment-service"];

fn shopctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shopctl"))
        .args(args)
        .output()
        .expect("run shopctl")
}

/// Whether `cert` verifies against the CA in `ca` for `name`, as a caller of the service
/// by that name checks it.
fn verifies(ca: &Path, cert: &Path, name: &str) -> bool {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA PEM")).expect("a CA certificate");
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .expect("verifier");
    let leaf = CertificateDer::from_pem_file(cert).expect("certificate PEM");
    let name = ServerName::try_from(name.to_owned()).expect("a server name");
    verifier
        .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
        .is_ok()
}

#[test]
fn certs_init_makes_a_ca_and_a_certificate_per_server_for_the_names_it_is_called_by() {
    let dir = std::env::temp_dir().join(format!("shopctl-certs-{}", uuid::Uuid::new_v4()));
    let out = dir.to_str().expect("UTF-8 path");
    let made = shopctl(&["certs", "init", "--out", out, "--namespace", "shop-test"]);
    assert!(made.status.success(), "{made:?}");

    let ca = dir.join("ca.pem");
    assert!(ca.exists());
    let files: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !files
            .iter()
            .any(|f| f.contains("ca") && f.ends_with(".key")),
        "the CA's key is not kept: {files:?}"
    );
    for server in SERVERS {
        let cert = dir.join(format!("{server}.crt"));
        let key = dir.join(format!("{server}.key"));
        for name in [
            server.to_owned(),
            format!("{server}.shop-test"),
            format!("{server}.shop-test.svc"),
            format!("{server}.shop-test.svc.cluster.local"),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ] {
            assert!(verifies(&ca, &cert, &name), "{server}: {name}");
        }
        // Not for another service, nor another namespace.
        let other = SERVERS.iter().find(|s| **s != server).expect("another");
        assert!(!verifies(&ca, &cert, other), "{server} as {other}");
        assert!(!verifies(&ca, &cert, &format!("{server}.shop.svc")));
        PrivateKeyDer::from_pem_file(&key).expect("a private key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&key).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{server}'s key is its owner's only");
        }
    }

    // Again: the set is kept (the servers' certificates still match the callers' CA).
    let before = std::fs::read(&ca).expect("CA");
    let again = shopctl(&["certs", "init", "--out", out]);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(std::fs::read(&ca).expect("CA"), before);

    // Part of a set is refused rather than completed with a new CA.
    std::fs::remove_file(dir.join("item-service.key")).expect("remove");
    let partial = shopctl(&["certs", "init", "--out", out]);
    assert!(!partial.status.success(), "{partial:?}");
    assert_eq!(std::fs::read(&ca).expect("CA"), before);

    // Another CA's set does not verify against this one.
    let other_dir = dir.join("other");
    let other = shopctl(&["certs", "init", "--out", other_dir.to_str().expect("UTF-8")]);
    assert!(other.status.success(), "{other:?}");
    assert!(!verifies(
        &ca,
        &other_dir.join("user-service.crt"),
        "user-service"
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
