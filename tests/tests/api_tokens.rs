//! Personal API keys end to end on both stores: made (shown once), listed
//! without the key, used by the official `openai` (bearer) and `anthropic`
//! (`x-api-key`) Python SDKs as their user on `/v1/*`, refused on the
//! key-management routes, `lastUsedAt` recorded, audited, limited per
//! user, and refused the moment they are revoked. The key never shows in
//! the server's trace log or the audit log.
#![expect(
    clippy::unwrap_used,
    reason = "test bodies are plain functions run once per store; a failed step stops the test"
)]

use byok_tests::clients::python;
use byok_tests::http::Api;
use byok_tests::stores::{Mode, start};
use byok_tests::upstream::{DEFAULT_REPLY, StandIn};
use serde_json::{Value, json};
use std::time::Duration;

const OPENAI_KEY: &str = "sk-proj-tokens0user0000000000000000000001";
const ANTHROPIC_KEY: &str = "sk-ant-api03-tokens0user000000000000000001";

async fn openai_chat(base: &str, key: &str) -> Result<Value, String> {
    python(
        "stream_chat.py",
        vec![
            format!("{base}/v1"),
            key.to_owned(),
            "openai/gpt-4o-mini".to_owned(),
            "Say hello.".to_owned(),
        ],
    )
    .await
}

async fn anthropic_messages(base: &str, key: &str) -> Result<Value, String> {
    python(
        "messages.py",
        vec![
            base.to_owned(),
            key.to_owned(),
            "claude-3-5-haiku-latest".to_owned(),
            "Say hello.".to_owned(),
        ],
    )
    .await
}

async fn personal_keys_work_on_v1_only_until_revoked(mode: Mode) {
    let stand_in = StandIn::start().await;
    stand_in.accept_keys([OPENAI_KEY, ANTHROPIC_KEY]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        mode,
        &stand_in,
        dir.path(),
        &[
            ("RUST_LOG", "trace"),
            ("BYOK_MAX_API_TOKENS", "2"),
            ("BYOK_LAST_USED_GRANULARITY_SECS", "1"),
            ("BYOK_REQUESTS_PER_MINUTE", "1000"),
        ],
    );
    let token = server.token("tess", false);
    let api = Api::new(&server.base, Some(&token));
    for (service, key) in [("openai", OPENAI_KEY), ("anthropic", ANTHROPIC_KEY)] {
        let saved = api
            .post("/api/keys", json!({"service": service, "apiKey": key}))
            .await;
        assert_eq!(saved.status.as_u16(), 201, "{}", saved.text);
    }

    // Made: the key shown once, with its record.
    let made = api
        .post(
            "/api/tokens",
            json!({"name": "laptop CLI", "expiresInDays": 30}),
        )
        .await;
    assert_eq!(made.status.as_u16(), 201, "{}", made.text);
    let key = made.json["key"].as_str().unwrap().to_owned();
    let id = made.json["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("byok_") && key.len() == 45, "{}", made.text);
    assert!(key.starts_with(made.json["prefix"].as_str().unwrap()));
    assert_eq!(made.json["name"], "laptop CLI");
    assert!(made.json["expiresAt"].is_string(), "{}", made.text);
    assert_eq!(made.json["lastUsedAt"], Value::Null);

    // Listed without the key.
    let listed = api.get("/api/tokens").await;
    assert_eq!(listed.status.as_u16(), 200, "{}", listed.text);
    assert_eq!(listed.json["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(listed.json["tokens"][0]["id"], id.as_str());
    assert!(!listed.text.contains(&key[12..]), "{}", listed.text);

    // The SDKs, as their user: bearer (openai) and x-api-key (anthropic).
    let chat = openai_chat(&server.base, &key).await.unwrap();
    assert_eq!(chat["text"], DEFAULT_REPLY, "{chat}");
    assert_eq!(chat["path"], "user-provider", "{chat}");
    let messages = anthropic_messages(&server.base, &key).await.unwrap();
    assert_eq!(messages["text"], DEFAULT_REPLY, "{messages}");
    assert_eq!(messages["path"], "user-provider", "{messages}");
    let sent = stand_in.requests();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].key, OPENAI_KEY);
    assert_eq!(sent[1].key, ANTHROPIC_KEY);
    let with_key = Api::new(&server.base, Some(&key));
    assert_eq!(with_key.get("/v1/models").await.status.as_u16(), 200);

    // Recorded as tess's usage.
    let usage = api.requests_once_counted("/api/usage/requests", 2).await;
    let usage_log: Vec<String> = server
        .output()
        .lines()
        .filter(|line| line.contains("byok::usage"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        usage.json["requests"].as_array().unwrap().len(),
        2,
        "{}\n{usage_log:#?}",
        usage.text
    );

    // One request limit for the user, whichever credential they present.
    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]});
    let remaining = |answer: &byok_tests::http::Answer| -> u32 {
        answer
            .header("x-ratelimit-remaining-requests")
            .unwrap()
            .parse()
            .unwrap()
    };
    let by_token = api.post("/v1/chat/completions", chat.clone()).await;
    assert_eq!(by_token.status.as_u16(), 200, "{}", by_token.text);
    let by_key = with_key.post("/v1/chat/completions", chat).await;
    assert_eq!(by_key.status.as_u16(), 200, "{}", by_key.text);
    assert_eq!(remaining(&by_key), remaining(&by_token) - 1);

    // Refused on every key-management route, as bearer or x-api-key.
    for (method, path) in [
        ("GET", "/api/keys"),
        ("POST", "/api/keys"),
        ("GET", "/api/tokens"),
        ("POST", "/api/tokens"),
        ("GET", "/api/user-settings"),
        ("GET", "/api/resolve?model=openai/gpt-4o-mini"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let refused = with_key
            .send(method.clone(), path, Some(&json!({"name": "x"})))
            .await;
        assert_eq!(refused.status.as_u16(), 401, "{path}: {}", refused.text);
        assert_eq!(refused.code(), "unauthorized");
        assert!(
            refused.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("/v1/"),
            "{}",
            refused.text
        );
        let as_header = reqwest::Client::new()
            .request(method, format!("{}{path}", server.base))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(as_header.status().as_u16(), 401, "{path}");
    }

    // lastUsedAt lands off the request's path.
    let mut last_used = Value::Null;
    for _ in 0..100 {
        last_used = api.get("/api/tokens").await.json["tokens"][0]["lastUsedAt"].clone();
        if last_used.is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(last_used.is_string(), "lastUsedAt never stored");

    // Bad input changes nothing; the limit holds.
    for (body, status, code) in [
        (json!({}), 400, "invalid_request"),
        (json!({"name": ""}), 400, "invalid_request"),
        (
            json!({"name": "x", "expiresInDays": 0}),
            400,
            "invalid_request",
        ),
        (
            json!({"name": "x", "expiresInDays": 99999}),
            400,
            "invalid_request",
        ),
        (
            json!({"name": "x", "scope": "admin"}),
            400,
            "invalid_request",
        ),
        (json!({"name": OPENAI_KEY}), 422, "invalid_label"),
    ] {
        let refused = api.post("/api/tokens", body.clone()).await;
        assert_eq!(refused.status.as_u16(), status, "{body}: {}", refused.text);
        assert_eq!(refused.code(), code, "{body}");
    }
    let second = api.post("/api/tokens", json!({"name": "ci"})).await;
    assert_eq!(second.status.as_u16(), 201, "{}", second.text);
    assert_eq!(second.json["expiresAt"], Value::Null);
    let third = api
        .post("/api/tokens", json!({"name": "one too many"}))
        .await;
    assert_eq!(third.status.as_u16(), 409, "{}", third.text);
    assert_eq!(third.code(), "token_limit_reached");
    assert_eq!(
        api.get("/api/tokens").await.json["tokens"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Another user can neither see nor revoke it.
    let other = Api::new(&server.base, Some(&server.token("otto", false)));
    assert_eq!(
        other.get("/api/tokens").await.json["tokens"],
        json!([]),
        "otto sees none"
    );
    let theirs = other.delete(&format!("/api/tokens/{id}")).await;
    assert_eq!(theirs.status.as_u16(), 404, "{}", theirs.text);
    assert!(openai_chat(&server.base, &key).await.is_ok());

    // Revoked: refused at once, by both SDKs.
    let revoked = api.delete(&format!("/api/tokens/{id}")).await;
    assert_eq!(revoked.status.as_u16(), 204, "{}", revoked.text);
    let before = stand_in.requests().len();
    let refused = openai_chat(&server.base, &key).await.unwrap_err();
    assert!(refused.contains("401"), "{refused}");
    let refused = anthropic_messages(&server.base, &key).await.unwrap_err();
    assert!(refused.contains("401"), "{refused}");
    assert_eq!(stand_in.requests().len(), before, "no upstream call");
    assert_eq!(
        api.delete(&format!("/api/tokens/{id}"))
            .await
            .status
            .as_u16(),
        404
    );
    let malformed = Api::new(&server.base, Some("byok_not-a-key"));
    let answer = malformed
        .post("/v1/chat/completions", json!({"model": "gpt-4o-mini"}))
        .await;
    assert_eq!(answer.status.as_u16(), 401, "{}", answer.text);

    // Audited, and the key is nowhere in the log or the audit.
    let audit = api.get("/api/audit").await;
    let actions: Vec<&str> = audit.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("token_"))
        .collect();
    // Newest first: the revocation, the second key, the first key.
    assert_eq!(actions, ["token_revoked", "token_created", "token_created"]);
    assert!(
        audit.text.contains(&format!("token:{id}")),
        "{}",
        audit.text
    );
    let secret_part = &key[12..];
    assert!(!audit.text.contains(secret_part));
    let log = server.output();
    assert!(
        log.contains("TRACE") || log.contains("trace"),
        "trace log on"
    );
    assert!(!log.contains(secret_part), "the key reached the log");
    drop(server);
    stand_in.shutdown().await;
}

byok_tests::on_every_store!(personal_keys_work_on_v1_only_until_revoked);
