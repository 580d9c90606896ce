//! The gateway reaching item-service over TLS, as compose and Kubernetes run them: the
//! service serves TLS only with a certificate from `shopctl certs init`'s code, and the
//! gateway browses the catalog through it when it trusts that CA, and not otherwise.

use std::path::PathBuf;

use platform::{
    certs::{self, CertDir},
    endpoints::ServiceUrls,
    identity::ITEM_SERVICE,
    tls::TlsError,
    transport::DialError,
};
use reqwest::StatusCode;
use test_support::item::{self, ItemServer};

use crate::common::{Api, Running, gateway_config};

struct Certs(CertDir);

impl Certs {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("shop-certs-{}", uuid::Uuid::new_v4()));
        let dir = CertDir::new(dir);
        dir.init(
            &certs::SERVERS,
            certs::DEFAULT_NAMESPACE,
            certs::DEFAULT_VALIDITY,
        )
        .expect("certs init");
        Self(dir)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.path());
    }
}

/// item-service serving TLS only, with its certificate from `certs`.
async fn item_over_tls(certs: &Certs) -> ItemServer {
    item::spawn_with(|c| {
        c.seed = true;
        c.tls_cert = Some(certs.0.cert_file(ITEM_SERVICE));
        c.tls_key = Some(certs.0.key_file(ITEM_SERVICE));
    })
    .await
}

/// A gateway reaching item-service at `item_url`, trusting the CA in `ca` (if any); the
/// other services are not needed for browsing.
async fn gateway(item_url: &str, ca: Option<PathBuf>) -> (Running, Api) {
    let mut g = gateway_config();
    let scheme = if ca.is_some() { "https" } else { "http" };
    let nowhere = ServiceUrls::parse(&format!("{scheme}://127.0.0.1:1")).expect("URL");
    g.item_service_url = ServiceUrls::parse(item_url).expect("URL");
    g.user_service_url = nowhere.clone();
    g.payment_service_url = nowhere;
    g.tls.ca_file = ca;
    let gw = gateway::Application::build(g).await.expect("build gateway");
    let addr = gw.http_addr();
    (
        Running::spawn(addr, |stop| gw.run_until_stopped(stop)),
        Api::new(addr),
    )
}

#[tokio::test]
async fn the_gateway_browses_the_catalog_over_tls_with_the_ca_and_not_without() {
    platform::telemetry::init(false);
    let certs = Certs::new();
    let item = item_over_tls(&certs).await;
    let port = item.grpc_addr.port();

    // By name (the balancer resolves it and checks each address's certificate for it).
    let (_gw, api) = gateway(
        &format!("https://localhost:{port}"),
        Some(certs.0.ca_file()),
    )
    .await;
    let list = api.get("/api/items?page_size=5", None).await;
    assert_eq!(list.status, StatusCode::OK, "{:?}", list.body);
    assert!(
        !list.body["items"].as_array().expect("items").is_empty(),
        "the seeded catalog, through TLS"
    );

    // A gateway that trusts another CA is not answered.
    let other = Certs::new();
    let (_gw, stranger) = gateway(
        &format!("https://127.0.0.1:{port}"),
        Some(other.0.ca_file()),
    )
    .await;
    let refused = stranger.get("/api/items?page_size=5", None).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        refused.body
    );

    // Nor is one that speaks plaintext to the TLS listener.
    let (_gw, plain) = gateway(&format!("http://127.0.0.1:{port}"), None).await;
    let refused = plain.get("/api/items?page_size=5", None).await;
    assert_ne!(refused.status, StatusCode::OK, "{:?}", refused.body);
    assert!(refused.status.is_server_error(), "{:?}", refused.body);
}

#[tokio::test]
async fn a_gateway_with_the_ca_refuses_to_start_with_a_plaintext_service_url() {
    let certs = Certs::new();
    let mut g = gateway_config();
    g.tls.ca_file = Some(certs.0.ca_file());
    // The defaults are http:// on loopback.
    let err = match gateway::Application::build(g).await {
        Ok(_) => panic!("a gateway with the CA and plaintext service URLs started"),
        Err(e) => e,
    };
    assert!(
        err.chain().any(|c| matches!(
            c.downcast_ref::<DialError>(),
            Some(DialError::Tls(TlsError::Plaintext { .. }))
        )),
        "{err:#}"
    );
}
