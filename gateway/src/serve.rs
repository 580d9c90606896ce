//! The gateway's HTTP server: `platform::http_server` with the gateway's limits (see
//! [`crate::Config::serve_limits`]) and its answers in the API's error format. Every
//! connection is bounded from its first byte (first byte, request head, idle, HTTP/2
//! keep-alive, body, whole request), at most `max_connections` are served at once and at
//! most `max_connections_per_address` from one client address; each request carries the
//! peer address (`ConnectInfo`) for the login throttle.

use std::{future::Future, net::SocketAddr};

use axum::{Router, response::IntoResponse as _};
use http::StatusCode;
use platform::http_server::{Exceeded, HttpLimits, HttpServer};
use tokio::net::TcpListener;

use crate::error::ApiError;

/// Connection limits of the HTTP listener.
pub type ServeLimits = HttpLimits;

/// What a client sees when its request runs into a limit: a slow body is 408, a request
/// that took too long 504 `deadline_exceeded`, as when a downstream deadline runs out.
fn answer(exceeded: Exceeded) -> axum::response::Response {
    match exceeded {
        Exceeded::Body => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body was not sent in time",
        ),
        Exceeded::Request => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded",
            "the request took too long; try again",
        ),
    }
    .into_response()
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    HttpServer::new("gateway", limits)
        .answering(answer)
        .serve(listener, router, shutdown)
        .await
}

/// Where the gateway's peer address comes from when no connection carries one (a router
/// driven without [`serve`], e.g. in a unit test).
pub fn unknown_peer() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use crate::{Application, Config};

    /// Bounds how long a test waits for something that must happen; never reached when
    /// the server behaves.
    const GUARD: Duration = Duration::from_secs(60);

    /// A gateway on 127.0.0.1:0 (its services unreachable: these tests need none).
    async fn gateway(
        tweak: impl FnOnce(&mut Config),
    ) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let (addr, _, stop) = gateway_and_operator(tweak).await;
        (addr, stop)
    }

    /// As [`gateway`], with its operator listener's address (also on 127.0.0.1:0).
    async fn gateway_and_operator(
        tweak: impl FnOnce(&mut Config),
    ) -> (SocketAddr, SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let mut config = Config::with_secret("test-secret-0123456789-abcdefghij");
        config.http_addr = "127.0.0.1:0".into();
        config.metrics_addr = "127.0.0.1:0".into();
        let nowhere = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        config.user_service_url = nowhere.into();
        config.item_service_url = nowhere.into();
        config.payment_service_url = nowhere.into();
        config.identity.identity_key = Some(platform::identity::generate_key().expect("a key"));
        // No card processor behind it: any well-formed publishable key.
        config.card_publishable_key = Some(platform::card_keys::generate(
            platform::card_keys::Kind::Publishable,
        ));
        tweak(&mut config);
        let app = Application::build(config).await.expect("gateway builds");
        let (addr, operator) = (app.http_addr(), app.metrics_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        (addr, operator, stop)
    }

    /// Sends `request` on a fresh connection and reads until the server closes it.
    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        tokio::time::timeout(GUARD, s.read_to_end(&mut answer))
            .await
            .expect("the server answers and closes")
            .expect("read");
        String::from_utf8_lossy(&answer).into_owned()
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
    }

    /// How long a test waits for the server to close a connection whose limit is well
    /// under a second; never reached when the limits hold.
    const CLOSE_GUARD: Duration = Duration::from_secs(10);

    /// The HTTP/2 connection preface and an empty SETTINGS frame: what an HTTP/2 client
    /// sends before its first request.
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const H2_EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

    /// Reads (and discards) what the server sends until it closes the connection; panics
    /// when it is still open after [`CLOSE_GUARD`].
    async fn closed_by_server(stream: &mut TcpStream, what: &str) {
        let mut buf = [0u8; 4096];
        let read_all = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(_) => {}
                    // Closed with unread data in its buffer: a reset.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                    Err(e) => panic!("{what}: reading failed: {e}"),
                }
            }
        };
        tokio::time::timeout(CLOSE_GUARD, read_all)
            .await
            .unwrap_or_else(|_| panic!("{what}: still open after {CLOSE_GUARD:?}"));
    }

    /// A connection from `local` (any 127.0.0.0/8 address is this host) to `addr`.
    async fn connect_from(local: [u8; 4], addr: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((local, 0)))
            .expect("bind a loopback address");
        socket.connect(addr).await.expect("connect")
    }

    /// Settings under which only the limit a test is about can close its connection.
    fn far_off(c: &mut Config) {
        c.first_byte_timeout_ms = 120_000;
        c.header_read_timeout_ms = 120_000;
        c.idle_timeout_ms = 120_000;
        c.http2_keepalive_interval_ms = 120_000;
        c.http2_keepalive_timeout_ms = 120_000;
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed() {
        let (addr, _stop) = gateway(|c| {
            far_off(c);
            c.first_byte_timeout_ms = 300;
        })
        .await;
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        closed_by_server(&mut silent, "a silent connection").await;
    }

    #[tokio::test]
    async fn a_connection_that_sends_part_of_the_http2_preface_is_closed() {
        let (addr, _stop) = gateway(|c| {
            far_off(c);
            c.header_read_timeout_ms = 300;
        })
        .await;
        let mut partial = TcpStream::connect(addr).await.expect("connect");
        partial
            .write_all(&H2_PREFACE[..16])
            .await
            .expect("write part of the preface");
        closed_by_server(&mut partial, "a partial preface").await;
    }

    #[tokio::test]
    async fn an_http2_connection_that_never_sends_a_request_is_closed() {
        let (addr, _stop) = gateway(|c| {
            far_off(c);
            c.header_read_timeout_ms = 300;
        })
        .await;
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        idle.write_all(H2_PREFACE).await.expect("preface");
        idle.write_all(&H2_EMPTY_SETTINGS).await.expect("settings");
        closed_by_server(&mut idle, "an HTTP/2 connection without a request").await;
    }

    #[tokio::test]
    async fn an_http2_client_that_stops_answering_pings_is_closed() {
        // Its first request is far off: only the keep-alive ping can close it.
        let (addr, _stop) = gateway(|c| {
            far_off(c);
            c.http2_keepalive_interval_ms = 200;
            c.http2_keepalive_timeout_ms = 200;
        })
        .await;
        let mut deaf = TcpStream::connect(addr).await.expect("connect");
        deaf.write_all(H2_PREFACE).await.expect("preface");
        deaf.write_all(&H2_EMPTY_SETTINGS).await.expect("settings");
        closed_by_server(&mut deaf, "an HTTP/2 client ignoring pings").await;
    }

    #[tokio::test]
    async fn an_http2_connection_idle_after_its_requests_is_closed() {
        let (addr, _stop) = gateway(|c| {
            far_off(c);
            c.idle_timeout_ms = 300;
        })
        .await;
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut client, connection) = h2::client::handshake(tcp).await.expect("handshake");
        // Drives the connection (and answers pings) until the server ends it.
        let driver = tokio::spawn(connection);
        let request = http::Request::get(format!("http://{addr}/healthz"))
            .body(())
            .expect("a request");
        let (response, _) = client.send_request(request, true).expect("send");
        let response = response.await.expect("answered");
        assert_eq!(response.status(), http::StatusCode::OK);
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            chunk.expect("body");
        }
        // The client is kept, so only the server can end the connection.
        let ended = tokio::time::timeout(CLOSE_GUARD, driver)
            .await
            .expect("the idle connection is closed by the server")
            .expect("task");
        ended.expect("closed cleanly (GOAWAY)");
        drop(client);
    }

    #[tokio::test]
    async fn a_body_trickling_in_is_cut_off_with_408_and_the_connection_closed() {
        let (addr, _stop) = gateway(|c| {
            far_off(c);
            c.body_timeout_ms = 1_000;
        })
        .await;
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut reader, mut writer) = stream.into_split();
        writer
            .write_all(
                b"POST /api/auth/login HTTP/1.1\r\nHost: gateway\r\n\
                  Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
            )
            .await
            .expect("head");
        // One byte every 200 ms: the body would take hours.
        let trickle = tokio::spawn(async move {
            loop {
                if writer.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        let read_all = async {
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                    Err(e) => panic!("reading failed: {e}"),
                }
            }
        };
        tokio::time::timeout(CLOSE_GUARD, read_all)
            .await
            .expect("the slow body is cut off and the connection closed");
        trickle.abort();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    }

    #[tokio::test]
    async fn a_request_over_the_request_timeout_is_answered_504() {
        // The request timeout is never shorter than the checkout lease: both short here.
        let (addr, _stop) = gateway(|c| {
            c.checkout_budget_ms = 100;
            c.checkout_lease_ms = 0;
            c.request_timeout_ms = 500;
            c.faults =
                r#"[{"method":"GET /api/items","latency":{"kind":"fixed","ms":60000}}]"#.into();
        })
        .await;
        let answer = tokio::time::timeout(CLOSE_GUARD, exchange(addr, &get("/api/items")))
            .await
            .expect("answered before the injected latency is over");
        assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
        assert!(answer.contains(r#""code":"deadline_exceeded""#), "{answer}");
    }

    #[tokio::test]
    async fn one_address_cannot_take_every_connection_slot() {
        let (addr, _stop) = gateway(|c| {
            far_off(c);
            c.max_connections = 3;
            c.max_connections_per_address = 2;
        })
        .await;
        // Two silent connections from one address hold its share...
        let _first = connect_from([127, 0, 0, 1], addr).await;
        let _second = connect_from([127, 0, 0, 1], addr).await;
        // ...a third from it is closed at once (its first-byte timeout is far off)...
        let mut third = connect_from([127, 0, 0, 1], addr).await;
        closed_by_server(&mut third, "a connection over its address's cap").await;
        // ...and another address still gets the slot that is left.
        let mut other = connect_from([127, 0, 0, 2], addr).await;
        other
            .write_all(get("/healthz").as_bytes())
            .await
            .expect("write");
        let mut answer = Vec::new();
        tokio::time::timeout(CLOSE_GUARD, other.read_to_end(&mut answer))
            .await
            .expect("another address is served")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn a_connection_sending_half_a_request_line_is_closed() {
        let (addr, _stop) = gateway(|c| c.header_read_timeout_ms = 300).await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /healthz HT").await.expect("write");
        let mut buf = [0u8; 512];
        // Without a header timeout this read waits forever (the guard then fails the test).
        let read = tokio::time::timeout(GUARD, slow.read(&mut buf))
            .await
            .expect("the gateway closes the slow connection");
        match read {
            // Closed, possibly after a 408.
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        // A client that sends its request promptly is served as usual.
        let ok = exchange(addr, &get("/healthz")).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_free_slot() {
        let (addr, _stop) = gateway(|c| c.max_connections = 2).await;
        // Two connections that say nothing hold both slots (the header timeout is far off).
        let first = TcpStream::connect(addr).await.expect("connect");
        let _second = TcpStream::connect(addr).await.expect("connect");
        // They connected first, so the server accepts them first. The third connection's
        // request is not served while they are held...
        let third = tokio::spawn(async move { exchange(addr, &get("/healthz")).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!third.is_finished(), "served beyond the connection cap");
        // ...and is once one of them goes away.
        drop(first);
        let answer = tokio::time::timeout(GUARD, third)
            .await
            .expect("served once a slot is free")
            .expect("task");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn operator_paths_are_served_on_the_operator_listener_only() {
        let (addr, operator, _stop) = gateway_and_operator(|_| {}).await;
        for path in ["/metrics", "/debug/downstreams"] {
            let public = exchange(addr, &get(path)).await;
            assert!(public.starts_with("HTTP/1.1 404"), "{path}: {public}");
            assert!(public.contains(r#""code":"not_found""#), "{path}: {public}");
            let served = exchange(operator, &get(path)).await;
            assert!(served.starts_with("HTTP/1.1 200"), "{path}: {served}");
        }
        let downstreams = exchange(operator, &get("/debug/downstreams")).await;
        // The services' internal addresses, which only operators may see.
        assert!(downstreams.contains("127.0.0.1:1"), "{downstreams}");
        let public = exchange(addr, &get("/healthz")).await;
        assert!(public.starts_with("HTTP/1.1 200"), "{public}");
        let operator_health = exchange(operator, &get("/healthz")).await;
        assert!(
            operator_health.starts_with("HTTP/1.1 404"),
            "{operator_health}"
        );
    }

    #[tokio::test]
    async fn random_paths_and_made_up_methods_share_one_route_label() {
        let (addr, operator, _stop) = gateway_and_operator(|_| {}).await;
        let tags: Vec<String> = (0..30)
            .map(|_| uuid::Uuid::new_v4().simple().to_string())
            .collect();
        for (i, tag) in tags.iter().enumerate() {
            let request = match i % 3 {
                0 => get(&format!("/{tag}")),
                1 => get(&format!("/api/{tag}/x")),
                _ => format!(
                    "M{tag} /api/items HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"
                ),
            };
            let answer = exchange(addr, &request).await;
            assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
        }
        let metrics = exchange(operator, &get("/metrics")).await;
        for tag in &tags {
            assert!(
                !metrics.contains(tag.as_str()),
                "{tag} became a label:\n{metrics}"
            );
        }
        let unmatched = metrics
            .lines()
            .find(|l| {
                l.starts_with("gateway_http_requests_total")
                    && l.contains(r#"route="unmatched""#)
                    && l.contains(r#"status="404""#)
            })
            .unwrap_or_else(|| panic!("no unmatched series:\n{metrics}"));
        assert!(unmatched.ends_with(" 20"), "{unmatched}");
        assert!(metrics.contains(r#"route="OTHER /api/items""#), "{metrics}");
    }
}
