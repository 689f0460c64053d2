//! Amazon Bedrock with a user's AWS access key: chat completions through
//! the Converse and ConverseStream API, each request signed with SigV4
//! (`bedrock`, the key's region). The base URL holds the key's region; the
//! key check is `ListFoundationModels` on the control-plane host beside it
//! (`bedrock.` instead of `bedrock-runtime.`). Models are
//! `bedrock/<modelId>` (`bedrock/anthropic.claude-3-5-haiku-20241022-v1:0`)
//! or inference-profile ids, sent as given. Through the team gateway
//! (request-scoped BYOK) a model goes by the gateway's name for it, from
//! [`GATEWAY_NAMES`]; a model without one is called directly.

use super::{CredentialKind, GatewayModel, ModelIds, Provider, WireApi};

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
    gateway_byok_slug: Some("bedrock"),
    credential: CredentialKind::AwsAccessKey,
    gateway_model: GatewayModel::Renamed {
        names: GATEWAY_NAMES,
        profile_prefixes: &[
            "us.", "us-gov.", "eu.", "apac.", "jp.", "au.", "ca.", "global.",
        ],
    },
};

/// Bedrock model id stems and the Vercel AI Gateway's names for the same
/// models (the gateway names models by their maker and serves them on
/// Bedrock with the credential it is given).
pub(crate) const GATEWAY_NAMES: &[(&str, &str)] = &[
    ("anthropic.claude-3-haiku", "anthropic/claude-3-haiku"),
    ("anthropic.claude-3-opus", "anthropic/claude-3-opus"),
    ("anthropic.claude-3-5-haiku", "anthropic/claude-3.5-haiku"),
    ("anthropic.claude-3-5-sonnet", "anthropic/claude-3.5-sonnet"),
    ("anthropic.claude-3-7-sonnet", "anthropic/claude-3.7-sonnet"),
    ("anthropic.claude-sonnet-4", "anthropic/claude-sonnet-4"),
    ("anthropic.claude-sonnet-4-5", "anthropic/claude-sonnet-4.5"),
    ("anthropic.claude-opus-4", "anthropic/claude-opus-4"),
    ("anthropic.claude-opus-4-1", "anthropic/claude-opus-4.1"),
    ("anthropic.claude-haiku-4-5", "anthropic/claude-haiku-4.5"),
    ("amazon.nova-micro", "amazon/nova-micro"),
    ("amazon.nova-lite", "amazon/nova-lite"),
    ("amazon.nova-pro", "amazon/nova-pro"),
    ("meta.llama3-1-8b-instruct", "meta/llama-3.1-8b"),
    ("meta.llama3-1-70b-instruct", "meta/llama-3.1-70b"),
    ("meta.llama3-3-70b-instruct", "meta/llama-3.3-70b"),
    ("meta.llama4-scout-17b-instruct", "meta/llama-4-scout"),
    ("meta.llama4-maverick-17b-instruct", "meta/llama-4-maverick"),
    ("deepseek.r1", "deepseek/deepseek-r1"),
];
