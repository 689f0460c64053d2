//! The AWS Secrets Manager secret store: one secret per stored key, whose
//! versions are its successive values (replacements, rotations); and the
//! cold-start read of the operator's team keys.
//!
//! # Names
//! A new key's secret is named `{prefix}{user-part}/{service}/{unique}`,
//! `{unique}` being 32 random hex characters: a key stored after a delete
//! never gets the deleted key's secret, so the delete (which removes the
//! secret its record named, by ARN) cannot take a key stored beside it, in
//! any instance. Secrets written before keys had secrets of their own are
//! named `{prefix}{user-part}/{service}`; their records name them by ARN and
//! they keep working.
//! Secret names allow only `A-Za-z0-9/_+=.@-` (at most 512 characters), while
//! user ids are any text of up to 256 bytes, so the user part is
//! - the user id itself when it matches `[A-Za-z0-9_+=.@-]{1,128}` and does
//!   not start with `h-` (Cognito subs, e-mail addresses, most ids), else
//! - `h-` followed by the lowercase hex SHA-256 of the user id.
//!
//! The two forms cannot collide (direct ids never start with `h-`), the user
//! part never contains `/`, and service names never do either, so every
//! (user, service) has its own names. Names never end in `-` plus six
//! characters (they end in hex), which Secrets Manager could mistake
//! for the random suffix of an ARN. The prefix (e.g. `byok/`) is used as
//! given; it must itself be a valid name part.
//!
//! # Values and versions
//! The secret value is the JSON object `{"apiKey":"..."}`. A
//! [`SecretStore::put_secret`] for a new key creates its secret; one for a
//! stored key adds a version to that key's secret with `PutSecretValue`
//! (never re-creating or restoring it): the new version becomes `AWSCURRENT`, the one before it
//! `AWSPREVIOUS`, and both stay readable by their version ids. A
//! [`SecretRef`] is (secret ARN, version id) and is always read by exact
//! version, never by stage. The KMS key (if set) and the tags `byok:user` and
//! `byok:service` are set when the secret is created.
//!
//! The description is the JSON `{"byokUser":"...","byokService":"..."}`:
//! the owner in full, for rotation events and the sweep, which start from a
//! secret and must find its key record (the tag holds a hash for user ids
//! that tags cannot carry). Secrets made before the description existed
//! fall back to the tags when the user tag is not a hash.
//!
//! # Rotation
//! [`RotationStore`] maps its stages to `AWSCURRENT`, `AWSPREVIOUS`,
//! `AWSPENDING` and [`STAGED_LABEL`] (see [`super::rotation`]). Stages are
//! always read by version id and label, never by default version, and
//! `UpdateSecretVersionStage` moves `AWSPREVIOUS` along with `AWSCURRENT`.
//!
//! # Deletion
//! [`SecretDeletion::Force`] deletes at once; with a recovery window the
//! secret is only scheduled for deletion: reading it or adding a version
//! to it is then [`StoreError::SecretNotFound`]. It is never restored: a
//! key stored later for the same (user, service) gets a new secret.

use super::rotation::{ListedSecret, RotationStore, STAGED_LABEL, SecretVersions};
use super::{SecretStore, StoreError};
use crate::crypto;
use crate::domain::{ApiKey, SecretRef, Service, UserId};
use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, SdkError};
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType, Tag};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::time::Duration;
use zeroize::Zeroizing;

/// Tag naming the user a secret belongs to.
pub const USER_TAG: &str = "byok:user";
/// Tag naming the service a secret is for.
pub const SERVICE_TAG: &str = "byok:service";

/// Longest user id used verbatim in a secret name.
const MAX_DIRECT_USER_PART: usize = 128;
/// Longest tag value Secrets Manager accepts.
const MAX_TAG_VALUE: usize = 256;
/// Create / restore / put steps tried before a put gives up.
const MAX_PUT_STEPS: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// How [`SecretStore::delete_secret`] deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretDeletion {
    /// At once, without recovery (`ForceDeleteWithoutRecovery`).
    Force,
    /// Scheduled after this many days (7 to 30), restorable until then.
    RecoveryWindowDays(i64),
}

/// Where and how user secrets are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretsManagerOptions {
    /// Prepended to every secret name, e.g. `byok/`.
    pub prefix: String,
    /// The KMS key new secrets are encrypted with; the account's
    /// `aws/secretsmanager` key if `None`.
    pub kms_key_id: Option<String>,
    pub deletion: SecretDeletion,
}

/// User secrets in AWS Secrets Manager (layout in the module doc).
/// Cloning is cheap and shares the client.
#[derive(Clone, Debug)]
pub struct SecretsManagerStore {
    client: Client,
    options: SecretsManagerOptions,
}

impl SecretsManagerStore {
    pub fn new(client: Client, options: SecretsManagerOptions) -> Self {
        Self { client, options }
    }

    /// The name of a new secret of `user`'s `service`:
    /// `{prefix}{user-part}/{service}/{unique}`.
    pub fn secret_name(&self, user: &UserId, service: Service, unique: &str) -> String {
        format!(
            "{}{}/{service}/{unique}",
            self.options.prefix,
            user_part(user)
        )
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=.@-".contains(c)
}

/// `h-` and the hex SHA-256 of the user id.
fn hashed(user: &UserId) -> String {
    let digest = Sha256::digest(user.as_str().as_bytes());
    let mut out = String::with_capacity(2 + 2 * digest.len());
    out.push_str("h-");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The user's part of a secret name (see the module doc).
fn user_part(user: &UserId) -> String {
    let id = user.as_str();
    let direct = id.len() <= MAX_DIRECT_USER_PART
        && !id.starts_with("h-")
        && !id.is_empty()
        && id.chars().all(is_name_char);
    if direct { id.to_owned() } else { hashed(user) }
}

/// The `byok:user` tag value: the user id when tag values allow it as is
/// (conservatively: ASCII letters, digits, space and `_.:/=+-@`, at most
/// 256 characters), else the hashed form of the name.
fn user_tag(user: &UserId) -> String {
    let id = user.as_str();
    let ok = id.len() <= MAX_TAG_VALUE
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " _.:/=+-@".contains(c));
    if ok { id.to_owned() } else { hashed(user) }
}

/// Logs an SDK error with its full context and wraps it; the context goes to
/// the log only (it never holds a secret value: requests carrying one are
/// redacted by the SDK and the service never echoes them).
fn backend<E>(operation: &'static str, err: SdkError<E>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    tracing::warn!(operation, error = %DisplayErrorContext(&err), "Secrets Manager call failed");
    StoreError::backend(err)
}

/// `{"apiKey":"..."}` in a buffer that is wiped when dropped.
fn secret_value(key: &ApiKey) -> Result<Zeroizing<String>, StoreError> {
    #[derive(serde::Serialize)]
    struct Value<'a> {
        #[serde(rename = "apiKey")]
        api_key: &'a str,
    }
    // Room for the worst-case escaping, so the buffer never reallocates and
    // leaves no unwiped copy behind.
    let mut buf = Zeroizing::new(Vec::with_capacity(key.expose().len() * 6 + 16));
    serde_json::to_writer(
        &mut *buf,
        &Value {
            api_key: key.expose(),
        },
    )
    .map_err(StoreError::backend)?;
    let text = std::str::from_utf8(&buf).map_err(StoreError::backend)?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// A secret value as a key: JSON with a string `apiKey`, or the key itself as
/// plain text (surrounding whitespace trimmed).
fn parse_value(text: &str) -> Result<ApiKey, StoreError> {
    #[derive(serde::Deserialize)]
    struct Value {
        #[serde(rename = "apiKey")]
        api_key: ApiKey,
    }
    let key = if text.trim_start().starts_with('{') {
        serde_json::from_str::<Value>(text)
            .map_err(|_| {
                StoreError::Corrupt("the secret value is JSON without an apiKey string".to_owned())
            })?
            .api_key
    } else {
        ApiKey::new(text.trim())
    };
    if key.expose().is_empty() {
        return Err(StoreError::Corrupt("the secret value is empty".to_owned()));
    }
    Ok(key)
}

/// The key held by a `GetSecretValue` answer (string or UTF-8 binary value).
fn key_from_output(
    mut out: aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput,
) -> Result<ApiKey, StoreError> {
    let text = match (out.secret_string.take(), out.secret_binary.take()) {
        (Some(text), _) => Zeroizing::new(text),
        (None, Some(blob)) => {
            let bytes = Zeroizing::new(blob.into_inner());
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                StoreError::Corrupt("the binary secret value is not UTF-8 text".to_owned())
            })?;
            Zeroizing::new(text.to_owned())
        }
        (None, None) => {
            return Err(StoreError::Corrupt(
                "the secret version has no value".to_owned(),
            ));
        }
    };
    parse_value(&text)
}

/// What one step of [`SecretStore::put_secret`] does next.
enum Step {
    Create,
    Put,
    Restore,
}

impl SecretsManagerStore {
    async fn put_steps(
        &self,
        user: &UserId,
        service: Service,
        name: &str,
        token: &str,
        value: &str,
    ) -> Result<SecretRef, StoreError> {
        let mut step = Step::Create;
        let mut backoff = FIRST_BACKOFF;
        for _ in 0..MAX_PUT_STEPS {
            step = match step {
                Step::Create => {
                    let created = self
                        .client
                        .create_secret()
                        .name(name)
                        .client_request_token(token)
                        .secret_string(value)
                        .description(owner_description(user, service)?)
                        .set_kms_key_id(self.options.kms_key_id.clone())
                        .tags(Tag::builder().key(USER_TAG).value(user_tag(user)).build())
                        .tags(
                            Tag::builder()
                                .key(SERVICE_TAG)
                                .value(service.as_str())
                                .build(),
                        )
                        .send()
                        .await;
                    match created {
                        Ok(out) => return secret_ref(out.arn, out.version_id, token),
                        Err(err) => match err.as_service_error() {
                            Some(e) if e.is_resource_exists_exception() => Step::Put,
                            // "already scheduled for deletion"
                            Some(e) if e.is_invalid_request_exception() => Step::Restore,
                            _ => return Err(backend("CreateSecret", err)),
                        },
                    }
                }
                Step::Put => {
                    let put = self
                        .client
                        .put_secret_value()
                        .secret_id(name)
                        .client_request_token(token)
                        .secret_string(value)
                        .send()
                        .await;
                    match put {
                        Ok(out) => return secret_ref(out.arn, out.version_id, token),
                        Err(err) => match err.as_service_error() {
                            // Deleted since the create attempt: create it again.
                            Some(e) if e.is_resource_not_found_exception() => Step::Create,
                            // "marked for deletion"
                            Some(e) if e.is_invalid_request_exception() => Step::Restore,
                            _ => return Err(backend("PutSecretValue", err)),
                        },
                    }
                }
                Step::Restore => {
                    let restored = self.client.restore_secret().secret_id(name).send().await;
                    match restored {
                        Ok(_) => Step::Put,
                        Err(err) => match err.as_service_error() {
                            // A forced deletion still in progress: the name
                            // frees up shortly; create again after a pause.
                            Some(e)
                                if e.is_resource_not_found_exception()
                                    || e.is_invalid_request_exception() =>
                            {
                                tokio::time::sleep(backoff).await;
                                backoff *= 2;
                                Step::Create
                            }
                            _ => return Err(backend("RestoreSecret", err)),
                        },
                    }
                }
            };
        }
        Err(StoreError::backend(std::io::Error::other(
            "the secret kept changing between create, restore and put; gave up",
        )))
    }
}

impl SecretsManagerStore {
    /// Adds `value` as the current version of the existing secret `id`;
    /// [`StoreError::SecretNotFound`] if it is gone or scheduled for
    /// deletion (it is not restored: its key was deleted).
    async fn put_version(
        &self,
        id: &str,
        token: &str,
        value: &str,
    ) -> Result<SecretRef, StoreError> {
        let put = self
            .client
            .put_secret_value()
            .secret_id(id)
            .client_request_token(token)
            .secret_string(value)
            .send()
            .await;
        match put {
            Ok(out) => secret_ref(out.arn, out.version_id, token),
            Err(err) => match err.as_service_error() {
                Some(e) if e.is_resource_not_found_exception() => Err(StoreError::SecretNotFound),
                // "marked for deletion"
                Some(e) if e.is_invalid_request_exception() => Err(StoreError::SecretNotFound),
                _ => Err(backend("PutSecretValue", err)),
            },
        }
    }
}

fn secret_ref(
    arn: Option<String>,
    version: Option<String>,
    token: &str,
) -> Result<SecretRef, StoreError> {
    let id = arn.ok_or_else(|| {
        StoreError::backend(std::io::Error::other(
            "Secrets Manager returned no ARN for the secret",
        ))
    })?;
    Ok(SecretRef {
        id,
        // The version id is the request token; use the answer's when present.
        version: version.unwrap_or_else(|| token.to_owned()),
    })
}

#[async_trait]
impl SecretStore for SecretsManagerStore {
    async fn put_secret(
        &self,
        user: &UserId,
        service: Service,
        key: &ApiKey,
        into: Option<&SecretRef>,
    ) -> Result<SecretRef, StoreError> {
        // 32 hex characters: a valid ClientRequestToken, and the new version id.
        let token = crypto::random_hex::<16>().map_err(StoreError::backend)?;
        let value = secret_value(key)?;
        match into {
            Some(secret) => self.put_version(&secret.id, &token, &value).await,
            None => {
                let unique = crypto::random_hex::<16>().map_err(StoreError::backend)?;
                let name = self.secret_name(user, service, &unique);
                self.put_steps(user, service, &name, &token, &value).await
            }
        }
    }

    async fn get_secret(&self, secret: &SecretRef) -> Result<ApiKey, StoreError> {
        // Version ids are 32 to 64 characters; no other can name a version.
        if secret.id.is_empty() || !(32..=64).contains(&secret.version.len()) {
            return Err(StoreError::SecretNotFound);
        }
        let got = self
            .client
            .get_secret_value()
            .secret_id(&secret.id)
            .version_id(&secret.version)
            .send()
            .await;
        match got {
            Ok(out) => key_from_output(out),
            Err(err) => match err.as_service_error() {
                // The secret or that version does not exist, or the secret is
                // scheduled for deletion ("marked for deletion").
                Some(e) if e.is_resource_not_found_exception() => Err(StoreError::SecretNotFound),
                Some(e) if e.is_invalid_request_exception() => Err(StoreError::SecretNotFound),
                _ => Err(backend("GetSecretValue", err)),
            },
        }
    }

    async fn delete_secret(&self, secret: &SecretRef) -> Result<(), StoreError> {
        let request = self.client.delete_secret().secret_id(&secret.id);
        let request = match self.options.deletion {
            SecretDeletion::Force => request.force_delete_without_recovery(true),
            SecretDeletion::RecoveryWindowDays(days) => request.recovery_window_in_days(days),
        };
        match request.send().await {
            Ok(_) => Ok(()),
            Err(err) => match err.as_service_error() {
                Some(e) if e.is_resource_not_found_exception() => Ok(()),
                // Already scheduled for deletion.
                Some(e) if e.is_invalid_request_exception() => Ok(()),
                _ => Err(backend("DeleteSecret", err)),
            },
        }
    }
}

/// Reads the `AWSCURRENT` version of an operator (team) secret, whose value
/// is either the key as plain text or JSON with an `apiKey` string. Called at
/// cold start; [`StoreError::SecretNotFound`] if the secret does not exist.
pub async fn read_team_secret(client: &Client, arn: &str) -> Result<ApiKey, StoreError> {
    let key = key_from_output(current_version(client, arn).await?)?;
    if crate::domain::is_plausible_team_key(&key) {
        Ok(key)
    } else {
        Err(StoreError::Corrupt(format!(
            "the secret's value {}",
            crate::domain::TeamCredentialError::NotAKey
        )))
    }
}

/// Reads a team secret for a service whose credentials are of `kind`: an
/// API key as [`read_team_secret`] reads it; a structured credential as its
/// JSON document (checked as a user's upload is, `token_url` being the one
/// service accounts must name), kept in its stored form.
pub async fn read_team_credential(
    client: &Client,
    arn: &str,
    kind: crate::domain::CredentialKind,
    token_url: &str,
) -> Result<ApiKey, StoreError> {
    if kind == crate::domain::CredentialKind::ApiKey {
        return read_team_secret(client, arn).await;
    }
    let mut out = current_version(client, arn).await?;
    let text = Zeroizing::new(out.secret_string.take().unwrap_or_default());
    crate::domain::team_credential(kind, &text, token_url)
        .map_err(|problem| StoreError::Corrupt(format!("the secret's value {problem}")))
}

/// The `AWSCURRENT` version of `arn`.
async fn current_version(
    client: &Client,
    arn: &str,
) -> Result<aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput, StoreError> {
    let got = client
        .get_secret_value()
        .secret_id(arn)
        // Always name the stage: never rely on the default version.
        .version_stage("AWSCURRENT")
        .send()
        .await;
    got.map_err(|err| match err.as_service_error() {
        Some(e) if e.is_resource_not_found_exception() => StoreError::SecretNotFound,
        _ => backend("GetSecretValue", err),
    })
}

/// The owner as the secret's description (see the module doc).
fn owner_description(user: &UserId, service: Service) -> Result<String, StoreError> {
    serde_json::to_string(&serde_json::json!({
        "byokUser": user.as_str(),
        "byokService": service.as_str(),
    }))
    .map_err(StoreError::backend)
}

/// The owner a secret names: its description, else its tags when the user
/// tag is the id itself rather than a hash.
fn owner_of(description: Option<&str>, tags: &[Tag]) -> Option<(UserId, Service)> {
    #[derive(serde::Deserialize)]
    struct Owner {
        #[serde(rename = "byokUser")]
        user: String,
        #[serde(rename = "byokService")]
        service: String,
    }
    if let Some(owner) = description.and_then(|d| serde_json::from_str::<Owner>(d).ok()) {
        return Some((UserId::new(owner.user)?, owner.service.parse().ok()?));
    }
    let tag = |key: &str| {
        tags.iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
    };
    let user = tag(USER_TAG)?;
    let looks_hashed = user.len() == 66 && user.starts_with("h-");
    if looks_hashed {
        return None;
    }
    Some((UserId::new(user)?, tag(SERVICE_TAG)?.parse().ok()?))
}

fn aws_time(t: &aws_smithy_types::DateTime) -> Option<crate::domain::Timestamp> {
    time::OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(t.secs()) * 1_000_000_000 + i128::from(t.subsec_nanos()),
    )
    .ok()
}

/// Whether an SDK error says the secret, version or label is not there (or
/// the secret is scheduled for deletion).
fn is_not_found<E>(err: &SdkError<E>) -> bool
where
    E: aws_sdk_secretsmanager::error::ProvideErrorMetadata,
{
    matches!(
        err.as_service_error().and_then(|e| e.code()),
        Some("ResourceNotFoundException" | "InvalidRequestException")
    )
}

impl SecretsManagerStore {
    /// Moves `label` off `from` (and onto `to`, if given).
    async fn move_label(
        &self,
        secret_id: &str,
        label: &str,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<(), StoreError> {
        self.client
            .update_secret_version_stage()
            .secret_id(secret_id)
            .version_stage(label)
            .set_remove_from_version_id(from.map(str::to_owned))
            .set_move_to_version_id(to.map(str::to_owned))
            .send()
            .await
            .map_err(|e| backend("UpdateSecretVersionStage", e))?;
        Ok(())
    }
}

#[async_trait]
impl RotationStore for SecretsManagerStore {
    async fn stage(&self, secret_id: &str, key: &ApiKey) -> Result<SecretRef, StoreError> {
        let token = crypto::random_hex::<16>().map_err(StoreError::backend)?;
        let value = secret_value(key)?;
        let put = self
            .client
            .put_secret_value()
            .secret_id(secret_id)
            .client_request_token(&token)
            .secret_string(value.as_str())
            .version_stages(STAGED_LABEL)
            .send()
            .await;
        match put {
            Ok(out) => secret_ref(out.arn, out.version_id, &token),
            Err(err) if is_not_found(&err) => Err(StoreError::SecretNotFound),
            Err(err) => Err(backend("PutSecretValue", err)),
        }
    }

    async fn describe(&self, secret_id: &str) -> Result<SecretVersions, StoreError> {
        let out = match self
            .client
            .describe_secret()
            .secret_id(secret_id)
            .send()
            .await
        {
            Ok(out) => out,
            Err(err) if is_not_found(&err) => return Err(StoreError::SecretNotFound),
            Err(err) => return Err(backend("DescribeSecret", err)),
        };
        if out.deleted_date.is_some() {
            return Err(StoreError::SecretNotFound);
        }
        let (user, service) = owner_of(out.description.as_deref(), out.tags())
            .ok_or_else(|| StoreError::Corrupt("the secret names no byok owner".to_owned()))?;
        let with = |label: &str| {
            out.version_ids_to_stages.as_ref().and_then(|versions| {
                versions
                    .iter()
                    .find(|(_, stages)| stages.iter().any(|s| s == label))
                    .map(|(version, _)| version.clone())
            })
        };
        Ok(SecretVersions {
            id: out.arn.clone().unwrap_or_else(|| secret_id.to_owned()),
            user,
            service,
            current: with("AWSCURRENT"),
            pending: with("AWSPENDING"),
            staged: with(STAGED_LABEL),
        })
    }

    async fn put_pending(
        &self,
        secret_id: &str,
        token: &str,
        key: &ApiKey,
    ) -> Result<(), StoreError> {
        match self.get_pending(secret_id, token).await {
            Ok(_) => return Ok(()),
            Err(StoreError::SecretNotFound) | Err(StoreError::Corrupt(_)) => {}
            Err(err) => return Err(err),
        }
        let value = secret_value(key)?;
        self.client
            .put_secret_value()
            .secret_id(secret_id)
            .client_request_token(token)
            .secret_string(value.as_str())
            .version_stages("AWSPENDING")
            .send()
            .await
            .map_err(|e| backend("PutSecretValue", e))?;
        Ok(())
    }

    async fn get_pending(&self, secret_id: &str, token: &str) -> Result<ApiKey, StoreError> {
        let got = self
            .client
            .get_secret_value()
            .secret_id(secret_id)
            .version_id(token)
            .version_stage("AWSPENDING")
            .send()
            .await;
        match got {
            Ok(out) => key_from_output(out),
            Err(err) if is_not_found(&err) => Err(StoreError::SecretNotFound),
            Err(err) => Err(backend("GetSecretValue", err)),
        }
    }

    async fn promote(&self, secret_id: &str, token: &str) -> Result<(), StoreError> {
        let versions = self.describe(secret_id).await?;
        if versions.current.as_deref() != Some(token) {
            if versions.pending.as_deref() != Some(token) {
                return Err(StoreError::SecretNotFound);
            }
            // AWSPREVIOUS follows: the old current becomes previous.
            self.move_label(
                secret_id,
                "AWSCURRENT",
                versions.current.as_deref(),
                Some(token),
            )
            .await?;
        }
        if let Some(pending) = versions.pending.as_deref() {
            self.move_label(secret_id, "AWSPENDING", Some(pending), None)
                .await?;
        }
        if let Some(staged) = versions.staged.as_deref() {
            self.move_label(secret_id, STAGED_LABEL, Some(staged), None)
                .await?;
        }
        Ok(())
    }

    async fn discard(
        &self,
        secret_id: &str,
        token: Option<&str>,
        staged: bool,
    ) -> Result<(), StoreError> {
        let versions = self.describe(secret_id).await?;
        if let Some(pending) = versions.pending.as_deref()
            && token.is_none_or(|t| t == pending)
        {
            self.move_label(secret_id, "AWSPENDING", Some(pending), None)
                .await?;
        }
        if staged && let Some(staged) = versions.staged.as_deref() {
            self.move_label(secret_id, STAGED_LABEL, Some(staged), None)
                .await?;
        }
        Ok(())
    }

    async fn list_secrets(&self) -> Result<Vec<ListedSecret>, StoreError> {
        let mut listed = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let request = self
                .client
                .list_secrets()
                .max_results(100)
                .set_next_token(next.take());
            let request = if self.options.prefix.is_empty() {
                request
            } else {
                request.filters(
                    Filter::builder()
                        .key(FilterNameStringType::Name)
                        .values(&self.options.prefix)
                        .build(),
                )
            };
            let out = request
                .send()
                .await
                .map_err(|e| backend("ListSecrets", e))?;
            for secret in out.secret_list() {
                let (Some(arn), Some(name)) = (secret.arn(), secret.name()) else {
                    continue;
                };
                // The name filter is a prefix match, case-insensitive: check exactly.
                if !name.starts_with(&self.options.prefix) || secret.deleted_date.is_some() {
                    continue;
                }
                listed.push(ListedSecret {
                    id: arn.to_owned(),
                    owner: owner_of(secret.description(), secret.tags()),
                    changed_at: secret
                        .last_changed_date()
                        .or(secret.created_date())
                        .and_then(aws_time),
                });
            }
            match out.next_token {
                Some(token) if !token.is_empty() => next = Some(token),
                _ => break,
            }
        }
        Ok(listed)
    }

    async fn delete_by_id(&self, secret_id: &str) -> Result<(), StoreError> {
        let request = self.client.delete_secret().secret_id(secret_id);
        let request = match self.options.deletion {
            SecretDeletion::Force => request.force_delete_without_recovery(true),
            SecretDeletion::RecoveryWindowDays(days) => request.recovery_window_in_days(days),
        };
        match request.send().await {
            Ok(_) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(backend("DeleteSecret", err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(prefix: &str) -> SecretsManagerStore {
        let config = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
            .build();
        SecretsManagerStore::new(
            Client::from_conf(config),
            SecretsManagerOptions {
                prefix: prefix.to_owned(),
                kms_key_id: None,
                deletion: SecretDeletion::Force,
            },
        )
    }

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    fn valid_name(name: &str) -> bool {
        (1..=512).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c))
    }

    #[test]
    fn names_are_valid_and_distinct() {
        let s = store("byok/");
        let sub = "3f2a1b4c-0000-4000-8000-123456789abc";
        assert_eq!(
            s.secret_name(&user(sub), Service::OpenAi, "0a1b"),
            format!("byok/{sub}/openai/0a1b")
        );
        assert_eq!(
            s.secret_name(&user("a.b+c=d@e_f-g"), Service::Groq, "0a1b"),
            "byok/a.b+c=d@e_f-g/groq/0a1b"
        );
        let long = "x".repeat(UserId::MAX_LEN);
        let ids = [
            "a/b",
            "a",
            "b",
            "üser",
            "user",
            "a b",
            &long,
            &"y".repeat(128),
            &"y".repeat(129),
            "h-x",
            "x",
        ];
        let hashed_a_slash_b = user_part(&user("a/b"));
        assert!(hashed_a_slash_b.starts_with("h-") && hashed_a_slash_b.len() == 66);
        let mut names = std::collections::HashSet::new();
        for id in ids.iter().copied().chain([hashed_a_slash_b.as_str()]) {
            let unique = "0123456789abcdef0123456789abcdef";
            let name = s.secret_name(&user(id), Service::Anthropic, unique);
            assert!(valid_name(&name), "{id}: {name}");
            assert!(names.insert(name.clone()), "{id}: duplicate {name}");
            assert!(name.ends_with(&format!("/anthropic/{unique}")));
            assert_eq!(name.matches('/').count(), 3, "{name}");
        }
        assert_eq!(user_part(&user(&"y".repeat(128))), "y".repeat(128));
        assert!(user_part(&user(&"y".repeat(129))).starts_with("h-"));
    }

    #[test]
    fn tag_values_are_the_id_or_its_hash() {
        assert_eq!(user_tag(&user("a b:c/d")), "a b:c/d");
        assert!(user_tag(&user("üser")).starts_with("h-"));
        assert!(user_tag(&user("x#y")).starts_with("h-"));
        assert!(user_tag(&user(&"z".repeat(256))).len() == 256);
    }

    #[test]
    fn values_are_json_and_plain_keys_are_accepted() {
        let key = ApiKey::new("sk-\"quoted\"\\ü\u{1}");
        let value = secret_value(&key).unwrap();
        let json: serde_json::Value = serde_json::from_str(&value).unwrap();
        assert_eq!(json["apiKey"], key.expose());
        assert_eq!(parse_value(&value).unwrap(), key);
        assert_eq!(
            parse_value("  sk-plain-0123456789\n").unwrap(),
            ApiKey::new("sk-plain-0123456789")
        );
        for bad in ["{\"key\":\"sk-CANARY\"}", "{\"apiKey\":1}", "{", "   ", ""] {
            let err = parse_value(bad).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "{bad}: {err:?}");
            assert!(!err.to_string().contains("CANARY"));
        }
    }

    #[tokio::test]
    async fn refs_that_cannot_name_a_version_are_not_found_without_a_call() {
        // No endpoint or credentials are configured: any call would fail otherwise.
        let s = store("byok/");
        for (id, version) in [("", "0".repeat(32)), ("x", "v1".to_owned())] {
            let r = SecretRef {
                id: id.to_owned(),
                version,
            };
            assert!(matches!(
                s.get_secret(&r).await,
                Err(StoreError::SecretNotFound)
            ));
        }
    }
}
