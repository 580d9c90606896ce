//! Service tokens remembered on both ends of a call, so a call costs neither an Ed25519
//! signature nor a verification once its token has been seen.
//!
//! The caller ([`Minted`]) reuses a token while more than half its lifetime remains, keyed by
//! every claim it carries except the times (audience, method, end user, lifetime). The callee ([`Verified`]) remembers the
//! claims of tokens whose signature it checked, keyed by the exact token text: a signature is
//! a property of those bytes, so only the checks that depend on the moment or on the callee
//! (expiry, issued-at, audience, method) run again. Both are bounded; when full, stale entries go, and
//! if none are stale everything does (the next calls simply sign or verify again).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::identity::UserAssertion;

/// Entries either cache holds at most (distinct audience × end user pairs a caller talks to
/// within a token's reuse window; distinct tokens a server sees within their lifetime).
pub const CAPACITY: usize = 4096;

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Every claim of a minted token but its times.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MintKey {
    pub audience: String,
    /// The gRPC path the token is for ("/shop.item.v1.ItemService/GetItem").
    pub method: Option<String>,
    pub user: Option<UserAssertion>,
    pub ttl: Duration,
}

#[derive(Debug)]
struct MintedToken {
    token: String,
    /// Reused until this second (iat + half the lifetime).
    reuse_until: u64,
}

/// The caller's side: tokens by [`MintKey`].
#[derive(Debug, Default)]
pub struct Minted(Mutex<HashMap<MintKey, MintedToken>>);

impl Minted {
    /// The token for `key` if it still has more than half its life ahead at `now`.
    pub fn get(&self, key: &MintKey, now: u64) -> Option<String> {
        let map = self.0.lock().ok()?;
        map.get(key)
            .filter(|t| now < t.reuse_until)
            .map(|t| t.token.clone())
    }

    /// Remembers `token`, issued at `iat` with `key.ttl` to live.
    pub fn put(&self, key: MintKey, token: String, iat: u64) {
        let reuse_until = iat + key.ttl.as_secs() / 2;
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= CAPACITY && !map.contains_key(&key) {
                map.retain(|_, t| iat < t.reuse_until);
                if map.len() >= CAPACITY {
                    map.clear();
                }
            }
            map.insert(key, MintedToken { token, reuse_until });
        }
    }

    pub fn len(&self) -> usize {
        self.0.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a server learnt from a token whose signature, issuer and subject it checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub service: String,
    pub user: Option<UserAssertion>,
    pub method: Option<String>,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

/// The callee's side: checked claims by token text.
#[derive(Debug, Default)]
pub struct Verified(Mutex<HashMap<String, Checked>>);

impl Verified {
    pub fn get(&self, token: &str) -> Option<Checked> {
        self.0.lock().ok()?.get(token).cloned()
    }

    /// Remembers `claims` for `token`; `expired_before` drops entries no longer usable when
    /// the cache is full.
    pub fn put(&self, token: &str, claims: Checked, expired_before: u64) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= CAPACITY && !map.contains_key(token) {
                map.retain(|_, c| c.exp >= expired_before);
                if map.len() >= CAPACITY {
                    map.clear();
                }
            }
            map.insert(token.to_owned(), claims);
        }
    }

    pub fn len(&self) -> usize {
        self.0.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(aud: &str) -> MintKey {
        MintKey {
            audience: aud.into(),
            method: None,
            user: None,
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_minted_token_is_reused_for_half_its_life_only() {
        let m = Minted::default();
        m.put(key("a"), "t".into(), 1000);
        assert_eq!(m.get(&key("a"), 1000).as_deref(), Some("t"));
        assert_eq!(m.get(&key("a"), 1029).as_deref(), Some("t"));
        assert_eq!(m.get(&key("a"), 1030), None);
        assert_eq!(m.get(&key("b"), 1000), None);
    }

    #[test]
    fn both_caches_stay_bounded() {
        let m = Minted::default();
        let v = Verified::default();
        let checked = Checked {
            service: "s".into(),
            user: None,
            method: None,
            aud: "a".into(),
            iat: 1000,
            exp: 1060,
        };
        for i in 0..CAPACITY + 10 {
            m.put(key(&i.to_string()), "t".into(), 1000);
            v.put(&i.to_string(), checked.clone(), 0);
        }
        assert!(m.len() <= CAPACITY && !m.is_empty());
        assert!(v.len() <= CAPACITY && !v.is_empty());
        // The newest entry survives the clearing.
        let last = (CAPACITY + 9).to_string();
        assert!(m.get(&key(&last), 1000).is_some());
        assert!(v.get(&last).is_some());
    }
}
