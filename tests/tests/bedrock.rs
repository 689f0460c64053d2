//! Amazon Bedrock with a user's AWS access key, end to end on both stores:
//! the key is saved after a signed `ListFoundationModels`; completions go
//! to Converse (answered whole) and ConverseStream (event-stream frames)
//! with every request's SigV4 signature recomputed by the stand-in from
//! the stored secret, translated to OpenAI's format with usage and
//! streamed through the `openai` SDK; a wrong secret is refused at save
//! and gives `424 upstream_auth` when stored anyway; the secret access key
//! and session token appear in no response, log line or data file.
#![expect(
    clippy::unwrap_used,
    reason = "test bodies are plain functions run once per store; a failed step stops the test"
)]

use byok_tests::clients::python;
use byok_tests::harness::{contains_bytes, files_below};
use byok_tests::http::Api;
use byok_tests::stores::{Mode, start};
use byok_tests::upstream::{DEFAULT_REPLY, StandIn, Upstream};
use serde_json::json;

const ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET: &str = "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";
const TEMP_KEY_ID: &str = "ASIAIOSFODNN7EXAMPLE";
const TEMP_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYCANARY0002";
const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjCANARYSESSIONTOKEN0003";
const MODEL: &str = "bedrock/anthropic.claude-3-5-haiku-20241022-v1:0";

async fn bedrock_access_keys_serve_completions(mode: Mode) {
    let stand_in = StandIn::start().await;
    stand_in.accept_aws_key(ACCESS_KEY_ID, SECRET, None);
    stand_in.accept_aws_key(TEMP_KEY_ID, TEMP_SECRET, Some(SESSION_TOKEN));
    let dir = tempfile::tempdir().unwrap();
    let server = start(mode, &stand_in, dir.path(), &[("RUST_LOG", "trace")]);
    let ann = server.token("ann", false);
    let api = Api::new(&server.base, Some(&ann));
    let credentials = |secret: &str| json!({"accessKeyId": ACCESS_KEY_ID, "secretAccessKey": secret, "region": "us-east-1"});

    // A wrong secret: refused at save, nothing stored.
    let refused = api
        .post(
            "/api/keys",
            json!({"service": "bedrock", "validate": true,
                   "credentials": credentials("wJalrXUtnFEMI/K7MDENG/bPxRfiCYWRONG00009")}),
        )
        .await;
    assert_eq!(refused.status.as_u16(), 422, "{}", refused.text);
    assert_eq!(refused.code(), "invalid_key");
    let bad_region = api
        .post(
            "/api/keys",
            json!({"service": "bedrock", "credentials":
                   {"accessKeyId": ACCESS_KEY_ID, "secretAccessKey": SECRET, "region": "evil.example/x"}}),
        )
        .await;
    assert_eq!(bad_region.status.as_u16(), 422, "{}", bad_region.text);
    assert!(bad_region.text.contains("region"), "{}", bad_region.text);
    assert_eq!(api.get("/api/keys").await.json["keys"], json!([]));

    // Saved after a signed ListFoundationModels on the control plane.
    let saved = api
        .post(
            "/api/keys",
            json!({"service": "bedrock", "validate": true, "credentials": credentials(SECRET)}),
        )
        .await;
    assert_eq!(saved.status.as_u16(), 201, "{}", saved.text);
    assert_eq!(saved.json["maskedKey"], "AKIA…MPLE (us-east-1)");
    assert_eq!(saved.json["lastValidation"], "valid");
    let checked = stand_in.requests().pop().unwrap();
    assert_eq!(checked.path, "/bedrock/us-east-1/foundation-models");
    assert_eq!(checked.key, ACCESS_KEY_ID);

    // Streamed through the openai SDK: ConverseStream, signed.
    let chat = python(
        "stream_chat.py",
        vec![
            format!("{}/v1", server.base),
            ann.clone(),
            MODEL.to_owned(),
            "Say hello.".to_owned(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(chat["text"], DEFAULT_REPLY, "{chat}");
    assert!(chat["chunks"].as_u64().unwrap() > 1, "{chat}");
    assert_eq!(chat["provider"], "bedrock", "{chat}");
    let sent = stand_in.requests().pop().unwrap();
    assert_eq!(sent.upstream, Some(Upstream::Bedrock));
    assert_eq!(
        sent.path,
        "/bedrock-runtime/us-east-1/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream"
    );
    assert_eq!(sent.model, "anthropic.claude-3-5-haiku-20241022-v1:0");
    assert_eq!(sent.body["messages"][0]["content"][0]["text"], "Say hello.");

    // Answered whole: Converse, usage in the ledger.
    let whole = api
        .post(
            "/v1/chat/completions",
            json!({"model": MODEL, "max_tokens": 32, "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"}]}),
        )
        .await;
    assert_eq!(whole.status.as_u16(), 200, "{}", whole.text);
    assert_eq!(
        whole.json["choices"][0]["message"]["content"],
        DEFAULT_REPLY
    );
    assert_eq!(whole.json["usage"]["prompt_tokens"], 8);
    let sent = stand_in.requests().pop().unwrap();
    assert!(sent.path.ends_with("/converse"), "{}", sent.path);
    assert_eq!(sent.body["system"], json!([{"text": "Be brief."}]));
    assert_eq!(sent.body["inferenceConfig"]["maxTokens"], 32);
    // The ledger entry of an answer sent whole lands off its path: wait.
    let usage = api.requests_once_counted("/api/usage/requests", 2).await;
    let rows = usage.json["requests"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{}", usage.text);
    assert!(
        rows.iter().all(|r| r["promptTokens"] == 8),
        "{}",
        usage.text
    );

    // Temporary credentials send their session token, signed.
    let tim = Api::new(&server.base, Some(&server.token("tim", false)));
    let stored = tim
        .post(
            "/api/keys",
            json!({"service": "bedrock", "credentials": {"aws_access_key_id": TEMP_KEY_ID,
                   "aws_secret_access_key": TEMP_SECRET, "aws_session_token": SESSION_TOKEN,
                   "region": "eu-west-1"}}),
        )
        .await;
    assert_eq!(stored.status.as_u16(), 201, "{}", stored.text);
    let answer = tim.chat(MODEL).await;
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    assert!(
        stand_in
            .requests()
            .pop()
            .unwrap()
            .path
            .starts_with("/bedrock-runtime/eu-west-1/")
    );

    // A wrong secret stored without a check: 424, as Bedrock's 403.
    let dan = Api::new(&server.base, Some(&server.token("dan", false)));
    let stored = dan
        .post(
            "/api/keys",
            json!({"service": "bedrock",
                   "credentials": credentials("wJalrXUtnFEMI/K7MDENG/bPxRfiCYWRONG00009")}),
        )
        .await;
    assert_eq!(stored.status.as_u16(), 201, "{}", stored.text);
    let refused = dan.chat(MODEL).await;
    assert_eq!(refused.status.as_u16(), 424, "{}", refused.text);
    assert_eq!(refused.code(), "upstream_auth");

    // No secret part anywhere.
    let mut seen = vec![
        saved.text,
        whole.text,
        refused.text,
        api.get("/api/keys").await.text,
        api.get("/api/audit").await.text,
        server.output(),
    ];
    seen.push(chat.to_string());
    for text in &seen {
        for secret in [SECRET, TEMP_SECRET, SESSION_TOKEN] {
            assert!(!text.contains(secret), "a secret part leaked");
        }
    }
    for (file, bytes) in files_below(dir.path()) {
        for secret in [SECRET, TEMP_SECRET, SESSION_TOKEN] {
            assert!(
                !contains_bytes(&bytes, secret.as_bytes()),
                "{} holds a secret in clear",
                file.display()
            );
        }
    }
    drop(server);
    stand_in.shutdown().await;
}

/// `BYOK_TEAM_BEDROCK=role`: the team path serves `bedrock/*` with the
/// process's own credentials from the default chain (here the environment's,
/// as a Lambda function's role gives them), in the configured region, for a
/// user without a key who allows team fallback; consent rules unchanged.
async fn the_team_path_uses_the_processs_own_aws_credentials(mode: Mode) {
    const ROLE_KEY_ID: &str = "AKIATEAMROLE00000001";
    const ROLE_SECRET: &str = "teamRoleSecretCANARY0000000000000004";
    let stand_in = StandIn::start().await;
    stand_in.accept_aws_key(ROLE_KEY_ID, ROLE_SECRET, None);
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        mode,
        &stand_in,
        dir.path(),
        &[
            ("BYOK_TEAM_BEDROCK", "role"),
            ("BYOK_TEAM_BEDROCK_REGION", "us-west-2"),
            ("AWS_ACCESS_KEY_ID", ROLE_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", ROLE_SECRET),
        ],
    );
    let api = Api::new(&server.base, Some(&server.token("nokeys", false)));
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]});
    let resolved = api.get(&format!("/api/resolve?model={MODEL}")).await;
    assert_eq!(resolved.json["path"], "team-provider", "{}", resolved.text);
    let answer = api.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    assert_eq!(answer.header("x-byok-path"), Some("team-provider"));
    assert_eq!(answer.header("x-byok-paid-by"), Some("team"));
    let sent = stand_in.requests().pop().unwrap();
    assert_eq!(sent.key, ROLE_KEY_ID, "signed with the process's own key");
    assert!(
        sent.path.starts_with("/bedrock-runtime/us-west-2/model/"),
        "{}",
        sent.path
    );

    // Consent off: refused before any call.
    let off = api
        .post("/api/user-settings", json!({"allowGatewayFallback": false}))
        .await;
    assert_eq!(off.status.as_u16(), 200, "{}", off.text);
    let calls = stand_in.requests().len();
    let refused = api.post("/v1/chat/completions", body).await;
    assert_eq!(refused.status.as_u16(), 403, "{}", refused.text);
    assert_eq!(refused.code(), "consent_required");
    assert_eq!(stand_in.requests().len(), calls);
    assert!(!server.output().contains(ROLE_SECRET));
    drop(server);
    stand_in.shutdown().await;
}

async fn bedrock_keys_go_through_the_gateway_by_its_model_names(mode: Mode) {
    const TEAM_GATEWAY_KEY: &str = "vck_teamkey0bedrockviagateway0000000001";
    let stand_in = StandIn::start().await;
    stand_in.accept_keys([TEAM_GATEWAY_KEY]);
    stand_in.accept_aws_key(TEMP_KEY_ID, TEMP_SECRET, Some(SESSION_TOKEN));
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        mode,
        &stand_in,
        dir.path(),
        &[
            ("AI_GATEWAY_API_KEY", TEAM_GATEWAY_KEY),
            ("BYOK_ROUTE_USER_KEYS_VIA_GATEWAY", "true"),
            ("RUST_LOG", "debug"),
        ],
    );
    let api = Api::new(&server.base, Some(&server.token("gus", false)));
    let stored = api
        .post(
            "/api/keys",
            json!({"service": "bedrock", "credentials": {
                "accessKeyId": TEMP_KEY_ID, "secretAccessKey": TEMP_SECRET,
                "sessionToken": SESSION_TOKEN, "region": "eu-west-1"}}),
        )
        .await;
    assert_eq!(stored.status.as_u16(), 201, "{}", stored.text);

    // A Bedrock id the gateway has a name for (an inference profile here):
    // the gateway gets its own name, the AWS key in its byok shape, and is
    // told to serve it through Bedrock only.
    let profile = "bedrock/us.anthropic.claude-3-5-haiku-20241022-v1:0";
    let resolved = api.get(&format!("/api/resolve?model={profile}")).await;
    assert_eq!(resolved.json["via"], "gateway", "{}", resolved.text);
    stand_in.echo_keys(true);
    let answer = api.chat(profile).await;
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    assert_eq!(answer.header("x-byok-path"), Some("user-provider"));
    assert_eq!(answer.header("x-byok-via"), Some("gateway"));
    let sent = stand_in.requests().pop().unwrap();
    assert_eq!(sent.upstream, Some(Upstream::Gateway));
    assert_eq!(sent.key, TEAM_GATEWAY_KEY);
    assert_eq!(sent.model, "anthropic/claude-3.5-haiku");
    assert_eq!(
        sent.body["providerOptions"]["gateway"],
        json!({"byok": {"bedrock": [{
            "accessKeyId": TEMP_KEY_ID, "secretAccessKey": TEMP_SECRET,
            "sessionToken": SESSION_TOKEN, "region": "eu-west-1"}]},
            "only": ["bedrock"]}),
        "{}",
        sent.body
    );
    stand_in.echo_keys(false);

    // An id without a gateway name is called directly, signed.
    let other = "bedrock/cohere.command-r-v1:0";
    let resolved = api.get(&format!("/api/resolve?model={other}")).await;
    assert_eq!(resolved.json.get("via"), None, "{}", resolved.text);
    let direct = api.chat(other).await;
    assert_eq!(direct.status.as_u16(), 200, "{}", direct.text);
    assert_eq!(direct.header("x-byok-via"), None);
    let sent = stand_in.requests().pop().unwrap();
    assert_eq!(sent.upstream, Some(Upstream::Bedrock));
    assert_eq!(sent.key, TEMP_KEY_ID);
    assert!(
        sent.path.starts_with("/bedrock-runtime/eu-west-1/model/"),
        "{}",
        sent.path
    );

    let log = server.output();
    for secret in [TEMP_SECRET, SESSION_TOKEN, TEAM_GATEWAY_KEY] {
        assert!(!answer.text.contains(secret), "{}", answer.text);
        assert!(!direct.text.contains(secret));
        assert!(!log.contains(secret), "{secret} in the log");
    }
    drop(server);
    stand_in.shutdown().await;
}

byok_tests::on_every_store!(
    bedrock_access_keys_serve_completions,
    the_team_path_uses_the_processs_own_aws_credentials,
    bedrock_keys_go_through_the_gateway_by_its_model_names
);
