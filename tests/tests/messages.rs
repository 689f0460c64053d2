//! `POST /v1/messages` (Anthropic's Messages API) end to end on both stores:
//! the official `anthropic` Python SDK, streamed and not, through a user's
//! Anthropic key (token as `x-api-key`), the body reaching Anthropic as sent
//! but for the model name, events passed through chunk by chunk, usage in
//! the ledger; through the team gateway's Anthropic-compatible endpoint with
//! consent; another provider's model is `400 unsupported_model` before any
//! upstream call.
#![expect(
    clippy::unwrap_used,
    reason = "test bodies are plain functions run once per store; a failed step stops the test"
)]

use byok_tests::clients::python;
use byok_tests::http::Api;
use byok_tests::stores::{Mode, start};
use byok_tests::upstream::{DEFAULT_REPLY, StandIn, Upstream};
use serde_json::{Value, json};

const ANTHROPIC_KEY: &str = "sk-ant-api03-messages0user0000000000000001";
const OPENAI_KEY: &str = "sk-proj-messages0user00000000000000000001";
const TEAM_GATEWAY_KEY: &str = "vck_teamkey0messages000000000000000000001";
const MODEL: &str = "claude-3-5-haiku-latest";

/// Runs `tests/clients/python/messages.py`; its JSON line.
async fn python_messages(args: Vec<String>) -> Value {
    python("messages.py", args).await.unwrap()
}

async fn messages_work_end_to_end(mode: Mode) {
    let stand_in = StandIn::start().await;
    stand_in.accept_keys([ANTHROPIC_KEY, OPENAI_KEY, TEAM_GATEWAY_KEY]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        mode,
        &stand_in,
        dir.path(),
        &[("AI_GATEWAY_API_KEY", TEAM_GATEWAY_KEY)],
    );
    let token = server.token("mia", false);
    let api = Api::new(&server.base, Some(&token));
    let saved = api
        .post(
            "/api/keys",
            json!({"service": "anthropic", "apiKey": ANTHROPIC_KEY}),
        )
        .await;
    assert_eq!(saved.status.as_u16(), 201, "{}", saved.text);

    for stream in [true, false] {
        let before = stand_in.requests().len();
        let mut args = vec![
            server.base.clone(),
            token.clone(),
            MODEL.to_owned(),
            "Say hello.".to_owned(),
        ];
        if !stream {
            args.insert(0, "--no-stream".to_owned());
        }
        let answer = python_messages(args).await;
        assert_eq!(answer["text"], DEFAULT_REPLY, "{answer}");
        assert_eq!(answer["path"], "user-provider", "{answer}");
        if stream {
            assert!(
                answer["chunks"].as_u64().unwrap() > 1,
                "chunk by chunk: {answer}"
            );
        }
        let sent = stand_in.requests()[before..].to_vec();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].upstream, Some(Upstream::Anthropic));
        assert_eq!(sent[0].path, "/anthropic/v1/messages");
        assert_eq!(sent[0].key, ANTHROPIC_KEY);
        assert_eq!(sent[0].model, MODEL);
        // Anthropic's own request, not a translation.
        assert_eq!(sent[0].body["max_tokens"], 64);
        assert_eq!(sent[0].body["messages"][0]["content"], "Say hello.");
        assert!(sent[0].body.get("stream_options").is_none());
        let usage = answer["inputTokens"].as_u64().unwrap();
        assert!(usage > 0, "{answer}");
    }
    let recent = api.requests_once_counted("/api/usage/requests", 2).await;
    let rows = recent.json["requests"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{}", recent.text);
    assert!(
        rows.iter()
            .all(|r| r["promptTokens"].as_u64() > Some(0) && r["estimated"] == false),
        "{}",
        recent.text
    );

    // A model another provider serves: refused before any upstream call.
    api.post(
        "/api/keys",
        json!({"service": "openai", "apiKey": OPENAI_KEY}),
    )
    .await;
    let before = stand_in.requests().len();
    let refused = api
        .post(
            "/v1/messages",
            json!({"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(refused.status.as_u16(), 400, "{}", refused.text);
    assert_eq!(refused.code(), "unsupported_model");
    let missing = api
        .post(
            "/v1/messages",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(missing.status.as_u16(), 400, "{}", missing.text);
    assert_eq!(stand_in.requests().len(), before);

    // Without a key of their own, with consent: the team gateway's
    // Anthropic-compatible endpoint, the model namespaced.
    let other_token = server.token("max", false);
    let before = stand_in.requests().len();
    let answer = python_messages(vec![
        server.base.clone(),
        other_token,
        MODEL.to_owned(),
        "Say hello.".to_owned(),
    ])
    .await;
    assert_eq!(answer["path"], "team-gateway", "{answer}");
    let sent = stand_in.requests()[before..].to_vec();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].upstream, Some(Upstream::Gateway));
    assert_eq!(sent[0].path, "/gateway/v1/messages");
    assert_eq!(sent[0].key, TEAM_GATEWAY_KEY);
    assert_eq!(sent[0].model, format!("anthropic/{MODEL}"));
    drop(server);
    stand_in.shutdown().await;
}

byok_tests::on_every_store!(messages_work_end_to_end);
