//! Perplexity (Sonar), OpenAI-compatible chat at `https://api.perplexity.ai`
//! (no version in the path). The key check is `GET /v1/models`. Not named
//! in gateway BYOK requests: the gateway documents no BYOK slug for it.

use super::{CredentialKind, GatewayModel, ModelIds, Provider, WireApi};

pub(crate) const PROVIDER: Provider = Provider {
    id: "perplexity",
    display_name: "Perplexity",
    listed: 12,
    key_prefix: None,
    prefixes_shown: &["pplx-"],
    key_format_hint: "A Perplexity API key (usually starts with pplx-).",
    docs_url: "https://www.perplexity.ai/account/api/keys",
    default_base_url: "https://api.perplexity.ai",
    base_url_env: "BYOK_PERPLEXITY_BASE_URL",
    team_key_env: "PERPLEXITY_API_KEY",
    team_secret_env: "BYOK_TEAM_PERPLEXITY_SECRET_ARN",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    model_ids: ModelIds::Bare,
    hosts_models: true,
    bare_model_prefixes: &["sonar-"],
    bare_model_names: &["sonar"],
    key_check_path: "/v1/models",
    gateway_byok_slug: None,
    credential: CredentialKind::ApiKey,
    gateway_model: GatewayModel::Namespaced,
};
