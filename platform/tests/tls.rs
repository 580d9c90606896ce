//! Internal gRPC over TLS, end to end on real sockets: a Shop server given a certificate
//! from `shopctl certs init`'s code answers callers that trust its CA and no one else.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use platform::{
    balance::BalanceSettings,
    certs::{self, CertDir},
    endpoints::ServiceUrls,
    grpc::{ServerOptions, serve},
    identity::{GATEWAY, ITEM_SERVICE, Signer, Trust, USER_SERVICE},
    policy::{self, ANY_SERVER},
    tls::{ClientTls, ClientTlsSettings, ServerTls, TlsError},
    transport::{self, DialError, GrpcTransport},
};
use shop_proto::admin::v1::{EchoRequest, echo_client::EchoClient};
use tonic::{Code, service::Routes};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const CONNECT: Duration = Duration::from_secs(2);

/// A certificate set made as `shopctl certs init` makes it, in a directory of its own
/// (removed on drop).
struct Certs(CertDir);

impl Certs {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("shop-certs-{}", uuid::Uuid::new_v4()));
        let certs = CertDir::new(dir);
        certs
            .init(
                &certs::SERVERS,
                certs::DEFAULT_NAMESPACE,
                certs::DEFAULT_VALIDITY,
            )
            .expect("certs init");
        Self(certs)
    }

    fn server(&self, name: &str) -> ServerTls {
        ServerTls::from_settings(
            Some(&self.0.cert_file(name)),
            Some(&self.0.key_file(name)),
            "TEST_TLS_CERT",
            "TEST_TLS_KEY",
        )
        .expect("server TLS")
        .expect("both given")
    }

    fn client(&self) -> ClientTls {
        ClientTlsSettings {
            ca_file: Some(self.0.ca_file()),
        }
        .load()
        .expect("CA")
        .expect("given")
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.path());
    }
}

/// A Shop server (Echo, health) over TLS with `tls`, trusting `caller`; with a plaintext
/// health-only listener when `health` is set.
struct Server {
    addr: SocketAddr,
    health: Option<SocketAddr>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serving(tls: ServerTls, caller: &Signer, health: bool) -> Server {
    let listener = platform::grpc::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let health_listener = if health {
        Some(platform::grpc::bind("127.0.0.1:0").await.expect("bind"))
    } else {
        None
    };
    let health = health_listener
        .as_ref()
        .map(|l| l.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        health_listener,
        Routes::default(),
        &[],
        &[],
        ServerOptions {
            trust: Trust::of(&[caller]),
            tls: Some(tls),
            ..ServerOptions::default()
        },
        async {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        health,
        _stop: stop,
    }
}

async fn echo(transport: GrpcTransport, signer: &Signer) -> Result<Vec<u8>, tonic::Status> {
    EchoClient::new(policy::sign(transport, signer, ANY_SERVER))
        .echo(EchoRequest {
            payload: b"over tls".to_vec(),
        })
        .await
        .map(|r| r.into_inner().payload)
}

fn balanced(url: &str, tls: Option<&ClientTls>) -> Result<GrpcTransport, DialError> {
    let urls = ServiceUrls::parse(url).expect("URL");
    transport::balanced("test", &urls, CONNECT, &BalanceSettings::default(), tls)
}

#[tokio::test]
async fn a_caller_trusting_the_ca_is_answered_by_address_and_by_name() {
    let certs = Certs::new();
    let gateway = Signer::ephemeral(GATEWAY).expect("key");
    let server = serving(certs.server(USER_SERVICE), &gateway, false).await;
    let ca = certs.client();

    let by_address = balanced(&format!("https://{}", server.addr), Some(&ca)).expect("dial");
    assert_eq!(
        echo(by_address, &gateway).await.expect("answered over TLS"),
        b"over tls"
    );
    // A DNS name goes through the balancer, which checks each resolved address's
    // certificate against the name.
    let by_name = balanced(
        &format!("https://localhost:{}", server.addr.port()),
        Some(&ca),
    )
    .expect("dial");
    assert_eq!(
        echo(by_name, &gateway).await.expect("answered over TLS"),
        b"over tls"
    );
}

#[tokio::test]
async fn a_caller_trusting_another_ca_is_refused() {
    let certs = Certs::new();
    let other = Certs::new();
    let gateway = Signer::ephemeral(GATEWAY).expect("key");
    let server = serving(certs.server(USER_SERVICE), &gateway, false).await;

    let stranger =
        balanced(&format!("https://{}", server.addr), Some(&other.client())).expect("dial");
    let err = echo(stranger, &gateway)
        .await
        .expect_err("the server's certificate is not from the caller's CA");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

#[tokio::test]
async fn a_server_with_another_services_certificate_is_refused() {
    let certs = Certs::new();
    let gateway = Signer::ephemeral(GATEWAY).expect("key");
    let server = serving(certs.server(USER_SERVICE), &gateway, false).await;
    let ca = certs.client();

    // The caller means item-service; the server proves only that it is user-service.
    let url = format!("https://{}", server.addr);
    let wrong = transport::tls_channel(&url, ITEM_SERVICE, CONNECT, &ca).expect("dial");
    let err = echo(wrong, &gateway)
        .await
        .expect_err("the certificate does not name item-service");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let right = transport::tls_channel(&url, USER_SERVICE, CONNECT, &ca).expect("dial");
    assert_eq!(echo(right, &gateway).await.expect("answered"), b"over tls");
}

#[tokio::test]
async fn a_plaintext_caller_gets_no_answer() {
    let certs = Certs::new();
    let gateway = Signer::ephemeral(GATEWAY).expect("key");
    let server = serving(certs.server(USER_SERVICE), &gateway, false).await;

    let plain = transport::channel(&format!("http://{}", server.addr), CONNECT).expect("dial");
    let err = echo(plain, &gateway)
        .await
        .expect_err("a TLS listener does not speak plaintext HTTP/2");
    // The listener drops the connection on the HTTP/2 preface, which is no TLS
    // handshake: depending on when the client notices, the call fails as unreachable or
    // as a broken transport. Either way no server status came back.
    assert!(
        matches!(err.code(), Code::Unavailable | Code::Unknown),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_health_listener_answers_probes_in_plaintext_and_serves_nothing_else() {
    let certs = Certs::new();
    let gateway = Signer::ephemeral(GATEWAY).expect("key");
    let server = serving(certs.server(USER_SERVICE), &gateway, true).await;
    let health = server.health.expect("health listener");

    let plain = transport::channel(&format!("http://{health}"), CONNECT).expect("dial");
    let status = HealthClient::new(plain.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("a plaintext probe is answered")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let err = echo(plain, &gateway)
        .await
        .expect_err("only health is served there");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
}

#[tokio::test]
async fn a_scheme_that_does_not_match_the_ca_is_refused_at_startup() {
    let certs = Certs::new();
    let ca = certs.client();
    assert!(matches!(
        balanced("http://127.0.0.1:1", Some(&ca)),
        Err(DialError::Tls(TlsError::Plaintext { .. }))
    ));
    assert!(matches!(
        balanced("https://item-service:50052", None),
        Err(DialError::Tls(TlsError::NoCa { .. }))
    ));
    assert!(balanced("http://127.0.0.1:1", None).is_ok());
}

#[test]
fn a_bad_certificate_or_key_is_refused_at_startup_naming_the_setting() {
    let certs = Certs::new();
    let dir = &certs.0;
    let cert = dir.cert_file(USER_SERVICE);
    let key = dir.key_file(USER_SERVICE);
    let other_key = dir.key_file(ITEM_SERVICE);
    let settings = |c: Option<&PathBuf>, k: Option<&PathBuf>| {
        ServerTls::from_settings(
            c.map(PathBuf::as_path),
            k.map(PathBuf::as_path),
            "USER_TLS_CERT",
            "USER_TLS_KEY",
        )
    };
    assert!(matches!(settings(None, None), Ok(None)));
    assert!(matches!(
        settings(Some(&cert), None),
        Err(TlsError::HalfSet {
            given: "USER_TLS_CERT",
            missing: "USER_TLS_KEY"
        })
    ));
    assert!(matches!(
        settings(Some(&cert), Some(&other_key)),
        Err(TlsError::Unusable { .. })
    ));
    // The key where the certificate belongs.
    assert!(matches!(
        settings(Some(&key), Some(&key)),
        Err(TlsError::Missing { .. })
    ));
    assert!(matches!(
        settings(Some(&dir.path().join("absent.crt")), Some(&key)),
        Err(TlsError::Read { .. })
    ));
    let no_ca = ClientTlsSettings {
        ca_file: Some(key.clone()),
    }
    .load();
    assert!(matches!(no_ca, Err(TlsError::Missing { .. })), "{no_ca:?}");
}
