//! Personal API keys: static credentials a user makes for tools (SDKs,
//! CLIs, editors) that cannot refresh a short-lived sign-in token. The key
//! (`byok_` and 40 hex digits) is shown once; only its SHA-256 is kept, so
//! the store can find the key's record by what a caller presents and a
//! stolen store reveals no usable key. A personal key acts as its user on
//! `/v1/*` only.

use std::fmt;

use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};

use super::{TenantId, Timestamp, UserId};

/// What every personal API key starts with.
pub const PERSONAL_KEY_PREFIX: &str = "byok_";

/// Hex digits of randomness after the prefix (160 bits).
const RANDOM_HEX_DIGITS: usize = 40;

/// Characters of a key kept in clear to recognise it in lists (`byok_3f9a1c2`):
/// the prefix and 7 of its 40 digits.
const SHOWN_LEN: usize = PERSONAL_KEY_PREFIX.len() + 7;

/// Longest name of a personal key.
pub const NAME_MAX_CHARS: usize = 64;

/// A personal API key in clear: only while it is made (shown once) or
/// presented by a caller. Its `Debug` never prints it.
pub struct PersonalKey(SecretString);

impl PersonalKey {
    /// A new random key.
    pub fn generate() -> std::io::Result<Self> {
        let random = crate::crypto::random_hex::<{ RANDOM_HEX_DIGITS / 2 }>()?;
        Ok(Self(SecretString::from(format!(
            "{PERSONAL_KEY_PREFIX}{random}"
        ))))
    }

    /// `presented` when it has a personal key's shape (the prefix, then 40
    /// lowercase hex digits); any other text is not one.
    pub fn parse(presented: &str) -> Option<Self> {
        let digits = presented.strip_prefix(PERSONAL_KEY_PREFIX)?;
        let ok = digits.len() == RANDOM_HEX_DIGITS
            && digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Self(SecretString::from(presented.to_owned())))
    }

    /// Whether `presented` is meant as a personal key (starts with the
    /// prefix), well-formed or not: such a bearer is never a sign-in token.
    pub fn is_meant(presented: &str) -> bool {
        presented.starts_with(PERSONAL_KEY_PREFIX)
    }

    /// The key in clear, to show its owner once.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// What the store keeps and looks it up by.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.expose_secret().as_bytes()).into())
    }

    /// The start kept in clear (`byok_3f9a1c2`).
    pub fn shown_prefix(&self) -> String {
        self.0.expose_secret()[..SHOWN_LEN].to_owned()
    }
}

impl fmt::Debug for PersonalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PersonalKey(..)")
    }
}

/// The SHA-256 of a personal key: not secret by itself (160 random bits
/// behind it), printed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn to_hex(&self) -> String {
        crate::crypto::hex(&self.0)
    }

    /// A hash stored as hex.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).ok()?;
            bytes[i] = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Self(bytes))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", &self.to_hex()[..8])
    }
}

/// A personal key's id: `t` and 16 hex digits, URL-safe, stable.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApiTokenId(String);

impl ApiTokenId {
    pub fn generate() -> std::io::Result<Self> {
        Ok(Self(format!("t{}", crate::crypto::random_hex::<8>()?)))
    }

    pub fn parse(raw: &str) -> Option<Self> {
        let ok = raw.len() == 17
            && raw.starts_with('t')
            && raw[1..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ApiTokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One personal key as stored: never the key, only its hash and the
/// start shown in lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTokenRecord {
    pub id: ApiTokenId,
    pub user: UserId,
    /// The tenant its maker belonged to when it was made: usage and
    /// budgets made with it are attributed there.
    pub tenant: Option<TenantId>,
    pub name: String,
    /// [`PersonalKey::shown_prefix`].
    pub prefix: String,
    pub hash: TokenHash,
    pub created_at: Timestamp,
    /// `None`: it never expires.
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

impl ApiTokenRecord {
    /// Whether it no longer works at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_their_shape_and_hash_to_what_is_stored() {
        let key = PersonalKey::generate().expect("randomness");
        assert!(key.expose().starts_with("byok_"));
        assert_eq!(key.expose().len(), 45);
        let again = PersonalKey::parse(key.expose()).expect("its own shape");
        assert_eq!(again.hash(), key.hash());
        assert_eq!(TokenHash::from_hex(&key.hash().to_hex()), Some(key.hash()));
        assert_eq!(key.shown_prefix().len(), 12);
        assert!(key.expose().starts_with(&key.shown_prefix()));
        assert!(!format!("{key:?}").contains(&key.expose()[5..]));
        assert!(!format!("{:?}", key.hash()).contains(&key.hash().to_hex()));
    }

    #[test]
    fn other_text_is_not_a_personal_key() {
        for bad in [
            "",
            "byok_",
            "byok_0123",
            "byok_0123456789ABCDEF0123456789abcdef01234567",
            "byok_0123456789abcdef0123456789abcdef012345678",
            "sk-0123456789abcdef0123456789abcdef01234567",
            "byok_0123456789abcdef0123456789abcdef0123456g",
        ] {
            assert!(PersonalKey::parse(bad).is_none(), "{bad}");
        }
        assert!(PersonalKey::parse("byok_0123456789abcdef0123456789abcdef01234567").is_some());
        assert!(PersonalKey::is_meant("byok_x"));
        assert!(!PersonalKey::is_meant("eyJhbGciOi"));
    }

    #[test]
    fn ids_parse_only_their_shape() {
        let id = ApiTokenId::generate().expect("randomness");
        assert_eq!(ApiTokenId::parse(id.as_str()), Some(id));
        for bad in [
            "",
            "t",
            "k0123456789abcdef",
            "t0123456789ABCDEF",
            "t0123456789abcdef0",
        ] {
            assert!(ApiTokenId::parse(bad).is_none(), "{bad}");
        }
    }
}
