//! xAI (Grok), OpenAI-compatible.

use super::{CredentialKind, GatewayModel, ModelIds, Provider, WireApi};

pub(crate) const PROVIDER: Provider = Provider {
    id: "xai",
    display_name: "xAI",
    listed: 3,
    key_prefix: Some("xai-"),
    prefixes_shown: &["xai-"],
    key_format_hint: "Starts with xai-.",
    docs_url: "https://console.x.ai",
    default_base_url: "https://api.x.ai/v1",
    base_url_env: "BYOK_XAI_BASE_URL",
    team_key_env: "XAI_API_KEY",
    team_secret_env: "BYOK_TEAM_XAI_SECRET_ARN",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    model_ids: ModelIds::Bare,
    hosts_models: true,
    bare_model_prefixes: &["grok-"],
    bare_model_names: &[],
    key_check_path: "/models",
    gateway_byok_slug: Some("xai"),
    credential: CredentialKind::ApiKey,
    gateway_model: GatewayModel::Namespaced,
};
