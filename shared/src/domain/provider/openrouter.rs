//! OpenRouter: OpenAI-compatible, takes `provider/model` ids; a key is checked on its own `/key` route.

use super::{CredentialKind, GatewayModel, ModelIds, Provider, WireApi};

pub(crate) const PROVIDER: Provider = Provider {
    id: "openrouter",
    display_name: "OpenRouter",
    listed: 4,
    key_prefix: Some("sk-or-"),
    prefixes_shown: &["sk-or-v1-"],
    key_format_hint: "Starts with sk-or- (usually sk-or-v1-).",
    docs_url: "https://openrouter.ai/settings/keys",
    default_base_url: "https://openrouter.ai/api/v1",
    base_url_env: "BYOK_OPENROUTER_BASE_URL",
    team_key_env: "OPENROUTER_API_KEY",
    team_secret_env: "BYOK_TEAM_OPENROUTER_SECRET_ARN",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    model_ids: ModelIds::Namespaced,
    hosts_models: true,
    bare_model_prefixes: &[],
    bare_model_names: &[],
    key_check_path: "/key",
    gateway_byok_slug: None,
    credential: CredentialKind::ApiKey,
    gateway_model: GatewayModel::Namespaced,
};
