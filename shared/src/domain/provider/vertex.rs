//! Google Vertex AI through its OpenAI-compatible endpoint, with a service
//! account instead of an API key: each call first exchanges the account
//! for a short-lived access token at Google's token endpoint (cached until
//! shortly before it expires). The base URL holds the account's project
//! and location (`{location-}` is `{location}-`, or nothing for `global`);
//! the key check lists the project's endpoints in that location (one
//! path segment above the OpenAI-compatible one). Models are
//! `vertex/<model>`, sent as Vertex names Google's own (`google/<model>`);
//! a name with a publisher (`vertex/meta/…`) is sent as it is.

use super::{CredentialKind, GatewayModel, ModelIds, Provider, WireApi};

pub(crate) const PROVIDER: Provider = Provider {
    id: "vertex",
    display_name: "Google Vertex AI",
    listed: 15,
    key_prefix: None,
    prefixes_shown: &[],
    key_format_hint: "A service account: upload its JSON key file's fields as credentials, plus location (e.g. us-central1).",
    docs_url: "https://cloud.google.com/iam/docs/keys-create-delete",
    default_base_url: "https://{location-}aiplatform.googleapis.com/v1/projects/{project}/locations/{location}/endpoints/openapi",
    base_url_env: "BYOK_VERTEX_BASE_URL",
    team_key_env: "VERTEX_API_KEY",
    team_secret_env: "BYOK_TEAM_VERTEX_SECRET_ARN",
    wire_api: WireApi::OpenAiCompatible,
    accepts_base_url: false,
    model_ids: ModelIds::Prefixed("google/"),
    hosts_models: true,
    bare_model_prefixes: &[],
    bare_model_names: &[],
    key_check_path: "/..",
    gateway_byok_slug: Some("vertex"),
    credential: CredentialKind::GcpServiceAccount,
    gateway_model: GatewayModel::Upstream,
};
