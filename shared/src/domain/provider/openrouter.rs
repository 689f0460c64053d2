//! OpenRouter: OpenAI-compatible, takes `provider/model` ids; a key is checked on its own `/key` route.

use super::{Provider, WireApi};

pub(super) const PROVIDER: Provider = Provider {
    id: "openrouter",
    display_name: "OpenRouter",
    key_prefix: Some("sk-or-"),
    key_format_hint: "Starts with sk-or- (usually sk-or-v1-).",
    docs_url: "https://openrouter.ai/settings/keys",
    default_base_url: "https://openrouter.ai/api/v1",
    base_url_env: "BYOK_OPENROUTER_BASE_URL",
    team_key_env: "OPENROUTER_API_KEY",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    takes_namespaced_model: true,
    key_check_path: "/key",
};
