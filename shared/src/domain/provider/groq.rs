//! Groq, OpenAI-compatible.

use super::{Provider, WireApi};

pub(super) const PROVIDER: Provider = Provider {
    id: "groq",
    display_name: "Groq",
    key_prefix: Some("gsk_"),
    key_format_hint: "Starts with gsk_.",
    docs_url: "https://console.groq.com/keys",
    default_base_url: "https://api.groq.com/openai/v1",
    base_url_env: "BYOK_GROQ_BASE_URL",
    team_key_env: "GROQ_API_KEY",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    takes_namespaced_model: false,
    key_check_path: "/models",
};
