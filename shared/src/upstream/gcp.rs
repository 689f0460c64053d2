//! Google service accounts to access tokens (Vertex AI). A signed JWT
//! (RS256, the account's private key; `iss` the account, `aud` the token
//! endpoint, scope `cloud-platform`, one hour) is exchanged at the fixed
//! token endpoint for an access token, which then authenticates calls as a
//! bearer. Tokens are kept per account until a minute before they expire;
//! concurrent requests for one account wait for one exchange. Nothing here
//! fetches a URL the user gave: the endpoint is Google's, or the
//! operator's override.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};

use super::{KeyScrubber, UpstreamError, UpstreamErrorKind, read_limited};
use crate::domain::{ApiKey, GcpServiceAccount, Service};

/// The access an exchanged token gets.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// How long the signed assertion is valid (Google's maximum).
const ASSERTION_LIFETIME_SECS: i64 = 3600;
/// A cached token is refreshed this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Longest wait for the token endpoint.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Access tokens by account, each behind its own lock so one exchange
/// serves every request waiting for it.
#[derive(Debug)]
pub struct TokenCache {
    token_url: String,
    accounts: Mutex<HashMap<[u8; 32], TokenSlot>>,
    /// Exchanges made (for tests and logs).
    exchanges: std::sync::atomic::AtomicU64,
}

/// One account's token, and the lock its exchange happens under.
type TokenSlot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

struct CachedToken {
    token: SecretString,
    refresh_at: Instant,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CachedToken(..)")
    }
}

impl TokenCache {
    /// Exchanges at `token_url` (Google's, unless the operator overrides it).
    pub fn new(token_url: impl Into<String>) -> Self {
        Self {
            token_url: token_url.into(),
            accounts: Mutex::new(HashMap::new()),
            exchanges: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The token endpoint in use.
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// A valid access token for `account`: the cached one, or a new one
    /// from one exchange shared by every caller waiting for it.
    pub async fn access_token(
        &self,
        client: &reqwest::Client,
        account: &GcpServiceAccount,
    ) -> Result<ApiKey, UpstreamError> {
        let slot = {
            let mut accounts = self
                .accounts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if accounts.len() >= MAX_ACCOUNTS {
                prune(&mut accounts);
            }
            Arc::clone(accounts.entry(fingerprint(account)).or_default())
        };
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(ApiKey::new(token.token.expose_secret()));
        }
        let (token, lifetime) = self.exchange(client, account).await?;
        *cached = Some(CachedToken {
            token: SecretString::from(token.expose().to_owned()),
            refresh_at: Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN),
        });
        Ok(token)
    }

    /// One exchange: the signed assertion for an access token.
    async fn exchange(
        &self,
        client: &reqwest::Client,
        account: &GcpServiceAccount,
    ) -> Result<(ApiKey, Duration), UpstreamError> {
        let service = Service::Vertex;
        let assertion = assertion(account, &self.token_url, crate::auth::now_unix())?;
        self.exchanges
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let form = format!(
            "grant_type={}&assertion={}",
            url::form_urlencoded::byte_serialize(b"urn:ietf:params:oauth:grant-type:jwt-bearer")
                .collect::<String>(),
            url::form_urlencoded::byte_serialize(assertion.expose().as_bytes()).collect::<String>()
        );
        let call = client
            .post(&self.token_url)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .timeout(EXCHANGE_TIMEOUT)
            .body(form)
            .send();
        let response = call
            .await
            .map_err(|err| UpstreamError::from_transport(service, &err))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_limited(response, EXCHANGE_TIMEOUT).await;
        let scrubber = KeyScrubber::new([&assertion]);
        if !status.is_success() {
            // Google answers a refused account with 400 invalid_grant.
            let mut error = UpstreamError::from_status(service, status, &headers, &body, &scrubber);
            if status.as_u16() == 400 || status.as_u16() == 401 {
                error.kind = UpstreamErrorKind::Auth;
                error.message =
                    "vertex: Google's token endpoint refused the service account".to_owned();
            }
            return Err(error);
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|_| {
            UpstreamError::new(
                UpstreamErrorKind::Unavailable,
                "vertex: Google's token endpoint sent no access token",
            )
        })?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600).clamp(60, 86_400));
        Ok((ApiKey::new(answer.access_token), lifetime))
    }

    /// How many exchanges were made.
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Accounts whose tokens are kept before expired ones are dropped.
const MAX_ACCOUNTS: usize = 4096;

/// Drops the slots no request is using whose token has expired (or that
/// never got one), so a long-lived process does not keep every account it
/// ever served.
fn prune(accounts: &mut HashMap<[u8; 32], TokenSlot>) {
    let now = Instant::now();
    accounts.retain(|_, slot| match slot.try_lock() {
        Ok(token) => token.as_ref().is_some_and(|t| now < t.refresh_at),
        Err(_) => true,
    });
}

/// Tells accounts apart without keeping their keys as map keys.
fn fingerprint(account: &GcpServiceAccount) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(account.client_email.as_bytes());
    hash.update([0]);
    hash.update(account.private_key_pem().as_bytes());
    hash.finalize().into()
}

/// The signed JWT that asks for an access token.
fn assertion(
    account: &GcpServiceAccount,
    token_url: &str,
    now: i64,
) -> Result<ApiKey, UpstreamError> {
    let bad_key = || {
        UpstreamError::new(
            UpstreamErrorKind::Auth,
            "vertex: the service account's private key cannot sign",
        )
    };
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key_pem().as_bytes())
        .map_err(|_| bad_key())?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = account.private_key_id.clone();
    let claims = serde_json::json!({
        "iss": account.client_email,
        "sub": account.client_email,
        "aud": token_url,
        "scope": SCOPE,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME_SECS,
    });
    jsonwebtoken::encode(&header, &claims, &key)
        .map(ApiKey::new)
        .map_err(|_| bad_key())
}

/// `template` (a Vertex base URL) for `account`: `{project}`,
/// `{location}`, and `{location-}` (the regional host prefix, none for
/// `global`) filled in. The values were checked to be URL-safe when the
/// account was saved.
pub fn vertex_base_url(template: &str, account: &GcpServiceAccount) -> String {
    let host_prefix = if account.location == "global" {
        String::new()
    } else {
        format!("{}-", account.location)
    };
    template
        .replace("{location-}", &host_prefix)
        .replace("{project}", &account.project)
        .replace("{location}", &account.location)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_and_idle_slots_are_pruned_live_and_busy_ones_kept() {
        let slot = |refresh_in: Option<i64>| -> TokenSlot {
            let token = refresh_in.map(|secs| CachedToken {
                token: SecretString::from("ya29.x"),
                refresh_at: if secs >= 0 {
                    Instant::now() + Duration::from_secs(secs.unsigned_abs())
                } else {
                    Instant::now() - Duration::from_secs(secs.unsigned_abs())
                },
            });
            Arc::new(tokio::sync::Mutex::new(token))
        };
        let mut accounts = HashMap::new();
        accounts.insert([1; 32], slot(Some(600)));
        accounts.insert([2; 32], slot(Some(-1)));
        accounts.insert([3; 32], slot(None));
        let busy = slot(None);
        let held = busy.try_lock().unwrap();
        accounts.insert([4; 32], Arc::clone(&busy));
        prune(&mut accounts);
        drop(held);
        let mut kept: Vec<u8> = accounts.keys().map(|k| k[0]).collect();
        kept.sort_unstable();
        assert_eq!(kept, [1, 4]);
    }

    #[test]
    fn base_urls_are_filled_in_for_regions_and_global() {
        let doc = |location: &str| -> crate::domain::CredentialDocument {
            serde_json::from_value(serde_json::json!({
                "project": "acme-prod-1", "location": location,
                "clientEmail": "sa@acme-prod-1.iam.gserviceaccount.com",
                "privateKey": crate::domain::credential::structured_tests::pem(),
            }))
            .unwrap()
        };
        let url = "https://{location-}aiplatform.googleapis.com/v1/projects/{project}/locations/{location}/endpoints/openapi";
        let regional =
            GcpServiceAccount::from_document(&doc("us-central1"), crate::domain::GCP_TOKEN_URL)
                .unwrap();
        assert_eq!(
            vertex_base_url(url, &regional),
            "https://us-central1-aiplatform.googleapis.com/v1/projects/acme-prod-1/locations/us-central1/endpoints/openapi"
        );
        let global =
            GcpServiceAccount::from_document(&doc("global"), crate::domain::GCP_TOKEN_URL).unwrap();
        assert_eq!(
            vertex_base_url(url, &global),
            "https://aiplatform.googleapis.com/v1/projects/acme-prod-1/locations/global/endpoints/openapi"
        );
        let signed = assertion(
            &global,
            "https://oauth2.googleapis.com/token",
            1_750_000_000,
        )
        .unwrap();
        assert_eq!(signed.expose().split('.').count(), 3);
    }
}
