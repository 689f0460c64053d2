//! Key rotation and the key-health sweep, over the store traits.
//!
//! # Rotation
//! A user stages a replacement key ([`RotationService::stage`]): it is
//! stored as a secret version of its own and noted on the key record as
//! `pending`, while the current key keeps serving. A rotation then runs the
//! Secrets Manager protocol, one step per call of [`RotationService::step`]
//! with the rotation's token (`ClientRequestToken`):
//!
//! 1. `createSecret`: copy the staged key into the version `token`,
//!    labelled pending, and note the token on the record. Nothing staged:
//!    fail for good ([`RotationError::NothingStaged`]).
//! 2. `setSecret`: nothing to do. A provider key is issued by the provider;
//!    there is no downstream service of ours to push it to.
//! 3. `testSecret`: check the pending key against its provider (the same
//!    call as validation). Refused: the pending version and the staged key
//!    are discarded, the record says `rejected`, the current key keeps
//!    serving. Provider unreachable: a retryable error, everything kept.
//! 4. `finishSecret`: make `token` current (the old current stays readable
//!    as previous), then point the record at it with the new masked key,
//!    `rotatedAt`, and the passing check as its validation.
//!
//! Every step is idempotent per token (Secrets Manager retries steps), and
//! the record names a version that exists at every moment: in-flight and
//! concurrent completions read the old version until the record moves, and
//! that version stays as previous afterwards. (A cancel landing between
//! `finishSecret`'s label move and its record write leaves the record on the
//! old version, still readable, while `AWSCURRENT` names the new one:
//! requests are unaffected, as they read by the record's version.) A step that finds the record
//! no longer waiting for this token (the user cancelled, replaced or
//! deleted the key) discards what it staged and stops for good.
//!
//! On AWS, Secrets Manager drives the steps (the `rotation` function); a
//! [`RotationTrigger`] starts a rotation: `RotateSecret` on AWS, or the four
//! steps in this process ([`InProcessTrigger`]) for byok-local.
//!
//! # Sweep
//! [`RotationService::sweep`] walks every key record: keys not validated
//! within [`SweepPolicy::revalidate_after`] are checked again and marked
//! (`key.invalid` for a refused one); keys older than
//! [`SweepPolicy::rotation_age`] raise `key.rotation_due`. Then every stored
//! secret that no record references and that has not changed for
//! [`SweepPolicy::orphan_grace`] (the leftovers of a crash between a
//! secret write and its metadata write) is removed. Valid keys and
//! referenced secrets are never changed, beyond the validation time.

use crate::audit::AuditLog;
pub use crate::config::SweepPolicy;
use crate::domain::key::check_key_format;
use crate::domain::{
    ApiKey, KeyFormatError, KeyId, KeyRecord, PendingKey, RotationOutcome, RotationRejection,
    SecretRef, Service, Timestamp, UserId, ValidationResult, mask_key, now,
};
use crate::events::{EventSink, KeyEvent, KeyEventKind};
use crate::store::{AuditAction, Expected, MetadataStore, RotationStore, SecretStore, StoreError};
use async_trait::async_trait;
use futures_util::StreamExt as _;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// How often a record update retries after losing a race.
const WRITE_ATTEMPTS: usize = 4;
/// Key records read per page by the sweep.
const SWEEP_PAGE: usize = 100;

/// A step of the Secrets Manager rotation protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Create,
    Set,
    Test,
    Finish,
}

impl Step {
    pub const ALL: [Self; 4] = [Self::Create, Self::Set, Self::Test, Self::Finish];

    /// The protocol's name (`createSecret`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Create => "createSecret",
            Self::Set => "setSecret",
            Self::Test => "testSecret",
            Self::Finish => "finishSecret",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// Why a rotation operation was refused or did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    KeyFormat(#[from] KeyFormatError),
    #[error("no {0} key is stored")]
    NotFound(Service),
    #[error("a rotation is already pending for this key; cancel it first")]
    AlreadyPending,
    #[error("no rotation is pending for this key")]
    NothingPending,
    #[error("nothing is staged for this rotation, and {0} keys cannot be created by the gateway")]
    NothingStaged(Service),
    #[error("the rotation was cancelled, or the key replaced or deleted, before it finished")]
    Superseded,
    #[error("the provider refused the new key; the current key stays in use")]
    Rejected,
    #[error("the provider could not be reached to test the new key; try again later")]
    Unreachable,
    #[error("the rotation could not be started")]
    Trigger(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Staging checks the key with its provider, so it counts against the
    /// per-user validation limit.
    #[error("too many key checks: try again in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RotationError {
    /// Whether running the same step again may succeed (Secrets Manager
    /// retries a failed rotation; the rest fail for good).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::Unreachable | Self::Trigger(_) | Self::Store(StoreError::Backend(_))
        )
    }
}

/// What rotation and the sweep need of key checking (implemented by
/// [`crate::validate::ValidationService`]; rotation depends on this trait,
/// never on the service).
#[async_trait]
pub trait KeyChecker: Send + Sync {
    /// One hit of the per-user key-check limit: `Ok(None)` if allowed, else
    /// the seconds to wait.
    async fn hit(&self, user: &UserId) -> Result<Option<u64>, StoreError>;

    /// Checks `key` for `service` against the provider (at the user's own
    /// base URL if given), outside any limit.
    async fn probe(
        &self,
        service: Service,
        key: &ApiKey,
        user_base_url: Option<&str>,
    ) -> ValidationResult;

    /// Writes a check's outcome onto `record` unless it changed meanwhile.
    async fn mark(&self, record: &KeyRecord, result: ValidationResult) -> Option<KeyRecord>;
}

/// Starts a rotation of a key whose replacement was just staged.
#[async_trait]
pub trait RotationTrigger: Send + Sync {
    async fn start(&self, record: &KeyRecord) -> Result<(), RotationError>;
}

/// What one sweep did.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    pub keys: usize,
    pub checked: usize,
    pub valid: usize,
    pub invalid: usize,
    pub unreachable: usize,
    /// Keys whose secret could not be read for the check.
    pub unreadable: usize,
    pub rotation_due: usize,
    /// Keys no completion used for the stale age (`key.stale`).
    pub stale: usize,
    pub orphans_removed: usize,
    pub events: Vec<KeyEvent>,
}

/// Rotation and sweep operations. Built once per process.
pub struct RotationService {
    meta: Arc<dyn MetadataStore>,
    secrets: Arc<dyn SecretStore>,
    store: Arc<dyn RotationStore>,
    validation: Arc<dyn KeyChecker>,
    audit: AuditLog,
    events: Arc<dyn EventSink>,
}

impl RotationService {
    pub fn new(
        meta: Arc<dyn MetadataStore>,
        secrets: Arc<dyn SecretStore>,
        store: Arc<dyn RotationStore>,
        validation: Arc<dyn KeyChecker>,
        audit: AuditLog,
        events: Arc<dyn EventSink>,
    ) -> Self {
        Self {
            meta,
            secrets,
            store,
            validation,
            audit,
            events,
        }
    }

    async fn record_of(
        &self,
        user: &UserId,
        service: Service,
        id: &KeyId,
    ) -> Result<KeyRecord, RotationError> {
        self.meta
            .get_key(user, service, id)
            .await?
            .ok_or(RotationError::NotFound(service))
    }

    /// The key a route names: `id`, else the service's primary key.
    async fn target(
        &self,
        user: &UserId,
        service: Service,
        id: Option<&KeyId>,
    ) -> Result<KeyRecord, RotationError> {
        match id {
            Some(id) => self.record_of(user, service, id).await,
            None => self
                .meta
                .load_user(user)
                .await?
                .key(service)
                .cloned()
                .ok_or(RotationError::NotFound(service)),
        }
    }

    /// The key whose secret is `secret_id` (rotation steps start from a secret).
    async fn by_secret(
        &self,
        user: &UserId,
        service: Service,
        secret_id: &str,
    ) -> Result<Option<KeyRecord>, RotationError> {
        let snapshot = self.meta.load_user(user).await?;
        Ok(snapshot
            .keys_of(service)
            .into_iter()
            .find(|k| k.secret.id == secret_id)
            .cloned())
    }

    /// Applies `change` to the stored record and writes it, re-reading and
    /// retrying when a concurrent write wins. `change` returning `None`
    /// means nothing to write.
    async fn update<F>(
        &self,
        user: &UserId,
        service: Service,
        id: &KeyId,
        mut change: F,
    ) -> Result<Option<KeyRecord>, RotationError>
    where
        F: FnMut(&KeyRecord) -> Result<Option<KeyRecord>, RotationError>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let old = self.record_of(user, service, id).await?;
            let Some(new) = change(&old)? else {
                return Ok(None);
            };
            let new = KeyRecord {
                revision: old.revision + 1,
                updated_at: now(),
                ..new
            };
            match self
                .meta
                .put_key(&new, Expected::Revision(old.revision))
                .await
            {
                Ok(()) => return Ok(Some(new)),
                Err(StoreError::Conflict) if attempt < WRITE_ATTEMPTS => {}
                Err(err) => return Err(err.into()),
            }
        }
    }

    async fn audit(&self, record: &KeyRecord, result: &str, request_id: &str) {
        self.audit
            .record_key(
                &record.user,
                AuditAction::Rotated,
                record.service,
                &record.id,
                Some(result),
                request_id,
            )
            .await;
    }

    /// Stages `key` as the replacement of the stored key `id` of `service`
    /// (its primary key without an id). The current key keeps serving; a
    /// [`RotationTrigger`] starts the rotation.
    pub async fn stage(
        &self,
        user: &UserId,
        service: Service,
        id: Option<&KeyId>,
        key: &ApiKey,
        request_id: &str,
    ) -> Result<KeyRecord, RotationError> {
        check_key_format(service, key)?;
        let record = self.target(user, service, id).await?;
        if record.pending.is_some() {
            return Err(RotationError::AlreadyPending);
        }
        // The staged key will be checked with its provider: that check counts
        // against the key-check limit (requests refused above, for our own
        // reasons, do not).
        if let Some(retry_after_secs) = self.validation.hit(user).await? {
            tracing::info!("staging rate limited");
            return Err(RotationError::RateLimited { retry_after_secs });
        }
        let staged = self
            .store
            .stage(&record.secret.id, key)
            .await
            .map_err(|err| match err {
                StoreError::SecretNotFound => RotationError::NotFound(service),
                other => other.into(),
            })?;
        let pending = PendingKey {
            version: staged.version,
            masked_key: mask_key(key),
            staged_at: now(),
            token: None,
        };
        let updated = self
            .update(user, service, &record.id, |old| {
                if old.pending.is_some() {
                    return Err(RotationError::AlreadyPending);
                }
                Ok(Some(KeyRecord {
                    pending: Some(pending.clone()),
                    ..old.clone()
                }))
            })
            .await?
            .ok_or(RotationError::NotFound(service))?;
        tracing::info!(%service, key_id = %updated.id, "replacement key staged");
        self.audit(&updated, "staged", request_id).await;
        Ok(updated)
    }

    /// Cancels a staged or running rotation: the current key stays, the
    /// staged key is discarded.
    pub async fn cancel(
        &self,
        user: &UserId,
        service: Service,
        id: Option<&KeyId>,
        request_id: &str,
    ) -> Result<KeyRecord, RotationError> {
        let mut token = None;
        let target = self.target(user, service, id).await?;
        let updated = self
            .update(user, service, &target.id, |old| {
                let Some(pending) = &old.pending else {
                    return Err(RotationError::NothingPending);
                };
                token.clone_from(&pending.token);
                Ok(Some(KeyRecord {
                    pending: None,
                    last_rotation: Some(RotationOutcome {
                        at: now(),
                        rejected: Some(RotationRejection::Cancelled),
                    }),
                    ..old.clone()
                }))
            })
            .await?
            .ok_or(RotationError::NotFound(service))?;
        if let Err(err) = self
            .store
            .discard(&updated.secret.id, token.as_deref(), true)
            .await
        {
            tracing::warn!(%service, error = %err, "rotation cancelled but its staged versions remain");
        }
        tracing::info!(%service, key_id = %updated.id, "rotation cancelled");
        self.audit(&updated, "cancelled", request_id).await;
        Ok(updated)
    }

    /// Runs every step of a new rotation of key `id` of `service` (its
    /// primary key without an id) in this process.
    pub async fn rotate(
        &self,
        user: &UserId,
        service: Service,
        id: Option<&KeyId>,
    ) -> Result<KeyRecord, RotationError> {
        let record = self.target(user, service, id).await?;
        let token = crate::crypto::random_hex::<16>().map_err(StoreError::backend)?;
        for step in Step::ALL {
            self.step(step, &record.secret.id, &token).await?;
        }
        self.record_of(user, service, &record.id).await
    }

    /// One step of the rotation `token` of secret `secret_id`.
    pub async fn step(
        &self,
        step: Step,
        secret_id: &str,
        token: &str,
    ) -> Result<(), RotationError> {
        let outcome = match step {
            Step::Create => self.create(secret_id, token).await,
            Step::Set => Ok(()),
            Step::Test => self.test(secret_id, token).await,
            Step::Finish => self.finish(secret_id, token).await,
        };
        match &outcome {
            Ok(()) => tracing::info!(step = step.as_str(), "rotation step done"),
            Err(err) => tracing::warn!(
                step = step.as_str(),
                retryable = err.retryable(),
                error = %err,
                "rotation step failed"
            ),
        }
        outcome
    }

    async fn create(&self, secret_id: &str, token: &str) -> Result<(), RotationError> {
        let versions = self.store.describe(secret_id).await?;
        if versions.current.as_deref() == Some(token) {
            return Ok(());
        }
        let (user, service) = (versions.user, versions.service);
        let record = self
            .by_secret(&user, service, secret_id)
            .await?
            .ok_or(RotationError::NotFound(service))?;
        let Some(pending) = record.pending.clone() else {
            if record
                .last_rotation
                .as_ref()
                .is_some_and(|o| o.rejected == Some(RotationRejection::Cancelled))
            {
                // The staging this rotation was started for was cancelled
                // before its first step ran: the cancel is the outcome.
                return Err(RotationError::Superseded);
            }
            self.fail(&record, token, RotationRejection::NothingStaged)
                .await;
            return Err(RotationError::NothingStaged(service));
        };
        if pending.token.as_deref() == Some(token)
            && self.store.get_pending(secret_id, token).await.is_ok()
        {
            return Ok(());
        }
        let staged = SecretRef {
            id: record.secret.id.clone(),
            version: pending.version.clone(),
        };
        let key = self.secrets.get_secret(&staged).await?;
        self.store.put_pending(secret_id, token, &key).await?;
        drop(key);
        self.update(&user, service, &record.id, |old| match &old.pending {
            Some(p) if p.version == pending.version => Ok(Some(KeyRecord {
                pending: Some(PendingKey {
                    token: Some(token.to_owned()),
                    ..p.clone()
                }),
                ..old.clone()
            })),
            _ => Err(RotationError::Superseded),
        })
        .await?;
        Ok(())
    }

    /// The record, if it still waits for rotation `token`; else the
    /// rotation's versions are discarded and it stops for good.
    async fn waiting_record(
        &self,
        secret_id: &str,
        user: &UserId,
        service: Service,
        token: &str,
    ) -> Result<KeyRecord, RotationError> {
        let record = self.by_secret(user, service, secret_id).await?;
        self.still_waiting(secret_id, record, service, token).await
    }

    /// `record` if it still waits for rotation `token` (see [`Self::waiting_record`]).
    async fn still_waiting(
        &self,
        secret_id: &str,
        record: Option<KeyRecord>,
        service: Service,
        token: &str,
    ) -> Result<KeyRecord, RotationError> {
        match record {
            Some(r) if r.pending.as_ref().and_then(|p| p.token.as_deref()) == Some(token) => Ok(r),
            _ => {
                // Only this rotation's version: a staged key may be someone
                // else's newer staging.
                if let Err(err) = self.store.discard(secret_id, Some(token), false).await {
                    tracing::warn!(%service, error = %err, "superseded rotation not discarded");
                }
                Err(RotationError::Superseded)
            }
        }
    }

    async fn test(&self, secret_id: &str, token: &str) -> Result<(), RotationError> {
        let versions = self.store.describe(secret_id).await?;
        if versions.current.as_deref() == Some(token) {
            return Ok(());
        }
        let (user, service) = (versions.user, versions.service);
        let record = self
            .waiting_record(secret_id, &user, service, token)
            .await?;
        let key = self.store.get_pending(secret_id, token).await?;
        let result = self
            .validation
            .probe(service, &key, record.base_url.as_deref())
            .await;
        drop(key);
        match result {
            ValidationResult::Valid => Ok(()),
            // Not confirmed: the staged key waits, as for an outage.
            ValidationResult::Unreachable | ValidationResult::Unverified => {
                Err(RotationError::Unreachable)
            }
            ValidationResult::Invalid => {
                if let Err(err) = self.store.discard(secret_id, Some(token), true).await {
                    tracing::warn!(%service, error = %err, "rejected key versions not discarded");
                }
                self.fail(&record, token, RotationRejection::InvalidKey)
                    .await;
                Err(RotationError::Rejected)
            }
        }
    }

    /// Records a rotation that ended without promotion (if the record still
    /// waits for it), and says so in the audit log and an event.
    async fn fail(&self, record: &KeyRecord, token: &str, reason: RotationRejection) {
        let (user, service) = (&record.user, record.service);
        let updated = self
            .update(user, service, &record.id, |old| {
                let ours = match &old.pending {
                    None => reason == RotationRejection::NothingStaged,
                    Some(p) => p.token.as_deref().is_none_or(|t| t == token),
                };
                Ok(ours.then(|| KeyRecord {
                    pending: None,
                    last_rotation: Some(RotationOutcome {
                        at: now(),
                        rejected: Some(reason),
                    }),
                    ..old.clone()
                }))
            })
            .await;
        if let Err(err) = updated {
            tracing::warn!(%service, error = %err, "rotation failure not recorded on the key");
        }
        self.audit(record, "rejected", &format!("rotation-{token}"))
            .await;
        let event = KeyEvent {
            kind: KeyEventKind::RotationFailed,
            user: user.clone(),
            service,
            key_id: Some(record.id.clone()),
            masked_key: record
                .pending
                .as_ref()
                .map_or_else(|| record.masked_key.clone(), |p| p.masked_key.clone()),
            at: now(),
            reason: Some(reason.as_str()),
            keyed_at: None,
        };
        self.events.publish(&[event.into()]).await;
    }

    async fn finish(&self, secret_id: &str, token: &str) -> Result<(), RotationError> {
        let versions = self.store.describe(secret_id).await?;
        let (user, service) = (versions.user, versions.service);
        let record = self.by_secret(&user, service, secret_id).await?;
        if record.as_ref().is_some_and(|r| r.secret.version == token) {
            // Finished before; only labels may be left to tidy.
            return Ok(self.store.promote(secret_id, token).await?);
        }
        // A superseded rotation stops here.
        let record = self
            .still_waiting(secret_id, record, service, token)
            .await?;
        self.store.promote(secret_id, token).await?;
        let at = now();
        let updated = self
            .update(&user, service, &record.id, |old| {
                if old.secret.version == token {
                    return Ok(None);
                }
                let Some(pending) = old
                    .pending
                    .as_ref()
                    .filter(|p| p.token.as_deref() == Some(token))
                else {
                    return Err(RotationError::Superseded);
                };
                Ok(Some(KeyRecord {
                    secret: SecretRef {
                        id: old.secret.id.clone(),
                        version: token.to_owned(),
                    },
                    masked_key: pending.masked_key.clone(),
                    rotated_at: Some(at),
                    pending: None,
                    last_rotation: Some(RotationOutcome { at, rejected: None }),
                    last_validated_at: Some(at),
                    last_validation: Some(ValidationResult::Valid),
                    ..old.clone()
                }))
            })
            .await?;
        if let Some(updated) = updated {
            tracing::info!(%service, key_id = %updated.id, "key rotated");
            self.audit(&updated, "rotated", &format!("rotation-{token}"))
                .await;
            let event = KeyEvent {
                kind: KeyEventKind::Rotated,
                user,
                service,
                key_id: Some(updated.id.clone()),
                masked_key: updated.masked_key,
                at,
                reason: None,
                keyed_at: Some(at),
            };
            self.events.publish(&[event.into()]).await;
        }
        Ok(())
    }

    /// Re-validates stale keys, flags old ones and removes orphaned
    /// secrets (see the module doc); publishes and returns the events.
    pub async fn sweep(&self, policy: SweepPolicy) -> Result<SweepReport, RotationError> {
        let started = now();
        let mut report = SweepReport::default();
        let mut referenced = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.meta.scan_keys(cursor.as_deref(), SWEEP_PAGE).await?;
            let mut stale = Vec::new();
            for record in page.keys {
                report.keys += 1;
                referenced.insert(record.secret.id.clone());
                let keyed_at = record.keyed_at();
                if older_than(started, keyed_at, policy.rotation_age) {
                    report.rotation_due += 1;
                    report.events.push(KeyEvent {
                        keyed_at: Some(keyed_at),
                        ..KeyEvent::about(KeyEventKind::RotationDue, &record, started)
                    });
                }
                let last_used = record.last_used_at.unwrap_or(record.created_at);
                if older_than(started, last_used, policy.stale_after) {
                    report.stale += 1;
                    report
                        .events
                        .push(KeyEvent::about(KeyEventKind::Stale, &record, started));
                }
                if record
                    .last_validated_at
                    .is_none_or(|t| older_than(started, t, policy.revalidate_after))
                {
                    stale.push(record);
                }
            }
            let checks = futures_util::stream::iter(stale)
                .map(|record| self.recheck(record))
                .buffer_unordered(policy.concurrency.max(1))
                .collect::<Vec<_>>()
                .await;
            for (record, result) in checks {
                match result {
                    None => report.unreadable += 1,
                    Some(result) => {
                        report.checked += 1;
                        match result {
                            ValidationResult::Valid => report.valid += 1,
                            // Neither could say whether the key works.
                            ValidationResult::Unreachable | ValidationResult::Unverified => {
                                report.unreachable += 1;
                            }
                            ValidationResult::Invalid => {
                                report.invalid += 1;
                                report.events.push(KeyEvent {
                                    reason: Some("invalid_key"),
                                    ..KeyEvent::about(KeyEventKind::Invalid, &record, now())
                                });
                            }
                        }
                    }
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        report.orphans_removed = self.remove_orphans(&referenced, started, policy).await?;
        let events: Vec<crate::events::Event> =
            report.events.iter().cloned().map(Into::into).collect();
        self.events.publish(&events).await;
        tracing::info!(
            keys = report.keys,
            checked = report.checked,
            invalid = report.invalid,
            rotation_due = report.rotation_due,
            stale = report.stale,
            orphans_removed = report.orphans_removed,
            "sweep done"
        );
        Ok(report)
    }

    /// Checks one stored key and marks it; `None` if its secret could not be read.
    async fn recheck(&self, record: KeyRecord) -> (KeyRecord, Option<ValidationResult>) {
        let key = match self.secrets.get_secret(&record.secret).await {
            Ok(key) => key,
            Err(err) => {
                tracing::warn!(service = %record.service, error = %err, "sweep could not read a key");
                return (record, None);
            }
        };
        let result = self
            .validation
            .probe(record.service, &key, record.base_url.as_deref())
            .await;
        drop(key);
        self.validation.mark(&record, result).await;
        self.audit
            .record(
                &record.user,
                AuditAction::Validated,
                record.service,
                Some(result.as_str()),
                "sweep",
            )
            .await;
        (record, Some(result))
    }

    async fn remove_orphans(
        &self,
        referenced: &HashSet<String>,
        started: Timestamp,
        policy: SweepPolicy,
    ) -> Result<usize, RotationError> {
        let mut removed = 0;
        for secret in self.store.list_secrets().await? {
            if referenced.contains(&secret.id) {
                continue;
            }
            // A write in progress (secret first, metadata next) is recent.
            let settled = secret
                .changed_at
                .is_some_and(|t| older_than(started, t, policy.orphan_grace));
            if !settled {
                continue;
            }
            // A key stored since the scan read its page references it now.
            if let Some((user, service)) = &secret.owner
                && self.by_secret(user, *service, &secret.id).await?.is_some()
            {
                continue;
            }
            self.store.delete_by_id(&secret.id).await?;
            tracing::info!(
                owner_known = secret.owner.is_some(),
                "orphaned secret removed"
            );
            removed += 1;
        }
        Ok(removed)
    }
}

/// Whether `then` lies more than `age` before `now`.
fn older_than(now: Timestamp, then: Timestamp, age: Duration) -> bool {
    let age = time::Duration::try_from(age).unwrap_or(time::Duration::MAX);
    now - then >= age
}

/// Runs each rotation in this process, in the background: the caller gets
/// the staged record at once, as with Secrets Manager.
pub struct InProcessTrigger {
    rotation: Arc<RotationService>,
}

impl InProcessTrigger {
    pub fn new(rotation: Arc<RotationService>) -> Self {
        Self { rotation }
    }
}

#[async_trait]
impl RotationTrigger for InProcessTrigger {
    async fn start(&self, record: &KeyRecord) -> Result<(), RotationError> {
        let rotation = Arc::clone(&self.rotation);
        let (user, service, id) = (record.user.clone(), record.service, record.id.clone());
        tokio::spawn(async move {
            if let Err(err) = rotation.rotate(&user, service, Some(&id)).await {
                tracing::info!(%service, error = %err, "rotation ended without promotion");
            }
        });
        Ok(())
    }
}

/// Starts rotations with `RotateSecret`: Secrets Manager then invokes the
/// rotation function for each step.
pub struct SecretsManagerTrigger {
    client: aws_sdk_secretsmanager::Client,
    function_arn: String,
}

/// Secrets Manager's own schedule is set to its longest interval: the sweep,
/// not a timer, decides when a key is due, and only a staged key can rotate.
const SCHEDULE_DAYS: i64 = 1000;

impl SecretsManagerTrigger {
    pub fn new(client: aws_sdk_secretsmanager::Client, function_arn: impl Into<String>) -> Self {
        Self {
            client,
            function_arn: function_arn.into(),
        }
    }
}

#[async_trait]
impl RotationTrigger for SecretsManagerTrigger {
    async fn start(&self, record: &KeyRecord) -> Result<(), RotationError> {
        use aws_sdk_secretsmanager::types::RotationRulesType;
        let token = crate::crypto::random_hex::<16>().map_err(StoreError::backend)?;
        self.client
            .rotate_secret()
            .secret_id(&record.secret.id)
            .client_request_token(token)
            .rotation_lambda_arn(&self.function_arn)
            .rotation_rules(
                RotationRulesType::builder()
                    .automatically_after_days(SCHEDULE_DAYS)
                    .build(),
            )
            .rotate_immediately(true)
            .send()
            .await
            .map_err(|err| {
                tracing::warn!(
                    error = %aws_sdk_secretsmanager::error::DisplayErrorContext(&err),
                    "RotateSecret failed"
                );
                RotationError::Trigger(Box::new(err))
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_have_the_protocol_names() {
        let names: Vec<&str> = Step::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            ["createSecret", "setSecret", "testSecret", "finishSecret"]
        );
        for step in Step::ALL {
            assert_eq!(Step::parse(step.as_str()), Some(step));
        }
        assert_eq!(Step::parse("CreateSecret"), None);
    }

    #[test]
    fn ages_compare_at_the_boundary() {
        let now = now();
        let day = Duration::from_secs(86_400);
        assert!(older_than(now, now - time::Duration::days(1), day));
        assert!(!older_than(now, now - time::Duration::hours(23), day));
        assert!(older_than(now, now, Duration::ZERO));
        assert!(!older_than(now, now, Duration::MAX));
    }

    #[test]
    fn only_outages_are_retryable() {
        assert!(RotationError::Unreachable.retryable());
        assert!(RotationError::Store(StoreError::backend(std::io::Error::other("x"))).retryable());
        for err in [
            RotationError::Rejected,
            RotationError::Superseded,
            RotationError::NothingStaged(Service::OpenAi),
            RotationError::Store(StoreError::SecretNotFound),
        ] {
            assert!(!err.retryable(), "{err}");
        }
    }
}
