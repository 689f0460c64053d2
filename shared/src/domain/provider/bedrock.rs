//! Amazon Bedrock with a user's AWS access key: chat completions through
//! the Converse and ConverseStream API, each request signed with SigV4
//! (`bedrock`, the key's region). The base URL holds the key's region; the
//! key check is `ListFoundationModels` on the control-plane host beside it
//! (`bedrock.` instead of `bedrock-runtime.`). Models are
//! `bedrock/<modelId>` (`bedrock/anthropic.claude-3-5-haiku-20241022-v1:0`)
//! or inference-profile ids, sent as given.

use super::{CredentialKind, ModelIds, Provider, WireApi};

pub(crate) const PROVIDER: Provider = Provider {
    id: "bedrock",
    display_name: "Amazon Bedrock",
    listed: 16,
    key_prefix: None,
    prefixes_shown: &[],
    key_format_hint: "AWS credentials: accessKeyId, secretAccessKey, region (and sessionToken for temporary ones).",
    docs_url: "https://docs.aws.amazon.com/bedrock/latest/userguide/security-iam.html",
    default_base_url: "https://bedrock-runtime.{region}.amazonaws.com",
    base_url_env: "BYOK_BEDROCK_BASE_URL",
    team_key_env: "BEDROCK_API_KEY",
    team_secret_env: "BYOK_TEAM_BEDROCK_SECRET_ARN",
    wire_api: WireApi::BedrockConverse,
    accepts_base_url: false,
    model_ids: ModelIds::Bare,
    hosts_models: true,
    bare_model_prefixes: &[],
    bare_model_names: &[],
    key_check_path: "/foundation-models",
    gateway_byok_slug: None,
    credential: CredentialKind::AwsAccessKey,
    gateway_takes_upstream_model: false,
};
