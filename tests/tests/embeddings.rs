//! `POST /v1/embeddings` end to end on both stores: the official `openai`
//! Python SDK embeds through a user's key; the usage ledger records the
//! input tokens at the catalog's price; a team path needs consent and
//! charges the budget; a provider without embeddings is `400
//! unsupported_model` before any upstream call; bad input changes nothing.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test bodies are plain functions run once per store; a failed step stops the test"
)]

use byok_tests::clients::python;
use byok_tests::http::Api;
use byok_tests::stores::{Mode, start};
use byok_tests::upstream::{StandIn, Upstream};
use serde_json::{Value, json};
use std::path::PathBuf;

const OPENAI_KEY: &str = "sk-proj-embeddings0user0000000000000001";
const ANTHROPIC_KEY: &str = "sk-ant-api03-embeddings0user00000000001";
const TEAM_GATEWAY_KEY: &str = "vck_teamkey0embeddings00000000000000001";

/// Runs `tests/clients/python/embed.py` with `args`; its JSON line.
async fn python_embed(args: Vec<String>) -> Value {
    python("embed.py", args).await.unwrap()
}

/// Runs `embed.mjs` (the Vercel AI SDK's `embed`) in
/// `BYOK_TEST_NODE_CLIENT_DIR` with `args`; its JSON line.
async fn node_embed(args: Vec<String>) -> Value {
    let dir = std::env::var_os("BYOK_TEST_NODE_CLIENT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("BYOK_TEST_NODE_CLIENT_DIR is not set (the test script sets it)")
        });
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .current_dir(&dir)
            .arg(dir.join("embed.mjs"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

async fn embeddings_work_end_to_end(mode: Mode) {
    let stand_in = StandIn::start().await;
    stand_in.accept_keys([OPENAI_KEY, ANTHROPIC_KEY, TEAM_GATEWAY_KEY]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        mode,
        &stand_in,
        dir.path(),
        &[("AI_GATEWAY_API_KEY", TEAM_GATEWAY_KEY)],
    );
    let token = server.token("emma", false);
    let api = Api::new(&server.base, Some(&token));
    let saved = api
        .post(
            "/api/keys",
            json!({"service": "openai", "apiKey": OPENAI_KEY}),
        )
        .await;
    assert_eq!(saved.status.as_u16(), 201, "{}", saved.text);

    // The official SDK, through the user's key.
    let before = stand_in.requests().len();
    let answer = python_embed(vec![
        format!("{}/v1", server.base),
        token.clone(),
        "text-embedding-3-small".into(),
        "the first text to embed".into(),
        "a second one".into(),
    ])
    .await;
    assert_eq!(answer["count"], 2, "{answer}");
    assert_eq!(answer["dims"], 8, "{answer}");
    assert_eq!(answer["promptTokens"], 8, "{answer}");
    assert_eq!(answer["path"], "user-provider");
    assert_eq!(answer["provider"], "openai");
    let sent = stand_in.requests()[before..].to_vec();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].upstream, Some(Upstream::OpenAi));
    assert_eq!(sent[0].path, "/openai/v1/embeddings");
    assert_eq!(sent[0].key, OPENAI_KEY);
    assert_eq!(sent[0].model, "text-embedding-3-small");

    // The Vercel AI SDK's embed, the same way.
    let answer = node_embed(vec![
        format!("{}/v1", server.base),
        token.clone(),
        "openai/text-embedding-3-small".into(),
        "one value to embed".into(),
    ])
    .await;
    assert_eq!(answer["dims"], 8, "{answer}");
    assert_eq!(answer["tokens"], 4, "{answer}");
    assert_eq!(answer["path"], "user-provider", "{answer}");

    // Recorded in the ledger at the catalog's price.
    let recent = api.requests_once_counted("/api/usage/requests", 2).await;
    let rows: Vec<Value> = recent.json["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["model"] == "openai/text-embedding-3-small")
        .cloned()
        .collect();
    let mut tokens: Vec<u64> = rows
        .iter()
        .filter_map(|r| r["promptTokens"].as_u64())
        .collect();
    tokens.sort_unstable();
    assert_eq!(tokens, [4, 8], "{}", recent.text);
    let row = rows.iter().find(|r| r["promptTokens"] == 8).unwrap();
    assert_eq!(row["estimated"], false, "{row}");
    assert_eq!(row["completionTokens"], 0, "{row}");
    assert_eq!(row["paidBy"], "user", "{row}");
    assert!(row["costUsd"].as_f64().unwrap() > 0.0, "{row}");

    // A provider without embeddings: refused before any upstream call.
    let before = stand_in.requests().len();
    api.post(
        "/api/keys",
        json!({"service": "anthropic", "apiKey": ANTHROPIC_KEY}),
    )
    .await;
    let refused = api
        .post(
            "/v1/embeddings",
            json!({"model": "anthropic/claude-3-5-haiku-latest", "input": "x"}),
        )
        .await;
    assert_eq!(refused.status.as_u16(), 400, "{}", refused.text);
    assert_eq!(refused.code(), "unsupported_model");
    // Bad input.
    for (body, code) in [
        (
            json!({"model": "text-embedding-3-small"}),
            "invalid_request",
        ),
        (
            json!({"model": "text-embedding-3-small", "input": []}),
            "invalid_request",
        ),
        (
            json!({"model": "text-embedding-3-small", "input": "x", "stream": true}),
            "invalid_request",
        ),
        (json!({"model": "nope-1", "input": "x"}), "unknown_model"),
    ] {
        let answer = api.post("/v1/embeddings", body.clone()).await;
        assert_eq!(answer.status.as_u16(), 400, "{body}: {}", answer.text);
        assert_eq!(answer.code(), code, "{body}");
    }
    assert_eq!(stand_in.requests().len(), before, "no upstream call");

    // Without a key of their own: the team path, only with consent, and
    // charged to a budget.
    let other_token = server.token("teo", false);
    let other = Api::new(&server.base, Some(&other_token));
    let off = other
        .post("/api/user-settings", json!({"allowGatewayFallback": false}))
        .await;
    assert!(off.status.is_success(), "{}", off.text);
    let body = json!({"model": "openai/text-embedding-3-small", "input": "one two three"});
    let refused = other.post("/v1/embeddings", body.clone()).await;
    assert_eq!(refused.code(), "consent_required", "{}", refused.text);
    other
        .post("/api/user-settings", json!({"allowGatewayFallback": true}))
        .await;
    let admin = Api::new(&server.base, Some(&server.token("ops", true)));
    let budget = admin
        .put(
            "/api/admin/budgets/users/teo",
            json!({"type": "tokens", "period": "monthly", "limit": 1000}),
        )
        .await;
    assert!(budget.status.is_success(), "{}", budget.text);
    let served = other.post("/v1/embeddings", body).await;
    assert_eq!(served.status.as_u16(), 200, "{}", served.text);
    assert_eq!(served.header("x-byok-path"), Some("team-gateway"));
    assert_eq!(served.json["data"].as_array().map(Vec::len), Some(1));
    // Settled once the usage is written, just after the answer.
    let mut mine = other.get("/api/budget").await;
    for _ in 0..50 {
        if mine.json["budgets"][0]["reserved"] == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        mine = other.get("/api/budget").await;
    }
    assert_eq!(mine.json["budgets"][0]["used"], 3, "{}", mine.text);
    assert_eq!(mine.json["budgets"][0]["reserved"], 0, "{}", mine.text);
    drop(server);
    stand_in.shutdown().await;
}

byok_tests::on_every_store!(embeddings_work_end_to_end);
