//! Google Gemini through its OpenAI-compatible endpoint.

use super::{CredentialKind, GatewayModel, ModelIds, Provider, WireApi};

pub(crate) const PROVIDER: Provider = Provider {
    id: "google",
    display_name: "Google",
    listed: 5,
    key_prefix: Some("AIza"),
    prefixes_shown: &["AIza"],
    key_format_hint: "A Google AI Studio key; starts with AIza.",
    docs_url: "https://aistudio.google.com/app/apikey",
    default_base_url: "https://generativelanguage.googleapis.com/v1beta/openai",
    base_url_env: "BYOK_GOOGLE_BASE_URL",
    team_key_env: "GOOGLE_API_KEY",
    team_secret_env: "BYOK_TEAM_GOOGLE_SECRET_ARN",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    model_ids: ModelIds::Bare,
    hosts_models: true,
    bare_model_prefixes: &["gemini-"],
    bare_model_names: &[],
    key_check_path: "/models",
    gateway_byok_slug: Some("google"),
    credential: CredentialKind::ApiKey,
    gateway_model: GatewayModel::Namespaced,
};
