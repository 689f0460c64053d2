//! xAI (Grok), OpenAI-compatible.

use super::{Provider, WireApi};

pub(super) const PROVIDER: Provider = Provider {
    id: "xai",
    display_name: "xAI",
    key_prefix: Some("xai-"),
    key_format_hint: "Starts with xai-.",
    docs_url: "https://console.x.ai",
    default_base_url: "https://api.x.ai/v1",
    base_url_env: "BYOK_XAI_BASE_URL",
    team_key_env: "XAI_API_KEY",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    takes_namespaced_model: false,
    key_check_path: "/models",
};
