//! Anthropic: the Messages API (translated by `providers::anthropic`), keyed with `x-api-key` and a version header.

use super::{CredentialKind, GatewayModel, ModelIds, Provider, WireApi};

pub(crate) const PROVIDER: Provider = Provider {
    id: "anthropic",
    display_name: "Anthropic",
    listed: 2,
    key_prefix: Some("sk-ant-"),
    prefixes_shown: &["sk-ant-"],
    key_format_hint: "Starts with sk-ant-.",
    docs_url: "https://console.anthropic.com/settings/keys",
    default_base_url: "https://api.anthropic.com/v1",
    base_url_env: "BYOK_ANTHROPIC_BASE_URL",
    team_key_env: "ANTHROPIC_API_KEY",
    team_secret_env: "BYOK_TEAM_ANTHROPIC_SECRET_ARN",
    wire_api: WireApi::AnthropicMessages,
    accepts_base_url: false,
    model_ids: ModelIds::BareDashedVersions,
    hosts_models: true,
    bare_model_prefixes: &["claude-"],
    bare_model_names: &[],
    key_check_path: "/models",
    gateway_byok_slug: Some("anthropic"),
    credential: CredentialKind::ApiKey,
    gateway_model: GatewayModel::Namespaced,
};
