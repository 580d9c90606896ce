//! Login and registration throttling at the edge, before user-service spends an argon2
//! hash on an attempt.
//!
//! Logins: after too many failed logins for one account (email) or from one client address
//! within a window, further logins for it are refused with 429 and `Retry-After`. An
//! attempt is reserved before it is sent ([`LoginThrottle::reserve`]) and counts against
//! both limits while it is in flight, so a burst of parallel guesses cannot all pass the
//! check before the first failure is recorded; at most one login per account is in flight.
//! Whatever ends an attempt other than a success counts as a failure (a wrong password, an
//! error, a timeout, the client going away), because the password may have been checked.
//! A success clears its account's count.
//!
//! Registrations: at most a number per client address within a window.
//!
//! At most `max_keys` accounts and addresses are tracked per throttle: when full, expired
//! entries go first, then the oldest.

use std::{
    collections::HashMap,
    hash::Hash,
    net::{IpAddr, SocketAddr},
    sync::{Mutex, MutexGuard},
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

/// Registration throttle settings.
#[derive(Debug, Clone)]
pub struct RegisterConfig {
    pub enabled: bool,
    /// Registrations per client address within `window`.
    pub per_address: u32,
    pub window: Duration,
    /// Addresses tracked at most (bounds memory).
    pub max_keys: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Account(String),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Failed logins (or, for registrations, attempts) since `since`.
    failures: u32,
    /// Attempts reserved and not yet settled.
    in_flight: u32,
    since: Instant,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            failures: 0,
            in_flight: 0,
            since: now,
        }
    }

    /// Starts the count afresh once its window has passed (attempts in flight stay).
    fn expire(&mut self, now: Instant, window: Duration) {
        if now.duration_since(self.since) >= window {
            self.failures = 0;
            self.since = now;
        }
    }

    /// What is left of the window, at least a second (a `Retry-After` of 0 invites a
    /// retry loop).
    fn left(&self, now: Instant, window: Duration) -> Duration {
        window
            .saturating_sub(now.duration_since(self.since))
            .max(Duration::from_secs(1))
    }

    fn idle(&self) -> bool {
        self.failures == 0 && self.in_flight == 0
    }
}

/// Why a login or registration was refused, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// Too many failed logins for this account.
    Account { retry_after: Duration },
    /// Too many failed logins from this address.
    Address { retry_after: Duration },
    /// Another login for this account is being checked right now.
    InProgress,
    /// Too many registrations from this address.
    Registrations { retry_after: Duration },
}

impl Throttled {
    pub fn retry_after(self) -> Duration {
        match self {
            Self::Account { retry_after }
            | Self::Address { retry_after }
            | Self::Registrations { retry_after } => retry_after,
            Self::InProgress => Duration::from_secs(1),
        }
    }
}

/// The client's address: the socket peer, unless the peer is one of `trusted` proxies; then
/// the nearest `X-Forwarded-For` hop that is not one.
pub fn client_address(trusted: &[IpAddr], peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let peer = platform::net::canonical(peer.ip());
    let is_trusted = |ip: &IpAddr| trusted.contains(ip);
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .map(platform::net::canonical)
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Makes room for one more key: expired idle entries go first, then the oldest idle ones.
/// Entries with attempts in flight go last (only if nothing else is left), so a full table
/// does not let a second concurrent guess at an account through.
fn make_room<K: Clone + Eq + Hash>(
    entries: &mut HashMap<K, Entry>,
    cap: usize,
    now: Instant,
    window: Duration,
) {
    let cap = cap.max(2);
    if entries.len() < cap {
        return;
    }
    entries.retain(|_, e| e.in_flight > 0 || now.duration_since(e.since) < window);
    while entries.len() >= cap {
        let oldest = entries
            .iter()
            .min_by_key(|(_, e)| (e.in_flight > 0, e.since))
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => entries.remove(&k),
            None => break,
        };
    }
}

#[derive(Debug)]
pub struct LoginThrottle {
    config: ThrottleConfig,
    entries: Mutex<HashMap<Key, Entry>>,
}

/// A reserved login attempt. Dropped without being settled, it counts as a failed login:
/// the request failed, timed out or was abandoned, and the password may have been checked.
#[must_use = "dropping the attempt counts it as a failed login"]
#[derive(Debug)]
pub struct LoginAttempt<'a> {
    throttle: &'a LoginThrottle,
    /// None when throttling is off.
    keys: Option<[Key; 2]>,
}

impl LoginAttempt<'_> {
    /// The password was right: the account starts afresh (its address does not).
    pub fn succeeded(mut self) {
        if let Some([account, address]) = self.keys.take() {
            let mut entries = self.throttle.lock();
            entries.remove(&account);
            release(&mut entries, &address);
        }
    }

    /// The attempt was never sent to user-service (refused at the gateway): it does not
    /// count.
    pub fn not_sent(mut self) {
        if let Some(keys) = self.keys.take() {
            let mut entries = self.throttle.lock();
            for key in &keys {
                release(&mut entries, key);
            }
        }
    }
}

impl Drop for LoginAttempt<'_> {
    fn drop(&mut self) {
        if let Some(keys) = self.keys.take() {
            self.throttle.failed(keys);
        }
    }
}

/// One attempt less in flight; the entry goes when nothing is left in it.
fn release<K: Eq + Hash>(entries: &mut HashMap<K, Entry>, key: &K) {
    if let Some(e) = entries.get_mut(key) {
        e.in_flight = e.in_flight.saturating_sub(1);
        if e.idle() {
            entries.remove(key);
        }
    }
}

impl LoginThrottle {
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        lock(&self.entries)
    }

    /// The client's address (see [`client_address`]) with this gateway's trusted proxies.
    pub fn client_address(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        client_address(&self.config.trusted_proxies, peer, headers)
    }

    /// Reserves a login for `email` from `address`, or says why not. Check and reservation
    /// are one step under the lock: attempts in flight count against the limits as if they
    /// had failed, and a second attempt for an account already in flight is refused.
    pub fn reserve(&self, email: &str, address: IpAddr) -> Result<LoginAttempt<'_>, Throttled> {
        if !self.config.enabled {
            return Ok(LoginAttempt {
                throttle: self,
                keys: None,
            });
        }
        let now = Instant::now();
        let window = self.config.window;
        let account = account(email);
        let address = Key::Address(platform::net::client_unit(address));
        let mut entries = self.lock();
        let over = |e: &Entry, limit: u32| e.failures + e.in_flight >= limit.max(1);
        if let Some(e) = entries.get_mut(&account) {
            e.expire(now, window);
            // At most one attempt per account is in flight, so failures alone decide here.
            if e.failures >= self.config.account_failures.max(1) {
                return Err(Throttled::Account {
                    retry_after: e.left(now, window),
                });
            }
            if e.in_flight > 0 {
                return Err(Throttled::InProgress);
            }
        }
        if let Some(e) = entries.get_mut(&address) {
            e.expire(now, window);
            if over(e, self.config.address_failures) {
                return Err(Throttled::Address {
                    retry_after: e.left(now, window),
                });
            }
        }
        for key in [&account, &address] {
            if !entries.contains_key(key) {
                make_room(&mut entries, self.config.max_keys, now, window);
            }
            entries
                .entry(key.clone())
                .or_insert(Entry::new(now))
                .in_flight += 1;
        }
        Ok(LoginAttempt {
            throttle: self,
            keys: Some([account, address]),
        })
    }

    /// Counts a settled-as-failed attempt against its account and address.
    fn failed(&self, keys: [Key; 2]) {
        let now = Instant::now();
        let window = self.config.window;
        let mut entries = self.lock();
        for key in keys {
            if !entries.contains_key(&key) {
                make_room(&mut entries, self.config.max_keys, now, window);
            }
            let e = entries.entry(key).or_insert(Entry::new(now));
            e.in_flight = e.in_flight.saturating_sub(1);
            e.expire(now, window);
            // The window runs from the first failure, not from the first reservation.
            if e.failures == 0 {
                e.since = now;
            }
            e.failures = e.failures.saturating_add(1);
        }
    }

    /// How many accounts and addresses are tracked now.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }
}

/// Registrations per client address.
#[derive(Debug)]
pub struct RegisterThrottle {
    config: RegisterConfig,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

impl RegisterThrottle {
    pub fn new(config: RegisterConfig) -> Self {
        Self {
            config,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a registration from `address`, or refuses it when the address has had its
    /// limit within the window. Counted when admitted, so parallel requests cannot overrun
    /// the limit.
    pub fn admit(&self, address: IpAddr) -> Result<(), Throttled> {
        if !self.config.enabled {
            return Ok(());
        }
        let now = Instant::now();
        let window = self.config.window;
        let key = platform::net::client_unit(address);
        let mut entries = lock(&self.entries);
        if !entries.contains_key(&key) {
            make_room(&mut entries, self.config.max_keys, now, window);
        }
        let e = entries.entry(key).or_insert(Entry::new(now));
        e.expire(now, window);
        if e.failures >= self.config.per_address.max(1) {
            return Err(Throttled::Registrations {
                retry_after: e.left(now, window),
            });
        }
        if e.failures == 0 {
            e.since = now;
        }
        e.failures += 1;
        Ok(())
    }

    /// Gives back an admitted registration that was never sent to user-service.
    pub fn refund(&self, address: IpAddr) {
        if !self.config.enabled {
            return;
        }
        let key = platform::net::client_unit(address);
        let mut entries = lock(&self.entries);
        if let Some(e) = entries.get_mut(&key) {
            e.failures = e.failures.saturating_sub(1);
            if e.idle() {
                entries.remove(&key);
            }
        }
    }
}

/// Accounts are counted by their normalised email, as user-service stores it, so case
/// and spacing variants share one count.
fn account(email: &str) -> Key {
    Key::Account(email.trim().to_lowercase())
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

    /// A reserved attempt that ends any other way than `succeeded`: a failure.
    fn fail(t: &LoginThrottle, email: &str, address: IpAddr) {
        drop(t.reserve(email, address).expect("reserved"));
    }

    #[test]
    fn account_refused_after_its_failures_and_cleared_by_a_success() {
        let t = throttle(100);
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            fail(&t, "Ada@Example.com", a);
        }
        let refused = t.reserve("ada@example.com ", ip("192.0.2.2")).map(drop);
        assert!(
            matches!(refused, Err(Throttled::Account { .. })),
            "{refused:?}"
        );
        assert!(
            refused
                .err()
                .is_some_and(|r| r.retry_after() > Duration::ZERO)
        );
        t.reserve("bob@example.com", a)
            .expect("other accounts are not")
            .succeeded();

        let t = throttle(100);
        for _ in 0..2 {
            fail(&t, "ada@example.com", a);
        }
        t.reserve("ADA@example.com", a)
            .expect("under the limit")
            .succeeded();
        for _ in 0..2 {
            fail(&t, "ada@example.com", a);
        }
        t.reserve("ada@example.com", a)
            .expect("the success cleared the first two failures")
            .succeeded();
    }

    #[test]
    fn a_dropped_attempt_counts_as_a_failed_login() {
        let t = throttle(100);
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            // E.g. the request's future was dropped while user-service checked the password.
            let attempt = t.reserve("ada@example.com", a).expect("reserved");
            drop(attempt);
        }
        assert!(matches!(
            t.reserve("ada@example.com", a).map(drop),
            Err(Throttled::Account { .. })
        ));
    }

    #[test]
    fn an_attempt_never_sent_does_not_count() {
        let t = throttle(100);
        let a = ip("192.0.2.1");
        for _ in 0..10 {
            t.reserve("ada@example.com", a)
                .expect("reserved")
                .not_sent();
        }
        assert_eq!(t.tracked(), 0, "nothing left behind");
    }

    #[test]
    fn a_second_concurrent_login_for_an_account_is_refused() {
        let t = throttle(100);
        let first = t
            .reserve("ada@example.com", ip("192.0.2.1"))
            .expect("first");
        assert_eq!(
            t.reserve("ADA@example.com", ip("192.0.2.2")).map(drop),
            Err(Throttled::InProgress)
        );
        t.reserve("bob@example.com", ip("192.0.2.1"))
            .expect("another account")
            .succeeded();
        first.succeeded();
        t.reserve("ada@example.com", ip("192.0.2.1"))
            .expect("free again")
            .succeeded();
    }

    #[test]
    fn reservations_are_atomic_across_threads() {
        let t = throttle(1000);
        let barrier = std::sync::Barrier::new(8);
        let held = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for i in 0..8 {
                let (t, barrier, held) = (&t, &barrier, &held);
                s.spawn(move || {
                    barrier.wait();
                    let r = t.reserve("ada@example.com", ip(&format!("192.0.2.{i}")));
                    if let Ok(attempt) = r {
                        // Held until every thread has tried.
                        lock(held).push(attempt);
                    }
                });
            }
        });
        let held = held.into_inner().expect("no panics");
        assert_eq!(held.len(), 1, "one in flight per account");
    }

    #[test]
    fn attempts_in_flight_count_against_the_address() {
        let t = throttle(100);
        let a = ip("192.0.2.1");
        let held: Vec<_> = (0..5)
            .map(|i| {
                t.reserve(&format!("u{i}@example.com"), a)
                    .expect("reserved")
            })
            .collect();
        assert!(matches!(
            t.reserve("fresh@example.com", a).map(drop),
            Err(Throttled::Address { .. })
        ));
        for attempt in held {
            attempt.succeeded();
        }
        t.reserve("fresh@example.com", a)
            .expect("in flight no more, and none failed")
            .succeeded();
    }

    #[test]
    fn address_refused_after_its_failures_across_accounts() {
        let t = throttle(100);
        let a = ip("2001:db8::1");
        for i in 0..5 {
            fail(&t, &format!("u{i}@example.com"), a);
        }
        let refused = t
            .reserve("fresh@example.com", ip("2001:db8::ffff"))
            .map(drop);
        assert!(
            matches!(refused, Err(Throttled::Address { .. })),
            "same /64: {refused:?}"
        );
        t.reserve("fresh@example.com", ip("2001:db8:0:1::1"))
            .expect("another /64")
            .succeeded();
    }

    #[test]
    fn tracked_keys_stay_under_the_cap() {
        let t = LoginThrottle::new(ThrottleConfig {
            address_failures: u32::MAX,
            ..throttle(10).config
        });
        for i in 0..1000 {
            fail(&t, &format!("u{i}@example.com"), ip("192.0.2.9"));
            assert!(t.tracked() <= 10, "{} tracked", t.tracked());
        }
        // The newest failures are the ones kept.
        for _ in 0..3 {
            fail(&t, "last@example.com", ip("192.0.2.9"));
        }
        assert!(t.reserve("last@example.com", ip("192.0.2.10")).is_err());
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

    fn registrations(per_address: u32, max_keys: usize) -> RegisterThrottle {
        RegisterThrottle::new(RegisterConfig {
            enabled: true,
            per_address,
            window: Duration::from_secs(600),
            max_keys,
        })
    }

    #[test]
    fn registrations_per_address_are_limited_and_a_refund_gives_one_back() {
        let t = registrations(3, 100);
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            t.admit(a).expect("under the limit");
        }
        let refused = t.admit(a);
        assert!(
            matches!(refused, Err(Throttled::Registrations { retry_after }) if retry_after > Duration::ZERO),
            "{refused:?}"
        );
        t.admit(ip("192.0.2.2")).expect("another address");
        t.refund(a);
        t.admit(a).expect("the refunded one");
        assert!(t.admit(a).is_err());
    }

    #[test]
    fn registrations_tracked_stay_under_the_cap() {
        let t = registrations(3, 10);
        for i in 0..=255u8 {
            t.admit(IpAddr::from([192, 0, 2, i]))
                .expect("fresh address");
            assert!(lock(&t.entries).len() <= 10);
        }
    }
}
