//! Where personal API keys are kept: their records by owner (for the
//! owner's list) and by hash (for the one read that authenticates a
//! request). Records hold the key's SHA-256, never the key. Both backends
//! implement it next to the key records: [`super::embedded`] in one table
//! of `byok.db`, [`super::dynamo`] as two items per key written together.

use super::StoreError;
use crate::domain::{ApiTokenId, ApiTokenRecord, Timestamp, TokenHash, UserId};
use async_trait::async_trait;

#[async_trait]
pub trait ApiTokenStore: Send + Sync {
    /// Stores a new personal key's record (its id and hash are new).
    async fn create_token(&self, record: &ApiTokenRecord) -> Result<(), StoreError>;

    /// Every personal key of `user`, oldest first.
    async fn list_tokens(&self, user: &UserId) -> Result<Vec<ApiTokenRecord>, StoreError>;

    /// The record of the key hashing to `hash`, read consistently: a key
    /// revoked a moment ago is not found.
    async fn find_token(&self, hash: &TokenHash) -> Result<Option<ApiTokenRecord>, StoreError>;

    /// Removes `user`'s key `id`: the removed record, or `None` when there
    /// was none (another user's id is none).
    async fn delete_token(
        &self,
        user: &UserId,
        id: &ApiTokenId,
    ) -> Result<Option<ApiTokenRecord>, StoreError>;

    /// Records that the key was used at `at`; a key revoked meanwhile stays
    /// revoked (nothing is written for a missing record).
    async fn mark_token_used(
        &self,
        user: &UserId,
        id: &ApiTokenId,
        hash: &TokenHash,
        at: Timestamp,
    ) -> Result<(), StoreError>;
}
