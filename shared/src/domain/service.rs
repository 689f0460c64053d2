//! The closed set of services a user can store a key for, with the facts
//! about each: key prefix, default base URL, wire format and documentation.

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

/// How a service's API is spoken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireApi {
    /// OpenAI chat completions (or a compatible server).
    OpenAiCompatible,
    /// Anthropic Messages, translated by the gateway.
    AnthropicMessages,
}

impl Service {
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
        match self {
            Service::OpenAi => "openai",
            Service::Anthropic => "anthropic",
            Service::Xai => "xai",
            Service::OpenRouter => "openrouter",
            Service::Google => "google",
            Service::Groq => "groq",
            Service::Gateway => "gateway",
        }
    }

    /// The name people know the service by.
    pub const fn display_name(self) -> &'static str {
        match self {
            Service::OpenAi => "OpenAI",
            Service::Anthropic => "Anthropic",
            Service::Xai => "xAI",
            Service::OpenRouter => "OpenRouter",
            Service::Google => "Google",
            Service::Groq => "Groq",
            Service::Gateway => "Vercel AI Gateway",
        }
    }

    /// The upstream base URL used when the operator sets no override.
    pub const fn default_base_url(self) -> &'static str {
        match self {
            Service::OpenAi => "https://api.openai.com/v1",
            Service::Anthropic => "https://api.anthropic.com/v1",
            Service::Xai => "https://api.x.ai/v1",
            Service::OpenRouter => "https://openrouter.ai/api/v1",
            Service::Google => "https://generativelanguage.googleapis.com/v1beta/openai",
            Service::Groq => "https://api.groq.com/openai/v1",
            Service::Gateway => "https://ai-gateway.vercel.sh/v1",
        }
    }

    pub const fn wire_api(self) -> WireApi {
        match self {
            Service::Anthropic => WireApi::AnthropicMessages,
            Service::OpenAi
            | Service::Xai
            | Service::OpenRouter
            | Service::Google
            | Service::Groq
            | Service::Gateway => WireApi::OpenAiCompatible,
        }
    }

    /// The prefix every key of this service starts with, where there is one.
    pub const fn key_prefix(self) -> Option<&'static str> {
        match self {
            Service::OpenAi => Some("sk-"),
            Service::Anthropic => Some("sk-ant-"),
            Service::Xai => Some("xai-"),
            Service::OpenRouter => Some("sk-or-"),
            Service::Google => Some("AIza"),
            Service::Groq => Some("gsk_"),
            Service::Gateway => None,
        }
    }

    /// A sentence for a key form: what a key of this service looks like.
    pub const fn key_format_hint(self) -> &'static str {
        match self {
            Service::OpenAi => "Starts with sk- (project keys: sk-proj-).",
            Service::Anthropic => "Starts with sk-ant-.",
            Service::Xai => "Starts with xai-.",
            Service::OpenRouter => "Starts with sk-or- (usually sk-or-v1-).",
            Service::Google => "A Google AI Studio key; starts with AIza.",
            Service::Groq => "Starts with gsk_.",
            Service::Gateway => "A Vercel AI Gateway key (usually vck_…); optional https base URL.",
        }
    }

    pub const fn docs_url(self) -> &'static str {
        match self {
            Service::OpenAi => "https://platform.openai.com/api-keys",
            Service::Anthropic => "https://console.anthropic.com/settings/keys",
            Service::Xai => "https://console.x.ai",
            Service::OpenRouter => "https://openrouter.ai/settings/keys",
            Service::Google => "https://aistudio.google.com/app/apikey",
            Service::Groq => "https://console.groq.com/keys",
            Service::Gateway => "https://vercel.com/docs/ai-gateway",
        }
    }

    /// Only the gateway accepts a user-chosen base URL.
    pub const fn accepts_base_url(self) -> bool {
        matches!(self, Service::Gateway)
    }

    /// Gateway and OpenRouter receive `provider/model`; the others the bare name.
    pub const fn takes_namespaced_model(self) -> bool {
        matches!(self, Service::Gateway | Service::OpenRouter)
    }

    /// The variable naming the operator's override of this service's base URL.
    pub const fn base_url_env(self) -> &'static str {
        match self {
            Service::OpenAi => "BYOK_OPENAI_BASE_URL",
            Service::Anthropic => "BYOK_ANTHROPIC_BASE_URL",
            Service::Xai => "BYOK_XAI_BASE_URL",
            Service::OpenRouter => "BYOK_OPENROUTER_BASE_URL",
            Service::Google => "BYOK_GOOGLE_BASE_URL",
            Service::Groq => "BYOK_GROQ_BASE_URL",
            Service::Gateway => "AI_GATEWAY_URL",
        }
    }

    /// The variable naming the operator's own (team) key for this service.
    pub const fn team_key_env(self) -> &'static str {
        match self {
            Service::OpenAi => "OPENAI_API_KEY",
            Service::Anthropic => "ANTHROPIC_API_KEY",
            Service::Xai => "XAI_API_KEY",
            Service::OpenRouter => "OPENROUTER_API_KEY",
            Service::Google => "GOOGLE_API_KEY",
            Service::Groq => "GROQ_API_KEY",
            Service::Gateway => "AI_GATEWAY_API_KEY",
        }
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
