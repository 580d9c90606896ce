//! The token vault: each token with the card it stands for, the account (key pair) that made
//! it, and whether a charge has used it. A token is single-use and its account's only; it
//! expires by age. The table is bounded, but a pending (unused, unexpired) token is never
//! dropped to make room: a burst of new tokens is refused instead, so nobody can flush out
//! the tokens of checkouts still on their way to a charge.

use std::collections::{HashMap, VecDeque};

use crate::{api::Token, ledger::VaultCard};

/// An account: the index of its key pair in the gateway's configuration.
pub type AccountId = u32;

pub struct Stored {
    pub token: Token,
    pub card: VaultCard,
    pub account: AccountId,
    pub used: bool,
}

/// Why a token cannot be charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown, expired, or another account's (which must look the same as unknown).
    Missing,
    /// A charge used it already.
    Used,
}

pub struct Vault {
    ttl_secs: i64,
    capacity: usize,
    entries: HashMap<String, Stored>,
    /// Token ids in creation order, for expiry and for dropping used tokens first.
    order: VecDeque<String>,
}

impl Vault {
    pub fn new(ttl_secs: u64, capacity: usize) -> Self {
        Self {
            ttl_secs: i64::try_from(ttl_secs).unwrap_or(i64::MAX),
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expired(&self, s: &Stored, now: i64) -> bool {
        now.saturating_sub(s.token.created) >= self.ttl_secs
    }

    /// Drops expired tokens (oldest first: creation order is age order).
    fn expire(&mut self, now: i64) -> usize {
        let mut dropped = 0;
        while let Some(id) = self.order.front() {
            match self.entries.get(id) {
                Some(s) if !self.expired(s, now) => break,
                Some(_) => {
                    self.entries.remove(id);
                    dropped += 1;
                }
                None => {}
            }
            self.order.pop_front();
        }
        dropped
    }

    /// Room for one more token at `now`: expired tokens go, then used ones (oldest first);
    /// false when what is left is all pending.
    pub fn make_room(&mut self, now: i64) -> bool {
        self.expire(now);
        if self.entries.len() < self.capacity {
            return true;
        }
        let used = self
            .order
            .iter()
            .find(|id| self.entries.get(*id).is_some_and(|s| s.used))
            .cloned();
        if let Some(id) = used {
            self.entries.remove(&id);
            self.order.retain(|o| *o != id);
        }
        self.entries.len() < self.capacity
    }

    /// Keeps a token (also when replaying the journal: `used` as it was written).
    pub fn insert(&mut self, stored: Stored) {
        let id = stored.token.id.clone();
        if self.entries.insert(id.clone(), stored).is_none() {
            self.order.push_back(id);
        }
    }

    /// Uses `id` for a charge by `account`: the card, once; the token stays, marked used,
    /// so a second attempt is told so.
    pub fn take(&mut self, id: &str, account: AccountId, now: i64) -> Result<VaultCard, Refusal> {
        let ttl = self.ttl_secs;
        let Some(s) = self.entries.get_mut(id) else {
            return Err(Refusal::Missing);
        };
        if s.account != account || now.saturating_sub(s.token.created) >= ttl {
            return Err(Refusal::Missing);
        }
        if s.used {
            return Err(Refusal::Used);
        }
        s.used = true;
        Ok(s.card.clone())
    }

    /// Marks `id` used (journal replay).
    pub fn mark_used(&mut self, id: &str) {
        if let Some(s) = self.entries.get_mut(id) {
            s.used = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CardSummary;

    fn stored(id: &str, account: AccountId, created: i64) -> Stored {
        Stored {
            token: Token {
                id: id.into(),
                object: "token".into(),
                card: CardSummary {
                    brand: "visa".into(),
                    last4: "4242".into(),
                    exp_month: 12,
                    exp_year: 2034,
                },
                created,
                livemode: false,
            },
            card: VaultCard {
                digits: "4242424242424242".into(),
                exp_month: 12,
                exp_year: 2034,
            },
            account,
            used: false,
        }
    }

    #[test]
    fn a_token_is_used_once_by_its_own_account_and_expires_by_age() {
        let mut v = Vault::new(60, 10);
        v.insert(stored("tok_a", 0, 1000));
        v.insert(stored("tok_b", 0, 1000));
        assert_eq!(v.take("tok_a", 1, 1001).err(), Some(Refusal::Missing));
        assert!(v.take("tok_a", 0, 1001).is_ok());
        assert_eq!(v.take("tok_a", 0, 1002).err(), Some(Refusal::Used));
        assert_eq!(v.take("tok_b", 0, 1060).err(), Some(Refusal::Missing));
        assert!(v.make_room(1060));
        assert_eq!(v.len(), 0, "expired tokens went");
    }

    #[test]
    fn a_full_table_of_pending_tokens_refuses_new_ones_and_drops_used_ones_first() {
        let mut v = Vault::new(3600, 2);
        v.insert(stored("tok_a", 0, 1000));
        v.insert(stored("tok_b", 0, 1000));
        assert!(!v.make_room(1001), "both pending: no room");
        assert!(v.take("tok_b", 0, 1001).is_ok());
        assert!(v.make_room(1001), "the used one makes room");
        assert!(v.take("tok_a", 0, 1002).is_ok(), "the pending one stayed");
    }
}
