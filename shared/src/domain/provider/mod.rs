//! One module per provider, each holding all of that provider's facts in
//! one [`Provider`]: its id and display name, key prefix and format hint,
//! where users get a key, the default base URL and the operator's override
//! variable, the team-key variable, the wire format (which decides the auth
//! header and request translation) and the cheapest call that checks a key.
//! Everything else reads these: [`super::Service`]'s methods, the upstream
//! client, configuration and the `/api/providers` view. Adding an
//! OpenAI-compatible provider is a new file here, its line in
//! [`provider`], a [`super::Service`] variant, and a catalog entry.

mod anthropic;
mod gateway;
mod google;
mod groq;
mod openai;
mod openrouter;
mod xai;

use super::Service;

/// How a provider's API is spoken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireApi {
    /// OpenAI's chat completions, `Authorization: Bearer`.
    OpenAiCompatible,
    /// Anthropic's Messages API, `x-api-key` and `anthropic-version`.
    AnthropicMessages,
}

/// Everything about one provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Provider {
    /// The wire name (API paths, storage, model id prefixes).
    pub id: &'static str,
    pub display_name: &'static str,
    /// Every key of this provider starts with it, when there is one.
    pub key_prefix: Option<&'static str>,
    pub key_format_hint: &'static str,
    /// Where a user gets a key.
    pub docs_url: &'static str,
    pub default_base_url: &'static str,
    /// The operator's override of the base URL.
    pub base_url_env: &'static str,
    /// The operator's (team) key.
    pub team_key_env: &'static str,
    pub wire_api: WireApi,
    /// A user may store their own base URL with the key.
    pub accepts_base_url: bool,
    /// Takes `provider/model` ids rather than bare model names.
    pub takes_namespaced_model: bool,
    /// The cheapest authenticated `GET` (below the base URL) that tells a
    /// valid key from a refused one.
    pub key_check_path: &'static str,
}

/// The facts of `service`.
pub const fn provider(service: Service) -> &'static Provider {
    match service {
        Service::OpenAi => &openai::PROVIDER,
        Service::Anthropic => &anthropic::PROVIDER,
        Service::Xai => &xai::PROVIDER,
        Service::OpenRouter => &openrouter::PROVIDER,
        Service::Google => &google::PROVIDER,
        Service::Groq => &groq::PROVIDER,
        Service::Gateway => &gateway::PROVIDER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_provider_names_itself_and_its_own_variables() {
        let mut ids = std::collections::HashSet::new();
        for service in Service::ALL {
            let p = provider(service);
            assert!(ids.insert(p.id), "{} twice", p.id);
            assert!(p.default_base_url.starts_with("https://"), "{}", p.id);
            assert!(p.docs_url.starts_with("https://"), "{}", p.id);
            assert!(p.key_check_path.starts_with('/'), "{}", p.id);
            assert!(p.team_key_env.ends_with("_API_KEY"), "{}", p.id);
        }
    }
}
