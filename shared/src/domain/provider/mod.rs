//! One module per provider, each holding all of that provider's facts in
//! one [`Provider`]: its id and display name, key prefix and format hint,
//! where users get a key, the default base URL and the operator's override
//! variable, the team-key and team-secret variables, the wire format (which
//! decides the auth header and request translation), how it names models
//! and the cheapest call that checks a key. Everything else reads these:
//! [`super::Service`]'s methods, the upstream client, configuration, model
//! ids, key checks and masks, and the `/api/providers` view.
//!
//! The build script registers every file in this folder, so adding an
//! OpenAI-compatible provider is a new file here plus its models in the
//! catalog.

// `mod` lines for every provider file, and `MODULES`: their facts.
include!(concat!(env!("OUT_DIR"), "/providers.rs"));

pub use super::credential::CredentialKind;

/// How a provider's API is spoken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireApi {
    /// OpenAI's chat completions, `Authorization: Bearer`.
    OpenAiCompatible,
    /// Anthropic's Messages API, `x-api-key` and `anthropic-version`.
    AnthropicMessages,
    /// Amazon Bedrock's Converse API, signed with SigV4 (bridged through
    /// the Anthropic translation).
    BedrockConverse,
}

/// Everything about one provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Provider {
    /// The wire name (API paths, storage, model id prefixes).
    pub id: &'static str,
    pub display_name: &'static str,
    /// Where the provider appears in lists (lower first); unique.
    pub listed: u8,
    /// Every key of this provider starts with it, when there is one.
    pub key_prefix: Option<&'static str>,
    /// Longer prefixes its keys start with, shown in clear by key masks
    /// (`sk-proj-…1234`).
    pub prefixes_shown: &'static [&'static str],
    pub key_format_hint: &'static str,
    /// Where a user gets a key.
    pub docs_url: &'static str,
    pub default_base_url: &'static str,
    /// The operator's override of the base URL.
    pub base_url_env: &'static str,
    /// The operator's (team) key.
    pub team_key_env: &'static str,
    /// On AWS, the variable naming the Secrets Manager secret that holds
    /// the team key (`BYOK_TEAM_<ID>_SECRET_ARN`).
    pub team_secret_env: &'static str,
    pub wire_api: WireApi,
    /// A user may store their own base URL with the key.
    pub accepts_base_url: bool,
    /// How the provider's API names the models a request asks for.
    pub model_ids: ModelIds,
    /// Model ids may name it as their provider (`openai/gpt-4o`); the
    /// gateway serves other providers' models, never its own.
    pub hosts_models: bool,
    /// Bare model ids (no `provider/`) starting with one of these are its
    /// models: `gpt-4o` is `openai/gpt-4o`.
    pub bare_model_prefixes: &'static [&'static str],
    /// Bare model ids that are whole names of one of its families (`o1`).
    pub bare_model_names: &'static [&'static str],
    /// The cheapest authenticated `GET` (below the base URL; each leading
    /// `/..` goes one path segment up from it first) that tells a valid key
    /// from a refused one.
    pub key_check_path: &'static str,
    /// How the Vercel AI Gateway names the provider in a request's
    /// `providerOptions.gateway.byok`; `None` if it does not take the
    /// provider's keys that way.
    pub gateway_byok_slug: Option<&'static str>,
    /// What a key of it is: an API key string, or a structured credential
    /// (stored as one JSON secret) that is exchanged before each call.
    pub credential: CredentialKind,
    /// How the gateway names its models when a request goes there with the
    /// user's credential (`gateway_byok_slug`).
    pub gateway_model: GatewayModel,
}

/// How the Vercel AI Gateway names a provider's model on a request that
/// carries the user's credential for that provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayModel {
    /// `provider/model`, as the catalog names it: `openai/gpt-4o-mini`.
    Namespaced,
    /// The name the provider's own API takes, which is the gateway's name
    /// for the model too (Vertex: `google/gemini-2.5-flash`).
    Upstream,
    /// The gateway names the model by its maker, not by the provider's id
    /// (Bedrock's `anthropic.claude-3-5-haiku-20241022-v1:0` is the
    /// gateway's `anthropic/claude-3.5-haiku`): looked up in `names`, a
    /// list of (id stem, gateway name). An id matches a stem followed by
    /// nothing, a date (`-20…`), a version (`-v…`) or `:…`, after an
    /// optional inference-profile prefix (one of `profile_prefixes`, such
    /// as `us.`). An id without an entry has no gateway name.
    Renamed {
        names: &'static [(&'static str, &'static str)],
        profile_prefixes: &'static [&'static str],
    },
}

impl GatewayModel {
    /// The gateway's name for a model the catalog calls `model` and the
    /// provider's API `upstream_model`; `None` when it has none.
    pub fn name_for(self, model: &str, upstream_model: &str) -> Option<String> {
        match self {
            GatewayModel::Namespaced => Some(model.to_owned()),
            GatewayModel::Upstream => Some(upstream_model.to_owned()),
            GatewayModel::Renamed {
                names,
                profile_prefixes,
            } => {
                let id = profile_prefixes
                    .iter()
                    .find_map(|prefix| upstream_model.strip_prefix(prefix))
                    .unwrap_or(upstream_model);
                names
                    .iter()
                    .find(|(stem, _)| {
                        id.strip_prefix(stem).is_some_and(|rest| {
                            rest.is_empty()
                                || rest.starts_with("-20")
                                || rest.starts_with("-v")
                                || rest.starts_with(':')
                        })
                    })
                    .map(|(_, name)| (*name).to_owned())
            }
        }
    }
}

/// How a provider's API expects model names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelIds {
    /// The model's own name: `gpt-4o-mini`.
    Bare,
    /// The own name, a dot between version digits written as a dash:
    /// catalogues say `claude-sonnet-4.5`, Anthropic's API `claude-sonnet-4-5`.
    BareDashedVersions,
    /// `provider/model`, as the catalog names it (aggregators).
    Namespaced,
    /// The own name under a fixed path (Fireworks:
    /// `accounts/fireworks/models/` + `gpt-oss-120b`); a name that already
    /// has a `/` is sent as it is.
    Prefixed(&'static str),
}

/// How many providers there are.
pub const COUNT: usize = MODULES.len();

/// Every provider, in the order of [`Provider::listed`].
pub const ALL: [&Provider; COUNT] = by_listing(MODULES);

/// `providers` sorted by [`Provider::listed`] (an insertion sort the
/// compiler runs).
const fn by_listing(mut providers: [&'static Provider; COUNT]) -> [&'static Provider; COUNT] {
    let mut i = 1;
    while i < COUNT {
        let mut j = i;
        while j > 0 && providers[j - 1].listed > providers[j].listed {
            let earlier = providers[j - 1];
            providers[j - 1] = providers[j];
            providers[j] = earlier;
            j -= 1;
        }
        i += 1;
    }
    providers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_provider_names_itself_and_its_own_variables() {
        let mut ids = std::collections::HashSet::new();
        let mut places = std::collections::HashSet::new();
        for p in ALL {
            assert!(ids.insert(p.id), "{} twice", p.id);
            assert!(places.insert(p.listed), "{}: listed like another", p.id);
            assert!(p.default_base_url.starts_with("https://"), "{}", p.id);
            assert!(p.docs_url.starts_with("https://"), "{}", p.id);
            assert!(p.key_check_path.starts_with('/'), "{}", p.id);
            assert!(p.team_key_env.ends_with("_API_KEY"), "{}", p.id);
            assert_eq!(
                p.team_secret_env,
                format!("BYOK_TEAM_{}_SECRET_ARN", p.id.to_ascii_uppercase())
            );
            for shown in p.prefixes_shown {
                assert!(
                    p.key_prefix.is_none_or(|prefix| shown.starts_with(prefix)),
                    "{}: {shown} is not one of its keys' prefixes",
                    p.id
                );
            }
        }
    }

    #[test]
    fn bedrock_ids_take_the_gateways_names() {
        let names = bedrock::PROVIDER.gateway_model;
        let name = |id: &str| names.name_for(&format!("bedrock/{id}"), id);
        for (id, expected) in [
            (
                "anthropic.claude-3-5-haiku-20241022-v1:0",
                Some("anthropic/claude-3.5-haiku"),
            ),
            (
                "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                Some("anthropic/claude-sonnet-4.5"),
            ),
            (
                "eu.anthropic.claude-sonnet-4-20250514-v1:0",
                Some("anthropic/claude-sonnet-4"),
            ),
            ("amazon.nova-pro-v1:0", Some("amazon/nova-pro")),
            (
                "meta.llama3-3-70b-instruct-v1:0",
                Some("meta/llama-3.3-70b"),
            ),
            // A longer name is not its stem's model.
            ("anthropic.claude-sonnet-4-7-20260101-v1:0", None),
            ("cohere.command-r-v1:0", None),
            ("xx.anthropic.claude-3-5-haiku-20241022-v1:0", None),
        ] {
            assert_eq!(name(id).as_deref(), expected, "{id}");
        }
        let vertex = vertex::PROVIDER.gateway_model;
        assert_eq!(
            vertex.name_for("vertex/gemini-2.5-flash", "google/gemini-2.5-flash"),
            Some("google/gemini-2.5-flash".to_owned())
        );
        let openai = openai::PROVIDER.gateway_model;
        assert_eq!(
            openai.name_for("openai/gpt-4o-mini", "gpt-4o-mini"),
            Some("openai/gpt-4o-mini".to_owned())
        );
    }

    #[test]
    fn listed_in_order() {
        assert!(ALL.windows(2).all(|w| w[0].listed < w[1].listed));
        assert_eq!(ALL.len(), MODULES.len());
    }
}
