//! Anthropic: the Messages API (translated by `providers::anthropic`), keyed with `x-api-key` and a version header.

use super::{Provider, WireApi};

pub(super) const PROVIDER: Provider = Provider {
    id: "anthropic",
    display_name: "Anthropic",
    key_prefix: Some("sk-ant-"),
    key_format_hint: "Starts with sk-ant-.",
    docs_url: "https://console.anthropic.com/settings/keys",
    default_base_url: "https://api.anthropic.com/v1",
    base_url_env: "BYOK_ANTHROPIC_BASE_URL",
    team_key_env: "ANTHROPIC_API_KEY",
    wire_api: WireApi::AnthropicMessages,
    accepts_base_url: false,
    takes_namespaced_model: false,
    key_check_path: "/models",
};
