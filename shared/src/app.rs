//! The composition root every binary shares: configuration in, stores and
//! handler state out. SDK clients, keys and files are opened here once, at
//! cold start, never per request.

use crate::audit::AuditLog;
use crate::auth::{AuthError, Authenticator, JwtSecret, TokenVerifier};
use crate::budget::BudgetService;
use crate::catalog::{Catalog, CatalogError};
use crate::completion::{CompletionService, RequestLimits, UpstreamClient};
use crate::config::{Config, ConfigError, StoreKind};
use crate::crypto::CryptoError;
#[cfg(feature = "local")]
use crate::crypto::MasterKey;
use crate::events::{
    EventBridgeSink, EventSink, JsonLinesSink, LogSink, WebhookSecret, WebhookSink,
};
use crate::http::AppState;
use crate::keys::KeyService;
use crate::resolve::Resolver;
use crate::resolve::TeamCredentials;
use crate::rotation::{InProcessTrigger, RotationService, RotationTrigger, SecretsManagerTrigger};
use crate::store::cache::CachedSecretStore;
use crate::store::dynamo::{DynamoMetadataStore, ensure_table};
#[cfg(feature = "local")]
use crate::store::embedded::EmbeddedStore;
use crate::store::secrets_manager::{
    SecretDeletion, SecretsManagerOptions, SecretsManagerStore, read_team_credential,
    read_team_secret,
};
use crate::store::{
    ApiTokenStore, AuditStore, BudgetStore, MetadataStore, RateLimitStore, RotationStore,
    SecretStore, StoreError, UsageStore,
};
use crate::usage::{UsageLedger, UsageReports};
use crate::validate::ValidationService;
use secrecy::ExposeSecret;
use std::sync::Arc;

/// Why a process could not start. Messages name the setting, never its value.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("master key: {0}")]
    MasterKey(#[from] CryptoError),
    #[error("JWT secret: {0}")]
    JwtSecret(#[from] AuthError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0} is not supported by this version")]
    Unsupported(&'static str),
    #[error("model catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("{0} must be set")]
    Missing(&'static str),
    #[error("cannot read the model catalog file {path}: {source}")]
    CatalogFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
}

/// The binary a state is built for. Each Lambda function builds only what
/// its routes use: team secrets are read by the functions that call
/// upstream with them, the alert webhook's secret by those that publish
/// events, a token verifier by those that serve HTTP routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    /// `/api/keys…`, `/api/providers`, `/api/audit`, usage, budgets.
    Keys,
    /// `/api/user-settings`.
    Settings,
    /// `/api/resolve`, `/api/keys/validate`.
    Validate,
    /// `/v1/models`.
    Models,
    /// `/v1/chat/completions`.
    Completion,
    /// Secrets Manager rotation steps and the scheduled sweep.
    Rotation,
    /// byok-local: every route in one process.
    Local,
}

/// What a function does with the operator's team keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TeamKeyUse {
    /// Calls upstream with them: reads every team secret at start.
    Read,
    /// Only tells which path would serve: knows which exist, reads none.
    Declare,
    /// Never looks at them.
    Ignore,
}

impl Function {
    fn team_keys(self) -> TeamKeyUse {
        match self {
            Self::Completion | Self::Validate | Self::Local => TeamKeyUse::Read,
            Self::Models => TeamKeyUse::Declare,
            Self::Keys | Self::Settings | Self::Rotation => TeamKeyUse::Ignore,
        }
    }

    /// Publishes key or budget events (rotation outcomes, staged keys,
    /// budget thresholds), so needs the alert webhook.
    fn publishes_events(self) -> bool {
        match self {
            Self::Keys | Self::Completion | Self::Rotation | Self::Local => true,
            Self::Settings | Self::Validate | Self::Models => false,
        }
    }

    /// Serves HTTP routes, so verifies bearer tokens (when configured).
    fn verifies_tokens(self) -> bool {
        !matches!(self, Self::Rotation)
    }

    /// Every request calls upstream: the upstream client is built at start
    /// rather than by the first request.
    fn always_calls_upstream(self) -> bool {
        matches!(self, Self::Completion)
    }
}

/// The metadata and secret stores chosen by `BYOK_STORE`, and the team
/// credentials (plain variables, or on AWS the operator's secrets).
pub struct Stores {
    /// What they were opened for.
    pub function: Function,
    pub meta: Arc<dyn MetadataStore>,
    pub secrets: Arc<dyn SecretStore>,
    /// Validation rate counters (the metadata store's backend).
    pub rate_limits: Arc<dyn RateLimitStore>,
    /// The audit log (the metadata store's backend).
    pub audit: Arc<dyn AuditStore>,
    /// The usage ledger (the metadata store's backend).
    pub usage: Arc<dyn UsageStore>,
    /// Budgets (the metadata store's backend).
    pub budgets: Arc<dyn BudgetStore>,
    /// Personal API keys (the metadata store's backend).
    pub tokens: Arc<dyn ApiTokenStore>,
    /// Staging labels for rotation (the secret store's backend, uncached).
    pub rotation: Arc<dyn RotationStore>,
    /// Where key and budget events go.
    pub events: Arc<dyn EventSink>,
    /// The alert webhook's signing secret read from Secrets Manager (AWS):
    /// `Some(Err(()))` when it was named but could not be read.
    pub webhook_secret: Option<Result<WebhookSecret, ()>>,
    /// Secrets Manager, to start rotations with `RotateSecret` (AWS only).
    pub secrets_manager: Option<aws_sdk_secretsmanager::Client>,
    /// Shared with whatever retries unreadable team secrets.
    pub team: Arc<TeamCredentials>,
    /// The team's Bedrock access through the process's own credentials
    /// (`BYOK_TEAM_BEDROCK=role`), for functions that call upstream.
    pub team_bedrock: Option<crate::completion::TeamBedrock>,
}

/// How long the first retry of an unreadable team secret waits; each next
/// one waits twice as long, up to [`TEAM_SECRET_RETRY_MAX`].
const TEAM_SECRET_RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(5);
const TEAM_SECRET_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(300);

/// Reads the team secrets at once (concurrently) into `team`. One that
/// cannot be read (missing, deleted, access denied, unreachable) does not
/// stop the process: it is logged with its variable and ARN, the process
/// serves without that team key (requests it would pay for answer
/// `no_credential`), and a background task retries it with backoff.
async fn read_team_secrets(
    client: &aws_sdk_secretsmanager::Client,
    team: &Arc<TeamCredentials>,
    arns: &std::collections::BTreeMap<crate::domain::Service, String>,
    token_url: &str,
) {
    let read = |client, service: crate::domain::Service, arn| async move {
        read_team_credential(client, arn, service.provider().credential, token_url).await
    };
    let reads = arns.iter().map(|(service, arn)| async move {
        (*service, arn.clone(), read(client, *service, arn).await)
    });
    let mut missing = Vec::new();
    for (service, arn, read) in futures_util::future::join_all(reads).await {
        match read {
            Ok(key) => team.insert(service, key),
            Err(err) => {
                tracing::error!(
                    variable = service.team_secret_env(),
                    arn = arn.as_str(),
                    error = %err,
                    "team secret not readable: serving without this team key, retrying in the background"
                );
                missing.push((service, arn));
            }
        }
    }
    if missing.is_empty() {
        return;
    }
    let (client, team, token_url) = (client.clone(), Arc::clone(team), token_url.to_owned());
    tokio::spawn(async move {
        let mut wait = TEAM_SECRET_RETRY_FIRST;
        while !missing.is_empty() {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(TEAM_SECRET_RETRY_MAX);
            let mut still = Vec::new();
            for (service, arn) in missing {
                let kind = service.provider().credential;
                match read_team_credential(&client, &arn, kind, &token_url).await {
                    Ok(key) => {
                        team.insert(service, key);
                        tracing::info!(
                            variable = service.team_secret_env(),
                            "team secret read: this team key serves again"
                        );
                    }
                    Err(err) => {
                        tracing::warn!(
                            variable = service.team_secret_env(),
                            arn = arn.as_str(),
                            error = %err,
                            "team secret still not readable"
                        );
                        still.push((service, arn));
                    }
                }
            }
            missing = still;
        }
    });
}

/// Opens the configured backend with every part (byok-local, tests).
pub async fn open_stores(config: &Config) -> Result<Stores, InitError> {
    open_stores_for(config, Function::Local).await
}

/// Opens the configured backend with the parts `function` uses; secrets are
/// read through the version-aware cache either way.
pub async fn open_stores_for(config: &Config, function: Function) -> Result<Stores, InitError> {
    let mut stores = match config.store {
        #[cfg(not(feature = "local"))]
        StoreKind::Embedded => return Err(InitError::Unsupported("BYOK_STORE=embedded")),
        #[cfg(feature = "local")]
        StoreKind::Embedded => {
            let master = match &config.master_key {
                Some(b64) => MasterKey::from_base64(b64.expose_secret())?,
                None => {
                    // Finish a `master-key rotate` that a crash interrupted.
                    crate::store::rekey::recover_interrupted(&config.data_dir)?;
                    MasterKey::load_or_create(&config.data_dir)?
                }
            };
            let store = Arc::new(EmbeddedStore::open(&config.data_dir, master)?);
            if function == Function::Local {
                // byok-local serves until stopped, reads its ledger in
                // process and flushes it at exit.
                store.defer_ledger_commits();
            }
            Stores {
                function,
                meta: store.clone(),
                rate_limits: store.clone(),
                audit: store.clone(),
                usage: store.clone(),
                budgets: store.clone(),
                tokens: store.clone(),
                rotation: store.clone(),
                secrets: store,
                events: Arc::new(LogSink),
                webhook_secret: None,
                secrets_manager: None,
                team: Arc::new(config.team.clone()),
                team_bedrock: None,
            }
        }
        StoreKind::Aws => {
            let table = config
                .table_name
                .clone()
                .ok_or(InitError::Missing("BYOK_TABLE_NAME"))?;
            let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .load()
                .await;
            let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
            if config.create_table {
                ensure_table(&dynamo, &table).await?;
            }
            let sm = aws_sdk_secretsmanager::Client::new(&sdk);
            let team = Arc::new(config.team.clone());
            match function.team_keys() {
                TeamKeyUse::Read => {
                    read_team_secrets(&sm, &team, &config.team_secret_arns, &config.gcp_token_url)
                        .await;
                }
                TeamKeyUse::Declare => {
                    for service in config.team_secret_arns.keys() {
                        team.declare(*service);
                    }
                }
                TeamKeyUse::Ignore => {}
            }
            // An unreadable webhook secret turns the webhook off (unsigned
            // alerts would be refused by the receiver), never the function.
            let webhook_secret = match &config.alert_webhook_secret_arn {
                Some(_) if !function.publishes_events() => None,
                Some(arn) => match read_team_secret(&sm, arn).await {
                    Ok(secret) => Some(Ok(WebhookSecret::new(secret.expose().to_owned()))),
                    Err(err) => {
                        tracing::error!(
                            variable = "BYOK_ALERT_WEBHOOK_SECRET_ARN",
                            arn = arn.as_str(),
                            error = %err,
                            "alert webhook secret not readable: alerts go to the event bus only"
                        );
                        Some(Err(()))
                    }
                },
                None => None,
            };
            let deletion = match config.secret_recovery_days {
                0 => SecretDeletion::Force,
                days => SecretDeletion::RecoveryWindowDays(i64::from(days)),
            };
            let options = SecretsManagerOptions {
                prefix: config.secret_prefix.clone(),
                kms_key_id: config.kms_key_id.clone(),
                deletion,
            };
            let meta = Arc::new(DynamoMetadataStore::new(dynamo, table));
            let secrets = Arc::new(SecretsManagerStore::new(sm.clone(), options));
            let events: Arc<dyn EventSink> = match &config.rotation.event_bus {
                Some(bus) => Arc::new(EventBridgeSink::new(
                    aws_sdk_eventbridge::Client::new(&sdk),
                    bus.clone(),
                )),
                None => Arc::new(LogSink),
            };
            Stores {
                function,
                webhook_secret,
                meta: meta.clone(),
                rate_limits: meta.clone(),
                usage: meta.clone(),
                budgets: meta.clone(),
                tokens: meta.clone(),
                audit: meta,
                rotation: secrets.clone(),
                secrets,
                events,
                secrets_manager: Some(sm),
                team,
                team_bedrock: None,
            }
        }
    };
    if let Some(region) = &config.team_bedrock_region {
        match function.team_keys() {
            TeamKeyUse::Read => {
                let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(region.clone()))
                    .load()
                    .await;
                if let Some(provider) = sdk.credentials_provider() {
                    stores.team.declare(crate::domain::Service::Bedrock);
                    stores.team_bedrock = Some(crate::completion::TeamBedrock {
                        provider,
                        region: region.clone(),
                    });
                }
            }
            TeamKeyUse::Declare => stores.team.declare(crate::domain::Service::Bedrock),
            TeamKeyUse::Ignore => {}
        }
    }
    if let Some(path) = &config.rotation.events_file {
        stores.events = Arc::new(JsonLinesSink::new(path.clone()));
    }
    if let Some(url) = config
        .alert_webhook_url
        .as_ref()
        .filter(|_| function.publishes_events())
    {
        let secret = match stores.webhook_secret.take() {
            Some(read) => read.ok(),
            None => config
                .alert_webhook_secret
                .as_ref()
                .map(|s| WebhookSecret::new(s.expose_secret().to_owned())),
        };
        let unreadable = config.alert_webhook_secret_arn.is_some() && secret.is_none();
        if !unreadable {
            stores.events = Arc::new(WebhookSink::new(stores.events, url.clone(), secret)?);
        }
    }
    stores.secrets = Arc::new(CachedSecretStore::new(
        stores.secrets,
        config.secret_cache_capacity,
        config.secret_cache_ttl,
    ));
    Ok(stores)
}

/// The handler state over `stores`, verifying tokens with `verifier` when
/// the request did not come through an API Gateway authorizer.
pub fn state(
    config: &Config,
    stores: Stores,
    verifier: Option<TokenVerifier>,
) -> Result<AppState, InitError> {
    let resolver = Arc::new(
        Resolver::new(
            stores.meta.clone(),
            stores.team,
            Arc::new(config.upstreams.clone()),
        )
        .with_user_keys_via_gateway(config.keys.user_keys_via_gateway),
    );
    let client = UpstreamClient::deferred(&config.upstream_timeouts)
        .with_gcp_token_url(&config.gcp_token_url);
    if stores.function.always_calls_upstream() {
        client.warm()?;
    }
    let audit = AuditLog::new(stores.audit);
    let validation = ValidationService::new(
        resolver.clone(),
        stores.meta.clone(),
        stores.secrets.clone(),
        stores.rate_limits.clone(),
        audit.clone(),
        client.clone(),
        config.validate_timeout,
        config.validate_per_minute,
    );
    let catalog = Arc::new(catalog(config)?);
    let budgets = Arc::new(
        BudgetService::new(
            stores.budgets,
            catalog.clone(),
            stores.events.clone(),
            audit.clone(),
        )
        .with_reservations(config.default_reserve_tokens, config.reservation_ttl),
    );
    let ledger = UsageLedger::new(
        stores.usage.clone(),
        catalog.clone(),
        config.usage_retention,
    )
    .with_budgets(budgets.clone());
    let completions = CompletionService::new(
        resolver.clone(),
        stores.secrets.clone(),
        client,
        config.fallback_models.clone(),
        Arc::new(ledger),
        config.upstream_timeouts,
    )
    .with_limits(RequestLimits::new(
        stores.rate_limits.clone(),
        config.requests_per_minute,
        config.team_requests_per_minute,
    ))
    .with_budgets(budgets.clone())
    .with_key_policy(crate::completion::KeyPolicy {
        strategy: config.keys.strategy,
        last_used_granularity: config.keys.last_used_granularity,
        team_fallback_on_user_key_failure: config.keys.team_fallback_on_user_key_failure,
    })
    .with_audit(audit.clone())
    .with_team_bedrock(stores.team_bedrock.clone());
    let validation = Arc::new(validation);
    let rotation = Arc::new(RotationService::new(
        stores.meta.clone(),
        stores.secrets.clone(),
        stores.rotation,
        validation.clone(),
        audit.clone(),
        stores.events,
    ));
    let rotation_trigger: Arc<dyn RotationTrigger> =
        match (&config.rotation.function_arn, stores.secrets_manager) {
            (Some(arn), Some(client)) => Arc::new(SecretsManagerTrigger::new(client, arn.clone())),
            _ => Arc::new(InProcessTrigger::new(rotation.clone())),
        };
    let tokens = Arc::new(
        crate::tokens::ApiTokenService::new(stores.tokens, audit.clone()).with_limits(
            config.keys.max_api_tokens,
            config.keys.last_used_granularity,
        ),
    );
    Ok(AppState::new(crate::http::Services {
        tokens,
        keys: Arc::new(
            KeyService::new(stores.meta, stores.secrets)
                .with_audit(audit.clone())
                .with_max_keys(config.keys.max_per_service)
                .with_gcp_token_url(&config.gcp_token_url),
        ),
        validation,
        audit: Arc::new(audit),
        rotation,
        rotation_trigger,
        rotation_age: config.rotation.sweep.rotation_age,
        resolver,
        auth: Arc::new(
            Authenticator::new(verifier)
                .with_tenant_claim(config.tenant_claim.clone())
                .with_admin_claim(config.admin_claim.clone()),
        ),
        catalog,
        completions: Arc::new(completions),
        usage: Arc::new(UsageReports::new(stores.usage)),
        budgets,
        cors: config.cors.clone(),
    }))
}

/// The operator's catalog file (`BYOK_CATALOG_FILE`), else the shipped one.
pub fn catalog(config: &Config) -> Result<Catalog, InitError> {
    match &config.catalog_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| InitError::CatalogFile {
                path: path.clone(),
                source,
            })?;
            Ok(Catalog::from_json(&text)?)
        }
        None => Ok(Catalog::builtin()?),
    }
}

/// A verifier for the configured JWT settings; `None` when only authorizer
/// claims are trusted (a Lambda behind an API Gateway JWT authorizer).
async fn verifier(
    config: &Config,
    secret: Option<JwtSecret>,
) -> Result<Option<TokenVerifier>, InitError> {
    let (issuer, audience) = (config.jwt_issuer.clone(), config.jwt_audience.clone());
    let jwks = match &config.jwks_url {
        Some(url) => {
            let jwks = Arc::new(crate::auth::jwks::Jwks::new(url.clone())?);
            // Fetched now; a failure is retried when the first token names a key.
            if let Err(err) = jwks.refresh().await {
                tracing::warn!(error = %err, "JWKS not loaded at start");
            }
            Some(jwks)
        }
        None => None,
    };
    let verifier = match (secret, jwks) {
        (Some(secret), jwks) => {
            let verifier = TokenVerifier::new(secret, issuer, audience);
            Some(match jwks {
                Some(jwks) => verifier.with_jwks(jwks),
                None => verifier,
            })
        }
        (None, Some(jwks)) => Some(TokenVerifier::for_jwks(jwks, issuer, audience)),
        (None, None) => None,
    };
    Ok(verifier.map(|v| v.with_max_ttl(config.jwt_max_ttl_secs)))
}

/// The state of a Lambda function, with the parts `function` uses: tokens
/// are verified only if `BYOK_JWT_SECRET` or `BYOK_JWKS_URL` is set;
/// otherwise the authorizer's claims are required.
pub async fn lambda_state(config: &Config, function: Function) -> Result<AppState, InitError> {
    let verifier = if function.verifies_tokens() {
        let secret = config
            .jwt_secret
            .as_ref()
            .map(|s| JwtSecret::from_text(s.expose_secret()))
            .transpose()?;
        verifier(config, secret).await?
    } else {
        None
    };
    state(config, open_stores_for(config, function).await?, verifier)
}

/// The JWT secret byok-local signs and verifies with: `BYOK_JWT_SECRET`, else
/// one generated once into the data directory.
pub fn local_jwt_secret(config: &Config) -> Result<JwtSecret, InitError> {
    Ok(match &config.jwt_secret {
        Some(s) => JwtSecret::from_text(s.expose_secret())?,
        None => JwtSecret::load_or_create(&config.data_dir)?,
    })
}

/// The state of byok-local: embedded (or configured) store and HS256 tokens.
pub async fn local_state(config: &Config, secret: JwtSecret) -> Result<AppState, InitError> {
    let verifier = verifier(config, Some(secret)).await?;
    state(config, open_stores(config).await?, verifier)
}
