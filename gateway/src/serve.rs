//! The gateway's HTTP server loop. axum's `serve` sets neither a header read timeout nor a
//! connection limit, so a client can hold sockets forever by sending a request line one
//! byte at a time (slowloris) or by opening connections until file descriptors run out.
//! Here every connection gets HTTP/1 `header_read_timeout`, at most `max_connections` are
//! served at once (further ones wait in the listen backlog until one closes), every socket
//! has TCP_NODELAY, and each request carries the peer address (`ConnectInfo`) for the
//! login throttle.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::ServiceExt as _;

/// Connection limits of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A connection that has not sent a request's complete headers within this long is
    /// closed.
    pub header_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    tokio::pin!(shutdown);
    loop {
        // A slot first: at the limit, connections wait unaccepted.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break, // never closed
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        platform::net::set_nodelay(&stream);
        metrics::gauge!("gateway_http_connections").increment(1.0);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: http::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                let resp = router.oneshot(req).await;
                Ok::<_, Infallible>(match resp {
                    Ok(r) => r,
                    Err(never) => match never {},
                })
            }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            metrics::gauge!("gateway_http_connections").decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
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
