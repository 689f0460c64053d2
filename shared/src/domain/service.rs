//! The closed set of services a user can store a key for. Each service's
//! facts live in its own module of [`super::provider`]; the methods here
//! read them.

use std::fmt;
use std::str::FromStr;

/// A service the gateway can hold a key for and call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    OpenAi,
    Anthropic,
    Xai,
    OpenRouter,
    Google,
    Groq,
    Gateway,
}

pub use super::provider::WireApi;

impl Service {
    /// All of this service's facts ([`super::provider`]).
    pub const fn provider(self) -> &'static super::provider::Provider {
        super::provider::provider(self)
    }

    pub const ALL: [Service; 7] = [
        Service::OpenAi,
        Service::Anthropic,
        Service::Xai,
        Service::OpenRouter,
        Service::Google,
        Service::Groq,
        Service::Gateway,
    ];

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
        self.provider().takes_namespaced_model
    }

    /// The variable naming the operator's override of this service's base URL.
    pub const fn base_url_env(self) -> &'static str {
        self.provider().base_url_env
    }

    /// The variable naming the operator's own (team) key for this service.
    pub const fn team_key_env(self) -> &'static str {
        self.provider().team_key_env
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
        assert_eq!("mistral".parse::<Service>(), Err(UnknownService));
    }
}
