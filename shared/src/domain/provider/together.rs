//! Together AI, OpenAI-compatible. It hosts other makers' models, named
//! `org/model` (`together/meta-llama/Llama-3.3-70B-Instruct-Turbo` reaches it
//! as `meta-llama/Llama-3.3-70B-Instruct-Turbo`), so no bare id is its own.

use super::{CredentialKind, GatewayModel, ModelIds, Provider, WireApi};

pub(crate) const PROVIDER: Provider = Provider {
    id: "together",
    display_name: "Together AI",
    listed: 10,
    key_prefix: None,
    prefixes_shown: &["tgp_v1_"],
    key_format_hint: "A Together AI API key (newer keys start with tgp_v1_).",
    docs_url: "https://api.together.ai/settings/api-keys",
    default_base_url: "https://api.together.xyz/v1",
    base_url_env: "BYOK_TOGETHER_BASE_URL",
    team_key_env: "TOGETHER_API_KEY",
    team_secret_env: "BYOK_TEAM_TOGETHER_SECRET_ARN",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    model_ids: ModelIds::Bare,
    hosts_models: true,
    bare_model_prefixes: &[],
    bare_model_names: &[],
    key_check_path: "/models",
    gateway_byok_slug: Some("togetherai"),
    credential: CredentialKind::ApiKey,
    gateway_model: GatewayModel::Namespaced,
};
