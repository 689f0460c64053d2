//! Tokens whose signature was checked, remembered for a while: a client
//! sends the same bearer token with every request until it expires, and
//! checking its signature again (an RSA verification for the issuer's
//! tokens) is most of what authentication costs. Entries are keyed by the
//! token's SHA-256 (the token itself is not kept), hold the claims the
//! signature covered, and are dropped at the token's `exp` or after
//! [`MAX_AGE_SECS`], whichever comes first, so a key withdrawn from the
//! issuer's key set stops being honoured within that time. The claims are
//! checked against the clock on every use, cached or not.

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Tokens remembered at most (a bounded map: when full, expired entries
/// go first, then everything).
pub(super) const CAPACITY: usize = 4096;

/// How long a token is trusted without checking its signature again.
pub(super) const MAX_AGE_SECS: i64 = 300;

/// Signature-checked claims by token hash.
#[derive(Debug, Default)]
pub(super) struct VerifiedTokens {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

#[derive(Debug)]
struct Entry {
    claims: Arc<Map<String, Value>>,
    /// The unix second after which the entry is not used.
    until: i64,
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl VerifiedTokens {
    /// The claims of `token` if its signature was checked before and the
    /// entry has not lapsed at `now`.
    pub(super) fn get(&self, token: &str, now: i64) -> Option<Arc<Map<String, Value>>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&key(token))
            .filter(|entry| now <= entry.until)
            .map(|entry| Arc::clone(&entry.claims))
    }

    /// Remembers `token`'s checked claims until `exp` (at most
    /// [`MAX_AGE_SECS`] from `now`).
    pub(super) fn put(&self, token: &str, claims: &Arc<Map<String, Value>>, exp: i64, now: i64) {
        let until = exp.min(now.saturating_add(MAX_AGE_SECS));
        if until < now {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CAPACITY {
            entries.retain(|_, entry| now <= entry.until);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(
            key(token),
            Entry {
                claims: Arc::clone(claims),
                until,
            },
        );
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Arc<Map<String, Value>> {
        let mut map = Map::new();
        map.insert("sub".into(), Value::from("u"));
        Arc::new(map)
    }

    #[test]
    fn entries_lapse_at_exp_or_max_age() {
        let cache = VerifiedTokens::default();
        cache.put("a", &claims(), 1_000, 900);
        assert!(cache.get("a", 1_000).is_some());
        assert!(cache.get("a", 1_001).is_none(), "past exp");
        cache.put("b", &claims(), 1_000_000, 900);
        assert!(cache.get("b", 900 + MAX_AGE_SECS).is_some());
        assert!(cache.get("b", 901 + MAX_AGE_SECS).is_none(), "past max age");
        assert!(cache.get("c", 900).is_none(), "never put");
        cache.put("d", &claims(), 800, 900);
        assert!(cache.get("d", 900).is_none(), "already expired: not kept");
    }

    #[test]
    fn the_map_stays_bounded() {
        let cache = VerifiedTokens::default();
        for i in 0..CAPACITY + 10 {
            cache.put(&format!("t{i}"), &claims(), 10_000, 1);
        }
        assert!(cache.len() <= CAPACITY);
        assert!(cache.get(&format!("t{}", CAPACITY + 9), 2).is_some());
    }
}
