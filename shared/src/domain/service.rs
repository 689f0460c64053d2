//! The services a user can store a key for: one per provider module of
//! [`super::provider`]. A `Service` is a handle on its provider's facts;
//! the methods here read them.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use super::provider::{self, Provider};

/// A service the gateway can hold a key for and call.
#[derive(Clone, Copy)]
pub struct Service(&'static Provider);

pub use super::provider::{ModelIds, WireApi};

/// The services the code names itself: resolution's aggregators, the
/// translated Anthropic API, and tests. A provider that needs no code of its
/// own needs no name here. Named like the variants of the enum `Service`
/// once was, so `Service::OpenAi` reads the same; `use named::*` brings them
/// into scope unqualified.
#[allow(non_upper_case_globals)]
pub mod named {
    use super::{Service, provider};

    pub const OpenAi: Service = Service(&provider::openai::PROVIDER);
    pub const Anthropic: Service = Service(&provider::anthropic::PROVIDER);
    pub const Xai: Service = Service(&provider::xai::PROVIDER);
    pub const OpenRouter: Service = Service(&provider::openrouter::PROVIDER);
    pub const Google: Service = Service(&provider::google::PROVIDER);
    pub const Groq: Service = Service(&provider::groq::PROVIDER);
    pub const Gateway: Service = Service(&provider::gateway::PROVIDER);
    pub const Vertex: Service = Service(&provider::vertex::PROVIDER);
    pub const Bedrock: Service = Service(&provider::bedrock::PROVIDER);
}

#[allow(non_upper_case_globals)]
impl Service {
    pub const OpenAi: Service = named::OpenAi;
    pub const Anthropic: Service = named::Anthropic;
    pub const Xai: Service = named::Xai;
    pub const OpenRouter: Service = named::OpenRouter;
    pub const Google: Service = named::Google;
    pub const Groq: Service = named::Groq;
    pub const Gateway: Service = named::Gateway;
    pub const Vertex: Service = named::Vertex;
    pub const Bedrock: Service = named::Bedrock;
}

impl Service {
    /// Every service, in the order lists show them.
    pub const ALL: [Service; provider::COUNT] = {
        let mut all = [Service::OpenAi; provider::COUNT];
        let mut i = 0;
        while i < provider::COUNT {
            all[i] = Service(provider::ALL[i]);
            i += 1;
        }
        all
    };

    /// All of this service's facts ([`super::provider`]).
    pub const fn provider(self) -> &'static Provider {
        self.0
    }

    /// The wire name used in paths, JSON and storage.
    pub const fn as_str(self) -> &'static str {
        self.provider().id
    }

    /// The name people know the service by.
    pub const fn display_name(self) -> &'static str {
        self.provider().display_name
    }

    /// The upstream base URL used when the operator sets no override.
    pub const fn default_base_url(self) -> &'static str {
        self.provider().default_base_url
    }

    pub const fn wire_api(self) -> WireApi {
        self.provider().wire_api
    }

    /// The prefix every key of this service starts with, where there is one.
    pub const fn key_prefix(self) -> Option<&'static str> {
        self.provider().key_prefix
    }

    /// A sentence for a key form: what a key of this service looks like.
    pub const fn key_format_hint(self) -> &'static str {
        self.provider().key_format_hint
    }

    pub const fn docs_url(self) -> &'static str {
        self.provider().docs_url
    }

    /// Only the gateway accepts a user-chosen base URL.
    pub const fn accepts_base_url(self) -> bool {
        self.provider().accepts_base_url
    }

    /// Gateway and OpenRouter receive `provider/model`; the others the bare name.
    pub const fn takes_namespaced_model(self) -> bool {
        matches!(self.provider().model_ids, ModelIds::Namespaced)
    }

    /// The variable naming the operator's override of this service's base URL.
    pub const fn base_url_env(self) -> &'static str {
        self.provider().base_url_env
    }

    /// The variable naming the operator's own (team) key for this service.
    pub const fn team_key_env(self) -> &'static str {
        self.provider().team_key_env
    }

    /// On AWS, the variable naming the secret that holds the team key.
    /// The provider's name in the gateway's request-scoped BYOK option.
    pub const fn gateway_byok_slug(self) -> Option<&'static str> {
        self.0.gateway_byok_slug
    }

    pub const fn team_secret_env(self) -> &'static str {
        self.provider().team_secret_env
    }
}

// One provider, one service: identity is the id, order is the listing.
impl PartialEq for Service {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for Service {}

impl Hash for Service {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl PartialOrd for Service {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Service {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.0.listed, self.0.id).cmp(&(other.0.listed, other.0.id))
    }
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Service({})", self.0.id)
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text named no service we know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown service")]
pub struct UnknownService;

impl FromStr for Service {
    type Err = UnknownService;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Service::ALL
            .into_iter()
            .find(|svc| svc.as_str() == s)
            .ok_or(UnknownService)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for svc in Service::ALL {
            assert_eq!(svc.as_str().parse::<Service>(), Ok(svc));
        }
        assert_eq!("OpenAI".parse::<Service>(), Err(UnknownService));
        assert_eq!("mistralai".parse::<Service>(), Err(UnknownService));
    }

    #[test]
    fn ordered_as_listed_and_equal_by_id() {
        assert!(Service::ALL.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Service::ALL[0], Service::OpenAi);
        assert_eq!(Service::ALL[Service::ALL.len() - 1], Service::Gateway);
        assert_ne!(Service::OpenAi, Service::OpenRouter);
    }
}
