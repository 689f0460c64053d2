//! Google Gemini through its OpenAI-compatible endpoint.

use super::{Provider, WireApi};

pub(super) const PROVIDER: Provider = Provider {
    id: "google",
    display_name: "Google",
    key_prefix: Some("AIza"),
    key_format_hint: "A Google AI Studio key; starts with AIza.",
    docs_url: "https://aistudio.google.com/app/apikey",
    default_base_url: "https://generativelanguage.googleapis.com/v1beta/openai",
    base_url_env: "BYOK_GOOGLE_BASE_URL",
    team_key_env: "GOOGLE_API_KEY",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    takes_namespaced_model: false,
    key_check_path: "/models",
};
