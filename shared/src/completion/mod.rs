//! Chat completions: for one request, pick the credential and upstream
//! (resolution, then the operator's fallback chain), call the upstream in
//! its wire format, and hand back a whole JSON body or a stream of OpenAI SSE
//! bytes. A failure before the first byte is an error (and may fall back to
//! the next model); after it, the stream ends with an error event. No
//! HTTP-server types here: [`crate::http`] only adapts.
//!
//! The warm path makes one metadata read (the user's snapshot) and no secret
//! store call (the version-aware cache answers); the upstream client is
//! built once; pass-through chunks are forwarded without re-serialising.

mod estimate;
mod limits;
mod relay;
mod split_keys;
mod usage;

pub use crate::upstream::{
    NoPublicAddress, PublicOnlyResolver, UpstreamClient, UpstreamError, UpstreamErrorKind,
};
pub use limits::{RateStatus, RequestLimits};
pub use usage::{LogUsageSink, Outcome, RequestContext, UsageRecord, UsageSink, log_record};
use usage::{PendingWrites, UsageMeter};

use crate::budget::{BudgetError, BudgetService, BudgetStatus};
pub use crate::domain::KeyStrategy;
use crate::domain::{ApiKey, KeyId, ModelId, Service, UserId, WireApi};
use crate::providers::raw_object::{JsonStats, RawObject};
use crate::providers::{anthropic, openai};
use crate::resolve::{
    BaseUrlSource, CredentialSource, Resolution, ResolutionPath, ResolveError, Resolver, choose,
};
use crate::store::{KeyMark, SecretStore, StoreError, UserSnapshot};
use crate::upstream::{self, UpstreamTimeouts};
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use relay::{Decoded, Decoder, Relay};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest request body accepted on `/v1/chat/completions`.
pub const BODY_LIMIT: usize = 20 * 1024 * 1024;

/// Which credential and upstream served (or failed) a request; the
/// `x-byok-path` / `x-byok-provider` headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub path: ResolutionPath,
    pub provider: Service,
    /// Canonical `provider/model`.
    pub model: String,
    /// True when the model came from the fallback chain.
    pub fallback: bool,
    /// The user's stored key that served (or failed), on a user path.
    pub key_id: Option<KeyId>,
    /// Sent through the team gateway with the user's key in the request.
    pub via_gateway: bool,
}

/// What happens when a user's key fails before the first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPolicy {
    pub strategy: KeyStrategy,
    /// A key's `lastUsedAt` is written at most this often.
    pub last_used_granularity: Duration,
    /// After every user key of the resolved service failed, try the team
    /// credential (with the user's consent; budgets and limits apply).
    pub team_fallback_on_user_key_failure: bool,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self {
            strategy: KeyStrategy::Priority,
            last_used_granularity: Duration::from_secs(300),
            team_fallback_on_user_key_failure: false,
        }
    }
}

/// A rate-limited key without `Retry-After` cools down this long.
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
/// Longest cooldown taken from a `Retry-After`.
const MAX_COOLDOWN: Duration = Duration::from_secs(3600);

/// The answer's body.
pub enum CompletionBody {
    /// A `chat.completion` JSON document, and the write of its usage record,
    /// already running: send the document, then await `recorded` before
    /// ending the response (so on Lambda it completes inside the invocation,
    /// while the client already has the whole document). `None` only
    /// outside a Tokio runtime (the record then goes to the log alone).
    Json {
        json: Bytes,
        recorded: Option<tokio::task::JoinHandle<()>>,
    },
    /// `text/event-stream` bytes, ending with `data: [DONE]`.
    Stream(BoxStream<'static, Bytes>),
}

/// A successful start: the route, the body, and the request limit that
/// applied (for the `x-ratelimit-*` headers).
pub struct Completion {
    pub route: Route,
    pub body: CompletionBody,
    pub rate: Option<RateStatus>,
    /// The budget that binds first, on a team path with a budget.
    pub budget: Option<BudgetStatus>,
}

/// Why a completion failed before its first byte.
#[derive(Debug, thiserror::Error)]
pub enum CompletionError {
    /// The request body is not a usable chat request (the message names the field).
    #[error("{0}")]
    InvalidRequest(String),
    /// The model's provider does not offer what was asked (embeddings).
    #[error("{0}")]
    UnsupportedModel(String),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The stored secret could not be read.
    #[error("the stored key could not be read")]
    Secret(#[source] StoreError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A per-user request limit is used up for this window.
    #[error(
        "too many completion requests: the limit of {limit} a minute is used up; \
         try again in {retry_after_secs} s"
    )]
    RateLimited { limit: u32, retry_after_secs: u64 },
    /// The request limiter's store could not be reached.
    #[error("the request limiter failed")]
    Limiter(#[source] StoreError),
    /// A paused budget would pass its limit (the message says which).
    #[error("{0}")]
    BudgetExceeded(String),
    /// The budgets' store could not be reached.
    #[error("the budget check failed")]
    Budget(#[source] BudgetError),
}

/// A failed completion, with the route it failed on when one was chosen.
#[derive(Debug)]
pub struct CompletionFailure {
    pub route: Option<Route>,
    pub error: CompletionError,
    /// The request limit that applied, when one did.
    pub rate: Option<RateStatus>,
}

impl From<CompletionError> for CompletionFailure {
    fn from(error: CompletionError) -> Self {
        Self {
            route: None,
            error,
            rate: None,
        }
    }
}

/// Serves chat completions. Built once per process.
pub struct CompletionService {
    resolver: Arc<Resolver>,
    secrets: Arc<dyn SecretStore>,
    client: UpstreamClient,
    fallback: Vec<ModelId>,
    usage: Arc<dyn UsageSink>,
    timeouts: UpstreamTimeouts,
    limits: RequestLimits,
    /// Budgets on team paths; `None`: none are enforced.
    budgets: Option<Arc<BudgetService>>,
    /// Usage writes no request awaits any more.
    pending: PendingWrites,
    keys: KeyPolicy,
    /// Turns taken among keys of equal priority (round robin).
    turn: std::sync::atomic::AtomicUsize,
    /// Where key failures (refused keys) are recorded.
    audit: Option<crate::audit::AuditLog>,
    /// The team's Bedrock access: the process's own credentials.
    team_bedrock: Option<TeamBedrock>,
}

/// The team path's Amazon Bedrock credentials: the process's own (a Lambda
/// function's role), from the AWS default credential chain, which caches
/// and refreshes them; and the region they call.
#[derive(Clone, Debug)]
pub struct TeamBedrock {
    pub provider: aws_credential_types::provider::SharedCredentialsProvider,
    pub region: String,
}

/// Which OpenAI-compatible endpoint a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    ChatCompletions,
    Embeddings,
    /// Anthropic's Messages API, forwarded as it is (`/v1/messages`).
    Messages,
}

impl Endpoint {
    /// The upstream path below the base URL.
    const fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Messages => "/messages",
        }
    }
}

/// The parts of a chat (or embeddings) request the gateway reads; the rest
/// passes through.
struct ChatRequest {
    endpoint: Endpoint,
    /// The client's bytes, fields located but not parsed.
    body: RawObject,
    model: ModelId,
    /// The model string as the client sent it (echoed in translated answers).
    requested: String,
    stream: bool,
    /// Estimated prompt tokens, for answers that come without usage.
    prompt_estimate: u64,
    /// `max_completion_tokens` (or `max_tokens`), when the request names it.
    max_output: Option<u64>,
}

impl CompletionService {
    pub fn new(
        resolver: Arc<Resolver>,
        secrets: Arc<dyn SecretStore>,
        client: UpstreamClient,
        fallback: Vec<ModelId>,
        usage: Arc<dyn UsageSink>,
        timeouts: UpstreamTimeouts,
    ) -> Self {
        Self {
            resolver,
            secrets,
            client,
            fallback,
            usage,
            timeouts,
            limits: RequestLimits::none(),
            budgets: None,
            pending: PendingWrites::default(),
            keys: KeyPolicy::default(),
            turn: std::sync::atomic::AtomicUsize::new(0),
            audit: None,
            team_bedrock: None,
        }
    }

    /// How several keys of one service are tried (priority order by default).
    #[must_use]
    pub fn with_key_policy(mut self, keys: KeyPolicy) -> Self {
        self.keys = keys;
        self
    }

    /// Records keys the provider refused during a completion.
    #[must_use]
    pub fn with_audit(mut self, audit: crate::audit::AuditLog) -> Self {
        self.audit = Some(audit);
        self
    }

    /// The team path serves Bedrock with these credentials.
    #[must_use]
    pub fn with_team_bedrock(mut self, team: Option<TeamBedrock>) -> Self {
        self.team_bedrock = team;
        self
    }

    /// Waits (at most `limit`) for usage writes that no request awaits any
    /// more (of clients that went away), then for the ledger to commit what
    /// it holds: call before the process exits. True when none is left.
    pub async fn settle_usage(&self, limit: Duration) -> bool {
        let settled = self.pending.settle(limit).await;
        tokio::time::timeout(limit, self.usage.flush())
            .await
            .is_ok()
            && settled
    }

    /// Per-user request limits (none by default).
    #[must_use]
    pub fn with_limits(mut self, limits: RequestLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Budgets checked on team paths (none by default).
    #[must_use]
    pub fn with_budgets(mut self, budgets: Arc<BudgetService>) -> Self {
        self.budgets = Some(budgets);
        self
    }

    /// The meter of one attempt on `route`.
    fn meter(
        &self,
        ctx: &RequestContext,
        started: Instant,
        request: &ChatRequest,
        route: &Route,
        attempt: u32,
    ) -> UsageMeter {
        UsageMeter::new(
            self.usage.clone(),
            self.pending.clone(),
            started,
            request.prompt_estimate,
            UsageRecord {
                user: ctx.user.clone(),
                tenant: ctx.tenant.clone(),
                request_id: ctx.request_id.clone(),
                attempt,
                provider: route.provider,
                path: route.path,
                model: route.model.clone(),
                fallback: route.fallback,
                stream: request.stream,
                outcome: Outcome::Completed,
                prompt_tokens: None,
                completion_tokens: None,
                estimated: false,
                time_to_first_byte: None,
                duration: Duration::ZERO,
                budget_holds: Vec::new(),
            },
        )
    }

    /// Reserves a team attempt's worst case on the caller's budgets (the
    /// meter carries the holds to settle). `Err` with the meter recorded
    /// when a budget refuses it.
    async fn reserve(
        &self,
        ctx: &RequestContext,
        request: &ChatRequest,
        route: &Route,
        meter: &mut Option<UsageMeter>,
    ) -> Result<Option<BudgetStatus>, CompletionError> {
        let Some(budgets) = &self.budgets else {
            return Ok(None);
        };
        let ask = budgets.ask(&route.model, request.prompt_estimate, request.max_output);
        match budgets.reserve(&ctx.user, ctx.tenant.as_ref(), ask).await {
            Ok(reservation) => {
                if let Some(meter) = meter.as_mut() {
                    meter.hold(reservation.holds);
                }
                Ok(reservation.status)
            }
            Err(BudgetError::Exceeded(message)) => {
                if let Some(meter) = meter.take() {
                    meter
                        .finish(
                            Outcome::OverBudget,
                            None,
                            &estimate::StreamedText::default(),
                            None,
                        )
                        .await;
                }
                Err(CompletionError::BudgetExceeded(message))
            }
            Err(err) => {
                if let Some(meter) = meter.take() {
                    meter.abandon();
                }
                Err(CompletionError::Budget(err))
            }
        }
    }

    /// Records a refused attempt and builds its failure.
    async fn refuse(
        &self,
        meter: UsageMeter,
        route: Route,
        refused: limits::Refused,
    ) -> CompletionFailure {
        meter
            .finish(
                Outcome::Limited,
                None,
                &estimate::StreamedText::default(),
                None,
            )
            .await;
        CompletionFailure {
            route: Some(route),
            error: CompletionError::RateLimited {
                limit: refused.status.limit,
                retry_after_secs: refused.retry_after_secs,
            },
            rate: Some(refused.status),
        }
    }

    /// Runs one chat completion for the caller with the raw JSON `body`.
    pub async fn complete(
        &self,
        ctx: &RequestContext,
        body: &[u8],
    ) -> Result<Completion, CompletionFailure> {
        self.complete_bytes(ctx, Bytes::copy_from_slice(body)).await
    }

    /// [`Self::complete`] on a body the caller already owns (no copy: the
    /// request is kept as these bytes, never as a JSON tree).
    pub async fn complete_bytes(
        &self,
        ctx: &RequestContext,
        body: Bytes,
    ) -> Result<Completion, CompletionFailure> {
        let request = parse_request(body)?;
        self.serve(ctx, request).await
    }

    /// Creates embeddings (`POST /v1/embeddings`) for the caller: the same
    /// resolution, consent, keys, limits, budgets and usage as a completion;
    /// the answer is the upstream's JSON.
    pub async fn embed_bytes(
        &self,
        ctx: &RequestContext,
        body: Bytes,
    ) -> Result<Completion, CompletionFailure> {
        let request = parse_embeddings_request(body)?;
        self.serve(ctx, request).await
    }

    /// Serves Anthropic's Messages API (`POST /v1/messages`) for the
    /// caller: the same resolution, keys, limits, budgets and ledger; the
    /// body goes to Anthropic (or the gateway's Anthropic-compatible
    /// endpoint) unchanged but for the model name, and the answer (JSON or
    /// Anthropic's event stream) comes back as the upstream sent it.
    pub async fn messages_bytes(
        &self,
        ctx: &RequestContext,
        body: Bytes,
    ) -> Result<Completion, CompletionFailure> {
        let request = parse_messages_request(body)?;
        self.serve(ctx, request).await
    }

    async fn serve(
        &self,
        ctx: &RequestContext,
        request: ChatRequest,
    ) -> Result<Completion, CompletionFailure> {
        let started = Instant::now();
        let user = &ctx.user;
        let snapshot = self
            .resolver
            .snapshot(user)
            .await
            .map_err(CompletionError::from)?;
        let primary = crate::resolve::resolve(
            &snapshot,
            &request.model,
            self.resolver.team(),
            self.resolver.upstreams(),
        )
        .map_err(CompletionError::from)?;
        // Request-scoped BYOK through the gateway is for OpenAI's wire.
        let primary = if request.endpoint == Endpoint::Messages {
            primary
        } else {
            self.resolver.routed(primary)
        };
        let candidates = self.candidates(primary, &request.model, &snapshot);

        // Every completion counts against the all-paths limit; a team path
        // also against the team limit, once per request (at its first team attempt).
        let mut rate = None;
        let mut budget = None;
        let mut team_counted = false;
        let mut first_failure: Option<CompletionFailure> = None;
        let last = candidates.len() - 1;
        for (i, (resolution, fallback)) in candidates.into_iter().enumerate() {
            let route = Route {
                path: resolution.path,
                provider: resolution.provider,
                model: resolution.model.clone(),
                fallback,
                key_id: resolution.key_id().cloned(),
                via_gateway: resolution.via_gateway,
            };
            let attempt = u32::try_from(i).unwrap_or(u32::MAX);
            let meter = self.meter(ctx, started, &request, &route, attempt);
            if i == 0 {
                match self.limits.admit(user, false).await {
                    Ok(Ok(status)) => rate = RateStatus::tighter(rate, status),
                    Ok(Err(refused)) => return Err(self.refuse(meter, route, refused).await),
                    Err(err) => {
                        meter.abandon();
                        return Err(CompletionError::Limiter(err).into());
                    }
                }
            }
            if route.path.is_team() && !team_counted {
                team_counted = true;
                match self.limits.admit(user, true).await {
                    Ok(Ok(status)) => rate = RateStatus::tighter(rate, status),
                    Ok(Err(refused)) => {
                        let failure = self.refuse(meter, route, refused).await;
                        if i == 0 {
                            return Err(failure);
                        }
                        // A fallback that would spend the team key past its limit is skipped.
                        first_failure.get_or_insert(failure);
                        continue;
                    }
                    Err(err) => {
                        meter.abandon();
                        return Err(CompletionError::Limiter(err).into());
                    }
                }
            }
            let mut meter = Some(meter);
            if route.path.is_team() {
                match self.reserve(ctx, &request, &route, &mut meter).await {
                    Ok(status) => budget = status.or(budget),
                    Err(error) => {
                        let over = matches!(error, CompletionError::BudgetExceeded(_));
                        let failure = CompletionFailure {
                            route: Some(route),
                            error,
                            rate,
                        };
                        if i == 0 || !over {
                            return Err(first_failure.unwrap_or(failure));
                        }
                        // A fallback the budget cannot pay for is skipped.
                        first_failure.get_or_insert(failure);
                        continue;
                    }
                }
            }
            let Some(meter) = meter else { continue };
            match self.attempt(&resolution, &request, meter).await {
                Ok(body) => {
                    self.note_used(user, &resolution);
                    return Ok(Completion {
                        route,
                        body,
                        rate,
                        budget,
                    });
                }
                Err((error, meter)) => {
                    let may_fall_back = match &error {
                        CompletionError::Upstream(e) => e.kind.may_fall_back(),
                        _ => false,
                    };
                    if let CompletionError::Upstream(e) = &error {
                        self.note_key_failure(user, &resolution, e, &ctx.request_id)
                            .await;
                    }
                    if let (Some(meter), CompletionError::Upstream(e)) = (meter, &error) {
                        (*meter)
                            .finish(
                                Outcome::Failed(e.kind.code()),
                                None,
                                &estimate::StreamedText::default(),
                                None,
                            )
                            .await;
                    }
                    if i != last && may_fall_back {
                        tracing::info!(
                            model = route.model.as_str(),
                            key_id = route.key_id.as_ref().map(KeyId::as_str),
                            error = %error,
                            "moving on to the next key or model"
                        );
                    }
                    let failure = CompletionFailure {
                        route: Some(route),
                        error,
                        rate,
                    };
                    if !may_fall_back {
                        return Err(first_failure.unwrap_or(failure));
                    }
                    first_failure.get_or_insert(failure);
                }
            }
        }
        Err(first_failure
            .unwrap_or_else(|| CompletionError::Resolve(ResolveError::NoCredential).into()))
    }

    /// The requested model's resolution with each of the user's keys in
    /// turn (then the team credential, if the operator opted in and the
    /// user consents), then each fallback model the user can reach (other
    /// than the requested one), likewise.
    fn candidates(
        &self,
        primary: Resolution,
        model: &ModelId,
        snapshot: &UserSnapshot,
    ) -> Vec<(Resolution, bool)> {
        let mut out = Vec::new();
        let user_path = !primary.keys.is_empty();
        self.push_keys(&mut out, primary, false);
        if user_path
            && self.keys.team_fallback_on_user_key_failure
            && snapshot.settings.allow_gateway_fallback
        {
            let without_keys = UserSnapshot {
                settings: snapshot.settings,
                keys: Vec::new(),
            };
            if let Ok(team) = choose(
                &without_keys,
                model,
                self.resolver.team(),
                self.resolver.upstreams(),
            ) {
                out.push((team, false));
            }
        }
        for next in self.fallback.iter().filter(|m| *m != model) {
            if let Ok(r) = choose(
                snapshot,
                next,
                self.resolver.team(),
                self.resolver.upstreams(),
            ) {
                self.push_keys(&mut out, self.resolver.routed(r), true);
            }
        }
        out
    }

    /// `resolution` once per key it may use (in order; taking turns among
    /// equal priorities with round robin), or once on a team path.
    fn push_keys(&self, out: &mut Vec<(Resolution, bool)>, resolution: Resolution, fallback: bool) {
        if resolution.keys.is_empty() {
            out.push((resolution, fallback));
            return;
        }
        let mut keys = resolution.keys.clone();
        if self.keys.strategy == KeyStrategy::RoundRobin {
            let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut start = 0;
            while start < keys.len() {
                let priority = keys[start].priority;
                let end = keys[start..]
                    .iter()
                    .position(|k| k.priority != priority)
                    .map_or(keys.len(), |n| start + n);
                keys[start..end].rotate_left(turn % (end - start));
                start = end;
            }
        }
        for key in &keys {
            out.push((
                resolution.with_key(key, self.resolver.upstreams()),
                fallback,
            ));
        }
    }

    /// A user's key served: its `lastUsedAt` is written if older than the
    /// granularity, off the request's path.
    fn note_used(&self, user: &UserId, resolution: &Resolution) {
        let CredentialSource::User(key) = &resolution.credential else {
            return;
        };
        let now = crate::domain::now();
        let granularity = time::Duration::try_from(self.keys.last_used_granularity)
            .unwrap_or(time::Duration::ZERO);
        if key.last_used_at.is_some_and(|t| now - t < granularity) {
            return;
        }
        let (meta, user, service, id) = (
            self.resolver.meta(),
            user.clone(),
            resolution.provider,
            key.id.clone(),
        );
        tokio::spawn(async move {
            if let Err(err) = meta.mark_key(&user, service, &id, KeyMark::Used(now)).await {
                tracing::debug!(%service, error = %err, "last use of a key not recorded");
            }
        });
    }

    /// A user's key failed before the first byte: a rate limit cools it
    /// down (for every instance: it is written to the store); a refusal
    /// marks it invalid and is audited.
    async fn note_key_failure(
        &self,
        user: &UserId,
        resolution: &Resolution,
        error: &UpstreamError,
        request_id: &str,
    ) {
        let CredentialSource::User(key) = &resolution.credential else {
            return;
        };
        let service = resolution.provider;
        let now = crate::domain::now();
        let mark = match error.kind {
            // Through the gateway, a refusal may be of the team gateway key.
            UpstreamErrorKind::Auth if resolution.via_gateway => return,
            UpstreamErrorKind::RateLimited => {
                let wait = error
                    .retry_after
                    .map_or(DEFAULT_COOLDOWN, Duration::from_secs)
                    .min(MAX_COOLDOWN);
                let until = now + time::Duration::try_from(wait).unwrap_or(time::Duration::ZERO);
                tracing::info!(%service, key_id = %key.id, cooldown_secs = wait.as_secs(), "key rate limited: cooling down");
                KeyMark::CoolDown(until)
            }
            UpstreamErrorKind::Auth => {
                tracing::warn!(%service, key_id = %key.id, "key refused by the provider: marked invalid");
                if let Some(audit) = &self.audit {
                    audit
                        .record_key(
                            user,
                            crate::store::AuditAction::Validated,
                            service,
                            &key.id,
                            Some(crate::domain::ValidationResult::Invalid.as_str()),
                            request_id,
                        )
                        .await;
                }
                KeyMark::Refused(now)
            }
            _ => return,
        };
        if let Err(err) = self
            .resolver
            .meta()
            .mark_key(user, service, &key.id, mark)
            .await
        {
            tracing::warn!(%service, error = %err, "key failure not recorded");
        }
    }

    /// The credential a resolution names: the cached user secret or the team key.
    async fn credential(&self, resolution: &Resolution) -> Result<ApiKey, CompletionError> {
        if let (CredentialSource::Team(service), Some(team)) =
            (&resolution.credential, &self.team_bedrock)
            && *service == Service::Bedrock
        {
            use aws_credential_types::provider::ProvideCredentials as _;
            let no_credential = || CompletionError::Resolve(ResolveError::NoCredential);
            let own = team.provider.provide_credentials().await.map_err(|err| {
                tracing::error!(error = %err, "the process's own AWS credentials are not available");
                no_credential()
            })?;
            return crate::domain::AwsCredentials::from_parts(
                own.access_key_id(),
                own.secret_access_key(),
                own.session_token(),
                &team.region,
            )
            .map(|aws| aws.to_secret())
            .ok_or_else(no_credential);
        }
        match &resolution.credential {
            CredentialSource::User(key) => self
                .secrets
                .get_secret(&key.secret)
                .await
                .map_err(CompletionError::Secret),
            CredentialSource::Team(service) => self
                .resolver
                .team()
                .get(*service)
                .ok_or(CompletionError::Resolve(ResolveError::NoCredential)),
        }
    }

    /// One upstream call. On failure the meter comes back (if the attempt
    /// reached the upstream) so the caller records it.
    async fn attempt(
        &self,
        resolution: &Resolution,
        request: &ChatRequest,
        mut meter: UsageMeter,
    ) -> Result<CompletionBody, (CompletionError, Option<Box<UsageMeter>>)> {
        let service = resolution.provider;
        let key = match self.credential(resolution).await {
            Ok(key) => key,
            Err(e) => {
                // Nothing was asked of the upstream: no usage to record.
                meter.abandon();
                return Err((e, None));
            }
        };
        // Through the team gateway: the user's key goes in the body, the
        // team gateway key authenticates.
        let (service, key, byok) = if resolution.via_gateway {
            let Some(team_key) = self.resolver.team().get(Service::Gateway) else {
                meter.abandon();
                return Err((CompletionError::Resolve(ResolveError::NoCredential), None));
            };
            (Service::Gateway, team_key, Some(key))
        } else {
            (service, key, None)
        };
        let (upstream_body, decoder) = match upstream_request(request, resolution, byok.as_ref()) {
            Ok(prepared) => prepared,
            Err(e) => {
                meter.abandon();
                return Err((e, None));
            }
        };
        // A service account becomes an access token (and its base URL is
        // filled in); an API key is used as it is.
        let prepared = match self
            .client
            .call_credential(service, &resolution.base_url, &key)
            .await
        {
            Ok(prepared) => prepared,
            Err(e) => {
                // The model was not asked: nothing to record.
                meter.abandon();
                return Err((CompletionError::Upstream(e), None));
            }
        };
        drop(key);
        let fail =
            |e: UpstreamError, meter| Err((CompletionError::Upstream(e), Some(Box::new(meter))));
        let client = match self
            .client
            .for_source(resolution.base_url_source == BaseUrlSource::User)
        {
            Ok(client) => client,
            Err(err) => return fail(UpstreamError::from_transport(service, &err), meter),
        };
        let call = match &prepared.aws {
            // Bedrock: the model goes in the path, and the request is signed.
            Some(aws) => {
                let action = if request.stream {
                    "converse-stream"
                } else {
                    "converse"
                };
                let model: String =
                    url::form_urlencoded::byte_serialize(resolution.upstream_model.as_bytes())
                        .collect();
                let url = format!(
                    "{}/model/{model}/{action}",
                    prepared.base_url.trim_end_matches('/')
                );
                let bytes = upstream_body.as_bytes().unwrap_or_default().to_vec();
                match upstream::build_signed(client, http::Method::POST, &url, aws, bytes) {
                    Ok(call) => call,
                    Err(e) => return fail(e, meter),
                }
            }
            None => upstream::build_post(
                client,
                service,
                &prepared.base_url,
                request.endpoint.path(),
                &prepared.key,
                upstream_body,
            ),
        };
        // A structured credential sent to the gateway: its secret parts too.
        let byok_parts: Vec<ApiKey> = byok
            .iter()
            .flat_map(crate::domain::credential_secret_parts)
            .collect();
        let scrubber = upstream::KeyScrubber::new(prepared.scrub.iter().chain(&byok_parts));
        drop(prepared);
        drop(byok);
        let mut decoder = decoder;
        if let Some(decoder) = decoder.as_mut() {
            decoder.guard_keys(&scrubber);
        }

        let deadline = tokio::time::Instant::now() + self.timeouts.first_byte;
        let response = match tokio::time::timeout_at(deadline, call.send()).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => return fail(UpstreamError::from_transport(service, &err), meter),
            Err(_) => {
                return fail(
                    UpstreamError::timed_out(service, self.timeouts.first_byte),
                    meter,
                );
            }
        };
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let body = upstream::read_limited(response, self.timeouts.idle).await;
            return fail(
                UpstreamError::from_status(service, status, &headers, &body, &scrubber),
                meter,
            );
        }

        let mut body = response.bytes_stream().boxed();
        let first = match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(Some(Err(err))) => return fail(UpstreamError::from_transport(service, &err), meter),
            Ok(None) if !request.stream => Bytes::new(),
            Ok(None) => {
                let e = UpstreamError::new(
                    UpstreamErrorKind::Unavailable,
                    format!(
                        "{} ended the stream before sending anything",
                        service.as_str()
                    ),
                );
                return fail(e, meter);
            }
            Err(_) => {
                return fail(
                    UpstreamError::timed_out(service, self.timeouts.first_byte),
                    meter,
                );
            }
        };
        meter.first_byte = Some(meter.started.elapsed());

        match decoder {
            Some(mut decoder) => {
                let decoded: Decoded = match decoder.feed(&first, &scrubber) {
                    Ok(decoded) => decoded,
                    Err((_, e)) => return fail(e, meter),
                };
                let relay = Relay::new(
                    body,
                    decoder,
                    decoded,
                    service,
                    self.timeouts.idle,
                    meter,
                    scrubber,
                );
                Ok(CompletionBody::Stream(relay.into_stream()))
            }
            None => {
                let whole = match read_rest(first, body, self.timeouts.idle).await {
                    Ok(whole) => whole,
                    Err(e) => return fail(upstream_read_error(service, e), meter),
                };
                let mut text = estimate::StreamedText::default();
                let wire = match request.endpoint {
                    // Forwarded as Anthropic sent it (or the gateway, in Anthropic's format).
                    Endpoint::Messages => None,
                    _ => Some(service.wire_api()),
                };
                let (json, usage) = match wire {
                    None => {
                        let usage = serde_json::from_slice::<Value>(&whole)
                            .ok()
                            .as_ref()
                            .and_then(anthropic::usage_of_response);
                        (whole, usage)
                    }
                    Some(WireApi::OpenAiCompatible) => {
                        let usage = serde_json::from_slice::<Value>(&whole)
                            .ok()
                            .as_ref()
                            .and_then(openai::usage_of_response);
                        (whole, usage)
                    }
                    Some(WireApi::BedrockConverse) => {
                        let Ok(parsed) = serde_json::from_slice::<Value>(&whole) else {
                            let e = UpstreamError::new(
                                UpstreamErrorKind::Unavailable,
                                "bedrock sent a response that is not JSON",
                            );
                            return fail(e, meter);
                        };
                        let message = crate::providers::bedrock::to_messages_response(
                            &parsed,
                            &uuid::Uuid::new_v4().simple().to_string(),
                        );
                        let translated = anthropic::from_messages_response(
                            &message,
                            &request.requested,
                            unix_now(),
                        );
                        let usage = openai::usage_of_response(&translated);
                        (Bytes::from(translated.to_string()), usage)
                    }
                    Some(WireApi::AnthropicMessages) => {
                        let Ok(parsed) = serde_json::from_slice::<Value>(&whole) else {
                            let e = UpstreamError::new(
                                UpstreamErrorKind::Unavailable,
                                "anthropic sent a response that is not JSON",
                            );
                            return fail(e, meter);
                        };
                        let translated = anthropic::from_messages_response(
                            &parsed,
                            &request.requested,
                            unix_now(),
                        );
                        let usage = openai::usage_of_response(&translated);
                        (Bytes::from(translated.to_string()), usage)
                    }
                };
                let json = scrubber.scrub_bytes(json);
                if usage.is_none() {
                    text.feed(&json);
                }
                let recorded = meter.finish_spawned(Outcome::Completed, usage, text, None);
                Ok(CompletionBody::Json { json, recorded })
            }
        }
    }
}

/// The upstream body and, for streams, the decoder of its answer. With
/// `byok` (through the team gateway) the body is OpenAI's, carrying the
/// user's key as the gateway's request-scoped BYOK option.
fn upstream_request(
    request: &ChatRequest,
    resolution: &Resolution,
    byok: Option<&ApiKey>,
) -> Result<(reqwest::Body, Option<Decoder>), CompletionError> {
    let wire = if byok.is_some() {
        WireApi::OpenAiCompatible
    } else {
        resolution.provider.wire_api()
    };
    if request.endpoint == Endpoint::Messages {
        return messages_request(request, resolution);
    }
    if request.endpoint == Endpoint::Embeddings && wire != WireApi::OpenAiCompatible {
        return Err(CompletionError::UnsupportedModel(format!(
            "{} has no embeddings endpoint; use a model of an OpenAI-compatible provider",
            resolution.provider.display_name()
        )));
    }
    match wire {
        WireApi::OpenAiCompatible => {
            // Each attempt rewrites its own copy of the field list; the
            // bytes are shared.
            let mut body = request.body.clone();
            let prepared =
                openai::prepare_request(&mut body, &resolution.upstream_model, request.stream);
            if let (Some(key), Some(slug)) = (byok, resolution.provider.gateway_byok_slug()) {
                openai::add_gateway_byok(&mut body, slug, key)
                    .map_err(|e| CompletionError::InvalidRequest(e.to_owned()))?;
            }
            let upstream_body =
                reqwest::Body::wrap(upstream::PiecewiseBody::new(body.to_segments()));
            let decoder = request
                .stream
                .then(|| Decoder::pass_through(openai::PassThrough::new(prepared)));
            Ok((upstream_body, decoder))
        }
        WireApi::AnthropicMessages | WireApi::BedrockConverse => {
            // Translation needs a tree: bounded, so a body of many tiny
            // values cannot cost twenty times its size.
            let values = request.body.stats().map_or(u64::MAX, |s| s.values);
            if values > MAX_TRANSLATED_VALUES {
                return Err(CompletionError::InvalidRequest(format!(
                    "the request holds {values} JSON values; at most {MAX_TRANSLATED_VALUES} are translated for {}",
                    resolution.provider.display_name()
                )));
            }
            let openai_body = request.body.to_value().map_err(|_| {
                CompletionError::InvalidRequest("request body is not valid JSON".into())
            })?;
            let translated = anthropic::to_messages_request(
                &openai_body,
                &resolution.upstream_model,
                request.stream,
            );
            let include_usage = anthropic::stream_include_usage(&openai_body);
            drop(openai_body);
            let translated =
                translated.map_err(|e| CompletionError::InvalidRequest(e.to_string()))?;
            let translator =
                anthropic::StreamTranslator::new(&request.requested, unix_now(), include_usage);
            if wire == WireApi::BedrockConverse {
                // Bedrock: the Anthropic request renamed to Converse's terms.
                let converse = crate::providers::bedrock::to_converse_request(&translated)
                    .map_err(|e| CompletionError::InvalidRequest(e.to_string()))?;
                let decoder = request.stream.then(|| {
                    Decoder::bedrock(translator, &uuid::Uuid::new_v4().simple().to_string())
                });
                return Ok((reqwest::Body::from(converse.to_string()), decoder));
            }
            let decoder = request.stream.then(|| Decoder::anthropic(translator));
            Ok((reqwest::Body::from(translated.to_string()), decoder))
        }
    }
}

/// Most JSON values a request may hold when it must be translated (a tree
/// is built): about 10–20 MB of tree at most.
const MAX_TRANSLATED_VALUES: u64 = 200_000;

/// Reads the request's JSON: an object with a string `model`, an array
/// `messages` and an optional boolean `stream`; everything else passes,
/// unparsed. No JSON tree is built.
fn parse_request(body: Bytes) -> Result<ChatRequest, CompletionError> {
    let invalid = |m: &str| CompletionError::InvalidRequest(m.to_owned());
    let body =
        RawObject::parse(body).map_err(|e| CompletionError::InvalidRequest(e.to_string()))?;
    let requested = match body.get::<String>("model") {
        Some(Ok(m)) if !m.trim().is_empty() => m,
        Some(_) => return Err(invalid("model must be a non-empty string")),
        None => return Err(invalid("model is required")),
    };
    let messages = body
        .raw("messages")
        .ok_or_else(|| invalid("messages is required"))?;
    let messages =
        JsonStats::of(messages).map_err(|_| invalid("messages must be a non-empty array"))?;
    let message_count = match messages.array_len {
        Some(n) if n > 0 => n,
        _ => return Err(invalid("messages must be a non-empty array")),
    };
    let stream = match body.get::<Option<bool>>("stream") {
        None | Some(Ok(None)) => false,
        Some(Ok(Some(b))) => b,
        Some(Err(_)) => return Err(invalid("stream must be a boolean")),
    };
    let model = ModelId::parse(&requested).map_err(|e| CompletionError::Resolve(e.into()))?;
    let prompt_estimate = estimate::prompt_tokens(messages.string_bytes, message_count);
    let max_output = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|field| body.get::<u64>(field).and_then(Result::ok));
    Ok(ChatRequest {
        endpoint: Endpoint::ChatCompletions,
        body,
        model,
        requested,
        stream,
        prompt_estimate,
        max_output,
    })
}

/// The body and decoder of a `/v1/messages` call: Anthropic's own request,
/// its model renamed, to Anthropic or to the gateway (which serves the
/// Messages API for the models it routes); any other provider is refused.
fn messages_request(
    request: &ChatRequest,
    resolution: &Resolution,
) -> Result<(reqwest::Body, Option<Decoder>), CompletionError> {
    let served = resolution.provider.wire_api() == WireApi::AnthropicMessages
        || resolution.provider == Service::Gateway;
    if !served {
        return Err(CompletionError::UnsupportedModel(format!(
            "/v1/messages serves Anthropic's API through an Anthropic key or the gateway; \
             this request would be served by {}, which does not speak it: use \
             /v1/chat/completions",
            resolution.provider.display_name()
        )));
    }
    let mut body = request.body.clone();
    body.set(
        "model",
        Value::from(resolution.upstream_model.as_str()).to_string(),
    );
    let decoder = request.stream.then(|| {
        Decoder::anthropic_raw(anthropic::StreamTranslator::new(
            &request.requested,
            unix_now(),
            false,
        ))
    });
    Ok((
        reqwest::Body::wrap(upstream::PiecewiseBody::new(body.to_segments())),
        decoder,
    ))
}

/// Reads an Anthropic Messages request: an object with a string `model`, a
/// non-empty array `messages`, an optional boolean `stream` and (as
/// Anthropic requires) `max_tokens`; everything else passes, unparsed.
fn parse_messages_request(body: Bytes) -> Result<ChatRequest, CompletionError> {
    let mut request = parse_request(body)?;
    let Some(max) = request.max_output else {
        return Err(CompletionError::InvalidRequest(
            "max_tokens is required".into(),
        ));
    };
    request.max_output = Some(max);
    request.endpoint = Endpoint::Messages;
    Ok(request)
}

/// Reads an embeddings request: an object with a string `model` and an
/// `input` (a non-empty string, or a non-empty array of strings or token
/// arrays); everything else passes, unparsed.
fn parse_embeddings_request(body: Bytes) -> Result<ChatRequest, CompletionError> {
    let invalid = |m: &str| CompletionError::InvalidRequest(m.to_owned());
    let body =
        RawObject::parse(body).map_err(|e| CompletionError::InvalidRequest(e.to_string()))?;
    let requested = match body.get::<String>("model") {
        Some(Ok(m)) if !m.trim().is_empty() => m,
        Some(_) => return Err(invalid("model must be a non-empty string")),
        None => return Err(invalid("model is required")),
    };
    let input = body
        .raw("input")
        .ok_or_else(|| invalid("input is required"))?;
    let stats = JsonStats::of(input).map_err(|_| invalid("input must be valid JSON"))?;
    let items = match input.trim_start().as_bytes().first() {
        Some(b'"') if stats.string_bytes > 0 => 1,
        Some(b'[') => stats.array_len.unwrap_or(0),
        _ => 0,
    };
    if items == 0 {
        return Err(invalid(
            "input must be a non-empty string or a non-empty array",
        ));
    }
    if body.raw("stream").is_some() {
        return Err(invalid("embeddings are not streamed: remove stream"));
    }
    let model = ModelId::parse(&requested).map_err(|e| CompletionError::Resolve(e.into()))?;
    // Token arrays count one token per value.
    let prompt_estimate = estimate::prompt_tokens(stats.string_bytes, items).max(stats.values / 2);
    Ok(ChatRequest {
        endpoint: Endpoint::Embeddings,
        body,
        model,
        requested,
        stream: false,
        prompt_estimate,
        max_output: Some(0),
    })
}

/// Why reading a body failed.
enum ReadError {
    Transport(reqwest::Error),
    Idle(Duration),
    TooLarge,
}

fn upstream_read_error(service: Service, err: ReadError) -> UpstreamError {
    match err {
        ReadError::Transport(e) => UpstreamError::from_transport(service, &e),
        ReadError::Idle(waited) => UpstreamError::timed_out(service, waited),
        ReadError::TooLarge => UpstreamError::new(
            UpstreamErrorKind::Unavailable,
            format!("{} sent a response too large to relay", service.as_str()),
        ),
    }
}

/// Largest non-streamed upstream answer relayed.
const RESPONSE_LIMIT: usize = 64 * 1024 * 1024;

async fn read_rest(
    first: Bytes,
    mut body: relay::UpstreamBody,
    idle: Duration,
) -> Result<Bytes, ReadError> {
    let mut whole: Option<bytes::BytesMut> = None;
    loop {
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(Ok(chunk))) => {
                let buf = whole.get_or_insert_with(|| bytes::BytesMut::from(&first[..]));
                if buf.len() + chunk.len() > RESPONSE_LIMIT {
                    return Err(ReadError::TooLarge);
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(Some(Err(e))) => return Err(ReadError::Transport(e)),
            Ok(None) => return Ok(whole.map_or(first, bytes::BytesMut::freeze)),
            Err(_) => return Err(ReadError::Idle(idle)),
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
