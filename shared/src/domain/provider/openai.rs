//! OpenAI: the model catalog's own provider and the wire format every other OpenAI-compatible provider speaks.

use super::{CredentialKind, GatewayModel, ModelIds, Provider, WireApi};

pub(crate) const PROVIDER: Provider = Provider {
    id: "openai",
    display_name: "OpenAI",
    listed: 1,
    key_prefix: Some("sk-"),
    prefixes_shown: &["sk-proj-"],
    key_format_hint: "Starts with sk- (project keys: sk-proj-).",
    docs_url: "https://platform.openai.com/api-keys",
    default_base_url: "https://api.openai.com/v1",
    base_url_env: "BYOK_OPENAI_BASE_URL",
    team_key_env: "OPENAI_API_KEY",
    team_secret_env: "BYOK_TEAM_OPENAI_SECRET_ARN",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    model_ids: ModelIds::Bare,
    hosts_models: true,
    bare_model_prefixes: &["gpt-", "o1-", "o3-", "o4-", "text-embedding-"],
    bare_model_names: &["o1", "o3"],
    key_check_path: "/models",
    gateway_byok_slug: Some("openai"),
    credential: CredentialKind::ApiKey,
    gateway_model: GatewayModel::Namespaced,
};
