//! End-to-end tests of `byok-local`: the real binary on 127.0.0.1 port 0,
//! driven over HTTP through the runbook checklist, cross-user isolation, bad
//! input, persistence across a restart, and canary keys that must never
//! appear in a response, the server's debug output or the data directory.
//! Every test runs twice: on the embedded store and with `BYOK_STORE=aws`
//! against the local AWS API emulator the test script starts.

#![expect(
    clippy::unwrap_used,
    reason = "test bodies are plain functions run once per store; a failed step stops the test"
)]

use byok_tests::harness::{LocalServer, contains_bytes, files_below, run_to_exit};
use byok_tests::http::{Answer, Api};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const TEAM_GATEWAY_KEY: &str = "vck_team0000000000000000000001";

/// Which store byok-local runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Embedded,
    Aws,
}

/// Per-test AWS names (table, secret prefix), fixed for a test's restarts.
struct Names {
    table: String,
    prefix: String,
}

impl Mode {
    fn names(self) -> Names {
        let unique = byok_tests::aws::unique_name("e2e");
        Names {
            table: format!("{unique}-table"),
            prefix: format!("{unique}/"),
        }
    }
}

/// Starts byok-local in `mode` on `dir` with `extra` variables.
fn start(mode: Mode, names: &Names, dir: &std::path::Path, extra: &[(&str, &str)]) -> LocalServer {
    let mut env: Vec<(&str, String)> = extra.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    if mode == Mode::Aws {
        env.extend([
            ("BYOK_STORE", "aws".to_owned()),
            ("BYOK_TABLE_NAME", names.table.clone()),
            ("BYOK_SECRET_PREFIX", names.prefix.clone()),
            ("BYOK_CREATE_TABLE", "true".to_owned()),
            ("BYOK_SECRET_RECOVERY_DAYS", "0".to_owned()),
            ("AWS_ENDPOINT_URL", byok_tests::aws::endpoint()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]);
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    LocalServer::start(dir, &env)
}

/// Runs each named test once per store.
macro_rules! on_every_store {
    ($($test:ident),+ $(,)?) => {
        mod embedded {
            $(#[tokio::test] async fn $test() { super::$test(super::Mode::Embedded).await })+
        }
        mod aws {
            $(#[tokio::test] async fn $test() { super::$test(super::Mode::Aws).await })+
        }
    };
}

on_every_store!(
    runbook_checklist_over_http,
    without_team_credentials_nothing_serves_a_keyless_user,
    another_user_can_neither_see_change_delete_nor_use_a_key,
    bad_input_gets_a_clear_4xx_and_changes_nothing,
    keys_and_tokens_survive_a_restart_and_sigterm_stops_cleanly,
    every_documented_route_is_served,
    canary_keys_never_leak,
    consent_changes_and_relabels_are_audited,
);

/// Turning team fallback off or on is an audit event (saving the same
/// value again is not), and so is relabelling a key.
async fn consent_changes_and_relabels_are_audited(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let names = mode.names();
    let server = start(mode, &names, dir.path(), &[]);
    let api = Api::new(&server.base, Some(&server.token("auditee", false)));
    for allowed in [true, false, false, true] {
        let saved = api
            .post(
                "/api/user-settings",
                json!({"allowGatewayFallback": allowed}),
            )
            .await;
        assert_eq!(saved.status, StatusCode::OK, "{}", saved.text);
    }
    api.post(
        "/api/keys",
        json!({"service": "groq", "apiKey": "gsk_auditee0000000000000000001"}),
    )
    .await;
    let relabelled = api
        .patch("/api/keys/groq", json!({"label": "renamed"}))
        .await;
    assert_eq!(relabelled.status, StatusCode::OK, "{}", relabelled.text);

    let audit = api.get("/api/audit").await;
    let events: Vec<(String, String)> = audit.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_owned(),
                e["result"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = events
        .iter()
        .map(|(a, r)| (a.as_str(), r.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("updated", ""),
            ("added", ""),
            ("consent_changed", "allowGatewayFallback=true"),
            ("consent_changed", "allowGatewayFallback=false"),
        ],
        "{}",
        audit.text
    );
}

fn key_for(keys: &Answer, service: &str) -> Option<Value> {
    keys.json["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["service"] == service))
        .cloned()
}

fn assert_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status.as_u16(), status, "{}", answer.text);
    assert_eq!(answer.code(), code, "{}", answer.text);
    assert!(
        answer.json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "a human message: {}",
        answer.text
    );
}

async fn runbook_checklist_over_http(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let names = mode.names();
    let server = start(
        mode,
        &names,
        dir.path(),
        &[("AI_GATEWAY_API_KEY", TEAM_GATEWAY_KEY)],
    );
    let api = Api::new(&server.base, Some(&server.token("alice", false)));

    // Liveness needs no token; everything else does.
    let health = Api::new(&server.base, None).get("/healthz").await;
    assert_eq!(
        (health.status, health.json["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    assert_error(
        &Api::new(&server.base, None).get("/api/keys").await,
        401,
        "unauthorized",
    );
    assert_error(
        &Api::new(&server.base, Some("not.a.jwt"))
            .get("/api/keys")
            .await,
        401,
        "unauthorized",
    );

    let providers = api.get("/api/providers").await;
    assert_eq!(providers.status, StatusCode::OK);
    let services: Vec<&str> = providers.json["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["service"].as_str().unwrap())
        .collect();
    assert_eq!(
        services,
        [
            "openai",
            "anthropic",
            "xai",
            "openrouter",
            "google",
            "groq",
            "mistral",
            "deepseek",
            "together",
            "fireworks",
            "perplexity",
            "cerebras",
            "cohere",
            "vertex",
            "bedrock",
            "gateway"
        ]
    );

    // 1. A user gateway key (with its own https base URL) → user-gateway.
    let created = api
        .post(
            "/api/keys",
            json!({"service": "gateway", "apiKey": "vck_user0000000000000000000042", "baseUrl": "https://my-gateway.vercel.sh/v1"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.json["maskedKey"], "vck_…0042");
    assert_eq!(created.json["baseUrlHost"], "my-gateway.vercel.sh");
    assert_eq!(created.json["enabled"], true);
    let r = api.get("/api/resolve?model=openai/gpt-4o-mini").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"path": "user-gateway", "provider": "gateway", "model": "openai/gpt-4o-mini",
               "upstreamModel": "openai/gpt-4o-mini", "baseUrlHost": "my-gateway.vercel.sh",
               "baseUrlSource": "user",
               "keys": [{"id": created.json["id"], "maskedKey": "vck_…0042", "priority": 0}]})
    );
    assert_eq!(
        api.delete("/api/keys/gateway").await.status,
        StatusCode::NO_CONTENT
    );
    assert_error(&api.delete("/api/keys/gateway").await, 404, "not_found");

    // 2. Provider keys → user-provider with the right provider tag.
    for (service, key, model, provider, upstream) in [
        (
            "openai",
            "sk-proj-user000000000000000000001",
            "gpt-4o-mini",
            "openai",
            "gpt-4o-mini",
        ),
        (
            "anthropic",
            "sk-ant-api03-user00000000000000001",
            "claude-3-5-sonnet",
            "anthropic",
            "claude-3-5-sonnet",
        ),
        (
            "xai",
            "xai-user0000000000000000000001",
            "xai/grok-2",
            "xai",
            "grok-2",
        ),
        (
            "openrouter",
            "sk-or-v1-user000000000000000000001",
            "mistral/mistral-large",
            "openrouter",
            "mistral/mistral-large",
        ),
    ] {
        let created = api
            .post("/api/keys", json!({"service": service, "apiKey": key}))
            .await;
        assert_eq!(
            created.status,
            StatusCode::CREATED,
            "{service}: {}",
            created.text
        );
        let r = api.get(&format!("/api/resolve?model={model}")).await;
        assert_eq!(r.json["path"], "user-provider", "{service}: {}", r.text);
        assert_eq!(r.json["provider"], provider, "{service}");
        assert_eq!(r.json["upstreamModel"], upstream, "{service}");
        assert_eq!(r.json["baseUrlSource"], "default", "{service}");
    }
    // OpenRouter serves a model whose provider key the user lacks.
    let r = api.get("/api/resolve?model=gemini-2.0-flash").await;
    assert_eq!(
        (r.json["path"].as_str(), r.json["provider"].as_str()),
        (Some("user-provider"), Some("openrouter"))
    );

    // Replacing a key: 200, label kept, new mask, re-enabled.
    let labelled = api
        .patch(
            "/api/keys/openai",
            json!({"label": "Work", "enabled": false}),
        )
        .await;
    assert_eq!(
        (
            labelled.json["label"].as_str(),
            labelled.json["enabled"].as_bool()
        ),
        (Some("Work"), Some(false))
    );
    let replaced = api
        .post(
            "/api/keys",
            json!({"service": "openai", "apiKey": "sk-proj-user000000000000000000002"}),
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.text);
    assert_eq!(replaced.json["label"], "Work");
    assert_eq!(replaced.json["maskedKey"], "sk-proj-…0002");
    assert_eq!(replaced.json["enabled"], true);
    assert_eq!(replaced.json["createdAt"], labelled.json["createdAt"]);

    // A disabled key is skipped by resolution.
    api.patch("/api/keys/openai", json!({"enabled": false}))
        .await;
    let r = api.get("/api/resolve?model=gpt-4o").await;
    assert_eq!(r.json["provider"], "openrouter", "{}", r.text);

    let keys = api.get("/api/keys").await;
    assert_eq!(keys.json["keys"].as_array().unwrap().len(), 4);
    assert_eq!(key_for(&keys, "openai").unwrap()["enabled"], false);

    // 3. No user keys, consent on → team-gateway.
    for service in ["openai", "anthropic", "xai", "openrouter"] {
        assert_eq!(
            api.delete(&format!("/api/keys/{service}")).await.status,
            StatusCode::NO_CONTENT
        );
    }
    assert_eq!(
        api.get("/api/user-settings").await.json,
        json!({"allowGatewayFallback": true})
    );
    let on = api
        .post("/api/user-settings", json!({"allowGatewayFallback": true}))
        .await;
    assert_eq!(on.json, json!({"allowGatewayFallback": true}));
    let r = api.get("/api/resolve?model=gpt-4o-mini").await;
    assert_eq!(
        r.json,
        json!({"path": "team-gateway", "provider": "gateway", "model": "openai/gpt-4o-mini",
               "upstreamModel": "openai/gpt-4o-mini", "baseUrlHost": "ai-gateway.vercel.sh",
               "baseUrlSource": "team"})
    );

    // 4. Consent off, no keys → 403 consent_required.
    let off = api
        .post("/api/user-settings", json!({"allowGatewayFallback": false}))
        .await;
    assert_eq!(off.json, json!({"allowGatewayFallback": false}));
    assert_eq!(
        api.get("/api/user-settings").await.json,
        json!({"allowGatewayFallback": false})
    );
    assert_error(
        &api.get("/api/resolve?model=gpt-4o-mini").await,
        403,
        "consent_required",
    );

    // A BYOK key still serves with consent off.
    api.post(
        "/api/keys",
        json!({"service": "groq", "apiKey": "gsk_user00000000000000000001"}),
    )
    .await;
    let r = api
        .get("/api/resolve?model=groq/llama-3.1-8b-instant")
        .await;
    assert_eq!(
        (r.json["path"].as_str(), r.json["upstreamModel"].as_str()),
        (Some("user-provider"), Some("llama-3.1-8b-instant"))
    );
}

async fn without_team_credentials_nothing_serves_a_keyless_user(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let names = mode.names();
    let server = start(mode, &names, dir.path(), &[]);
    let api = Api::new(&server.base, Some(&server.token("carol", false)));
    assert_error(
        &api.get("/api/resolve?model=gpt-4o").await,
        403,
        "no_credential",
    );
    assert_error(
        &api.get("/api/resolve?model=llama-3").await,
        400,
        "unknown_model",
    );
    assert_error(&api.get("/api/resolve").await, 400, "invalid_request");
}

async fn another_user_can_neither_see_change_delete_nor_use_a_key(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let names = mode.names();
    let server = start(mode, &names, dir.path(), &[]);
    let alice = Api::new(&server.base, Some(&server.token("alice", false)));
    let bob = Api::new(&server.base, Some(&server.token("bob", false)));
    // An admin token does not reach other users' keys either.
    let admin = Api::new(&server.base, Some(&server.token("root", true)));

    let created = alice
        .post("/api/keys", json!({"service": "openai", "apiKey": "sk-proj-alice00000000000000000001", "label": "Alice"}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let before = alice.get("/api/keys").await.json;

    for other in [&bob, &admin] {
        assert_eq!(other.get("/api/keys").await.json, json!({"keys": []}));
        assert_error(
            &other
                .patch("/api/keys/openai", json!({"enabled": false}))
                .await,
            404,
            "not_found",
        );
        assert_error(&other.delete("/api/keys/openai").await, 404, "not_found");
        assert_error(
            &other.get("/api/resolve?model=gpt-4o").await,
            403,
            "no_credential",
        );
    }
    // Bob storing his own key does not touch Alice's.
    let bobs = bob
        .post(
            "/api/keys",
            json!({"service": "openai", "apiKey": "sk-proj-bob0000000000000000000009"}),
        )
        .await;
    assert_eq!(
        bobs.status,
        StatusCode::CREATED,
        "bob's first key is new, not a replacement"
    );
    bob.post("/api/user-settings", json!({"allowGatewayFallback": false}))
        .await;
    assert_eq!(alice.get("/api/keys").await.json, before);
    assert_eq!(
        alice.get("/api/user-settings").await.json["allowGatewayFallback"],
        true
    );
    let r = alice.get("/api/resolve?model=gpt-4o").await;
    assert_eq!(r.json["path"], "user-provider");
}

async fn bad_input_gets_a_clear_4xx_and_changes_nothing(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let names = mode.names();
    let server = start(mode, &names, dir.path(), &[]);
    let api = Api::new(&server.base, Some(&server.token("dave", false)));
    api.post(
        "/api/keys",
        json!({"service": "openai", "apiKey": "sk-proj-dave00000000000000000001"}),
    )
    .await;
    api.post("/api/keys", json!({"service": "gateway", "apiKey": "vck_dave000000000000000000001", "baseUrl": "https://gw.example.com/v1"})).await;
    api.post("/api/user-settings", json!({"allowGatewayFallback": false}))
        .await;
    let keys_before = api.get("/api/keys").await.json;
    let settings_before = api.get("/api/user-settings").await.json;

    let big = json!({"service": "openai", "apiKey": "sk-proj-dave00000000000000000002", "label": "x".repeat(70 * 1024)});
    let json_cases: Vec<(Method, &str, Value, u16, &str)> = vec![
        (
            Method::POST,
            "/api/keys",
            json!({"service": "openai", "apiKey": "sk-proj-dave0000000000000000002", "extra": 1}),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/api/keys",
            json!({"service": "openai"}),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/api/keys",
            json!({"service": "openai", "apiKey": 12345}),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/api/keys",
            json!({"service": "mistralai", "apiKey": "sk-proj-dave00000000000000000002"}),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/api/keys",
            json!({"service": "openai", "apiKey": "pk-dave00000000000000000002"}),
            422,
            "invalid_key_format",
        ),
        (
            Method::POST,
            "/api/keys",
            json!({"service": "openai", "apiKey": "sk-short"}),
            422,
            "invalid_key_format",
        ),
        (
            Method::POST,
            "/api/keys",
            json!({"service": "anthropic", "apiKey": "sk-proj-dave00000000000000000002"}),
            422,
            "invalid_key_format",
        ),
        (
            Method::POST,
            "/api/keys",
            json!({"service": "openai", "apiKey": "sk-proj-dave00000000000000000002", "baseUrl": "https://gw.example.com/v1"}),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/api/keys",
            json!({"service": "gateway", "apiKey": "vck_dave000000000000000000002", "baseUrl": "http://gw.example.com/v1"}),
            422,
            "invalid_base_url",
        ),
        (
            Method::POST,
            "/api/keys",
            json!({"service": "gateway", "apiKey": "vck_dave000000000000000000002", "baseUrl": "https://localhost/v1"}),
            422,
            "invalid_base_url",
        ),
        (
            Method::POST,
            "/api/keys",
            json!({"service": "gateway", "apiKey": "vck_dave000000000000000000002", "baseUrl": "https://169.254.169.254/latest"}),
            422,
            "invalid_base_url",
        ),
        (
            Method::POST,
            "/api/keys",
            json!({"service": "gateway", "apiKey": "vck_dave000000000000000000002", "baseUrl": "https://u:p@gw.example.com/v1"}),
            422,
            "invalid_base_url",
        ),
        (
            Method::POST,
            "/api/keys",
            json!({"service": "openai", "apiKey": "sk-proj-dave00000000000000000002", "label": ""}),
            400,
            "invalid_request",
        ),
        (Method::POST, "/api/keys", big, 413, "payload_too_large"),
        (
            Method::PATCH,
            "/api/keys/openai",
            json!({}),
            400,
            "invalid_request",
        ),
        (
            Method::PATCH,
            "/api/keys/openai",
            json!({"enabled": "no"}),
            400,
            "invalid_request",
        ),
        (
            Method::PATCH,
            "/api/keys/openai",
            json!({"label": "y".repeat(101)}),
            400,
            "invalid_request",
        ),
        (
            Method::PATCH,
            "/api/keys/openai",
            json!({"enabled": true, "apiKey": "sk-proj-x"}),
            400,
            "invalid_request",
        ),
        (
            Method::PATCH,
            "/api/keys/mistralai",
            json!({"enabled": true}),
            400,
            "invalid_request",
        ),
        (
            Method::PATCH,
            "/api/keys/groq",
            json!({"enabled": true}),
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            "/api/keys/mistralai",
            Value::Null,
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/api/user-settings",
            json!({}),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/api/user-settings",
            json!({"allowGatewayFallback": "yes"}),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/api/user-settings",
            json!({"allowGatewayFallback": true, "x": 1}),
            400,
            "invalid_request",
        ),
        (
            Method::PUT,
            "/api/keys",
            json!({}),
            405,
            "method_not_allowed",
        ),
        (
            Method::DELETE,
            "/api/user-settings",
            Value::Null,
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/api/nothing-here",
            Value::Null,
            404,
            "not_found",
        ),
    ];
    for (method, path, body, status, code) in json_cases {
        let body = (!body.is_null()).then_some(body);
        let answer = api.send(method.clone(), path, body.as_ref()).await;
        assert_eq!(
            answer.status.as_u16(),
            status,
            "{method} {path}: {}",
            answer.text
        );
        assert_eq!(answer.code(), code, "{method} {path}: {}", answer.text);
    }
    let raw_cases: Vec<(&str, Vec<u8>, Option<&str>, u16)> = vec![
        (
            "/api/keys",
            b"{not json".to_vec(),
            Some("application/json"),
            400,
        ),
        (
            "/api/keys",
            br#"{"service":"openai","apiKey":"sk-proj-dave00000000000000000002"}"#.to_vec(),
            None,
            400,
        ),
        (
            "/api/keys",
            br#"{"service":"openai","apiKey":"sk-proj-dave00000000000000000002"}"#.to_vec(),
            Some("text/plain"),
            400,
        ),
        (
            "/api/user-settings",
            b"[true]".to_vec(),
            Some("application/json"),
            400,
        ),
    ];
    for (path, raw, ct, status) in raw_cases {
        let answer = api.send_raw(Method::POST, path, raw, ct).await;
        assert_eq!(
            answer.status.as_u16(),
            status,
            "{path} {ct:?}: {}",
            answer.text
        );
        assert_eq!(answer.code(), "invalid_request", "{}", answer.text);
    }

    assert_eq!(
        api.get("/api/keys").await.json,
        keys_before,
        "bad input changed nothing"
    );
    assert_eq!(api.get("/api/user-settings").await.json, settings_before);
}

async fn keys_and_tokens_survive_a_restart_and_sigterm_stops_cleanly(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let names = mode.names();
    let server = start(mode, &names, dir.path(), &[]);
    let token = server.token("erin", false);
    let api = Api::new(&server.base, Some(&token));
    api.post("/api/keys", json!({"service": "anthropic", "apiKey": "sk-ant-api03-erin0000000000000001", "label": "Mine"})).await;
    api.post("/api/user-settings", json!({"allowGatewayFallback": false}))
        .await;
    let keys_before = api.get("/api/keys").await.json;
    let (status, output) = server.stop();
    assert!(
        status.success(),
        "graceful exit on SIGTERM: {status:?}\n{output}"
    );
    assert!(output.contains("byok-local stopped"), "{output}");

    let server = start(mode, &names, dir.path(), &[]);
    let api = Api::new(&server.base, Some(&token));
    assert_eq!(api.get("/api/keys").await.json, keys_before);
    assert_eq!(
        api.get("/api/user-settings").await.json,
        json!({"allowGatewayFallback": false})
    );
    let r = api.get("/api/resolve?model=claude-3-5-haiku").await;
    assert_eq!(
        (r.json["path"].as_str(), r.json["provider"].as_str()),
        (Some("user-provider"), Some("anthropic"))
    );

    // A master key that did not seal the store is refused at start, loudly.
    drop(server);
    if mode != Mode::Embedded {
        return;
    }
    let wrong_key = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="; // base64 of 32 × 'A'
    let (status, output) = run_to_exit(dir.path(), &[("BYOK_MASTER_KEY", wrong_key)]);
    assert!(!status.success(), "{output}");
    assert!(output.contains("master key does not match"), "{output}");
}

async fn every_documented_route_is_served(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let names = mode.names();
    let server = start(mode, &names, dir.path(), &[]);
    let api = Api::new(&server.base, Some(&server.token("frank", false)));
    for (method, path) in byok::http::ROUTES {
        let path = path.replace("{service}", "openai");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let answer = api.send(method.clone(), &path, Some(&json!({}))).await;
        let unrouted = answer.status == StatusCode::METHOD_NOT_ALLOWED
            || answer.json["error"]["message"] == "no such route";
        assert!(!unrouted, "{method} {path} is not served: {}", answer.text);
    }
}

async fn canary_keys_never_leak(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let names = mode.names();
    let server = start(
        mode,
        &names,
        dir.path(),
        &[
            ("RUST_LOG", "debug"),
            ("AI_GATEWAY_API_KEY", "vck_teamcanary7f3a9c1e5b2d8e4f6a0c"),
        ],
    );
    let api = Api::new(&server.base, Some(&server.token("grace", false)));
    let canaries = [
        ("openai", "sk-proj-CANARYopenai7f3a9c1e5b2d8e4f6a0c"),
        ("anthropic", "sk-ant-api03-CANARYanthropic7f3a9c1e5b2d"),
        ("xai", "xai-CANARYxai7f3a9c1e5b2d8e4f6a0c"),
        ("openrouter", "sk-or-v1-CANARYopenrouter7f3a9c1e5b2d"),
        ("google", "AIzaSyCANARYgoogle7f3a9c1e5b2d8e4f6a0"),
        ("groq", "gsk_CANARYgroq7f3a9c1e5b2d8e4f6a0c"),
        ("gateway", "vck_CANARYgateway7f3a9c1e5b2d8e4f6a0c"),
    ];
    let mut seen = Vec::new();
    for (service, key) in canaries {
        seen.push(
            api.post("/api/keys", json!({"service": service, "apiKey": key}))
                .await,
        );
        // Replace, so there is a previous version too.
        seen.push(
            api.post(
                "/api/keys",
                json!({"service": service, "apiKey": format!("{key}v2")}),
            )
            .await,
        );
    }
    seen.push(api.get("/api/keys").await);
    seen.push(
        api.patch("/api/keys/openai", json!({"enabled": false}))
            .await,
    );
    seen.push(api.get("/api/resolve?model=gpt-4o").await);
    // Keys in the wrong places of bad requests are not echoed either.
    seen.push(
        api.post(
            "/api/keys",
            json!({"service": "anthropic", "apiKey": canaries[0].1}),
        )
        .await,
    );
    seen.push(
        api.post(
            "/api/keys",
            json!({"service": "openai", "apiKey": format!("{} x", canaries[0].1)}),
        )
        .await,
    );
    seen.push(
        api.patch("/api/keys/openai", json!({"enabled": canaries[0].1}))
            .await,
    );
    seen.push(
        api.post(
            "/api/user-settings",
            json!({"allowGatewayFallback": canaries[1].1}),
        )
        .await,
    );
    seen.push(
        api.post(
            "/api/keys",
            json!({"service": canaries[2].1, "apiKey": canaries[2].1}),
        )
        .await,
    );
    seen.push(
        api.get(&format!("/api/resolve?model={}", canaries[3].1))
            .await,
    );
    seen.push(api.get(&format!("/api/keys/{}", canaries[4].1)).await);
    let (_, output) = server.stop();

    assert!(
        output.contains("DEBUG"),
        "the server logged at debug level:\n{output}"
    );
    let files = files_below(dir.path());
    assert_eq!(
        files.iter().any(|(p, _)| p.ends_with("byok.db")),
        mode == Mode::Embedded,
        "the embedded store's file is there, and only in embedded mode"
    );
    let mut all = canaries
        .iter()
        .map(|(_, k)| k.to_string())
        .collect::<Vec<_>>();
    all.push("vck_teamcanary7f3a9c1e5b2d8e4f6a0c".to_owned());
    for key in &all {
        // The part after the visible prefix is what must never show.
        let secret_part = &key[key.len() - 20..];
        for answer in &seen {
            assert!(
                !answer.text.contains(secret_part),
                "response leaked {key}: {}",
                answer.text
            );
            for (name, value) in &answer.headers {
                assert!(
                    !value
                        .as_bytes()
                        .windows(20)
                        .any(|w| w == secret_part.as_bytes()),
                    "header {name} leaked"
                );
            }
        }
        assert!(
            !output.contains(secret_part),
            "server output leaked {key}:\n{output}"
        );
        for (path, bytes) in &files {
            assert!(
                !contains_bytes(bytes, secret_part.as_bytes()),
                "{} holds {key} in clear",
                path.display()
            );
        }
    }
}
