//! Fireworks AI, OpenAI-compatible (`https://api.fireworks.ai/inference/v1`).
//! Its model ids are `accounts/fireworks/models/<name>`: `fireworks/<name>`
//! reaches it with that prefix, and a full id (`fireworks/accounts/…`) as
//! given. It hosts other makers' models, so no bare id is its own.

use super::{CredentialKind, GatewayModel, ModelIds, Provider, WireApi};

pub(crate) const PROVIDER: Provider = Provider {
    id: "fireworks",
    display_name: "Fireworks AI",
    listed: 11,
    key_prefix: None,
    prefixes_shown: &["fw_"],
    key_format_hint: "A Fireworks AI API key (usually starts with fw_).",
    docs_url: "https://fireworks.ai/account/api-keys",
    default_base_url: "https://api.fireworks.ai/inference/v1",
    base_url_env: "BYOK_FIREWORKS_BASE_URL",
    team_key_env: "FIREWORKS_API_KEY",
    team_secret_env: "BYOK_TEAM_FIREWORKS_SECRET_ARN",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    model_ids: ModelIds::Prefixed("accounts/fireworks/models/"),
    hosts_models: true,
    bare_model_prefixes: &[],
    bare_model_names: &[],
    key_check_path: "/models",
    gateway_byok_slug: Some("fireworks"),
    credential: CredentialKind::ApiKey,
    gateway_model: GatewayModel::Namespaced,
};
