//! Login throttling: after too many failed logins for one account (email) or from one
//! client address within a window, further logins for it are refused with 429 and
//! `Retry-After` before they reach user-service (each attempt costs an argon2 hash there).
//! A successful login clears its account's count. Only failures create entries, and at
//! most `max_keys` are tracked: when full, expired entries go first, then the oldest.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use http::HeaderMap;

/// Throttle settings.
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    pub enabled: bool,
    /// Failed logins per account within `window` before it is refused.
    pub account_failures: u32,
    /// Failed logins per client address within `window` before it is refused.
    pub address_failures: u32,
    pub window: Duration,
    /// Accounts and addresses tracked at most (bounds memory).
    pub max_keys: usize,
    /// Proxies whose `X-Forwarded-For` is believed; otherwise the client is the socket peer.
    pub trusted_proxies: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Account(String),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    since: Instant,
}

/// Why a login was refused, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    Account { retry_after: Duration },
    Address { retry_after: Duration },
}

impl Throttled {
    pub fn retry_after(self) -> Duration {
        match self {
            Self::Account { retry_after } | Self::Address { retry_after } => retry_after,
        }
    }
}

#[derive(Debug)]
pub struct LoginThrottle {
    config: ThrottleConfig,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl LoginThrottle {
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The client's address: the socket peer, unless the peer is a trusted proxy; then
    /// the nearest `X-Forwarded-For` hop that is not one.
    pub fn client_address(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer.ip());
        let trusted = |ip: &IpAddr| self.config.trusted_proxies.contains(ip);
        if !trusted(&peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
            .map(canonical)
            .collect();
        hops.into_iter()
            .rev()
            .find(|ip| !trusted(ip))
            .unwrap_or(peer)
    }

    /// Whether a login for `email` from `address` may go ahead now.
    pub fn check(&self, email: &str, address: IpAddr) -> Result<(), Throttled> {
        if !self.config.enabled {
            return Ok(());
        }
        let now = Instant::now();
        let entries = self.lock();
        let over = |key: &Key, limit: u32| {
            entries
                .get(key)
                .filter(|e| e.failures >= limit.max(1))
                .and_then(|e| self.config.window.checked_sub(now.duration_since(e.since)))
                .filter(|left| !left.is_zero())
        };
        if let Some(retry_after) = over(&account(email), self.config.account_failures) {
            return Err(Throttled::Account { retry_after });
        }
        if let Some(retry_after) =
            over(&Key::Address(prefix(address)), self.config.address_failures)
        {
            return Err(Throttled::Address { retry_after });
        }
        Ok(())
    }

    /// Counts a failed login (wrong email or password) against the account and address.
    pub fn failed(&self, email: &str, address: IpAddr) {
        if !self.config.enabled {
            return;
        }
        let now = Instant::now();
        let mut entries = self.lock();
        for key in [account(email), Key::Address(prefix(address))] {
            if !entries.contains_key(&key) {
                self.make_room(&mut entries, now);
            }
            let e = entries.entry(key).or_insert(Entry {
                failures: 0,
                since: now,
            });
            if now.duration_since(e.since) >= self.config.window {
                *e = Entry {
                    failures: 0,
                    since: now,
                };
            }
            e.failures = e.failures.saturating_add(1);
        }
    }

    /// A successful login: the account starts afresh (its address does not).
    pub fn succeeded(&self, email: &str) {
        if self.config.enabled {
            self.lock().remove(&account(email));
        }
    }

    /// How many accounts and addresses are tracked now.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn make_room(&self, entries: &mut HashMap<Key, Entry>, now: Instant) {
        let cap = self.config.max_keys.max(2);
        if entries.len() < cap {
            return;
        }
        let window = self.config.window;
        entries.retain(|_, e| now.duration_since(e.since) < window);
        while entries.len() >= cap {
            let oldest = entries
                .iter()
                .min_by_key(|(_, e)| e.since)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => entries.remove(&k),
                None => break,
            };
        }
    }
}

/// Accounts are counted by their normalised email, as user-service stores it, so case
/// and spacing variants share one count.
fn account(email: &str) -> Key {
    Key::Account(email.trim().to_lowercase())
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The unit one client controls: an IPv4 address, or an IPv6 /64 (a host usually gets a
/// whole /64, so counting single IPv6 addresses would be trivial to dodge).
fn prefix(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(max_keys: usize) -> LoginThrottle {
        LoginThrottle::new(ThrottleConfig {
            enabled: true,
            account_failures: 3,
            address_failures: 5,
            window: Duration::from_secs(600),
            max_keys,
            trusted_proxies: vec!["10.0.0.1".parse().expect("ip")],
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn account_refused_after_its_failures_and_cleared_by_a_success() {
        let t = throttle(100);
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(t.check("Ada@Example.com", a), Ok(()));
            t.failed("ada@example.com ", a);
        }
        let refused = t.check("ada@example.com", ip("192.0.2.2"));
        assert!(
            matches!(refused, Err(Throttled::Account { .. })),
            "{refused:?}"
        );
        assert!(
            refused
                .err()
                .is_some_and(|r| r.retry_after() > Duration::ZERO)
        );
        assert_eq!(
            t.check("bob@example.com", a),
            Ok(()),
            "other accounts are not"
        );
        t.succeeded("ADA@example.com");
        assert_eq!(t.check("ada@example.com", a), Ok(()));
    }

    #[test]
    fn address_refused_after_its_failures_across_accounts() {
        let t = throttle(100);
        let a = ip("2001:db8::1");
        for i in 0..5 {
            t.failed(&format!("u{i}@example.com"), a);
        }
        let refused = t.check("fresh@example.com", ip("2001:db8::ffff"));
        assert!(
            matches!(refused, Err(Throttled::Address { .. })),
            "same /64: {refused:?}"
        );
        assert_eq!(t.check("fresh@example.com", ip("2001:db8:0:1::1")), Ok(()));
    }

    #[test]
    fn tracked_keys_stay_under_the_cap() {
        let t = throttle(10);
        for i in 0..1000 {
            t.failed(&format!("u{i}@example.com"), ip("192.0.2.9"));
            assert!(t.tracked() <= 10, "{} tracked", t.tracked());
        }
        // The newest failures are the ones kept.
        t.failed("last@example.com", ip("192.0.2.9"));
        t.failed("last@example.com", ip("192.0.2.9"));
        t.failed("last@example.com", ip("192.0.2.9"));
        assert!(t.check("last@example.com", ip("192.0.2.10")).is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let t = throttle(10);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "198.51.100.7, 10.0.0.1".parse().expect("value"),
        );
        let untrusted = SocketAddr::from(([192, 0, 2, 1], 4000));
        assert_eq!(t.client_address(untrusted, &h), ip("192.0.2.1"));
        let proxy = SocketAddr::from(([10, 0, 0, 1], 4000));
        assert_eq!(t.client_address(proxy, &h), ip("198.51.100.7"));
        assert_eq!(t.client_address(proxy, &HeaderMap::new()), ip("10.0.0.1"));
    }
}
