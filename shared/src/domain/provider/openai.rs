//! OpenAI: the model catalog's own provider and the wire format every other OpenAI-compatible provider speaks.

use super::{Provider, WireApi};

pub(super) const PROVIDER: Provider = Provider {
    id: "openai",
    display_name: "OpenAI",
    key_prefix: Some("sk-"),
    key_format_hint: "Starts with sk- (project keys: sk-proj-).",
    docs_url: "https://platform.openai.com/api-keys",
    default_base_url: "https://api.openai.com/v1",
    base_url_env: "BYOK_OPENAI_BASE_URL",
    team_key_env: "OPENAI_API_KEY",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    takes_namespaced_model: false,
    key_check_path: "/models",
};
