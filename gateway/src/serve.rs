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
    use std::net::SocketAddr;

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use super::*;
    use crate::{Application, Config};

    /// Bounds how long a test waits for something that must happen; never reached when
    /// the server behaves.
    const GUARD: Duration = Duration::from_secs(60);

    /// A gateway on 127.0.0.1:0 (its services unreachable: these tests need none).
    async fn gateway(
        tweak: impl FnOnce(&mut Config),
    ) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let mut config = Config::with_secret("test-secret-0123456789-abcdefghij");
        config.http_addr = "127.0.0.1:0".into();
        let nowhere = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        config.user_service_url = nowhere.into();
        config.item_service_url = nowhere.into();
        config.payment_service_url = nowhere.into();
        config.identity.identity_key = Some(platform::identity::generate_key().expect("a key"));
        tweak(&mut config);
        let app = Application::build(config).await.expect("gateway builds");
        let addr = app.http_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        (addr, stop)
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
    async fn random_paths_and_made_up_methods_share_one_route_label() {
        let (addr, _stop) = gateway(|_| {}).await;
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
        let metrics = exchange(addr, &get("/metrics")).await;
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
