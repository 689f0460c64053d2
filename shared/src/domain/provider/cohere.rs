//! Cohere through its OpenAI-compatible API
//! (`https://api.cohere.ai/compatibility/v1`: chat completions and
//! embeddings). That API lists no models, so the key check is Cohere's own
//! `GET /v1/models` beside it (two path segments up from the base). Not
//! named in gateway BYOK requests: the gateway documents no BYOK slug for it.

use super::{CredentialKind, GatewayModel, ModelIds, Provider, WireApi};

pub(crate) const PROVIDER: Provider = Provider {
    id: "cohere",
    display_name: "Cohere",
    listed: 14,
    key_prefix: None,
    prefixes_shown: &[],
    key_format_hint: "A Cohere API key: 40 letters and digits, no prefix.",
    docs_url: "https://dashboard.cohere.com/api-keys",
    default_base_url: "https://api.cohere.ai/compatibility/v1",
    base_url_env: "BYOK_COHERE_BASE_URL",
    team_key_env: "COHERE_API_KEY",
    team_secret_env: "BYOK_TEAM_COHERE_SECRET_ARN",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    model_ids: ModelIds::Bare,
    hosts_models: true,
    bare_model_prefixes: &["command-", "embed-"],
    bare_model_names: &[],
    key_check_path: "/../../v1/models",
    gateway_byok_slug: None,
    credential: CredentialKind::ApiKey,
    gateway_model: GatewayModel::Namespaced,
};
