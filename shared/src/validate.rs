//! Key validation: checks a credential against its provider with the
//! provider's cheapest authenticated call (`GET {base}/models`), under a
//! per-user rate limit shared by every instance, records the outcome on the
//! stored key's metadata and in the audit log. No HTTP-server types here:
//! [`crate::http`] only adapts.
//!
//! What is checked, first match wins: a key the caller gives (`apiKey` with
//! `service`; never stored), else the caller's stored key for `service`, else
//! the credential resolution picks for `model` (user or team key).
//!
//! Order of a check: input and resolution first (their 4xx never count
//! toward the limit), then one hit of the limiter, then the provider call.
//! A provider that does not answer, answers 5xx or 429 makes the key
//! `unreachable`, never `invalid`: only 401/403 mean `invalid`. One that
//! answers anything else (a 404 for a base URL that is not the API's)
//! was reached but could not tell: `unverified`.

use crate::audit::AuditLog;
use crate::domain::key::check_key_format;
use crate::domain::{
    ApiKey, BaseUrlError, KeyFormatError, KeyId, KeyRecord, ModelId, Service, Timestamp,
    UserBaseUrl, UserId, ValidationResult, now,
};
use crate::resolve::{BaseUrlSource, CredentialSource, ResolutionPath, ResolveError, Resolver};
use crate::store::{
    AuditAction, Expected, MetadataStore, RateAction, RateDecision, RateLimitStore, SecretStore,
    StoreError,
};
use crate::upstream::{UpstreamClient, UpstreamError, UpstreamErrorKind, check_key};
use std::sync::Arc;
use std::time::Duration;

/// The limiter's window: validations are counted per user per minute.
pub const WINDOW: Duration = Duration::from_secs(60);

/// What the caller asks to check (see the module doc for the precedence).
#[derive(Debug)]
pub enum ValidateRequest {
    /// A key given in the request, for `service`; `base_url` only for the gateway.
    Key {
        service: Service,
        api_key: ApiKey,
        base_url: Option<String>,
    },
    /// The caller's stored key `id` for this service (its primary key
    /// without an id).
    Stored(Service, Option<KeyId>),
    /// Whatever credential resolution picks for this model.
    Model(String),
}

/// A key the provider accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validated {
    /// The service whose key was checked (also the upstream called).
    pub service: Service,
    /// The resolution path of the credential: `user-gateway`/`user-provider`
    /// for a stored key, the resolved path for a model, `None` for a key
    /// given in the request.
    pub path: Option<ResolutionPath>,
    /// Host (and non-default port) of the base URL called.
    pub base_url_host: String,
    pub checked_at: Timestamp,
    /// The stored key checked, if one was.
    pub key_id: Option<KeyId>,
    /// Checks the caller has left this minute, and the limit (`None`
    /// without a limit).
    pub checks_left: Option<(u32, u32)>,
}

/// Why a validation was refused or did not say `valid`.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("give apiKey (with service), service or model")]
    NothingToValidate,
    #[error("service is required with apiKey")]
    ServiceRequired,
    #[error("baseUrl can only be given with apiKey")]
    BaseUrlWithoutKey,
    #[error(transparent)]
    KeyFormat(#[from] KeyFormatError),
    #[error(transparent)]
    BaseUrl(#[from] BaseUrlError),
    #[error("baseUrl can only be set for the gateway service, not {0}")]
    BaseUrlNotAccepted(Service),
    /// The caller asked about a stored key they do not have.
    #[error("no {0} key is stored")]
    NoStoredKey(Service),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The caller's validations for this window are used up.
    #[error("too many key validations; try again in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The provider refused the key (401/403) or could not tell (the kind says).
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the stored key could not be read")]
    Secret(#[source] StoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks keys against their providers. Built once per process.
pub struct ValidationService {
    resolver: Arc<Resolver>,
    meta: Arc<dyn MetadataStore>,
    secrets: Arc<dyn SecretStore>,
    limits: Arc<dyn RateLimitStore>,
    audit: AuditLog,
    client: UpstreamClient,
    timeout: Duration,
    per_minute: u32,
}

/// Where one check goes and with which key.
struct Target {
    service: Service,
    path: Option<ResolutionPath>,
    base_url: String,
    user_url: bool,
    key: ApiKey,
    /// The stored record to mark with the outcome, if a stored key is checked.
    record: Option<KeyRecord>,
}

impl ValidationService {
    #[expect(
        clippy::too_many_arguments,
        reason = "the composition root wires each once"
    )]
    pub fn new(
        resolver: Arc<Resolver>,
        meta: Arc<dyn MetadataStore>,
        secrets: Arc<dyn SecretStore>,
        limits: Arc<dyn RateLimitStore>,
        audit: AuditLog,
        client: UpstreamClient,
        timeout: Duration,
        per_minute: u32,
    ) -> Self {
        Self {
            resolver,
            meta,
            secrets,
            limits,
            audit,
            client,
            timeout,
            per_minute,
        }
    }

    /// Runs one validation for `user`. `Ok` only when the provider accepted
    /// the key; [`ValidateError::Upstream`] carries every other answer.
    pub async fn validate(
        &self,
        user: &UserId,
        request: ValidateRequest,
        request_id: &str,
    ) -> Result<Validated, ValidateError> {
        let target = self.target(user, request).await?;
        let checks_left = self.take_hit(user).await?;
        let (outcome, result) = self.check(&target).await;
        match &target.record {
            Some(record) => {
                self.mark(record, result).await;
                self.audit
                    .record_key(
                        user,
                        AuditAction::Validated,
                        target.service,
                        &record.id,
                        Some(result.as_str()),
                        request_id,
                    )
                    .await;
            }
            None => {
                self.audit
                    .record(
                        user,
                        AuditAction::Validated,
                        target.service,
                        Some(result.as_str()),
                        request_id,
                    )
                    .await;
            }
        }
        outcome?;
        Ok(Validated {
            service: target.service,
            path: target.path,
            base_url_host: crate::domain::base_url::url_host(&target.base_url).unwrap_or_default(),
            checked_at: now(),
            key_id: target.record.as_ref().map(|r| r.id.clone()),
            checks_left: (self.per_minute > 0).then_some((checks_left, self.per_minute)),
        })
    }

    /// Checks a key about to be saved (`POST /api/keys` with `validate:
    /// true`), counting toward the caller's limit and audited. `None` when
    /// it was not checked: the limit is used up, the limiter cannot be read,
    /// or the input is refused (the save then refuses it too). A provider
    /// outage is `unreachable`, never `invalid`.
    pub async fn check_before_save(
        &self,
        user: &UserId,
        service: Service,
        api_key: &ApiKey,
        base_url: Option<String>,
        request_id: &str,
    ) -> Option<ValidationResult> {
        let request = ValidateRequest::Key {
            service,
            api_key: api_key.clone(),
            base_url,
        };
        let target = match self.target(user, request).await {
            Ok(target) => target,
            Err(err) => {
                tracing::debug!(service = %service, error = %err, "check before save skipped");
                return None;
            }
        };
        match self.hit(user).await {
            Ok(None) => {}
            Ok(Some(_)) => {
                tracing::info!(service = %service, "check before save skipped: rate limited");
                return None;
            }
            Err(err) => {
                tracing::warn!(service = %service, error = %err, "check before save skipped: limiter failed");
                return None;
            }
        }
        let (_, result) = self.check(&target).await;
        self.audit
            .record(
                user,
                AuditAction::Validated,
                service,
                Some(result.as_str()),
                request_id,
            )
            .await;
        Some(result)
    }

    /// Checks the input and resolves what to call, before any limit is counted.
    async fn target(
        &self,
        user: &UserId,
        request: ValidateRequest,
    ) -> Result<Target, ValidateError> {
        match request {
            ValidateRequest::Key {
                service,
                api_key,
                base_url,
            } => {
                check_key_format(service, &api_key)?;
                let (base_url, user_url) = match base_url {
                    Some(_) if !service.accepts_base_url() => {
                        return Err(ValidateError::BaseUrlNotAccepted(service));
                    }
                    Some(raw) => (UserBaseUrl::parse(&raw)?.as_str().to_owned(), true),
                    None => (
                        self.resolver.upstreams().base_url(service).to_owned(),
                        false,
                    ),
                };
                Ok(Target {
                    service,
                    path: None,
                    base_url,
                    user_url,
                    key: api_key,
                    record: None,
                })
            }
            ValidateRequest::Stored(service, id) => {
                let record = match id {
                    Some(id) => self.meta.get_key(user, service, &id).await?,
                    None => self.meta.load_user(user).await?.key(service).cloned(),
                }
                .ok_or(ValidateError::NoStoredKey(service))?;
                self.stored_target(record).await
            }
            ValidateRequest::Model(model) => {
                let model = ModelId::parse(&model).map_err(ResolveError::from)?;
                let snapshot = self.resolver.snapshot(user).await?;
                let resolution = crate::resolve::resolve(
                    &snapshot,
                    &model,
                    self.resolver.team(),
                    self.resolver.upstreams(),
                )?;
                let (key, record) = match &resolution.credential {
                    CredentialSource::User(choice) => {
                        let key = self
                            .secrets
                            .get_secret(&choice.secret)
                            .await
                            .map_err(ValidateError::Secret)?;
                        let record = snapshot
                            .keys_of(resolution.provider)
                            .into_iter()
                            .find(|k| k.id == choice.id)
                            .cloned();
                        (key, record)
                    }
                    CredentialSource::Team(service) => {
                        let key = self
                            .resolver
                            .team()
                            .get(*service)
                            .ok_or(ResolveError::NoCredential)?;
                        (key, None)
                    }
                };
                Ok(Target {
                    service: resolution.provider,
                    path: Some(resolution.path),
                    user_url: resolution.base_url_source == BaseUrlSource::User,
                    base_url: resolution.base_url,
                    key,
                    record,
                })
            }
        }
    }

    /// The check of a stored key: its own base URL (gateway) or the operator's.
    async fn stored_target(&self, record: KeyRecord) -> Result<Target, ValidateError> {
        let key = self
            .secrets
            .get_secret(&record.secret)
            .await
            .map_err(ValidateError::Secret)?;
        let (base_url, user_url) = match &record.base_url {
            Some(url) => (url.clone(), true),
            None => (
                self.resolver
                    .upstreams()
                    .base_url(record.service)
                    .to_owned(),
                false,
            ),
        };
        let path = if record.service == Service::Gateway {
            ResolutionPath::UserGateway
        } else {
            ResolutionPath::UserProvider
        };
        Ok(Target {
            service: record.service,
            path: Some(path),
            base_url,
            user_url,
            key,
            record: Some(record),
        })
    }

    /// One hit of the per-user key-check limiter (validations, and the
    /// staging of a rotation key, which is checked too): `Ok(None)` if
    /// allowed, else the seconds to wait.
    pub(crate) async fn hit(&self, user: &UserId) -> Result<Option<u64>, StoreError> {
        let decision = self.decision(user).await?;
        Ok((!decision.allowed).then(|| decision.retry_after_secs()))
    }

    async fn decision(&self, user: &UserId) -> Result<RateDecision, StoreError> {
        self.limits
            .hit(user, RateAction::Validate, self.per_minute, WINDOW, now())
            .await
    }

    /// One hit for a validation: the checks left in this window, or
    /// `RateLimited`.
    async fn take_hit(&self, user: &UserId) -> Result<u32, ValidateError> {
        let decision = self.decision(user).await?;
        if decision.allowed {
            return Ok(decision.remaining);
        }
        let retry_after_secs = decision.retry_after_secs();
        tracing::info!(retry_after_secs, "validation rate limited");
        Err(ValidateError::RateLimited { retry_after_secs })
    }

    /// Calls the provider once.
    async fn check(&self, target: &Target) -> (Result<(), UpstreamError>, ValidationResult) {
        // A service account is checked by its token exchange, then with the
        // access token; an API key as it is.
        let prepared = tokio::time::timeout(
            self.timeout,
            self.client
                .call_credential(target.service, &target.base_url, &target.key),
        )
        .await
        .unwrap_or_else(|_| Err(UpstreamError::timed_out(target.service, self.timeout)));
        let outcome = match (prepared, self.client.for_source(target.user_url)) {
            // An AWS access key signs its check instead of being sent.
            (
                Ok(crate::upstream::CallCredential {
                    aws: Some(aws),
                    base_url,
                    ..
                }),
                Ok(client),
            ) => crate::upstream::check_aws_key(client, &base_url, &aws, self.timeout).await,
            (Ok(prepared), Ok(client)) => {
                check_key(
                    client,
                    target.service,
                    &prepared.base_url,
                    &prepared.key,
                    self.timeout,
                )
                .await
            }
            (Err(err), _) => Err(err),
            (_, Err(err)) => Err(UpstreamError::from_transport(target.service, &err)),
        };
        let result = match &outcome {
            Ok(()) => ValidationResult::Valid,
            Err(e) if e.kind == UpstreamErrorKind::Auth => ValidationResult::Invalid,
            Err(e) if matches!(e.kind, UpstreamErrorKind::Rejected(_)) => {
                ValidationResult::Unverified
            }
            Err(_) => ValidationResult::Unreachable,
        };
        match &outcome {
            Ok(()) => {
                tracing::info!(service = %target.service, result = result.as_str(), "key validated")
            }
            Err(e) => {
                tracing::info!(service = %target.service, result = result.as_str(), error = %e, "key validated")
            }
        }
        (outcome, result)
    }

    /// Checks `key` for `service` against the provider (at the user's own
    /// base URL if given, else the operator's), outside any rate limit: for
    /// operator jobs (rotation tests, the sweep), never for a user request.
    pub async fn probe(
        &self,
        service: Service,
        key: &ApiKey,
        user_base_url: Option<&str>,
    ) -> ValidationResult {
        let (base_url, user_url) = match user_base_url {
            Some(url) => (url.to_owned(), true),
            None => (
                self.resolver.upstreams().base_url(service).to_owned(),
                false,
            ),
        };
        let target = Target {
            service,
            path: None,
            base_url,
            user_url,
            key: key.clone(),
            record: None,
        };
        self.check(&target).await.1
    }

    /// Writes the outcome onto `record` if nobody changed it meanwhile (a
    /// concurrent change wins). The written record, if written.
    pub async fn mark(&self, record: &KeyRecord, result: ValidationResult) -> Option<KeyRecord> {
        let marked = KeyRecord {
            last_validated_at: Some(now()),
            last_validation: Some(result),
            revision: record.revision + 1,
            ..record.clone()
        };
        match self
            .meta
            .put_key(&marked, Expected::Revision(record.revision))
            .await
        {
            Ok(()) => Some(marked),
            Err(StoreError::Conflict) => {
                tracing::debug!(service = %record.service, "validation result not stored: the key changed meanwhile");
                None
            }
            Err(err) => {
                tracing::warn!(service = %record.service, error = %err, "validation result not stored");
                None
            }
        }
    }
}

#[async_trait::async_trait]
impl crate::rotation::KeyChecker for ValidationService {
    async fn hit(&self, user: &UserId) -> Result<Option<u64>, StoreError> {
        ValidationService::hit(self, user).await
    }

    async fn probe(
        &self,
        service: Service,
        key: &ApiKey,
        user_base_url: Option<&str>,
    ) -> ValidationResult {
        ValidationService::probe(self, service, key, user_base_url).await
    }

    async fn mark(&self, record: &KeyRecord, result: ValidationResult) -> Option<KeyRecord> {
        ValidationService::mark(self, record, result).await
    }
}
