//! Storage traits, split by capability, and their backends.
//!
//! Metadata (settings and key records) and secrets live behind separate
//! traits so a function takes only what it needs: resolution reads one
//! [`UserSnapshot`] (one round trip), the completion path reads one secret by
//! (id, version), and only the key-management path writes.
//!
//! Write ordering for an upsert is secret first, then metadata pointing at the
//! new version; a delete removes metadata first, then the secret. A crash in
//! between leaves at worst an unreferenced secret, never metadata pointing at a
//! missing secret.
//!
//! Three more capabilities have traits of their own: [`RateLimitStore`]
//! (fixed-window counters shared by every instance), [`AuditStore`] (the
//! per-user audit log) and [`UsageStore`] (the usage ledger's day
//! aggregates and expiring raw entries). All live outside what
//! [`MetadataStore::load_user`] reads, so they never slow down or change
//! resolution.

pub mod api_tokens;
pub mod audit;
pub mod budget;
pub mod cache;
pub mod dynamo;
#[cfg(feature = "local")]
pub mod embedded;
pub mod ratelimit;
#[cfg(feature = "local")]
pub mod rekey;
pub mod rotation;
pub mod secrets_manager;
pub mod usage;

pub use api_tokens::ApiTokenStore;
pub use audit::{AuditAction, AuditCursor, AuditEvent, AuditId, AuditPage, AuditStore, BadCursor};
pub use budget::{
    Amount, BudgetChange, BudgetPage, BudgetPeriod, BudgetRecord, BudgetScope, BudgetStore,
    BudgetTerms, BudgetUnit, Hold,
};
pub use ratelimit::{RateAction, RateDecision, RateLimitStore};
pub use rotation::{ListedSecret, RotationStore, SecretVersions};
pub use usage::{LedgerOutcome, PaidBy, TenantId, UsageCounts, UsageEntry, UsageRow, UsageStore};

use crate::domain::{ApiKey, KeyId, KeyRecord, SecretRef, Service, Settings, Timestamp, UserId};
use async_trait::async_trait;

/// Everything resolution needs about one user, read in one round trip.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserSnapshot {
    pub settings: Settings,
    /// The user's key records, any order, any number per service.
    pub keys: Vec<KeyRecord>,
}

impl UserSnapshot {
    /// Every key of `service`, in the order they are tried (see [`KeyRecord::order`]).
    pub fn keys_of(&self, service: Service) -> Vec<&KeyRecord> {
        let mut keys: Vec<&KeyRecord> = self.keys.iter().filter(|k| k.service == service).collect();
        keys.sort_by(|a, b| a.order().cmp(&b.order()));
        keys
    }

    /// The service's primary key: the first in order, enabled or not.
    pub fn key(&self, service: Service) -> Option<&KeyRecord> {
        self.keys
            .iter()
            .filter(|k| k.service == service)
            .min_by(|a, b| a.order().cmp(&b.order()))
    }

    /// The enabled keys of `service`, in order.
    pub fn enabled_keys(&self, service: Service) -> Vec<&KeyRecord> {
        let mut keys = self.keys_of(service);
        keys.retain(|k| k.enabled);
        keys
    }

    /// The first enabled key of `service`.
    pub fn enabled_key(&self, service: Service) -> Option<&KeyRecord> {
        self.enabled_keys(service).into_iter().next()
    }
}

/// A change to a key's health that is not an edit of the key: written
/// without a new revision, so it never conflicts with the user's writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMark {
    /// A completion used the key at this time.
    Used(Timestamp),
    /// The provider rate-limited the key: skip it until this time.
    CoolDown(Timestamp),
    /// The provider refused the key (401/403) at this time.
    Refused(Timestamp),
}

/// What a conditional metadata write expects to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// No record for this (user, service, key id) yet.
    Absent,
    /// A record whose revision is this.
    Revision(u64),
}

/// Errors of every storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional write found another revision than expected.
    #[error("the record was changed concurrently")]
    Conflict,
    /// The secret (or that version of it) does not exist.
    #[error("secret not found")]
    SecretNotFound,
    /// Authenticated decryption failed: wrong master key or tampered data.
    #[error("secret could not be decrypted: wrong master key or tampered data")]
    Decrypt,
    /// The store's secrets were sealed under another master key than the one given.
    #[error("the master key does not match the one that sealed this store's secrets")]
    WrongMasterKey,
    /// A stored item could not be read back into a domain value.
    #[error("corrupt stored item: {0}")]
    Corrupt(String),
    /// The backend itself failed (I/O, SQL, AWS API).
    #[error("storage backend error")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn backend(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(err))
    }
}

/// Settings and key metadata of every user.
#[async_trait]
pub trait MetadataStore: Send + Sync {
    /// The user's settings (defaults if never saved) and all of their key
    /// records, in one read.
    async fn load_user(&self, user: &UserId) -> Result<UserSnapshot, StoreError>;

    /// One key record, if any.
    async fn get_key(
        &self,
        user: &UserId,
        service: Service,
        id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError>;

    /// Writes `record` (its `revision` already the new one) if the stored
    /// record matches `expected`; else [`StoreError::Conflict`] and nothing changes.
    async fn put_key(&self, record: &KeyRecord, expected: Expected) -> Result<(), StoreError>;

    /// Removes the record and returns it; `None` if there was none.
    async fn delete_key(
        &self,
        user: &UserId,
        service: Service,
        id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError>;

    /// Applies `mark` to the record if it exists (its revision unchanged);
    /// nothing if it does not.
    async fn mark_key(
        &self,
        user: &UserId,
        service: Service,
        id: &KeyId,
        mark: KeyMark,
    ) -> Result<(), StoreError>;

    /// Saves the user's settings; returns those they replace (the
    /// defaults if none were saved), from the same write.
    async fn put_settings(&self, user: &UserId, settings: Settings)
    -> Result<Settings, StoreError>;

    /// One page of every user's key records, for operator jobs (the sweep),
    /// never for a request. `after` is the previous page's [`KeyPage::next`];
    /// a page may hold fewer than `limit` records (even none) and still have
    /// a next one.
    async fn scan_keys(&self, after: Option<&str>, limit: usize) -> Result<KeyPage, StoreError>;
}

/// A page of [`MetadataStore::scan_keys`].
#[derive(Debug, Default)]
pub struct KeyPage {
    pub keys: Vec<KeyRecord>,
    /// Where the next page starts (opaque); `None` on the last page.
    pub next: Option<String>,
}

/// Secret values: one secret per stored key, versioned.
///
/// A new key gets a secret of its own (never one a deleted key had), and a
/// replacement is a new version of its key's secret. So removing a deleted
/// key's secret can never take the secret of a key stored beside the
/// delete, in this process or another.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Stores `key` for `user`'s `service`: with `into`, as a new version of
    /// that secret, made current (the version that was current stays
    /// readable as previous; [`StoreError::SecretNotFound`] and nothing
    /// stored if that secret is gone or being deleted); without, as the
    /// first version of a new secret.
    async fn put_secret(
        &self,
        user: &UserId,
        service: Service,
        key: &ApiKey,
        into: Option<&SecretRef>,
    ) -> Result<SecretRef, StoreError>;

    /// The exact version `secret` names; [`StoreError::SecretNotFound`] if gone.
    async fn get_secret(&self, secret: &SecretRef) -> Result<ApiKey, StoreError>;

    /// Removes the secret `secret` names, with all its versions. Removing a
    /// secret that does not exist is not an error.
    async fn delete_secret(&self, secret: &SecretRef) -> Result<(), StoreError>;
}
