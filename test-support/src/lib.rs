//! What the services' integration tests share: the local stack's settings, throw-away
//! databases (one naming scheme, `shop_<service>_t<12 hex>`, in every store), servers running
//! in the test's runtime on 127.0.0.1:0, and small helpers (metrics, polling, fault rules).
//!
//! Each service's spawn helper sits behind a feature of the same name (`user`, `item`,
//! `payment`) so a test binary links only the services it starts.

#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod db;
pub mod events;
pub mod faults;
pub mod identity;
#[cfg(feature = "item")]
pub mod item;
#[cfg(feature = "payment")]
pub mod payment;
mod running;
#[cfg(feature = "user")]
pub mod user;

use std::{future::Future, net::SocketAddr, time::Duration};

pub use running::{Running, Shutdown};
use tonic::transport::Channel;

/// A free loopback address for a server that starts a moment later
/// ([`platform::net::free_loopback_addr`]), for two servers that must know each other's
/// address before either starts (payment-service asks user-service about compensations;
/// user-service calls payment-service).
pub fn free_addr() -> SocketAddr {
    platform::net::free_loopback_addr().expect("a free loopback port")
}

/// A setting of the local stack (a database URL, the grpcurl path), or a clear failure
/// telling how to start the stack; never a silent skip.
pub fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: start the local stack and load its settings first, \
             with eval \"$(scripts/stack up)\" (or run the tests through scripts/test)"
        ),
    }
}

/// A fresh name for a throw-away database of `service`: `shop_<service>_t<12 hex digits>`,
/// valid unquoted in PostgreSQL, MariaDB and MongoDB. The `shop_<service>` prefix matters:
/// the stack's MariaDB user may only create databases named `shop_payment*`.
pub fn database_name(service: &str) -> String {
    format!("shop_{service}_t{}", unique_suffix())
}

/// 12 random hex digits, for names that must not collide between tests.
pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A gRPC channel to a server that has just been spawned (retries while it comes up).
pub async fn connect(addr: SocketAddr) -> Channel {
    let endpoint = Channel::from_shared(format!("http://{addr}"))
        .expect("a socket address makes a valid URI")
        .connect_timeout(Duration::from_secs(5));
    let mut last = None;
    for _ in 0..50 {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot connect to {addr}: {last:?}");
}

/// The text a Prometheus endpoint at `addr` serves on /metrics.
pub async fn metrics(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .expect("send the metrics request");
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .expect("read the metrics response");
    out
}

/// The sum of the Prometheus samples whose line starts with `prefix` (0 when absent).
pub fn counter(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `check` until it returns Some, for at most `limit` (a safety net against a hung
/// test, not a performance assertion).
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "condition not reached in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_follow_one_scheme_and_differ() {
        let a = database_name("payment");
        let b = database_name("payment");
        assert_ne!(a, b);
        let prefix = "shop_payment_t";
        assert_eq!(a.len(), prefix.len() + 12);
        assert!(a.starts_with(prefix));
        assert!(a[prefix.len()..].bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn counter_sums_matching_samples() {
        let text = "# HELP x\nrpc_total{code=\"OK\"} 3\nrpc_total{code=\"NotFound\"} 2\nother 7\n";
        assert_eq!(counter(text, "rpc_total{"), 5.0);
        assert_eq!(counter(text, "rpc_total{code=\"OK\""), 3.0);
        assert_eq!(counter(text, "missing"), 0.0);
    }
}
