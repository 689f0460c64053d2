//! DeepSeek, OpenAI-compatible (`https://api.deepseek.com`, no version in the
//! path). Its keys start with `sk-`, like OpenAI's: a key with a longer
//! prefix of another service (`sk-proj-`, `sk-ant-`, `sk-or-`) is refused.

use super::{CredentialKind, GatewayModel, ModelIds, Provider, WireApi};

pub(crate) const PROVIDER: Provider = Provider {
    id: "deepseek",
    display_name: "DeepSeek",
    listed: 9,
    key_prefix: Some("sk-"),
    prefixes_shown: &[],
    key_format_hint: "Starts with sk-.",
    docs_url: "https://platform.deepseek.com/api_keys",
    default_base_url: "https://api.deepseek.com",
    base_url_env: "BYOK_DEEPSEEK_BASE_URL",
    team_key_env: "DEEPSEEK_API_KEY",
    team_secret_env: "BYOK_TEAM_DEEPSEEK_SECRET_ARN",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    model_ids: ModelIds::Bare,
    hosts_models: true,
    bare_model_prefixes: &["deepseek-"],
    bare_model_names: &[],
    key_check_path: "/models",
    gateway_byok_slug: Some("deepseek"),
    credential: CredentialKind::ApiKey,
    gateway_model: GatewayModel::Namespaced,
};
