//! Key management and settings: the operations behind the keys and settings
//! routes, over the store traits. Checks input before anything is written,
//! writes the secret before the metadata that points at it, and removes
//! metadata before the secret.

use crate::audit::AuditLog;
use crate::domain::key::check_key_format;
use crate::domain::{
    ApiKey, BaseUrlError, KeyFormatError, KeyRecord, SecretRef, Service, Settings, UserBaseUrl,
    UserId, mask_key, now,
};
use crate::store::{AuditAction, Expected, MetadataStore, SecretStore, StoreError};
use std::sync::Arc;

/// Longest label accepted, in characters.
pub const LABEL_MAX_CHARS: usize = 100;
/// How often an upsert retries after losing a race with a concurrent write.
const UPSERT_ATTEMPTS: usize = 3;

/// What the caller asks to store.
#[derive(Debug)]
pub struct KeyUpsert {
    pub service: Service,
    pub api_key: ApiKey,
    /// `None`: keep the stored base URL; `Some(None)`: clear it; `Some(Some(url))`: set it.
    pub base_url: Option<Option<String>>,
    pub label: Option<String>,
}

/// A partial update of a stored key.
#[derive(Debug, Default)]
pub struct KeyPatch {
    pub enabled: Option<bool>,
    pub label: Option<String>,
}

/// Whether an upsert created a key or replaced one.
#[derive(Debug)]
pub enum Upserted {
    Created(KeyRecord),
    Replaced(KeyRecord),
}

/// Why a key operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    KeyFormat(#[from] KeyFormatError),
    #[error(transparent)]
    BaseUrl(#[from] BaseUrlError),
    #[error("baseUrl can only be set for the gateway service, not {0}")]
    BaseUrlNotAccepted(Service),
    #[error("label must be 1 to {LABEL_MAX_CHARS} characters with no control characters")]
    InvalidLabel,
    #[error(
        "label looks like a key; labels are stored and shown in clear, so name the key instead"
    )]
    LabelLooksLikeKey,
    #[error("nothing to change: give enabled or label")]
    EmptyPatch,
    #[error("no {0} key is stored")]
    NotFound(Service),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How many locks the writes of one process take turns on (keys hash to one).
const WRITE_LOCKS: usize = 64;

/// Key and settings operations for the signed-in user.
pub struct KeyService {
    meta: Arc<dyn MetadataStore>,
    secrets: Arc<dyn SecretStore>,
    audit: Option<AuditLog>,
    /// Writes of one key take turns within this process, so they do not
    /// retry against each other. Correctness does not depend on it: writes
    /// are conditional on the record's revision, and every new key gets a
    /// secret of its own, so a delete (which removes the secret its record
    /// named) never takes the secret of a key stored beside it by another
    /// instance.
    write_locks: Vec<tokio::sync::Mutex<()>>,
}

impl KeyService {
    /// A service that keeps no audit log (see [`KeyService::with_audit`]).
    pub fn new(meta: Arc<dyn MetadataStore>, secrets: Arc<dyn SecretStore>) -> Self {
        Self {
            meta,
            secrets,
            audit: None,
            write_locks: (0..WRITE_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// The turn of `user`'s `service` key among this process's writes.
    async fn write_turn(&self, user: &UserId, service: Service) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (user.as_str(), service.as_str()).hash(&mut hasher);
        let stripe = usize::try_from(hasher.finish() % WRITE_LOCKS as u64).unwrap_or(0);
        self.write_locks[stripe].lock().await
    }

    /// Records every change (added, replaced, enabled, disabled, updated,
    /// deleted) in `audit`.
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = Some(audit);
        self
    }

    async fn audit(&self, user: &UserId, action: AuditAction, service: Service, request_id: &str) {
        if let Some(audit) = &self.audit {
            audit.record(user, action, service, None, request_id).await;
        }
    }

    /// Stores a key: a new one, or a new version replacing the stored one
    /// (label kept unless given, re-enabled, validation fields cleared).
    /// `request_id` goes into the audit event.
    pub async fn upsert(
        &self,
        user: &UserId,
        req: KeyUpsert,
        request_id: &str,
    ) -> Result<Upserted, KeyError> {
        check_key_format(req.service, &req.api_key)?;
        let label = req.label.as_deref().map(check_label).transpose()?;
        let base_url = match req.base_url {
            Some(Some(_)) if !req.service.accepts_base_url() => {
                return Err(KeyError::BaseUrlNotAccepted(req.service));
            }
            Some(Some(raw)) => Some(Some(UserBaseUrl::parse(&raw)?.as_str().to_owned())),
            other => other.map(|_| None),
        };
        let masked_key = mask_key(&req.api_key);

        let _turn = self.write_turn(user, req.service).await;
        let mut attempt = 0;
        // The stored key's secret was gone: the next attempt starts a new one.
        let mut new_secret = false;
        loop {
            attempt += 1;
            let existing = self.meta.get_key(user, req.service).await?;
            // Secret first: metadata never points at a secret that is not
            // there. A replacement is a new version of the key's secret; a
            // new key gets a new secret.
            let into = existing
                .as_ref()
                .filter(|_| !new_secret)
                .map(|old| &old.secret);
            let secret = match self
                .secrets
                .put_secret(user, req.service, &req.api_key, into)
                .await
            {
                Ok(secret) => secret,
                // Deleted beside this write (or lost): look again.
                Err(StoreError::SecretNotFound) if attempt < UPSERT_ATTEMPTS => {
                    tracing::debug!(service = %req.service, attempt, "the key's secret is gone; retrying");
                    new_secret = true;
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            let created_secret = into.is_none();
            let at = now();
            let (record, expected) = match &existing {
                Some(old) => (
                    KeyRecord {
                        label: label.clone().unwrap_or_else(|| old.label.clone()),
                        masked_key: masked_key.clone(),
                        enabled: true,
                        base_url: base_url.clone().unwrap_or_else(|| old.base_url.clone()),
                        updated_at: at,
                        last_validated_at: None,
                        last_validation: None,
                        secret,
                        revision: old.revision + 1,
                        // A replacement is a rotation without a test, and
                        // supersedes any staged one.
                        rotated_at: Some(at),
                        pending: None,
                        ..old.clone()
                    },
                    Expected::Revision(old.revision),
                ),
                None => (
                    KeyRecord {
                        user: user.clone(),
                        service: req.service,
                        label: label
                            .clone()
                            .unwrap_or_else(|| req.service.display_name().to_owned()),
                        masked_key: masked_key.clone(),
                        enabled: true,
                        base_url: base_url.clone().flatten(),
                        created_at: at,
                        updated_at: at,
                        last_validated_at: None,
                        last_validation: None,
                        secret,
                        revision: 1,
                        rotated_at: None,
                        pending: None,
                        last_rotation: None,
                    },
                    Expected::Absent,
                ),
            };
            match self.meta.put_key(&record, expected).await {
                Ok(()) => {
                    tracing::info!(service = %req.service, replaced = existing.is_some(), "key stored");
                    let action = match existing {
                        Some(_) => AuditAction::Replaced,
                        None => AuditAction::Added,
                    };
                    self.audit(user, action, req.service, request_id).await;
                    return Ok(match existing {
                        Some(_) => Upserted::Replaced(record),
                        None => Upserted::Created(record),
                    });
                }
                Err(StoreError::Conflict) if attempt < UPSERT_ATTEMPTS => {
                    tracing::debug!(service = %req.service, attempt, "key upsert raced; retrying");
                    if created_secret {
                        // No record names the secret just made.
                        self.remove_unreferenced(&record.secret).await;
                    }
                }
                Err(StoreError::Conflict) => {
                    if created_secret {
                        self.remove_unreferenced(&record.secret).await;
                    }
                    return Err(StoreError::Conflict.into());
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// The user's keys, in the order of [`Service::ALL`].
    pub async fn list(&self, user: &UserId) -> Result<Vec<KeyRecord>, KeyError> {
        let mut keys = self.meta.load_user(user).await?.keys;
        keys.sort_by_key(|k| k.service);
        Ok(keys)
    }

    /// Changes `enabled` and/or `label` of a stored key.
    pub async fn update(
        &self,
        user: &UserId,
        service: Service,
        patch: KeyPatch,
        request_id: &str,
    ) -> Result<KeyRecord, KeyError> {
        if patch.enabled.is_none() && patch.label.is_none() {
            return Err(KeyError::EmptyPatch);
        }
        let label = patch.label.as_deref().map(check_label).transpose()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let old = self
                .meta
                .get_key(user, service)
                .await?
                .ok_or(KeyError::NotFound(service))?;
            let record = KeyRecord {
                enabled: patch.enabled.unwrap_or(old.enabled),
                label: label.clone().unwrap_or_else(|| old.label.clone()),
                updated_at: now(),
                revision: old.revision + 1,
                ..old.clone()
            };
            match self
                .meta
                .put_key(&record, Expected::Revision(old.revision))
                .await
            {
                Ok(()) => {
                    tracing::info!(%service, enabled = record.enabled, "key updated");
                    let action = match (old.enabled, record.enabled) {
                        (false, true) => AuditAction::Enabled,
                        (true, false) => AuditAction::Disabled,
                        _ => AuditAction::Updated,
                    };
                    self.audit(user, action, service, request_id).await;
                    return Ok(record);
                }
                Err(StoreError::Conflict) if attempt < UPSERT_ATTEMPTS => {}
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Removes a key: metadata first, then the secret.
    pub async fn delete(
        &self,
        user: &UserId,
        service: Service,
        request_id: &str,
    ) -> Result<(), KeyError> {
        let _turn = self.write_turn(user, service).await;
        let deleted = self
            .meta
            .delete_key(user, service)
            .await?
            .ok_or(KeyError::NotFound(service))?;
        // Only the secret the deleted record named: a key stored since has
        // its own.
        if let Err(err) = self.secrets.delete_secret(&deleted.secret).await {
            // The key is gone for every reader; the leftover secret is unreferenced.
            tracing::warn!(%service, error = %err, "key metadata removed but its secret was not");
        }
        tracing::info!(%service, "key deleted");
        self.audit(user, AuditAction::Deleted, service, request_id)
            .await;
        Ok(())
    }

    /// Removes a secret no record names (a write that lost its race); left
    /// to the sweep if that fails.
    async fn remove_unreferenced(&self, secret: &SecretRef) {
        if let Err(err) = self.secrets.delete_secret(secret).await {
            tracing::warn!(error = %err, "an unreferenced secret was not removed");
        }
    }

    pub async fn settings(&self, user: &UserId) -> Result<Settings, KeyError> {
        Ok(self.meta.load_user(user).await?.settings)
    }

    pub async fn save_settings(
        &self,
        user: &UserId,
        settings: Settings,
    ) -> Result<Settings, KeyError> {
        self.meta.put_settings(user, settings).await?;
        tracing::info!(
            allow_gateway_fallback = settings.allow_gateway_fallback,
            "settings saved"
        );
        Ok(settings)
    }
}

fn check_label(raw: &str) -> Result<String, KeyError> {
    let label = raw.trim();
    let chars = label.chars().count();
    if chars == 0 || chars > LABEL_MAX_CHARS || label.chars().any(char::is_control) {
        return Err(KeyError::InvalidLabel);
    }
    if crate::domain::looks_like_a_key(label) {
        return Err(KeyError::LabelLooksLikeKey);
    }
    Ok(label.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(check_label("  Work key ").unwrap(), "Work key");
        assert!(check_label("").is_err());
        assert!(check_label("   ").is_err());
        assert!(check_label("a\nb").is_err());
        assert!(check_label(&"x".repeat(101)).is_err());
        for key_shaped in [
            "sk-proj-abcdefgh1234",
            "my key gsk_abcdefghijk",
            "AIzaSyA-canary-123456",
            "backup 8f3a9c2e4b7d6f1a0c9e2b4d",
            "vck_secretvalue",
        ] {
            assert!(
                matches!(check_label(key_shaped), Err(KeyError::LabelLooksLikeKey)),
                "{key_shaped}"
            );
        }
        for name in [
            "Work key",
            "prod-openai-2024-backup-key1",
            "sk-team",
            "Team gateway (vck)",
            "2024-11-30 rotation",
        ] {
            assert!(check_label(name).is_ok(), "{name}");
        }
        assert!(check_label(&"é".repeat(100)).is_ok());
    }
}
