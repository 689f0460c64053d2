//! The Vercel AI Gateway: OpenAI-compatible, takes `provider/model` ids, a user may give their own base URL; a key is checked on `/credits`.

use super::{Provider, WireApi};

pub(super) const PROVIDER: Provider = Provider {
    id: "gateway",
    display_name: "Vercel AI Gateway",
    key_prefix: None,
    key_format_hint: "A Vercel AI Gateway key (usually vck_…); optional https base URL.",
    docs_url: "https://vercel.com/docs/ai-gateway",
    default_base_url: "https://ai-gateway.vercel.sh/v1",
    base_url_env: "AI_GATEWAY_URL",
    team_key_env: "AI_GATEWAY_API_KEY",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: true,
    takes_namespaced_model: true,
    key_check_path: "/credits",
};
