//! Groq, OpenAI-compatible.

use super::{CredentialKind, GatewayModel, ModelIds, Provider, WireApi};

pub(crate) const PROVIDER: Provider = Provider {
    id: "groq",
    display_name: "Groq",
    listed: 6,
    key_prefix: Some("gsk_"),
    prefixes_shown: &["gsk_"],
    key_format_hint: "Starts with gsk_.",
    docs_url: "https://console.groq.com/keys",
    default_base_url: "https://api.groq.com/openai/v1",
    base_url_env: "BYOK_GROQ_BASE_URL",
    team_key_env: "GROQ_API_KEY",
    team_secret_env: "BYOK_TEAM_GROQ_SECRET_ARN",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    model_ids: ModelIds::Bare,
    hosts_models: true,
    bare_model_prefixes: &[],
    bare_model_names: &[],
    key_check_path: "/models",
    gateway_byok_slug: Some("groq"),
    credential: CredentialKind::ApiKey,
    gateway_model: GatewayModel::Namespaced,
};
