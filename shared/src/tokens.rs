//! Personal API keys (`POST/GET /api/tokens`, `DELETE /api/tokens/{id}`):
//! making one (shown once, stored as a hash), listing and revoking them,
//! and authenticating a request that presents one. A key acts as the user
//! who made it, with the tenant they had then, never as an admin; the HTTP
//! layer accepts it on `/v1/*` only.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::AuditLog;
use crate::auth::{AuthError, Principal};
use crate::domain::api_token::NAME_MAX_CHARS;
use crate::domain::{
    self, ApiTokenId, ApiTokenRecord, PersonalKey, Timestamp, UserId, looks_like_a_key,
};
use crate::store::api_tokens::ApiTokenStore;
use crate::store::{AuditAction, StoreError};

/// Personal keys a user may hold at once (`BYOK_MAX_API_TOKENS`).
pub const DEFAULT_MAX_PER_USER: usize = 20;

/// The longest lifetime a key may be given, in days (ten years).
pub const MAX_EXPIRES_IN_DAYS: u32 = 3650;

/// Why a personal-key operation was refused. Messages never hold a key.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("name must be 1 to {NAME_MAX_CHARS} characters without control characters")]
    InvalidName,
    #[error("name looks like a key; names are stored in clear, so pick another")]
    NameLooksLikeKey,
    #[error("expiresInDays must be a whole number from 1 to {MAX_EXPIRES_IN_DAYS}")]
    InvalidExpiry,
    #[error("you already have {max} personal API keys; revoke one first")]
    TooMany { max: usize },
    #[error("no personal API key with that id")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What making a key returns: its record, and the key itself, which is
/// never available again.
#[derive(Debug)]
pub struct MadeToken {
    pub record: ApiTokenRecord,
    pub key: PersonalKey,
}

pub struct ApiTokenService {
    store: Arc<dyn ApiTokenStore>,
    audit: AuditLog,
    max_per_user: usize,
    /// `lastUsedAt` is written at most this often per key.
    last_used_granularity: Duration,
}

impl ApiTokenService {
    pub fn new(store: Arc<dyn ApiTokenStore>, audit: AuditLog) -> Self {
        Self {
            store,
            audit,
            max_per_user: DEFAULT_MAX_PER_USER,
            last_used_granularity: Duration::from_secs(300),
        }
    }

    #[must_use]
    pub fn with_limits(mut self, max_per_user: usize, last_used_granularity: Duration) -> Self {
        self.max_per_user = max_per_user;
        self.last_used_granularity = last_used_granularity;
        self
    }

    /// Makes a key named `name` for `caller`, expiring after
    /// `expires_in_days` (never when `None`).
    pub async fn create(
        &self,
        caller: &Principal,
        name: &str,
        expires_in_days: Option<u32>,
        request_id: &str,
    ) -> Result<MadeToken, TokenError> {
        let name = name.trim();
        if name.is_empty()
            || name.chars().count() > NAME_MAX_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(TokenError::InvalidName);
        }
        if looks_like_a_key(name) {
            return Err(TokenError::NameLooksLikeKey);
        }
        if expires_in_days.is_some_and(|d| d == 0 || d > MAX_EXPIRES_IN_DAYS) {
            return Err(TokenError::InvalidExpiry);
        }
        if self.store.list_tokens(&caller.user).await?.len() >= self.max_per_user {
            return Err(TokenError::TooMany {
                max: self.max_per_user,
            });
        }
        let key = PersonalKey::generate().map_err(StoreError::backend)?;
        let now = domain::now();
        let record = ApiTokenRecord {
            id: ApiTokenId::generate().map_err(StoreError::backend)?,
            user: caller.user.clone(),
            tenant: caller.tenant.clone(),
            name: name.to_owned(),
            prefix: key.shown_prefix(),
            hash: key.hash(),
            created_at: now,
            expires_at: expires_in_days
                .map(|days| now + Duration::from_secs(u64::from(days) * 86_400)),
            last_used_at: None,
        };
        self.store.create_token(&record).await?;
        self.audit
            .record_token(
                &caller.user,
                AuditAction::TokenCreated,
                &record.id,
                request_id,
            )
            .await;
        Ok(MadeToken { record, key })
    }

    /// `user`'s keys, oldest first.
    pub async fn list(&self, user: &UserId) -> Result<Vec<ApiTokenRecord>, TokenError> {
        Ok(self.store.list_tokens(user).await?)
    }

    /// Revokes `user`'s key `id`: from now on it authenticates nothing.
    pub async fn revoke(
        &self,
        user: &UserId,
        id: &str,
        request_id: &str,
    ) -> Result<(), TokenError> {
        let id = ApiTokenId::parse(id).ok_or(TokenError::NotFound)?;
        self.store
            .delete_token(user, &id)
            .await?
            .ok_or(TokenError::NotFound)?;
        self.audit
            .record_token(user, AuditAction::TokenRevoked, &id, request_id)
            .await;
        Ok(())
    }

    /// The caller a presented personal key stands for: one consistent
    /// read by its hash; unknown, revoked and expired keys are refused.
    /// Its `lastUsedAt` is written off the request's path.
    pub async fn authenticate(&self, presented: &str) -> Result<Principal, AuthError> {
        let key = PersonalKey::parse(presented).ok_or(AuthError::MalformedPersonalKey)?;
        let record = match self.store.find_token(&key.hash()).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(AuthError::UnknownPersonalKey),
            Err(err) => {
                tracing::error!(error = %err, "personal key lookup failed");
                return Err(AuthError::Unavailable);
            }
        };
        let now = domain::now();
        if record.is_expired(now) {
            return Err(AuthError::PersonalKeyExpired);
        }
        if self.due_for_mark(&record, now) {
            let store = Arc::clone(&self.store);
            let (user, id, hash) = (record.user.clone(), record.id.clone(), record.hash);
            tokio::spawn(async move {
                if let Err(err) = store.mark_token_used(&user, &id, &hash, now).await {
                    tracing::warn!(error = %err, token = %id, "could not record a personal key's use");
                }
            });
        }
        Ok(Principal {
            user: record.user,
            admin: false,
            tenant: record.tenant,
        })
    }

    fn due_for_mark(&self, record: &ApiTokenRecord, now: Timestamp) -> bool {
        record
            .last_used_at
            .is_none_or(|at| now - at >= self.last_used_granularity)
    }
}
