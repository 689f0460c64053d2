//! An identity provider's signing keys (`BYOK_JWKS_URL`): fetched at start
//! and again when a token names a key id not in the set (a key rotation),
//! but at most once a minute for that reason, so unknown key ids cannot make
//! the gateway hammer the provider. The fetch is bounded in time and size,
//! and so is the set kept. Only public keys are ever held.

use super::AuthError;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// Longest a key-set fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key-set document read.
const MAX_BODY: usize = 256 * 1024;
/// Most keys kept from one document.
const MAX_KEYS: usize = 64;
/// Refreshes for an unknown key id are at least this far apart.
const REFRESH_EVERY: Duration = Duration::from_secs(60);

/// The asymmetric algorithms accepted, by their JWT name.
pub fn asymmetric(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        _ => return None,
    })
}

/// Why a key set could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("the JWKS could not be fetched: {0}")]
    Fetch(String),
    #[error("the JWKS answered {0}")]
    Status(u16),
    #[error("the JWKS is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("the JWKS is not a JSON Web Key Set")]
    NotAKeySet,
}

/// One usable key.
struct Key {
    kid: Option<String>,
    /// The algorithm the set says the key is for, if it says.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// The key set of one issuer.
pub struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<Vec<Key>>,
    /// When a refresh for an unknown key id last ran.
    last_refresh: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks").field("url", &self.url).finish()
    }
}

impl Jwks {
    pub fn new(url: impl Into<String>) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()?;
        Ok(Self {
            url: url.into(),
            client,
            keys: RwLock::new(Vec::new()),
            last_refresh: Mutex::new(None),
        })
    }

    /// Fetches the set and replaces the keys held; the number of keys kept.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        if !response.status().is_success() {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            return Err(JwksError::TooLarge);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        if body.len() > MAX_BODY {
            return Err(JwksError::TooLarge);
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(|_| JwksError::NotAKeySet)?;
        let keys: Vec<Key> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).ok()?;
                let alg = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| asymmetric(&a.to_string()));
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                })
            })
            .take(MAX_KEYS)
            .collect();
        let count = keys.len();
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        tracing::info!(keys = count, "JWKS loaded");
        Ok(count)
    }

    /// Refreshes because a token named an unknown key id, unless that was
    /// done less than a minute ago. True when a refresh ran and succeeded.
    pub async fn refresh_for_unknown_key(&self) -> bool {
        {
            let mut last = self
                .last_refresh
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < REFRESH_EVERY) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match self.refresh().await {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(error = %err, "JWKS refresh failed");
                false
            }
        }
    }

    /// The key for a token's `kid` and algorithm: by key id, or the only key
    /// when the token names none. A key the set ties to another algorithm
    /// is not used.
    pub fn key(&self, kid: Option<&str>, algorithm: Algorithm) -> Result<DecodingKey, AuthError> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = match kid {
            Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if keys.len() == 1 => keys.first(),
            None => None,
        };
        let key = found.ok_or(AuthError::UnknownKey)?;
        if key.alg.is_some_and(|a| a != algorithm) {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        Ok(key.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::KeyAlgorithm;

    #[test]
    fn only_asymmetric_algorithms_are_named() {
        assert_eq!(asymmetric("RS256"), Some(Algorithm::RS256));
        assert_eq!(asymmetric("ES256"), Some(Algorithm::ES256));
        for refused in ["HS256", "none", "None", "", "EdDSA", "rs256"] {
            assert_eq!(asymmetric(refused), None, "{refused}");
        }
        assert_eq!(KeyAlgorithm::RS256.to_string(), "RS256");
        assert_eq!(KeyAlgorithm::ES256.to_string(), "ES256");
    }
}
