//! Cerebras, OpenAI-compatible (`https://api.cerebras.ai/v1`). It hosts
//! other makers' models (`gpt-oss-120b`), so no bare id is its own.

use super::{CredentialKind, GatewayModel, ModelIds, Provider, WireApi};

pub(crate) const PROVIDER: Provider = Provider {
    id: "cerebras",
    display_name: "Cerebras",
    listed: 13,
    key_prefix: None,
    prefixes_shown: &["csk-"],
    key_format_hint: "A Cerebras API key (usually starts with csk-).",
    docs_url: "https://cloud.cerebras.ai/platform",
    default_base_url: "https://api.cerebras.ai/v1",
    base_url_env: "BYOK_CEREBRAS_BASE_URL",
    team_key_env: "CEREBRAS_API_KEY",
    team_secret_env: "BYOK_TEAM_CEREBRAS_SECRET_ARN",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    model_ids: ModelIds::Bare,
    hosts_models: true,
    bare_model_prefixes: &[],
    bare_model_names: &[],
    key_check_path: "/models",
    gateway_byok_slug: Some("cerebras"),
    credential: CredentialKind::ApiKey,
    gateway_model: GatewayModel::Namespaced,
};
