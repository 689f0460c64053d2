//! Mistral AI, OpenAI-compatible (`https://api.mistral.ai/v1`). Keys have no
//! documented prefix. Not named in gateway BYOK requests: the gateway's
//! documentation confirms no BYOK slug for it.

use super::{CredentialKind, GatewayModel, ModelIds, Provider, WireApi};

pub(crate) const PROVIDER: Provider = Provider {
    id: "mistral",
    display_name: "Mistral AI",
    listed: 8,
    key_prefix: None,
    prefixes_shown: &[],
    key_format_hint: "A Mistral API key: 32 letters and digits, no prefix.",
    docs_url: "https://console.mistral.ai/api-keys",
    default_base_url: "https://api.mistral.ai/v1",
    base_url_env: "BYOK_MISTRAL_BASE_URL",
    team_key_env: "MISTRAL_API_KEY",
    team_secret_env: "BYOK_TEAM_MISTRAL_SECRET_ARN",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    model_ids: ModelIds::Bare,
    hosts_models: true,
    bare_model_prefixes: &[
        "mistral-",
        "codestral-",
        "magistral-",
        "ministral-",
        "pixtral-",
        "devstral-",
    ],
    bare_model_names: &[],
    key_check_path: "/models",
    gateway_byok_slug: None,
    credential: CredentialKind::ApiKey,
    gateway_model: GatewayModel::Namespaced,
};
