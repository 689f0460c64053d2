//! The secret-store side of key rotation: staging labels on secret versions.
//!
//! A rotation moves a secret through the stages Secrets Manager defines:
//! a new version is written as *pending*, tested, then made *current* while
//! the old current stays readable as *previous*. Both backends implement
//! [`RotationStore`] with the same meaning, so [`crate::rotation`] runs one
//! protocol over either:
//!
//! | stage      | Secrets Manager label | embedded `secrets.stage` |
//! |------------|-----------------------|--------------------------|
//! | current    | `AWSCURRENT`          | `current`                |
//! | previous   | `AWSPREVIOUS`         | `previous`               |
//! | pending    | `AWSPENDING`          | `pending`                |
//! | staged     | [`STAGED_LABEL`]      | `staged`                 |
//!
//! *Staged* is ours: the replacement key a user hands in, kept as a version
//! of its own until a rotation copies it into the pending version that the
//! rotation's token names (Secrets Manager creates that version id, so the
//! staged key cannot simply be labelled pending up front). Every stage labels
//! at most one version of a secret.
//!
//! Every write here is idempotent, because Secrets Manager retries a
//! rotation step after a failure or timeout with the same token.

use super::StoreError;
use crate::domain::{ApiKey, SecretRef, Service, Timestamp, UserId};
use async_trait::async_trait;

/// The Secrets Manager staging label of a staged replacement key.
pub const STAGED_LABEL: &str = "BYOKSTAGED";

/// What rotation needs to know about one secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretVersions {
    /// The backend's id of the secret (the ARN on AWS).
    pub id: String,
    pub user: UserId,
    pub service: Service,
    /// The version labelled current, if any.
    pub current: Option<String>,
    /// The version labelled pending, if any.
    pub pending: Option<String>,
    /// The version labelled staged, if any.
    pub staged: Option<String>,
}

/// One secret as a listing sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedSecret {
    pub id: String,
    /// The owner, when the secret says (every secret this code created does).
    pub owner: Option<(UserId, Service)>,
    /// When the secret last changed; a listing that cannot tell says `None`.
    pub changed_at: Option<Timestamp>,
}

/// Staging labels on secret versions (see the module doc).
#[async_trait]
pub trait RotationStore: Send + Sync {
    /// Stores `key` as a new version of the secret `secret_id` labelled
    /// staged, moving the label off any earlier staged version. The secret
    /// must exist ([`StoreError::SecretNotFound`] otherwise).
    async fn stage(&self, secret_id: &str, key: &ApiKey) -> Result<SecretRef, StoreError>;

    /// The owner and stages of the secret `secret_id`.
    async fn describe(&self, secret_id: &str) -> Result<SecretVersions, StoreError>;

    /// Writes `key` as version `token` labelled pending, unless version
    /// `token` already exists with that label (then nothing changes).
    async fn put_pending(
        &self,
        secret_id: &str,
        token: &str,
        key: &ApiKey,
    ) -> Result<(), StoreError>;

    /// The value of version `token` while it is labelled pending;
    /// [`StoreError::SecretNotFound`] otherwise.
    async fn get_pending(&self, secret_id: &str, token: &str) -> Result<ApiKey, StoreError>;

    /// Makes version `token` current: the old current becomes previous, and
    /// the pending and staged labels are removed. Already current: only the
    /// labels are tidied.
    async fn promote(&self, secret_id: &str, token: &str) -> Result<(), StoreError>;

    /// Removes the pending label (from `token`, if given, else from whichever
    /// version has it) and, with `staged`, the staged label. The current
    /// version is untouched.
    async fn discard(
        &self,
        secret_id: &str,
        token: Option<&str>,
        staged: bool,
    ) -> Result<(), StoreError>;

    /// Every secret this store keeps for users.
    async fn list_secrets(&self) -> Result<Vec<ListedSecret>, StoreError>;

    /// Removes the secret `secret_id` with every version. Gone already: `Ok`.
    async fn delete_by_id(&self, secret_id: &str) -> Result<(), StoreError>;
}
