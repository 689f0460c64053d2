//! Key validation, its rate limit and the audit log end to end: the real
//! byok-local binary on 127.0.0.1 in front of the provider stand-in, on the
//! embedded store and with `BYOK_STORE=aws` against the local AWS emulator.
//!
//! Every service is checked with its cheapest authenticated call (`GET
//! {base}/models`; OpenRouter `GET /key` and the gateway `GET /credits`, whose
//! model lists are public) and its own auth; the
//! provider's answers map to `valid` (200), `invalid` (401 `invalid_key`)
//! and `unreachable` (502/504/429, never `invalid`); the outcome lands on the
//! stored key's metadata; `validate: true` on save; the per-user limit holds
//! under concurrency on both stores; the audit log tells a key's life story
//! newest first with pagination; canary keys never leak.

#![expect(
    clippy::unwrap_used,
    reason = "test bodies are plain functions run once per store; a failed step stops the test"
)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use byok_tests::http::{Answer, Api};
use byok_tests::stores::{Mode, start};
use byok_tests::upstream::{Failure, LEAK_CANARY, StandIn, Upstream};
use reqwest::StatusCode;
use serde_json::{Value, json};

const TEAM_GATEWAY_KEY: &str = "vck_teamkey0validate00000000000000001";

/// One key per service, with the upstream that serves it and its path.
const KEYS: [(&str, &str, Upstream, &str); 7] = [
    (
        "openai",
        "sk-proj-valid0openai000000000000000001",
        Upstream::OpenAi,
        "user-provider",
    ),
    (
        "anthropic",
        "sk-ant-api03-valid0anthropic00000000001",
        Upstream::Anthropic,
        "user-provider",
    ),
    (
        "xai",
        "xai-valid0xai00000000000000000000001",
        Upstream::Xai,
        "user-provider",
    ),
    (
        "openrouter",
        "sk-or-v1-valid0openrouter000000000001",
        Upstream::OpenRouter,
        "user-provider",
    ),
    (
        "google",
        "AIzaSyValid0google000000000000000001",
        Upstream::Google,
        "user-provider",
    ),
    (
        "groq",
        "gsk_valid0groq0000000000000000000001",
        Upstream::Groq,
        "user-provider",
    ),
    (
        "gateway",
        "vck_valid0gateway000000000000000001",
        Upstream::Gateway,
        "user-gateway",
    ),
];

byok_tests::on_every_store!(
    every_service_is_checked_with_its_own_auth,
    provider_failures_are_never_invalid,
    validate_on_save,
    the_limit_holds_under_concurrency,
    audit_tells_a_keys_life_story,
    canary_keys_never_leak,
);

fn assert_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status.as_u16(), status, "{}", answer.text);
    assert_eq!(answer.code(), code, "{}", answer.text);
    assert!(
        !answer.text.contains(LEAK_CANARY),
        "upstream message not redacted: {}",
        answer.text
    );
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn stored(api: &Api, service: &str) -> Value {
    let keys = api.get("/api/keys").await;
    keys.json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["service"] == service)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn save(api: &Api, service: &str, key: &str) -> Answer {
    let answer = api
        .post("/api/keys", json!({"service": service, "apiKey": key}))
        .await;
    assert!(answer.status.is_success(), "{}", answer.text);
    answer
}

async fn every_service_is_checked_with_its_own_auth(mode: Mode) {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        mode,
        &stand_in,
        dir.path(),
        &[
            ("BYOK_VALIDATE_PER_MINUTE", "1000"),
            ("AI_GATEWAY_API_KEY", TEAM_GATEWAY_KEY),
        ],
    );
    let api = Api::new(&server.base, Some(&server.token("vera", false)));
    let host = stand_in.addr().to_string();

    for (service, key, upstream, path) in KEYS {
        // A key given in the request: checked, not stored.
        stand_in.clear();
        let given = api
            .post(
                "/api/keys/validate",
                json!({"service": service, "apiKey": key}),
            )
            .await;
        assert_eq!(given.status, StatusCode::OK, "{service}: {}", given.text);
        assert_eq!(given.json["valid"], true);
        assert_eq!(given.json["service"], service);
        assert_eq!(given.json["provider"], service);
        assert_eq!(given.json["path"], Value::Null);
        assert_eq!(given.json["baseUrlHost"], host.as_str());
        assert!(
            given.json["checkedAt"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        );
        let requests = stand_in.requests();
        assert_eq!(requests.len(), 1, "{service}: one provider call");
        let call = &requests[0];
        assert_eq!(call.upstream, Some(upstream));
        assert_eq!(call.method, reqwest::Method::GET);
        let check = match upstream {
            Upstream::OpenRouter => "/key",
            Upstream::Gateway => "/credits",
            _ => "/models",
        };
        assert_eq!(call.path, format!("{}{check}", upstream.prefix()));
        assert_eq!(call.key, key, "{service}: the key in its own header");
        if upstream == Upstream::Anthropic {
            assert!(call.headers.contains_key("x-api-key"));
            assert_eq!(call.headers["anthropic-version"], "2023-06-01");
        } else {
            assert!(call.headers.contains_key("authorization"));
        }
        assert_eq!(stored(&api, service).await, Value::Null, "not stored");

        // The stored key.
        save(&api, service, key).await;
        let checked = api
            .post("/api/keys/validate", json!({"service": service}))
            .await;
        assert_eq!(checked.status, StatusCode::OK, "{}", checked.text);
        assert_eq!(checked.json["path"], path);
        assert_eq!(checked.json["provider"], service);
        let record = stored(&api, service).await;
        assert_eq!(record["lastValidation"], "valid", "{record}");
        assert!(record["lastValidatedAt"].is_string());

        // A key the provider refuses: 401 invalid_key, marked invalid.
        let bad = format!("{key}bad");
        let refused = api
            .post(
                "/api/keys/validate",
                json!({"service": service, "apiKey": bad}),
            )
            .await;
        assert_error(&refused, 401, "invalid_key");
        stand_in.accept_keys(["nothing-else"]);
        let refused = api
            .post("/api/keys/validate", json!({"service": service}))
            .await;
        assert_error(&refused, 401, "invalid_key");
        assert_eq!(stored(&api, service).await["lastValidation"], "invalid");
        stand_in.accept_default_keys();
        if service != "gateway" {
            // Keep the gateway key last: it would take over model resolution.
            assert_eq!(
                api.delete(&format!("/api/keys/{service}")).await.status,
                StatusCode::NO_CONTENT
            );
        }
    }
    api.delete("/api/keys/gateway").await;

    // By model: the credential resolution picks.
    save(&api, "openai", KEYS[0].1).await;
    let by_model = api
        .post("/api/keys/validate", json!({"model": "gpt-4o-mini"}))
        .await;
    assert_eq!(by_model.status, StatusCode::OK, "{}", by_model.text);
    assert_eq!(
        (&by_model.json["path"], &by_model.json["provider"]),
        (&json!("user-provider"), &json!("openai"))
    );
    assert_eq!(stored(&api, "openai").await["lastValidation"], "valid");
    let team = api
        .post("/api/keys/validate", json!({"model": "xai/grok-3-mini"}))
        .await;
    assert_eq!(team.status, StatusCode::OK, "{}", team.text);
    assert_eq!(team.json["path"], "team-gateway");
    assert_eq!(stand_in.requests().last().unwrap().key, TEAM_GATEWAY_KEY);

    // Our own refusals, exactly as elsewhere.
    assert_error(
        &api.post("/api/keys/validate", json!({"model": "mystery-1"}))
            .await,
        400,
        "unknown_model",
    );
    assert_error(
        &api.post("/api/keys/validate", json!({"service": "groq"}))
            .await,
        403,
        "no_credential",
    );
    api.post("/api/user-settings", json!({"allowGatewayFallback": false}))
        .await;
    assert_error(
        &api.post("/api/keys/validate", json!({"model": "xai/grok-3-mini"}))
            .await,
        403,
        "consent_required",
    );
    for (body, status, code) in [
        (json!({}), 400, "invalid_request"),
        (json!({"servce": "openai"}), 400, "invalid_request"),
        (json!({"service": "nope"}), 400, "invalid_request"),
        (json!({"apiKey": KEYS[0].1}), 400, "invalid_request"),
        (
            json!({"service": "openai", "apiKey": "sk-short"}),
            422,
            "invalid_key_format",
        ),
        (
            json!({"service": "openai", "apiKey": KEYS[0].1, "baseUrl": "https://x.example.com/v1"}),
            400,
            "invalid_request",
        ),
        (
            json!({"service": "gateway", "apiKey": KEYS[6].1, "baseUrl": "http://127.0.0.1:1/v1"}),
            422,
            "invalid_base_url",
        ),
    ] {
        assert_error(
            &api.post("/api/keys/validate", body.clone()).await,
            status,
            code,
        );
    }
    drop(server);
    stand_in.shutdown().await;
}

async fn provider_failures_are_never_invalid(mode: Mode) {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        mode,
        &stand_in,
        dir.path(),
        &[
            ("BYOK_VALIDATE_PER_MINUTE", "1000"),
            ("BYOK_VALIDATE_TIMEOUT_SECS", "0.5"),
        ],
    );
    let api = Api::new(&server.base, Some(&server.token("ola", false)));
    let (service, key, _, _) = KEYS[1];
    save(&api, service, key).await;
    let check = || api.post("/api/keys/validate", json!({"service": service}));

    stand_in.fail_next(Failure::Status(503, None));
    assert_error(&check().await, 502, "upstream_unavailable");
    assert_eq!(stored(&api, service).await["lastValidation"], "unreachable");

    stand_in.fail_next(Failure::Status(500, None));
    assert_error(&check().await, 502, "upstream_unavailable");

    stand_in.fail_next(Failure::Status(429, Some(7)));
    let limited = check().await;
    assert_error(&limited, 429, "upstream_rate_limited");
    assert_eq!(header(&limited, "retry-after"), "7");
    assert_eq!(stored(&api, service).await["lastValidation"], "unreachable");

    for failure in [
        Failure::Hang,
        Failure::SlowFirstByte(Duration::from_secs(3)),
    ] {
        stand_in.fail_next(failure.clone());
        let started = Instant::now();
        assert_error(&check().await, 504, "upstream_timeout");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{failure:?} gave up after the configured 0.5 s, not {:?}",
            started.elapsed()
        );
        assert_eq!(stored(&api, service).await["lastValidation"], "unreachable");
    }

    stand_in.fail_next(Failure::Status(403, None));
    assert_error(&check().await, 401, "invalid_key");
    assert_eq!(stored(&api, service).await["lastValidation"], "invalid");

    // Reached, but neither yes nor no (a 404 for the check's path): the key
    // is not called unreachable, nor invalid.
    stand_in.fail_next(Failure::Status(404, None));
    assert_error(&check().await, 502, "upstream_error");
    assert_eq!(stored(&api, service).await["lastValidation"], "unverified");

    // Back to normal.
    assert_eq!(check().await.status, StatusCode::OK);
    assert_eq!(stored(&api, service).await["lastValidation"], "valid");

    // A provider that is not there at all.
    drop(server);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let down = format!("http://127.0.0.1:{port}/v1");
    let server = start(
        mode,
        &stand_in,
        dir.path(),
        &[("BYOK_OPENAI_BASE_URL", down.as_str())],
    );
    let api = Api::new(&server.base, Some(&server.token("ola", false)));
    let answer = api
        .post(
            "/api/keys/validate",
            json!({"service": "openai", "apiKey": KEYS[0].1}),
        )
        .await;
    assert_error(&answer, 502, "upstream_unavailable");
    drop(server);
    stand_in.shutdown().await;
}

async fn validate_on_save(mode: Mode) {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        mode,
        &stand_in,
        dir.path(),
        &[
            ("BYOK_VALIDATE_PER_MINUTE", "1000"),
            ("BYOK_VALIDATE_TIMEOUT_SECS", "0.5"),
        ],
    );
    let api = Api::new(&server.base, Some(&server.token("sam", false)));
    let save_validated = |service: &str, key: &str| {
        api.post(
            "/api/keys",
            json!({"service": service, "apiKey": key, "validate": true}),
        )
    };

    let valid = save_validated("groq", KEYS[5].1).await;
    assert_eq!(valid.status, StatusCode::CREATED, "{}", valid.text);
    assert_eq!(valid.json["lastValidation"], "valid");
    assert!(valid.json["lastValidatedAt"].is_string());
    assert_eq!(stored(&api, "groq").await["lastValidation"], "valid");

    // Refused by the provider: 422 invalid_key and nothing changes (the
    // working key stays), unless the caller insists with saveInvalid.
    let before = stored(&api, "groq").await;
    let refused = save_validated("groq", "gsk_refused0bad000000000000000001").await;
    assert_error(&refused, 422, "invalid_key");
    assert_eq!(stored(&api, "groq").await, before);
    let new_service = api
        .post(
            "/api/keys",
            json!({"service": "xai", "apiKey": "xai-refused0bad00000000000000000001", "validate": true}),
        )
        .await;
    assert_error(&new_service, 422, "invalid_key");
    let listed = api.get("/api/keys").await;
    assert!(
        !listed.text.contains("\"xai\""),
        "a refused key was stored: {}",
        listed.text
    );
    let invalid = api
        .post(
            "/api/keys",
            json!({"service": "groq", "apiKey": "gsk_refused0bad000000000000000001", "validate": true, "saveInvalid": true}),
        )
        .await;
    assert_eq!(invalid.status, StatusCode::OK, "{}", invalid.text);
    assert_eq!(invalid.json["lastValidation"], "invalid");
    assert_eq!(invalid.json["maskedKey"], "gsk_…0001");
    assert_eq!(stored(&api, "groq").await["lastValidation"], "invalid");

    // A label shaped like a key is refused (labels are kept in clear).
    let labelled = api
        .post(
            "/api/keys",
            json!({"service": "groq", "apiKey": KEYS[5].1, "label": "backup gsk_labelcanary0000000001"}),
        )
        .await;
    assert_error(&labelled, 422, "invalid_label");
    assert!(!labelled.text.contains("labelcanary"), "{}", labelled.text);

    // Provider down or slow: the save still succeeds, marked unreachable.
    for failure in [Failure::Status(503, None), Failure::Hang] {
        stand_in.fail_next(failure);
        let down = save_validated("xai", KEYS[2].1).await;
        assert!(down.status.is_success(), "{}", down.text);
        assert_eq!(down.json["lastValidation"], "unreachable", "{}", down.text);
        assert_eq!(stored(&api, "xai").await["lastValidation"], "unreachable");
    }

    // Without the flag nothing is checked and nothing is marked.
    stand_in.clear();
    let plain = save(&api, "xai", KEYS[2].1).await;
    assert!(plain.json.get("lastValidation").is_none(), "{}", plain.text);
    assert_eq!(stand_in.requests().len(), 0);
    drop(server);
    stand_in.shutdown().await;
}

/// Waits, if needed, so the next few seconds stay inside one minute window.
async fn early_in_a_window() {
    let into = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 60_000;
    if into > 40_000 {
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(60_000 - into).unwrap() + 200,
        ))
        .await;
    }
}

async fn the_limit_holds_under_concurrency(mode: Mode) {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        mode,
        &stand_in,
        dir.path(),
        &[("BYOK_VALIDATE_PER_MINUTE", "5")],
    );
    let api = Api::new(&server.base, Some(&server.token("lim", false)));
    save(&api, "openai", KEYS[0].1).await;
    early_in_a_window().await;

    // Refusals of our own never count.
    for body in [
        json!({"service": "openai", "extra": true}),
        json!({"service": "openai", "apiKey": "sk-short"}),
        json!({"service": "groq"}),
        json!({"model": "mystery-1"}),
        json!({}),
    ] {
        let answer = api.post("/api/keys/validate", body).await;
        assert!(answer.status.is_client_error(), "{}", answer.text);
        assert_ne!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    }
    stand_in.clear();

    let answers = futures_util::future::join_all((0..12).map(|_| {
        let api = api.clone();
        async move {
            api.post("/api/keys/validate", json!({"service": "openai"}))
                .await
        }
    }))
    .await;
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    let limited: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(
        (ok, limited.len()),
        (5, 7),
        "{:?}",
        answers.iter().map(|a| &a.text).collect::<Vec<_>>()
    );
    for answer in &limited {
        assert_error(answer, 429, "rate_limited");
        let secs: u64 = header(answer, "retry-after").parse().unwrap();
        assert!((1..=60).contains(&secs), "{secs}");
    }
    assert_eq!(
        stand_in.requests().len(),
        5,
        "refused checks never reach the provider"
    );

    // A save asking for validation still saves, unvalidated.
    let saved = api
        .post(
            "/api/keys",
            json!({"service": "openai", "apiKey": KEYS[0].1, "validate": true}),
        )
        .await;
    assert_eq!(saved.status, StatusCode::OK, "{}", saved.text);
    assert!(saved.json.get("lastValidation").is_none(), "{}", saved.text);

    // Another user has a limit of their own.
    let other = Api::new(&server.base, Some(&server.token("lim2", false)));
    let answer = other
        .post(
            "/api/keys/validate",
            json!({"service": "openai", "apiKey": KEYS[0].1}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    // Each answer says how many checks are left this minute.
    assert_eq!(header(&answer, "x-ratelimit-limit-requests"), "5");
    assert_eq!(header(&answer, "x-ratelimit-remaining-requests"), "4");
    let again = other
        .post(
            "/api/keys/validate",
            json!({"service": "openai", "apiKey": KEYS[0].1}),
        )
        .await;
    assert_eq!(header(&again, "x-ratelimit-remaining-requests"), "3");
    drop(server);
    stand_in.shutdown().await;
}

async fn audit_tells_a_keys_life_story(mode: Mode) {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        mode,
        &stand_in,
        dir.path(),
        &[("BYOK_VALIDATE_PER_MINUTE", "1000")],
    );
    let api = Api::new(&server.base, Some(&server.token("ada", false)));
    let (service, key, _, _) = KEYS[0];
    let pause = || tokio::time::sleep(Duration::from_millis(3));

    let mut request_ids = Vec::new();
    let mut step = |answer: Answer| {
        assert!(answer.status.is_success(), "{}", answer.text);
        let id = header(&answer, "x-request-id").to_owned();
        assert!(!id.is_empty(), "x-request-id on every answer");
        request_ids.push(id);
    };
    step(save(&api, service, key).await);
    pause().await;
    step(save(&api, service, &format!("{key}2")).await);
    pause().await;
    step(
        api.patch("/api/keys/openai", json!({"enabled": false}))
            .await,
    );
    pause().await;
    step(
        api.patch("/api/keys/openai", json!({"enabled": true}))
            .await,
    );
    pause().await;
    step(
        api.patch("/api/keys/openai", json!({"label": "Work"}))
            .await,
    );
    pause().await;
    step(
        api.post("/api/keys/validate", json!({"service": service}))
            .await,
    );
    pause().await;
    step(api.delete("/api/keys/openai").await);
    // Refused requests leave no trace.
    assert_eq!(
        api.delete("/api/keys/openai").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.patch("/api/keys/openai", json!({})).await.status,
        StatusCode::BAD_REQUEST
    );

    let all = api.get("/api/audit").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text);
    let events = all.json["events"].as_array().unwrap().clone();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "deleted",
            "validated",
            "updated",
            "enabled",
            "disabled",
            "replaced",
            "added"
        ],
        "{}",
        all.text
    );
    assert!(all.json.get("nextCursor").is_none());
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["requestId"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = request_ids.iter().map(String::as_str).collect();
    expected.reverse();
    assert_eq!(ids, expected, "each event names its request");
    for event in &events {
        assert_eq!(event["service"], "openai");
        assert!(event["at"].as_str().is_some_and(|t| t.contains('T')));
        assert!(event["id"].as_str().is_some_and(|t| !t.is_empty()));
        let result = if event["action"] == "validated" {
            json!("valid")
        } else {
            Value::Null
        };
        assert_eq!(event.get("result").cloned().unwrap_or(Value::Null), result);
    }

    // Pages of 3: 3 + 3 + 1, the same events in the same order.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/audit?limit=3&cursor={c}"),
            None => "/api/audit?limit=3".to_owned(),
        };
        let page = api.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        paged.extend(page.json["events"].as_array().unwrap().iter().cloned());
        pages += 1;
        match page.json["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!((pages, &paged), (3, &events));

    for bad in [
        "/api/audit?cursor=nonsense",
        "/api/audit?cursor=AAAA",
        "/api/audit?limit=0",
        "/api/audit?limit=101",
        "/api/audit?limit=ten",
    ] {
        assert_error(&api.get(bad).await, 400, "invalid_request");
    }
    let other = Api::new(&server.base, Some(&server.token("eve", false)));
    let theirs = other.get("/api/audit").await;
    assert_eq!(theirs.json["events"], json!([]), "{}", theirs.text);
    assert!(!all.text.contains(&key[key.len() - 20..]));
    drop(server);
    stand_in.shutdown().await;
}

async fn canary_keys_never_leak(mode: Mode) {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        mode,
        &stand_in,
        dir.path(),
        &[
            ("RUST_LOG", "debug"),
            ("BYOK_VALIDATE_PER_MINUTE", "1000"),
            ("AI_GATEWAY_API_KEY", "vck_teamcanary7f3a9c1e5b2d8e4f6a0c"),
        ],
    );
    let api = Api::new(&server.base, Some(&server.token("grace", false)));
    let canaries = [
        ("openai", "sk-proj-CANARYopenai7f3a9c1e5b2d8e4f6a0c"),
        ("anthropic", "sk-ant-api03-CANARYanthropic7f3a9c1e5b2d"),
        ("gateway", "vck_CANARYgateway7f3a9c1e5b2d8e4f6a0c"),
    ];
    let mut seen = Vec::new();
    for (service, key) in canaries {
        seen.push(
            api.post(
                "/api/keys/validate",
                json!({"service": service, "apiKey": key}),
            )
            .await,
        );
        // Refused by the provider, whose error quotes a key.
        seen.push(
            api.post(
                "/api/keys/validate",
                json!({"service": service, "apiKey": format!("{key}bad")}),
            )
            .await,
        );
        seen.push(
            api.post(
                "/api/keys",
                json!({"service": service, "apiKey": key, "validate": true}),
            )
            .await,
        );
        stand_in.fail_next(Failure::Status(503, None));
        seen.push(
            api.post("/api/keys/validate", json!({"service": service}))
                .await,
        );
    }
    seen.push(
        api.post("/api/keys/validate", json!({"model": "gpt-4o"}))
            .await,
    );
    seen.push(api.get("/api/audit").await);
    seen.push(api.get("/api/keys").await);
    let (_, output) = server.stop();
    assert!(output.contains("DEBUG"), "debug logging was on");

    let mut all: Vec<String> = canaries.iter().map(|(_, k)| (*k).to_owned()).collect();
    all.push("vck_teamcanary7f3a9c1e5b2d8e4f6a0c".to_owned());
    all.push(LEAK_CANARY.to_owned());
    for key in &all {
        let secret_part = &key[key.len() - 20..];
        for answer in &seen {
            assert!(
                !answer.text.contains(secret_part),
                "response leaked {key}: {}",
                answer.text
            );
            for (name, value) in &answer.headers {
                assert!(
                    !String::from_utf8_lossy(value.as_bytes()).contains(secret_part),
                    "header {name} leaked {key}"
                );
            }
        }
        assert!(
            !output.contains(secret_part),
            "server output leaked {key}:\n{output}"
        );
    }
    stand_in.shutdown().await;
}
