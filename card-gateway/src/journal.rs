//! The mock gateway's books on disk (opt-in: `CARD_GATEWAY_JOURNAL`). A real card processor
//! does not forget a charge when one of its servers dies, so neither may the mock that the
//! crash test and the chaos soak kill: every charge, refund and finished idempotency record
//! is appended as one JSON line and synced before the answer leaves; a restart replays them.
//! Tokens are kept with the card they stand for (the processor's vault: the only place a
//! card number is stored, which is the point of tokens).

use std::{
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::Path,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    api::{Charge, Refund, Token},
    ledger::VaultCard,
    tokens::AccountId,
};

/// One change to the books.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A charge as it is now (created, or changed by a refund): replay upserts it.
    Charge {
        charge: Box<Charge>,
    },
    Refund {
        refund: Refund,
    },
    Token {
        token: Token,
        card: VaultCard,
        /// The account that made it (absent in journals from before accounts: the first).
        #[serde(default)]
        account: AccountId,
    },
    /// A charge used the token: it cannot be charged again, also after a restart.
    TokenUsed {
        id: String,
    },
    /// A finished idempotency record: retries with this key replay its answer.
    Key {
        key: String,
        /// SHA-256 of the request parameters, hex.
        fingerprint: String,
        status: u16,
        body: Value,
        charge_id: Option<String>,
    },
}

pub struct Journal {
    file: File,
}

impl Journal {
    /// Opens (or creates) the journal and returns what it already holds, oldest first. A
    /// torn last line (a crash mid-write) is skipped.
    pub fn open(path: &Path) -> std::io::Result<(Self, Vec<Entry>)> {
        let mut entries = Vec::new();
        if let Ok(existing) = File::open(path) {
            for line in BufReader::new(existing).lines() {
                let line = line?;
                match serde_json::from_str::<Entry>(&line) {
                    Ok(e) => entries.push(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "card gateway journal: skipping an unreadable line")
                    }
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok((Self { file }, entries))
    }

    /// Appends and syncs: once this returns the entry survives a SIGKILL.
    pub fn append(&mut self, entry: &Entry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }
}

pub fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_round_trip_through_hex() {
        let f = [7u8; 32];
        assert_eq!(unhex(&hex(&f)), Some(f));
        assert_eq!(unhex("zz"), None);
    }
}
