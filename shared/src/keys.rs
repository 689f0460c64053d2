//! Key management and settings: the operations behind the keys and settings
//! routes, over the store traits. Checks input before anything is written,
//! writes the secret before the metadata that points at it, and removes
//! metadata before the secret.

use crate::audit::AuditLog;
use crate::domain::key::check_key_format;
use crate::domain::{
    ApiKey, BaseUrlError, KeyFormatError, KeyId, KeyRecord, SecretRef, Service, Settings,
    UserBaseUrl, UserId, mask_key, now,
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

/// Another key for a service that may already have some.
#[derive(Debug)]
pub struct KeyAdd {
    pub api_key: ApiKey,
    pub label: Option<String>,
    /// `None`: after every stored key of the service.
    pub priority: Option<u32>,
    pub base_url: Option<String>,
}

/// A partial update of a stored key.
#[derive(Debug, Default)]
pub struct KeyPatch {
    pub enabled: Option<bool>,
    pub label: Option<String>,
    /// Only for one key (a patch of every key of a service refuses it).
    pub priority: Option<u32>,
}

/// Whether an upsert created a key or replaced one.
#[derive(Debug)]
pub enum Upserted {
    Created(KeyRecord),
    Replaced(KeyRecord),
}

/// Highest priority a key may be given.
pub const MAX_PRIORITY: u32 = 1_000_000;

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
    #[error("nothing to change: give enabled, label or priority")]
    EmptyPatch,
    #[error("priority is set per key: use /api/keys/{0}/{{id}}")]
    PriorityNeedsKey(Service),
    #[error("priority must be 0 to {MAX_PRIORITY}")]
    InvalidPriority,
    #[error("no {0} key is stored")]
    NotFound(Service),
    #[error("no {0} key with id {1} is stored")]
    KeyNotFound(Service, KeyId),
    #[error("{service} already has {max} keys, the most a service may have; delete one first")]
    TooManyKeys { service: Service, max: usize },
    #[error("{0} keys are given as apiKey")]
    ApiKeyExpected(Service),
    #[error("{0} takes credentials (its fields), not apiKey")]
    CredentialsExpected(Service),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How many locks the writes of one process take turns on (keys hash to one).
const WRITE_LOCKS: usize = 64;

/// Keys a service may have unless configured (`BYOK_MAX_KEYS_PER_SERVICE`).
pub const DEFAULT_MAX_KEYS_PER_SERVICE: usize = 5;

/// Key and settings operations for the signed-in user.
pub struct KeyService {
    meta: Arc<dyn MetadataStore>,
    secrets: Arc<dyn SecretStore>,
    audit: Option<AuditLog>,
    max_keys: usize,
    /// Writes of one service's keys take turns within this process, so they
    /// do not retry against each other (and the key limit holds within a
    /// process). Correctness does not depend on it: writes are conditional
    /// on the record's revision, and every new key gets a secret of its
    /// own, so a delete (which removes the secret its record named) never
    /// takes the secret of a key stored beside it by another instance.
    write_locks: Vec<tokio::sync::Mutex<()>>,
    /// The only token endpoint a service account may name.
    gcp_token_url: String,
}

impl KeyService {
    /// A service that keeps no audit log (see [`KeyService::with_audit`]).
    pub fn new(meta: Arc<dyn MetadataStore>, secrets: Arc<dyn SecretStore>) -> Self {
        Self {
            meta,
            secrets,
            audit: None,
            max_keys: DEFAULT_MAX_KEYS_PER_SERVICE,
            write_locks: (0..WRITE_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            gcp_token_url: crate::domain::GCP_TOKEN_URL.to_owned(),
        }
    }

    /// Service accounts must name `token_url` (`BYOK_GCP_TOKEN_URL`) instead
    /// of Google's token endpoint.
    #[must_use]
    pub fn with_gcp_token_url(mut self, token_url: &str) -> Self {
        self.gcp_token_url = token_url.to_owned();
        self
    }

    /// The secret a request body gives for `service`: its `apiKey`, or for
    /// a service whose keys are structured, its `credentials` checked field
    /// by field and kept as one JSON secret.
    pub fn secret_from(
        &self,
        service: Service,
        api_key: Option<ApiKey>,
        credentials: Option<&crate::domain::CredentialDocument>,
    ) -> Result<ApiKey, KeyError> {
        let kind = service.provider().credential;
        match (kind, api_key, credentials) {
            (crate::domain::CredentialKind::ApiKey, Some(key), None) => Ok(key),
            (crate::domain::CredentialKind::ApiKey, _, _) => Err(KeyError::ApiKeyExpected(service)),
            (_, None, Some(doc)) => match kind.stored_from(doc, &self.gcp_token_url) {
                Some(stored) => stored.map_err(|e| KeyError::KeyFormat(e.into())),
                None => Err(KeyError::ApiKeyExpected(service)),
            },
            _ => Err(KeyError::CredentialsExpected(service)),
        }
    }

    /// At most `max` keys per service (at least 1).
    #[must_use]
    pub fn with_max_keys(mut self, max: usize) -> Self {
        self.max_keys = max.max(1);
        self
    }

    /// Keys a service may have.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// The turn of `user`'s `service` keys among this process's writes.
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

    async fn audit(&self, record: &KeyRecord, action: AuditAction, request_id: &str) {
        if let Some(audit) = &self.audit {
            audit
                .record_key(
                    &record.user,
                    action,
                    record.service,
                    &record.id,
                    None,
                    request_id,
                )
                .await;
        }
    }

    /// Stores a key for `req.service`: its first key, or a new version
    /// replacing its primary key (label kept unless given, re-enabled,
    /// validation fields cleared). `request_id` goes into the audit event.
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
            let existing = self.meta.load_user(user).await?.key(req.service).cloned();
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
                        cooldown_until: None,
                        ..old.clone()
                    },
                    Expected::Revision(old.revision),
                ),
                None => (
                    new_record(
                        user,
                        req.service,
                        KeyId::generate().map_err(StoreError::backend)?,
                        0,
                        label
                            .clone()
                            .unwrap_or_else(|| req.service.display_name().to_owned()),
                        masked_key.clone(),
                        base_url.clone().flatten(),
                        secret,
                    ),
                    Expected::Absent,
                ),
            };
            match self.meta.put_key(&record, expected).await {
                Ok(()) => {
                    tracing::info!(service = %req.service, key_id = %record.id, replaced = existing.is_some(), "key stored");
                    let action = match existing {
                        Some(_) => AuditAction::Replaced,
                        None => AuditAction::Added,
                    };
                    self.audit(&record, action, request_id).await;
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

    /// Adds another key to `service` (its first if it has none), after the
    /// stored ones unless `req.priority` says otherwise.
    pub async fn add(
        &self,
        user: &UserId,
        service: Service,
        req: KeyAdd,
        request_id: &str,
    ) -> Result<KeyRecord, KeyError> {
        check_key_format(service, &req.api_key)?;
        let label = req.label.as_deref().map(check_label).transpose()?;
        if req.priority.is_some_and(|p| p > MAX_PRIORITY) {
            return Err(KeyError::InvalidPriority);
        }
        let base_url = match req.base_url {
            Some(_) if !service.accepts_base_url() => {
                return Err(KeyError::BaseUrlNotAccepted(service));
            }
            Some(raw) => Some(UserBaseUrl::parse(&raw)?.as_str().to_owned()),
            None => None,
        };
        let masked_key = mask_key(&req.api_key);

        let _turn = self.write_turn(user, service).await;
        let snapshot = self.meta.load_user(user).await?;
        let stored = snapshot.keys_of(service);
        if stored.len() >= self.max_keys {
            return Err(KeyError::TooManyKeys {
                service,
                max: self.max_keys,
            });
        }
        let priority = req.priority.unwrap_or_else(|| {
            stored
                .iter()
                .map(|k| k.priority.saturating_add(1))
                .max()
                .unwrap_or(0)
                .min(MAX_PRIORITY)
        });
        let secret = self
            .secrets
            .put_secret(user, service, &req.api_key, None)
            .await?;
        let record = new_record(
            user,
            service,
            KeyId::generate().map_err(StoreError::backend)?,
            priority,
            label.unwrap_or_else(|| service.display_name().to_owned()),
            masked_key,
            base_url,
            secret,
        );
        if let Err(err) = self.meta.put_key(&record, Expected::Absent).await {
            if matches!(err, StoreError::Conflict) {
                self.remove_unreferenced(&record.secret).await;
            }
            return Err(err.into());
        }
        tracing::info!(%service, key_id = %record.id, priority, "key added");
        self.audit(&record, AuditAction::Added, request_id).await;
        Ok(record)
    }

    /// The user's keys: by service (in the order of [`Service::ALL`]),
    /// then in the order they are tried.
    pub async fn list(&self, user: &UserId) -> Result<Vec<KeyRecord>, KeyError> {
        let mut keys = self.meta.load_user(user).await?.keys;
        keys.sort_by(|a, b| (a.service, a.order()).cmp(&(b.service, b.order())));
        Ok(keys)
    }

    /// The keys a request names: one (`id`), or every key of `service`.
    async fn targets(
        &self,
        user: &UserId,
        service: Service,
        id: Option<&KeyId>,
    ) -> Result<Vec<KeyRecord>, KeyError> {
        match id {
            Some(id) => Ok(vec![
                self.meta
                    .get_key(user, service, id)
                    .await?
                    .ok_or_else(|| KeyError::KeyNotFound(service, id.clone()))?,
            ]),
            None => {
                let snapshot = self.meta.load_user(user).await?;
                let keys: Vec<KeyRecord> = snapshot.keys_of(service).into_iter().cloned().collect();
                if keys.is_empty() {
                    return Err(KeyError::NotFound(service));
                }
                Ok(keys)
            }
        }
    }

    /// Changes `enabled`, `label` and/or `priority` of one key (`id`), or
    /// `enabled`/`label` of every key of `service`. Returns the records
    /// written, in order.
    pub async fn update(
        &self,
        user: &UserId,
        service: Service,
        id: Option<&KeyId>,
        patch: KeyPatch,
        request_id: &str,
    ) -> Result<Vec<KeyRecord>, KeyError> {
        if patch.enabled.is_none() && patch.label.is_none() && patch.priority.is_none() {
            return Err(KeyError::EmptyPatch);
        }
        if patch.priority.is_some() && id.is_none() {
            return Err(KeyError::PriorityNeedsKey(service));
        }
        if patch.priority.is_some_and(|p| p > MAX_PRIORITY) {
            return Err(KeyError::InvalidPriority);
        }
        let label = patch.label.as_deref().map(check_label).transpose()?;
        let mut written = Vec::new();
        for target in self.targets(user, service, id).await? {
            let mut attempt = 0;
            let mut old = target;
            loop {
                attempt += 1;
                let record = KeyRecord {
                    enabled: patch.enabled.unwrap_or(old.enabled),
                    label: label.clone().unwrap_or_else(|| old.label.clone()),
                    priority: patch.priority.unwrap_or(old.priority),
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
                        tracing::info!(%service, key_id = %record.id, enabled = record.enabled, "key updated");
                        let action = match (old.enabled, record.enabled) {
                            (false, true) => AuditAction::Enabled,
                            (true, false) => AuditAction::Disabled,
                            _ => AuditAction::Updated,
                        };
                        self.audit(&record, action, request_id).await;
                        written.push(record);
                        break;
                    }
                    Err(StoreError::Conflict) if attempt < UPSERT_ATTEMPTS => {
                        old = self
                            .meta
                            .get_key(user, service, &old.id)
                            .await?
                            .ok_or_else(|| KeyError::KeyNotFound(service, old.id.clone()))?;
                    }
                    Err(err) => return Err(err.into()),
                }
            }
        }
        written.sort_by(|a, b| a.order().cmp(&b.order()));
        Ok(written)
    }

    /// Removes one key (`id`) or every key of `service`: metadata first,
    /// then the secret. Returns how many were removed.
    pub async fn delete(
        &self,
        user: &UserId,
        service: Service,
        id: Option<&KeyId>,
        request_id: &str,
    ) -> Result<usize, KeyError> {
        let _turn = self.write_turn(user, service).await;
        let mut removed = 0;
        for target in self.targets(user, service, id).await? {
            let Some(deleted) = self.meta.delete_key(user, service, &target.id).await? else {
                if id.is_some() {
                    return Err(KeyError::KeyNotFound(service, target.id));
                }
                continue;
            };
            // Only the secret the deleted record named: a key stored since
            // has its own.
            if let Err(err) = self.secrets.delete_secret(&deleted.secret).await {
                // The key is gone for every reader; the leftover secret is unreferenced.
                tracing::warn!(%service, error = %err, "key metadata removed but its secret was not");
            }
            tracing::info!(%service, key_id = %deleted.id, "key deleted");
            self.audit(&deleted, AuditAction::Deleted, request_id).await;
            removed += 1;
        }
        if removed == 0 {
            return Err(KeyError::NotFound(service));
        }
        Ok(removed)
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

    /// Saves `user`'s settings; a change of consent is audited.
    pub async fn save_settings(
        &self,
        user: &UserId,
        settings: Settings,
        request_id: &str,
    ) -> Result<Settings, KeyError> {
        let before = self.meta.put_settings(user, settings).await?;
        if before.allow_gateway_fallback != settings.allow_gateway_fallback
            && let Some(audit) = &self.audit
        {
            audit
                .record_consent(user, settings.allow_gateway_fallback, request_id)
                .await;
        }
        tracing::info!(
            allow_gateway_fallback = settings.allow_gateway_fallback,
            "settings saved"
        );
        Ok(settings)
    }
}

/// A key record as first stored.
#[expect(
    clippy::too_many_arguments,
    reason = "one constructor, called twice, each field named"
)]
fn new_record(
    user: &UserId,
    service: Service,
    id: KeyId,
    priority: u32,
    label: String,
    masked_key: String,
    base_url: Option<String>,
    secret: SecretRef,
) -> KeyRecord {
    let at = now();
    KeyRecord {
        user: user.clone(),
        service,
        id,
        priority,
        label,
        masked_key,
        enabled: true,
        base_url,
        created_at: at,
        updated_at: at,
        last_validated_at: None,
        last_validation: None,
        secret,
        revision: 1,
        rotated_at: None,
        pending: None,
        last_rotation: None,
        last_used_at: None,
        cooldown_until: None,
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
