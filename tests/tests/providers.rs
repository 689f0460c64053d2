//! The OpenAI-compatible services beyond the first seven (Mistral,
//! DeepSeek, Together, Fireworks, Perplexity, Cerebras, Cohere) end to end
//! on both stores: each key is checked against its provider's key endpoint
//! on save, resolved, and used for a completion streamed to the official
//! `openai` Python SDK and for one answered whole, reaching its provider's
//! base URL with the model name that provider takes; keys shaped like
//! another service's are refused; a refused key is not stored; a team key
//! from `<SERVICE>_API_KEY` serves a user without one; embeddings reach
//! the providers that offer them.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test bodies are plain functions run once per store; a failed step stops the test"
)]

use byok_tests::clients::python;
use byok_tests::http::Api;
use byok_tests::stores::{Mode, start};
use byok_tests::upstream::{DEFAULT_REPLY, StandIn, Upstream};
use serde_json::json;

/// (service, a key of its shape, model asked for, upstream path, model
/// the provider receives).
const CASES: [(&str, &str, &str, &str, &str); 7] = [
    (
        "mistral",
        "Mistra1Key0user000000000000000001",
        "mistral-small-latest",
        "/mistral/v1/chat/completions",
        "mistral-small-latest",
    ),
    (
        "deepseek",
        "sk-deepseek0user00000000000000000001",
        "deepseek/deepseek-v4-flash",
        "/deepseek/chat/completions",
        "deepseek-v4-flash",
    ),
    (
        "together",
        "tgp_v1_together0user0000000000000000000000001",
        "together/meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "/together/v1/chat/completions",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    ),
    (
        "fireworks",
        "fw_fireworks0user000000000000001",
        "fireworks/gpt-oss-120b",
        "/fireworks/inference/v1/chat/completions",
        "accounts/fireworks/models/gpt-oss-120b",
    ),
    (
        "perplexity",
        "pplx-perplexity0user000000000000000000000000000001",
        "sonar",
        "/perplexity/chat/completions",
        "sonar",
    ),
    (
        "cerebras",
        "csk-cerebras0user00000000000000000000000000000001",
        "cerebras/gpt-oss-120b",
        "/cerebras/v1/chat/completions",
        "gpt-oss-120b",
    ),
    (
        "cohere",
        "Cohere0Key0user00000000000000000000000001",
        "command-r-08-2024",
        "/cohere/compatibility/v1/chat/completions",
        "command-r-08-2024",
    ),
];

/// Where each service's key check lands on the stand-in.
fn key_check_path(service: &str) -> &'static str {
    match service {
        "mistral" => "/mistral/v1/models",
        "deepseek" => "/deepseek/models",
        "together" => "/together/v1/models",
        "fireworks" => "/fireworks/inference/v1/models",
        "perplexity" => "/perplexity/v1/models",
        "cerebras" => "/cerebras/v1/models",
        "cohere" => "/cohere/v1/models",
        other => panic!("no key check path for {other}"),
    }
}

const TEAM_MISTRAL_KEY: &str = "Mistra1KeyTeam0000000000000000001";

async fn every_new_service_validates_resolves_and_completes(mode: Mode) {
    let stand_in = StandIn::start().await;
    stand_in.accept_keys(CASES.map(|c| c.1).into_iter().chain([TEAM_MISTRAL_KEY]));
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        mode,
        &stand_in,
        dir.path(),
        &[("MISTRAL_API_KEY", TEAM_MISTRAL_KEY)],
    );

    let listed = Api::new(&server.base, Some(&server.token("lister", false)))
        .get("/api/providers")
        .await;
    for (service, ..) in CASES {
        assert!(
            listed.text.contains(&format!("\"{service}\"")),
            "{service} listed: {}",
            listed.text
        );
    }

    for (service, key, model, path, upstream_model) in CASES {
        let token = server.token(&format!("user-{service}"), false);
        let api = Api::new(&server.base, Some(&token));

        // A key the provider refuses is not stored.
        let refused = api
            .post(
                "/api/keys",
                json!({"service": service, "apiKey": key.replace("0user", "0bad0"), "validate": true}),
            )
            .await;
        assert_eq!(refused.status.as_u16(), 422, "{service}: {}", refused.text);
        assert_eq!(refused.code(), "invalid_key", "{service}");

        let before = stand_in.requests().len();
        let saved = api
            .post(
                "/api/keys",
                json!({"service": service, "apiKey": key, "validate": true}),
            )
            .await;
        assert_eq!(saved.status.as_u16(), 201, "{service}: {}", saved.text);
        assert!(!saved.text.contains(&key[key.len() - 12..]), "masked");
        let checked = stand_in.requests()[before..].to_vec();
        assert_eq!(checked.len(), 1, "{service}: one key check");
        assert_eq!(checked[0].path, key_check_path(service), "{service}");
        assert_eq!(checked[0].key, key, "{service}");

        let resolved = api.get(&format!("/api/resolve?model={model}")).await;
        assert_eq!(resolved.status.as_u16(), 200, "{}", resolved.text);
        assert_eq!(resolved.json["path"], "user-provider", "{service}");
        assert_eq!(resolved.json["provider"], service, "{}", resolved.text);
        assert_eq!(resolved.json["upstreamModel"], upstream_model, "{service}");

        // Streamed, through the openai SDK.
        let before = stand_in.requests().len();
        let chat = python(
            "stream_chat.py",
            vec![
                format!("{}/v1", server.base),
                token.clone(),
                model.to_owned(),
                "Say hello.".to_owned(),
            ],
        )
        .await
        .unwrap_or_else(|err| panic!("{service}: {err}"));
        assert_eq!(chat["text"], DEFAULT_REPLY, "{service}: {chat}");
        assert!(chat["chunks"].as_u64().unwrap() > 1, "{service}: {chat}");
        assert_eq!(chat["provider"], service, "{chat}");
        // Answered whole.
        let whole = api
            .post(
                "/v1/chat/completions",
                json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]}),
            )
            .await;
        assert_eq!(whole.status.as_u16(), 200, "{service}: {}", whole.text);
        assert_eq!(
            whole.json["choices"][0]["message"]["content"], DEFAULT_REPLY,
            "{service}"
        );
        let sent = stand_in.requests()[before..].to_vec();
        assert_eq!(sent.len(), 2, "{service}");
        for request in &sent {
            assert_eq!(request.path, path, "{service}");
            assert_eq!(request.key, key, "{service}");
            assert_eq!(request.model, upstream_model, "{service}");
        }
    }

    // Keys shaped like another service's are refused, naming it; nothing stored.
    let api = Api::new(&server.base, Some(&server.token("mixer", false)));
    for (service, key, other) in [
        ("deepseek", "sk-proj-abcdefghijklmnopqrstuvwx", "openai"),
        ("mistral", "sk-ant-api03-abcdefghijklmnopqrstu", "anthropic"),
        (
            "cohere",
            "pplx-abcdefghijklmnopqrstuvwxyz0123",
            "perplexity",
        ),
        ("together", "csk-abcdefghijklmnopqrstuvwxyz0123", "cerebras"),
        ("fireworks", "gsk_abcdefghijklmnopqrstuvwxyz0123", "groq"),
        ("perplexity", "xai-abcdefghijklmnopqrstuvwxyz0123", "xai"),
        ("cerebras", "fw_abcdefghijklmnopqrstuvwxyz0123", "fireworks"),
        ("openai", "pplx-abcdefghijklmnopqrstuvwxyz0123", "openai"),
    ] {
        let refused = api
            .post("/api/keys", json!({"service": service, "apiKey": key}))
            .await;
        assert_eq!(refused.status.as_u16(), 422, "{service}: {}", refused.text);
        assert_eq!(refused.code(), "invalid_key_format", "{service}");
        let message = refused.json["error"]["message"].as_str().unwrap();
        assert!(message.contains(other), "{service}: {message}");
        assert!(!message.contains(key), "{message}");
    }
    assert_eq!(api.get("/api/keys").await.json["keys"], json!([]));

    // No key of their own: the team's Mistral key serves (consent is on).
    let team_user = Api::new(&server.base, Some(&server.token("no-keys", false)));
    let before = stand_in.requests().len();
    let team = team_user
        .post(
            "/v1/chat/completions",
            json!({"model": "mistral/mistral-large-latest", "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    assert_eq!(team.status.as_u16(), 200, "{}", team.text);
    assert_eq!(team.header("x-byok-path"), Some("team-provider"));
    assert_eq!(team.header("x-byok-paid-by"), Some("team"));
    let sent = stand_in.requests()[before..].to_vec();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].upstream, Some(Upstream::Mistral));
    assert_eq!(sent[0].key, TEAM_MISTRAL_KEY);
    assert_eq!(sent[0].model, "mistral-large-latest");

    // Embeddings through the providers that offer them.
    for (service, model, path, upstream_model) in [
        (
            "mistral",
            "mistral/mistral-embed",
            "/mistral/v1/embeddings",
            "mistral-embed",
        ),
        (
            "cohere",
            "cohere/embed-v4.0",
            "/cohere/compatibility/v1/embeddings",
            "embed-v4.0",
        ),
    ] {
        let token = server.token(&format!("user-{service}"), false);
        let api = Api::new(&server.base, Some(&token));
        let before = stand_in.requests().len();
        let embedded = api
            .post("/v1/embeddings", json!({"model": model, "input": "hello"}))
            .await;
        assert_eq!(
            embedded.status.as_u16(),
            200,
            "{service}: {}",
            embedded.text
        );
        assert_eq!(embedded.header("x-byok-provider"), Some(service));
        let sent = stand_in.requests()[before..].to_vec();
        assert_eq!(sent.len(), 1, "{service}");
        assert_eq!(sent[0].path, path, "{service}");
        assert_eq!(sent[0].model, upstream_model, "{service}");
    }
    drop(server);
    stand_in.shutdown().await;
}

byok_tests::on_every_store!(every_new_service_validates_resolves_and_completes);
