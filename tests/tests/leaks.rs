//! Keys of any shape never leak, even through an upstream that echoes them:
//! the real byok-local binary at `RUST_LOG=trace` in front of the provider
//! stand-in set to quote the presented key in every error message and at
//! the end of every reply. A user gateway key and a team gateway key, both
//! shaped like nothing a heuristic would catch, go through non-streamed and
//! streamed completions, upstream 4xx and 5xx answers, key validation and
//! the audit log; neither the keys nor their base64 or percent-encoded
//! forms may appear in any response, the server's log or the data
//! directory.

use base64::Engine as _;
use byok_tests::harness::{contains_bytes, files_below};
use byok_tests::http::{Answer, Api};
use byok_tests::stores::{Mode, start};
use byok_tests::upstream::{Failure, StandIn};
use serde_json::json;

/// Odd shapes: no known prefix, separators a tokenizer would split on.
const TEAM_KEY: &str = "team:CANARY:gateway:secret";
const USER_KEY: &str = "user:CANARY/odd+shape=key~0001";

/// Every form of `key` an upstream or a log might carry.
fn forms(key: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let percent: String = key
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    vec![key.to_owned(), b64.encode(key), url.encode(key), percent]
}

/// A key-shaped key, for the translated (Anthropic) stream.
const ANTHROPIC_KEY: &str = "sk-ant-api03-CANARYsplit0000000000000000000003";

/// The text of every delta of a streamed answer, joined as a client would.
fn streamed_content(sse: &str) -> String {
    sse.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// A staged replacement, also odd-shaped.
const NEXT_KEY: &str = "next:CANARY:odd+shape=key~0002";

fn assert_clean(what: &str, text: &[u8]) {
    for key in [TEAM_KEY, USER_KEY, NEXT_KEY, ANTHROPIC_KEY] {
        for form in forms(key) {
            assert!(
                !contains_bytes(text, form.as_bytes()),
                "{what} holds {form}: {}",
                String::from_utf8_lossy(text)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_keys_of_any_shape_never_leak() {
    let stand_in = StandIn::start().await;
    stand_in.accept_keys([TEAM_KEY, USER_KEY]);
    stand_in.echo_keys(true);
    stand_in.set_chunks(1);
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        Mode::Embedded,
        &stand_in,
        dir.path(),
        &[
            ("RUST_LOG", "trace"),
            ("BYOK_VALIDATE_PER_MINUTE", "1000"),
            ("AI_GATEWAY_API_KEY", TEAM_KEY),
        ],
    );
    let own = Api::new(&server.base, Some(&server.token("olive", false)));
    let team = Api::new(&server.base, Some(&server.token("tariq", false)));
    let saved = own
        .post(
            "/api/keys",
            json!({"service": "gateway", "apiKey": USER_KEY, "label": "odd one"}),
        )
        .await;
    assert_eq!(saved.status.as_u16(), 201, "{}", saved.text);
    let consent = team
        .post("/api/user-settings", json!({"allowGatewayFallback": true}))
        .await;
    assert!(consent.status.is_success(), "{}", consent.text);

    stand_in.accept_keys([TEAM_KEY, USER_KEY, NEXT_KEY]);
    let mut answers: Vec<Answer> = vec![saved, consent];
    let chat = |stream: bool| {
        json!({
            "model": "openai/gpt-4o-mini",
            "messages": [{"role": "user", "content": "say my key"}],
            "stream": stream,
        })
    };
    for (api, path) in [(&own, "user-gateway"), (&team, "team-gateway")] {
        for stream in [false, true] {
            let answer = api.post("/v1/chat/completions", chat(stream)).await;
            assert_eq!(answer.status.as_u16(), 200, "{path}: {}", answer.text);
            assert!(
                answer.text.contains("[redacted]"),
                "{path}: the echo was not there to remove: {}",
                answer.text
            );
            answers.push(answer);
        }
        for status in [400, 401, 429, 500, 503] {
            for stream in [false, true] {
                stand_in.fail_next(Failure::Status(status, None));
                let answer = api.post("/v1/chat/completions", chat(stream)).await;
                assert!(
                    !answer.status.is_success() || stream,
                    "{path} {status}: {}",
                    answer.text
                );
                answers.push(answer);
            }
        }
    }
    // A reply streamed a few characters per event spells the key out
    // across events: the text the client puts together holds none of it,
    // on the pass-through (gateway) and translated (Anthropic) streams.
    let claude = Api::new(&server.base, Some(&server.token("cleo", false)));
    let saved = claude
        .post(
            "/api/keys",
            json!({"service": "anthropic", "apiKey": ANTHROPIC_KEY}),
        )
        .await;
    assert_eq!(saved.status.as_u16(), 201, "{}", saved.text);
    answers.push(saved);
    stand_in.accept_keys([TEAM_KEY, USER_KEY, NEXT_KEY, ANTHROPIC_KEY]);
    let mut split_streams = 0;
    for chunks in [5, 17, 40, 120] {
        stand_in.set_chunks(chunks);
        for (api, model) in [
            (&own, "openai/gpt-4o-mini"),
            (&team, "openai/gpt-4o-mini"),
            (&claude, "anthropic/claude-3-5-haiku-20241022"),
        ] {
            let mut body = chat(true);
            body["model"] = json!(model);
            let answer = api.post("/v1/chat/completions", body).await;
            assert_eq!(answer.status.as_u16(), 200, "{model}: {}", answer.text);
            let text = streamed_content(&answer.text);
            assert!(text.contains("[redacted]"), "{chunks} chunks: {text}");
            assert_clean("the streamed text", text.as_bytes());
            assert!(!text.contains(&ANTHROPIC_KEY[3..]), "{text}");
            split_streams += 1;
            answers.push(answer);
        }
    }
    stand_in.set_chunks(1);
    println!("keys split across stream events: {split_streams} streams, 0 found");

    // Validation: accepted, refused (the refusal quotes the key) and down.
    answers.push(
        own.post("/api/keys/validate", json!({"service": "gateway"}))
            .await,
    );
    stand_in.accept_keys([TEAM_KEY, NEXT_KEY]);
    answers.push(
        own.post("/api/keys/validate", json!({"service": "gateway"}))
            .await,
    );
    stand_in.fail_next(Failure::Status(503, None));
    answers.push(
        own.post(
            "/api/keys/validate",
            json!({"service": "gateway", "apiKey": "other:CANARY:shape:0000002"}),
        )
        .await,
    );
    // Every other route a user calls, with the odd-shaped key stored.
    for path in [
        "/api/resolve?model=openai/gpt-4o-mini",
        "/v1/models",
        "/api/providers",
        "/api/user-settings",
        "/api/budget",
        "/api/usage",
    ] {
        answers.push(own.get(path).await);
        answers.push(team.get(path).await);
    }
    answers.push(
        own.put("/api/keys/gateway/pending", json!({"apiKey": NEXT_KEY}))
            .await,
    );
    answers.push(own.delete("/api/keys/gateway/pending").await);
    answers.push(
        own.patch("/api/keys/gateway", json!({"label": "renamed"}))
            .await,
    );
    answers.push(own.get("/api/keys").await);
    answers.push(own.get("/api/audit").await);
    answers.push(own.get("/api/usage/requests").await);
    answers.push(team.get("/api/usage/requests").await);

    println!(
        "leak canaries: 3 odd-shaped keys x 4 forms, {} responses (headers included), the trace log and the data directory: 0 found",
        answers.len()
    );
    for answer in &answers {
        assert_clean("a response", answer.text.as_bytes());
        for (name, value) in &answer.headers {
            assert_clean(name.as_str(), value.as_bytes());
        }
    }
    let log = server.output();
    assert!(log.contains("TRACE"), "the log ran at trace level");
    assert_clean("the log", log.as_bytes());
    drop(server);
    for (path, bytes) in files_below(dir.path()) {
        assert_clean(&path.display().to_string(), &bytes);
    }
    stand_in.shutdown().await;
}

/// Another user, with a valid token, tries every route against the first
/// user's keys, usage and audit trail: nothing of theirs is ever listed,
/// changed or used upstream, and admin routes stay closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_never_reaches_a_users_keys() {
    const ALICE_KEYS: [(&str, &str); 3] = [
        ("openai", "sk-proj-ALICEonly0000000000000000001"),
        ("groq", "gsk_ALICEonly000000000000000000001"),
        ("gateway", "alice:only:gateway:key:0001"),
    ];
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        Mode::Embedded,
        &stand_in,
        dir.path(),
        &[("BYOK_VALIDATE_PER_MINUTE", "1000")],
    );
    stand_in.accept_keys(ALICE_KEYS.map(|(_, key)| key));
    let alice = Api::new(&server.base, Some(&server.token("alice", false)));
    let mallory = Api::new(&server.base, Some(&server.token("mallory", false)));
    for (service, key) in ALICE_KEYS {
        let saved = alice
            .post("/api/keys", json!({"service": service, "apiKey": key}))
            .await;
        assert_eq!(saved.status.as_u16(), 201, "{}", saved.text);
    }
    let chat =
        json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        alice
            .post("/v1/chat/completions", chat.clone())
            .await
            .status
            .as_u16(),
        200
    );
    // `lastUsedAt` of alice's own earlier completion lands off its request's
    // path, whenever: compare the keys without it.
    let without_last_use = |mut listed: serde_json::Value| {
        if let Some(keys) = listed["keys"].as_array_mut() {
            for key in keys {
                if let Some(key) = key.as_object_mut() {
                    key.remove("lastUsedAt");
                }
            }
        }
        listed
    };
    let before = without_last_use(alice.get("/api/keys").await.json);
    let upstream_before = stand_in.requests().len();

    let mut attempts = 0;
    let mut answers = Vec::new();
    let services = [
        "openai",
        "groq",
        "gateway",
        "anthropic",
        "alice",
        "..%2Falice",
        "openai%00",
    ];
    for service in services {
        answers.push(
            mallory
                .patch(&format!("/api/keys/{service}"), json!({"enabled": false}))
                .await,
        );
        answers.push(mallory.delete(&format!("/api/keys/{service}")).await);
        answers.push(
            mallory
                .put(
                    &format!("/api/keys/{service}/pending"),
                    json!({"apiKey": "sk-proj-MALLORY000000000000000001"}),
                )
                .await,
        );
        answers.push(
            mallory
                .delete(&format!("/api/keys/{service}/pending"))
                .await,
        );
        answers.push(
            mallory
                .post("/api/keys/validate", json!({"service": service}))
                .await,
        );
        attempts += 5;
    }
    for model in [
        "openai/gpt-4o-mini",
        "groq/llama-3.1-8b-instant",
        "gpt-4o",
        "anthropic/claude-sonnet-4.5",
    ] {
        let chat = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        answers.push(mallory.post("/v1/chat/completions", chat).await);
        answers.push(mallory.get(&format!("/api/resolve?model={model}")).await);
        answers.push(
            mallory
                .post("/api/keys/validate", json!({"model": model}))
                .await,
        );
        attempts += 3;
    }
    for path in [
        "/api/keys",
        "/api/audit",
        "/api/usage",
        "/api/usage/requests",
        "/api/budget",
        "/api/admin/usage",
        "/api/admin/budgets",
        "/api/admin/budgets/users/alice",
        "/v1/models",
    ] {
        answers.push(mallory.get(path).await);
        attempts += 1;
    }
    answers.push(
        mallory
            .put(
                "/api/admin/budgets/users/alice",
                json!({"type": "tokens", "period": "monthly", "limit": 1}),
            )
            .await,
    );
    answers.push(mallory.delete("/api/admin/budgets/users/alice").await);
    attempts += 2;

    for answer in &answers {
        for (_, key) in ALICE_KEYS {
            assert!(!answer.text.contains(key), "{}", answer.text);
        }
        assert!(!answer.text.contains("\"alice\""), "{}", answer.text);
        assert!(answer.status.as_u16() != 500, "{}", answer.text);
    }
    assert_eq!(
        mallory.get("/api/keys").await.json["keys"],
        json!([]),
        "mallory lists no keys"
    );
    let admin_only = answers.iter().filter(|a| a.status.as_u16() == 403).count();
    assert!(admin_only >= 5, "admin routes closed");
    // No upstream call used one of alice's keys for mallory.
    let used: Vec<String> = stand_in.requests()[upstream_before..]
        .iter()
        .map(|r| r.key.clone())
        .collect();
    for (_, key) in ALICE_KEYS {
        assert!(
            !used.iter().any(|k| k == key),
            "mallory's request went out with alice's key"
        );
    }
    assert_eq!(
        without_last_use(alice.get("/api/keys").await.json),
        before,
        "alice's keys unchanged"
    );
    println!("cross-user attempts: {attempts}, 0 reached alice's keys, usage or audit");
    drop(server);
    stand_in.shutdown().await;
}
