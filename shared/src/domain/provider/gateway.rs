//! The Vercel AI Gateway: OpenAI-compatible, takes `provider/model` ids, a user may give their own base URL; a key is checked on `/credits`.

use super::{CredentialKind, GatewayModel, ModelIds, Provider, WireApi};

pub(crate) const PROVIDER: Provider = Provider {
    id: "gateway",
    display_name: "Vercel AI Gateway",
    listed: 20,
    key_prefix: None,
    prefixes_shown: &["vck_"],
    key_format_hint: "A Vercel AI Gateway key (usually vck_…); optional https base URL.",
    docs_url: "https://vercel.com/docs/ai-gateway",
    default_base_url: "https://ai-gateway.vercel.sh/v1",
    base_url_env: "AI_GATEWAY_URL",
    team_key_env: "AI_GATEWAY_API_KEY",
    team_secret_env: "BYOK_TEAM_GATEWAY_SECRET_ARN",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: true,
    model_ids: ModelIds::Namespaced,
    hosts_models: false,
    bare_model_prefixes: &[],
    bare_model_names: &[],
    key_check_path: "/credits",
    gateway_byok_slug: None,
    credential: CredentialKind::ApiKey,
    gateway_model: GatewayModel::Namespaced,
};
