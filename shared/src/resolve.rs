//! The resolution contract: for a user and a model, decide whose credential
//! pays and where the request goes. Order: the user's gateway key → the
//! user's key for the model's provider (else their OpenRouter key) → the team
//! gateway key → a team provider key (else team OpenRouter); team paths only
//! with the user's consent. A user path names every enabled key of its
//! service, in the order they are tried: by priority, except that keys
//! cooling down after a rate limit go last (soonest usable first), so a
//! user whose only key is cooling down is still served by it. Pure over one [`UserSnapshot`] and the clock;
//! the credential itself is only named here, never read.

use crate::domain::base_url::url_host;
use crate::domain::{KeyId, KeyRecord, ModelError, ModelId, SecretRef, Service, Timestamp, UserId};
pub use crate::domain::{ResolutionPath, TeamCredentials, Upstreams};
use crate::store::{MetadataStore, StoreError, UserSnapshot};
use std::sync::Arc;
use tracing::field::Empty;

/// Whose base URL the request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseUrlSource {
    /// The user's own gateway URL.
    User,
    /// The team gateway.
    Team,
    /// The operator's URL for that provider.
    Default,
}

impl BaseUrlSource {
    pub const fn as_str(self) -> &'static str {
        match self {
            BaseUrlSource::User => "user",
            BaseUrlSource::Team => "team",
            BaseUrlSource::Default => "default",
        }
    }
}

/// One stored key a user path may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChoice {
    pub id: KeyId,
    /// The secret at the version the metadata points at.
    pub secret: SecretRef,
    pub masked_key: String,
    pub priority: u32,
    /// The key's own base URL (gateway keys only).
    pub base_url: Option<String>,
    pub last_used_at: Option<Timestamp>,
}

impl KeyChoice {
    fn of(record: &KeyRecord) -> Self {
        Self {
            id: record.id.clone(),
            secret: record.secret.clone(),
            masked_key: record.masked_key.clone(),
            priority: record.priority,
            base_url: record.base_url.clone(),
            last_used_at: record.last_used_at,
        }
    }
}

/// Where the credential for a resolution comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// One of the user's stored keys.
    User(KeyChoice),
    /// The operator's key for this service.
    Team(Service),
}

/// The outcome of resolution. Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub path: ResolutionPath,
    pub provider: Service,
    /// Canonical `provider/model`.
    pub model: String,
    /// What the upstream receives.
    pub upstream_model: String,
    /// The full base URL requests go to (internal: never sent to clients).
    pub base_url: String,
    /// Host (and non-default port) of `base_url`.
    pub base_url_host: String,
    pub base_url_source: BaseUrlSource,
    /// The credential of the first attempt.
    pub credential: CredentialSource,
    /// On a user path, every key that may be tried, in order (the first is
    /// `credential`'s); empty on team paths.
    pub keys: Vec<KeyChoice>,
    /// A user-provider path sent through the team gateway: the team
    /// gateway key authenticates, the user's key travels in the request
    /// (`providerOptions.gateway.byok`) and pays.
    pub via_gateway: bool,
}

impl Resolution {
    /// This resolution served with `key` (one of [`Self::keys`]): its
    /// credential and, for a gateway key, its own base URL.
    pub fn with_key(&self, key: &KeyChoice, upstreams: &Upstreams) -> Resolution {
        if self.via_gateway {
            return Resolution {
                credential: CredentialSource::User(key.clone()),
                ..self.clone()
            };
        }
        let (base_url, source) = match &key.base_url {
            Some(url) => (url.clone(), BaseUrlSource::User),
            None => (
                upstreams.base_url(self.provider).to_owned(),
                BaseUrlSource::Default,
            ),
        };
        Resolution {
            base_url_host: url_host(&base_url).unwrap_or_default(),
            base_url,
            base_url_source: source,
            credential: CredentialSource::User(key.clone()),
            ..self.clone()
        }
    }

    /// The stored key this resolution uses, on a user path.
    pub fn key_id(&self) -> Option<&KeyId> {
        match &self.credential {
            CredentialSource::User(key) => Some(&key.id),
            CredentialSource::Team(_) => None,
        }
    }
}

/// Why no credential could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("a team credential could serve this model, but the user turned team fallback off")]
    ConsentRequired,
    #[error("no credential can serve this model")]
    NoCredential,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Applies the contract to one user's snapshot. Emits the
/// `providers.resolve` span with path, provider and base URL host/source.
pub fn resolve(
    snapshot: &UserSnapshot,
    model: &ModelId,
    team: &TeamCredentials,
    upstreams: &Upstreams,
) -> Result<Resolution, ResolveError> {
    let span = tracing::info_span!(
        "providers.resolve",
        model = %model.canonical(),
        path = Empty,
        provider = Empty,
        baseUrlHost = Empty,
        baseUrlSource = Empty,
    );
    let _entered = span.enter();
    let outcome = choose(snapshot, model, team, upstreams);
    match &outcome {
        Ok(r) => {
            span.record("path", r.path.as_str());
            span.record("provider", r.provider.as_str());
            span.record("baseUrlHost", r.base_url_host.as_str());
            span.record("baseUrlSource", r.base_url_source.as_str());
            tracing::debug!("resolved");
        }
        Err(err) => tracing::debug!(error = %err, "not resolved"),
    }
    outcome
}

/// The contract itself, without the span: for callers that ask about many
/// models at once (the catalog), where one span per model would be noise.
pub(crate) fn choose(
    snapshot: &UserSnapshot,
    model: &ModelId,
    team: &TeamCredentials,
    upstreams: &Upstreams,
) -> Result<Resolution, ResolveError> {
    let direct = model.direct_service();
    let build = |path, provider: Service, base_url: String, source, credential| {
        let base_url_host = url_host(&base_url).unwrap_or_default();
        Resolution {
            path,
            provider,
            model: model.canonical(),
            upstream_model: model.upstream_for(provider),
            base_url,
            base_url_host,
            base_url_source: source,
            credential,
            keys: Vec::new(),
            via_gateway: false,
        }
    };
    let now = crate::domain::now();
    let user_path = |path, service: Service| -> Result<Option<Resolution>, ResolveError> {
        let keys = keys_in_order(snapshot, service, now);
        let Some(first) = keys.first() else {
            return Ok(None);
        };
        let base = build(
            path,
            service,
            String::new(),
            BaseUrlSource::Default,
            CredentialSource::Team(service),
        );
        let resolved = base.with_key(first, upstreams);
        Ok(Some(Resolution { keys, ..resolved }))
    };

    // 1. The user's own gateway keys.
    if let Some(resolution) = user_path(ResolutionPath::UserGateway, Service::Gateway)? {
        return Ok(resolution);
    }

    // 2. The user's keys for the model's provider, else their OpenRouter keys.
    let provider = direct
        .filter(|svc| snapshot.enabled_key(*svc).is_some())
        .unwrap_or(Service::OpenRouter);
    if let Some(resolution) = user_path(ResolutionPath::UserProvider, provider)? {
        return Ok(resolution);
    }

    // 3 and 4. Team credentials, in order: gateway, the model's provider, OpenRouter.
    let team_choice = if team.has(Service::Gateway) {
        Some((
            ResolutionPath::TeamGateway,
            Service::Gateway,
            BaseUrlSource::Team,
        ))
    } else {
        direct
            .filter(|svc| team.has(*svc))
            .or_else(|| team.has(Service::OpenRouter).then_some(Service::OpenRouter))
            .map(|svc| (ResolutionPath::TeamProvider, svc, BaseUrlSource::Default))
    };
    match team_choice {
        Some(_) if !snapshot.settings.allow_gateway_fallback => Err(ResolveError::ConsentRequired),
        Some((path, svc, source)) => {
            let base_url = upstreams.base_url(svc).to_owned();
            Ok(build(
                path,
                svc,
                base_url,
                source,
                CredentialSource::Team(svc),
            ))
        }
        None => Err(ResolveError::NoCredential),
    }
}

/// The enabled keys of `service` in the order they are tried at `now`:
/// those not cooling down by priority, then those cooling down, the one
/// usable soonest first.
fn keys_in_order(snapshot: &UserSnapshot, service: Service, now: Timestamp) -> Vec<KeyChoice> {
    let (cooling, ready): (Vec<&KeyRecord>, Vec<&KeyRecord>) = snapshot
        .enabled_keys(service)
        .into_iter()
        .partition(|k| k.cooling_at(now));
    let mut cooling = cooling;
    cooling.sort_by_key(|k| k.cooldown_until);
    ready
        .into_iter()
        .chain(cooling)
        .map(KeyChoice::of)
        .collect()
}

/// Resolution over a metadata store: one read of the user's snapshot.
pub struct Resolver {
    meta: Arc<dyn MetadataStore>,
    team: Arc<TeamCredentials>,
    upstreams: Arc<Upstreams>,
    /// `BYOK_ROUTE_USER_KEYS_VIA_GATEWAY`.
    user_keys_via_gateway: bool,
}

impl Resolver {
    pub fn new(
        meta: Arc<dyn MetadataStore>,
        team: Arc<TeamCredentials>,
        upstreams: Arc<Upstreams>,
    ) -> Self {
        Self {
            meta,
            team,
            upstreams,
            user_keys_via_gateway: false,
        }
    }

    /// Sends user-provider paths through the team gateway (when a team
    /// gateway key is set and the gateway takes the provider's keys).
    #[must_use]
    pub fn with_user_keys_via_gateway(mut self, on: bool) -> Self {
        self.user_keys_via_gateway = on;
        self
    }

    /// `resolution` as this deployment sends it: a user-provider path goes
    /// through the team gateway when the operator asked for that, a team
    /// gateway key is set and the gateway takes the provider's keys. The
    /// path stays `user-provider`: the user's key pays.
    ///
    /// A model the gateway has no name for (a Bedrock id outside the
    /// provider's name table) is called directly.
    pub fn routed(&self, resolution: Resolution) -> Resolution {
        let eligible = self.user_keys_via_gateway
            && resolution.path == ResolutionPath::UserProvider
            && resolution.provider.gateway_byok_slug().is_some()
            && self.team.has(Service::Gateway);
        if !eligible {
            return resolution;
        }
        let Some(upstream_model) = resolution
            .provider
            .provider()
            .gateway_model
            .name_for(&resolution.model, &resolution.upstream_model)
        else {
            return resolution;
        };
        let base_url = self.upstreams.base_url(Service::Gateway).to_owned();
        Resolution {
            base_url_host: url_host(&base_url).unwrap_or_default(),
            base_url,
            base_url_source: BaseUrlSource::Team,
            upstream_model,
            via_gateway: true,
            ..resolution
        }
    }

    /// The user's settings and keys: the one metadata read of a request.
    pub async fn snapshot(&self, user: &UserId) -> Result<UserSnapshot, ResolveError> {
        Ok(self.meta.load_user(user).await?)
    }

    pub fn team(&self) -> &TeamCredentials {
        &self.team
    }

    /// The metadata store resolution reads (key health is written to it).
    pub fn meta(&self) -> Arc<dyn MetadataStore> {
        Arc::clone(&self.meta)
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// Parses `model` (before any store read) and resolves it for `user`.
    pub async fn resolve(&self, user: &UserId, model: &str) -> Result<Resolution, ResolveError> {
        let model = ModelId::parse(model)?;
        let snapshot = self.meta.load_user(user).await?;
        resolve(&snapshot, &model, &self.team, &self.upstreams).map(|r| self.routed(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ApiKey, KeyRecord, Settings, now};
    use std::fmt;

    fn key(service: Service, enabled: bool, base_url: Option<&str>) -> KeyRecord {
        let t = now();
        KeyRecord {
            user: UserId::new("u1").unwrap(),
            service,
            id: KeyId::first(),
            priority: 0,
            last_used_at: None,
            cooldown_until: None,
            label: service.display_name().to_owned(),
            masked_key: "sk-…1234".to_owned(),
            enabled,
            base_url: base_url.map(str::to_owned),
            created_at: t,
            updated_at: t,
            last_validated_at: None,
            last_validation: None,
            secret: SecretRef {
                id: format!("u1/{service}"),
                version: "v1".to_owned(),
            },
            revision: 1,
            rotated_at: None,
            pending: None,
            last_rotation: None,
        }
    }

    fn team(services: &[Service]) -> TeamCredentials {
        let team = TeamCredentials::default();
        for svc in services {
            team.insert(*svc, ApiKey::new(format!("team-key-for-{svc}-000000")));
        }
        team
    }

    struct Case {
        name: &'static str,
        keys: Vec<KeyRecord>,
        consent: bool,
        team: &'static [Service],
        model: &'static str,
        /// (path, provider, upstreamModel, baseUrlHost, baseUrlSource) or the error.
        want: Result<
            (
                &'static str,
                Service,
                &'static str,
                &'static str,
                &'static str,
            ),
            &'static str,
        >,
    }

    #[test]
    fn every_branch_of_the_contract() {
        use crate::domain::service::named::*;
        let cases = vec![
            Case {
                name: "user gateway key with own base URL wins over everything",
                keys: vec![
                    key(Gateway, true, Some("https://my-gw.example.com/v1")),
                    key(OpenAi, true, None),
                ],
                consent: true,
                team: &[Gateway, OpenAi],
                model: "gpt-4o-mini",
                want: Ok((
                    "user-gateway",
                    Gateway,
                    "openai/gpt-4o-mini",
                    "my-gw.example.com",
                    "user",
                )),
            },
            Case {
                name: "user gateway key without base URL uses the default gateway",
                keys: vec![key(Gateway, true, None)],
                consent: false,
                team: &[],
                model: "mistral/mistral-large",
                want: Ok((
                    "user-gateway",
                    Gateway,
                    "mistral/mistral-large",
                    "ai-gateway.vercel.sh",
                    "default",
                )),
            },
            Case {
                name: "disabled gateway key is skipped",
                keys: vec![key(Gateway, false, None), key(Anthropic, true, None)],
                consent: true,
                team: &[],
                model: "claude-3-5-sonnet",
                want: Ok((
                    "user-provider",
                    Anthropic,
                    "claude-3-5-sonnet",
                    "api.anthropic.com",
                    "default",
                )),
            },
            Case {
                name: "user provider key for the model's provider gets the bare id",
                keys: vec![key(OpenAi, true, None), key(OpenRouter, true, None)],
                consent: true,
                team: &[Gateway],
                model: "openai/gpt-4o",
                want: Ok((
                    "user-provider",
                    OpenAi,
                    "gpt-4o",
                    "api.openai.com",
                    "default",
                )),
            },
            Case {
                name: "user openrouter key serves any model, namespaced",
                keys: vec![key(OpenRouter, true, None), key(Anthropic, true, None)],
                consent: true,
                team: &[Gateway],
                model: "gpt-4o",
                want: Ok((
                    "user-provider",
                    OpenRouter,
                    "openai/gpt-4o",
                    "openrouter.ai",
                    "default",
                )),
            },
            Case {
                name: "user openrouter key serves a provider we do not call directly",
                keys: vec![key(OpenRouter, true, None)],
                consent: false,
                team: &[],
                model: "meta-llama/llama-3.1-8b",
                want: Ok((
                    "user-provider",
                    OpenRouter,
                    "meta-llama/llama-3.1-8b",
                    "openrouter.ai",
                    "default",
                )),
            },
            Case {
                name: "disabled provider key falls through to the team gateway",
                keys: vec![key(Xai, false, None)],
                consent: true,
                team: &[Gateway, Xai],
                model: "grok-2",
                want: Ok((
                    "team-gateway",
                    Gateway,
                    "xai/grok-2",
                    "ai-gateway.vercel.sh",
                    "team",
                )),
            },
            Case {
                name: "no user keys, consent on, team gateway",
                keys: vec![],
                consent: true,
                team: &[Gateway],
                model: "gemini-2.0-flash",
                want: Ok((
                    "team-gateway",
                    Gateway,
                    "google/gemini-2.0-flash",
                    "ai-gateway.vercel.sh",
                    "team",
                )),
            },
            Case {
                name: "team provider key for the model's provider",
                keys: vec![key(Anthropic, true, None)],
                consent: true,
                team: &[OpenAi, OpenRouter],
                model: "gpt-4o",
                want: Ok((
                    "team-provider",
                    OpenAi,
                    "gpt-4o",
                    "api.openai.com",
                    "default",
                )),
            },
            Case {
                name: "team openrouter serves what no team provider key does",
                keys: vec![],
                consent: true,
                team: &[OpenAi, OpenRouter],
                model: "claude-3-haiku",
                want: Ok((
                    "team-provider",
                    OpenRouter,
                    "anthropic/claude-3-haiku",
                    "openrouter.ai",
                    "default",
                )),
            },
            Case {
                name: "consent off with a team gateway → consent_required",
                keys: vec![],
                consent: false,
                team: &[Gateway],
                model: "gpt-4o",
                want: Err("consent_required"),
            },
            Case {
                name: "consent off with a team provider key → consent_required",
                keys: vec![key(Groq, true, None)],
                consent: false,
                team: &[OpenAi],
                model: "gpt-4o",
                want: Err("consent_required"),
            },
            Case {
                name: "nothing can serve → no_credential",
                keys: vec![key(Groq, true, None)],
                consent: true,
                team: &[OpenAi],
                model: "claude-3-haiku",
                want: Err("no_credential"),
            },
            Case {
                name: "consent off and no team credential for the model → no_credential",
                keys: vec![],
                consent: false,
                team: &[Anthropic],
                model: "mistral/mistral-large",
                want: Err("no_credential"),
            },
        ];

        let upstreams = Upstreams::default();
        for case in cases {
            let snapshot = UserSnapshot {
                settings: Settings {
                    allow_gateway_fallback: case.consent,
                },
                keys: case.keys.clone(),
            };
            let model = ModelId::parse(case.model).unwrap();
            let got = resolve(&snapshot, &model, &team(case.team), &upstreams);
            match (got, case.want) {
                (Ok(r), Ok((path, provider, upstream, host, source))) => {
                    assert_eq!(r.path.as_str(), path, "{}", case.name);
                    assert_eq!(r.provider, provider, "{}", case.name);
                    assert_eq!(r.upstream_model, upstream, "{}", case.name);
                    assert_eq!(r.base_url_host, host, "{}", case.name);
                    assert_eq!(r.base_url_source.as_str(), source, "{}", case.name);
                    assert_eq!(r.model, model.canonical(), "{}", case.name);
                    let from_user = r.path == ResolutionPath::UserGateway
                        || r.path == ResolutionPath::UserProvider;
                    match &r.credential {
                        CredentialSource::User(key) => {
                            assert!(from_user, "{}", case.name);
                            assert_eq!(key.secret.id, format!("u1/{provider}"), "{}", case.name);
                        }
                        CredentialSource::Team(svc) => {
                            assert!(!from_user && *svc == provider, "{}", case.name);
                        }
                    }
                }
                (Err(ResolveError::ConsentRequired), Err("consent_required")) => {}
                (Err(ResolveError::NoCredential), Err("no_credential")) => {}
                (got, want) => panic!("{}: got {got:?}, want {want:?}", case.name),
            }
        }
    }

    #[test]
    fn operator_base_url_overrides_show_in_the_host() {
        let mut upstreams = Upstreams::default();
        upstreams.set(Service::OpenAi, "http://127.0.0.1:9100/v1".to_owned());
        upstreams.set(Service::Gateway, "http://127.0.0.1:9200/v1".to_owned());
        let snapshot = UserSnapshot {
            settings: Settings::default(),
            keys: vec![key(Service::OpenAi, true, None)],
        };
        let model = ModelId::parse("gpt-4o").unwrap();
        let r = resolve(&snapshot, &model, &TeamCredentials::default(), &upstreams).unwrap();
        assert_eq!(r.base_url_host, "127.0.0.1:9100");
        assert_eq!(r.base_url, "http://127.0.0.1:9100/v1");
        let r = resolve(
            &UserSnapshot::default(),
            &model,
            &team(&[Service::Gateway]),
            &upstreams,
        )
        .unwrap();
        assert_eq!(
            (r.base_url_host.as_str(), r.base_url_source),
            ("127.0.0.1:9200", BaseUrlSource::Team)
        );
    }

    #[test]
    fn emits_the_providers_resolve_span() {
        use std::sync::Mutex;
        use tracing::span::{Attributes, Id, Record};
        use tracing_subscriber::layer::{Context, SubscriberExt};
        use tracing_subscriber::registry::LookupSpan;

        #[derive(Default, Clone)]
        struct Seen(Arc<Mutex<Vec<(String, String, String)>>>);
        struct Fields<'a>(&'a Seen, &'a str);
        impl tracing::field::Visit for Fields<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
                self.0.0.lock().unwrap().push((
                    self.1.to_owned(),
                    field.name().to_owned(),
                    format!("{value:?}").trim_matches('"').to_owned(),
                ));
            }
        }
        impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Seen {
            fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
                attrs.record(&mut Fields(self, attrs.metadata().name()));
            }
            fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
                let name = ctx.span(id).map(|s| s.name()).unwrap_or_default();
                values.record(&mut Fields(self, name));
            }
        }

        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(seen.clone());
        let snapshot = UserSnapshot {
            settings: Settings::default(),
            keys: vec![key(
                Service::Gateway,
                true,
                Some("https://gw.example.com/v1"),
            )],
        };
        tracing::subscriber::with_default(subscriber, || {
            let model = ModelId::parse("gpt-4o").unwrap();
            resolve(
                &snapshot,
                &model,
                &TeamCredentials::default(),
                &Upstreams::default(),
            )
            .unwrap();
        });
        let seen = seen.0.lock().unwrap().clone();
        let field = |name: &str| {
            seen.iter()
                .find(|(span, f, _)| span == "providers.resolve" && f == name)
                .map(|(_, _, v)| v.clone())
        };
        assert_eq!(field("path").as_deref(), Some("user-gateway"));
        assert_eq!(field("provider").as_deref(), Some("gateway"));
        assert_eq!(field("baseUrlHost").as_deref(), Some("gw.example.com"));
        assert_eq!(field("baseUrlSource").as_deref(), Some("user"));
        assert!(seen.iter().all(|(_, _, v)| !v.contains("https://")));
    }
}
