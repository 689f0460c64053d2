//! Credentials as a secret type: an API key never prints, serialises or
//! debug-formats in clear; the clear value is read at one call site per use.

use secrecy::{ExposeSecret, SecretString};
use std::fmt;

/// A provider or gateway API key.
#[derive(Clone)]
pub struct ApiKey(SecretString);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(SecretString::from(key.into()))
    }

    /// The clear key, for the outgoing header or the encrypt call only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(*****)")
    }
}

impl PartialEq for ApiKey {
    /// Equality in constant time over the bytes (`subtle`), so comparisons
    /// leak no prefix.
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        self.expose()
            .as_bytes()
            .ct_eq(other.expose().as_bytes())
            .into()
    }
}

impl Eq for ApiKey {}

impl<'de> serde::Deserialize<'de> for ApiKey {
    /// Request bodies carry keys as strings; they become secret at once.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_key() {
        let key = ApiKey::new("sk-canary-0123456789abcdef");
        let printed = format!("{key:?} {:?}", Some(&key));
        assert!(!printed.contains("canary"), "{printed}");
    }
}
