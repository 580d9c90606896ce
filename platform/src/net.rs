//! Every socket the Shop binaries accept is set up here, the same way: TCP_NODELAY on.
//!
//! Why it matters: a gRPC or HTTP response leaves as several small writes (headers, body,
//! trailers). With Nagle's algorithm on, a small write waits until the previous one is
//! acknowledged, and the peer delays that ACK by up to 40 ms on Linux: a 1 ms handler then
//! looks like a 40 ms hop, which is exactly the cost this project sets out to measure.
//! tonic's `Server::tcp_nodelay` does not apply to `serve_with_incoming*`, and axum 0.8's
//! `serve` leaves the option alone, so each accepted socket is configured here.
//! (Dialled sockets: `platform::transport::channel` and the HTTP clients set it themselves.)

use std::io;

use futures::{Stream, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;

/// Binds `addr` ("127.0.0.1:0" picks a free port).
pub async fn bind(addr: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Turns Nagle's algorithm off on one socket. A failure only costs latency, so it is
/// logged, not fatal.
pub fn set_nodelay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
}

/// The accepted connections of `listener`, each with TCP_NODELAY set: for tonic's
/// `serve_with_incoming*`.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| accepted.inspect(set_nodelay))
}

/// `listener` for `axum::serve`, with TCP_NODELAY set on every accepted connection.
pub fn http_listener(
    listener: TcpListener,
) -> impl axum::serve::Listener<Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt as _;
    listener.tap_io(|stream: &mut TcpStream| set_nodelay(stream))
}

/// IPv4-mapped IPv6 addresses as IPv4 (a dual-stack listener sees IPv4 clients that way).
pub fn canonical(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// The unit one client controls, for per-client limits: an IPv4 address, or an IPv6 /64 (a
/// host usually gets a whole /64, so limiting single IPv6 addresses would be trivial to
/// dodge).
pub fn client_unit(ip: std::net::IpAddr) -> std::net::IpAddr {
    match canonical(ip) {
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// A free loopback address for a server that binds it a moment later (a test harness or the
/// load-test tool that must hand two servers each other's address before either starts).
/// Taken below the kernel's ephemeral port range, so no client socket and no server bound
/// to port 0 can take it in between; checked by binding it now, and never handed out twice
/// by one process.
pub fn free_loopback_addr() -> std::io::Result<std::net::SocketAddr> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (
        ephemeral_low.saturating_sub(12_000).max(1024),
        ephemeral_low,
    );
    for _ in 0..200 {
        let port = low + (uuid::Uuid::new_v4().as_u128() % u128::from(high - low)) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.contains(&port) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            given.push(port);
            return l.local_addr();
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        format!("no free loopback port in {low}..{high}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut accepted = Box::pin(incoming(listener));
        let _client = TcpStream::connect(addr).await.expect("connect");
        let server_side = accepted.next().await.expect("one").expect("accepted");
        assert!(server_side.nodelay().expect("read option"));
    }
}
