//! Several keys per service, end to end on both stores: the per-key routes
//! and their limits, failover before the first byte (a 429 cools the key
//! down for every instance, a 401 marks it invalid and is audited), the
//! order `/api/resolve` reports, `x-byok-key-id`, and no team credential
//! after a user key fails unless the operator opted in.
#![expect(
    clippy::unwrap_used,
    reason = "test bodies are plain functions run once per store; a failed step stops the test"
)]

use byok_tests::http::Api;
use byok_tests::stores::{Mode, start};
use byok_tests::upstream::{Failure, StandIn};
use serde_json::{Value, json};
use std::time::Duration;

const FIRST: &str = "sk-proj-multikey0first000000000000000001";
const SECOND: &str = "sk-proj-multikey0second00000000000000002";
const THIRD: &str = "sk-proj-multikey0third000000000000000003";
const GROQ: &str = "gsk_multikey0groq0000000000000000000007";
const TEAM_GATEWAY_KEY: &str = "vck_teamkey0multikey0000000000000000001";

fn chat() -> Value {
    json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

/// The keys the stand-in saw since `from`, in order.
fn keys_seen(stand_in: &StandIn, from: usize) -> Vec<String> {
    stand_in.requests()[from..]
        .iter()
        .map(|r| r.key.clone())
        .collect()
}

async fn add(api: &Api, service: &str, body: Value) -> Value {
    let answer = api.post(&format!("/api/keys/{service}"), body).await;
    assert_eq!(answer.status.as_u16(), 201, "{}", answer.text);
    answer.json
}

async fn listed(api: &Api) -> Vec<Value> {
    let answer = api.get("/api/keys").await;
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    answer.json["keys"].as_array().unwrap().clone()
}

async fn routes_and_limits(mode: Mode) {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        mode,
        &stand_in,
        dir.path(),
        &[("BYOK_MAX_KEYS_PER_SERVICE", "3")],
    );
    let api = Api::new(&server.base, Some(&server.token("mina", false)));

    let providers = api.get("/api/providers").await;
    assert!(
        providers.json["providers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["maxKeys"] == 3),
        "{}",
        providers.text
    );

    // The first key through the old route, two more through the new one.
    let first = api
        .post(
            "/api/keys",
            json!({"service": "openai", "apiKey": FIRST, "label": "Main"}),
        )
        .await;
    assert_eq!(first.status.as_u16(), 201, "{}", first.text);
    let first_id = first.json["id"].as_str().unwrap().to_owned();
    assert_eq!(first.json["priority"], 0);
    let second = add(&api, "openai", json!({"apiKey": SECOND, "label": "Backup"})).await;
    assert_eq!(second["priority"], 1, "after the stored ones");
    let third = add(&api, "openai", json!({"apiKey": THIRD, "priority": 7})).await;
    assert_eq!(third["label"], "OpenAI");
    let ids: Vec<String> = [&second, &third]
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.iter().all(|id| *id != first_id) && ids[0] != ids[1]);

    // The limit, and bad input, change nothing.
    let over = api
        .post(
            "/api/keys/openai",
            json!({"apiKey": "sk-proj-multikey0fourth00000000000000004"}),
        )
        .await;
    assert_eq!(over.status.as_u16(), 409, "{}", over.text);
    assert_eq!(over.code(), "key_limit_reached");
    for (body, status, code) in [
        (json!({"apiKey": "nope"}), 422, "invalid_key_format"),
        (
            json!({"apiKey": GROQ, "priority": -1}),
            400,
            "invalid_request",
        ),
        (
            json!({"apiKey": GROQ, "baseUrl": "https://x.example.com/v1"}),
            400,
            "invalid_request",
        ),
        (
            json!({"apiKey": GROQ, "label": "gsk_looks0like0a0key"}),
            422,
            "invalid_label",
        ),
    ] {
        let answer = api.post("/api/keys/groq", body.clone()).await;
        assert_eq!(answer.status.as_u16(), status, "{body}: {}", answer.text);
        assert_eq!(answer.code(), code, "{body}");
    }
    assert_eq!(listed(&api).await.len(), 3);

    // Listed by priority; a priority change reorders.
    let order = |keys: &[Value]| -> Vec<String> {
        keys.iter()
            .map(|k| k["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        order(&listed(&api).await),
        [first_id.clone(), ids[0].clone(), ids[1].clone()]
    );
    let moved = api
        .patch(
            &format!("/api/keys/openai/{}", ids[1]),
            json!({"priority": 0, "label": "Now first"}),
        )
        .await;
    assert_eq!(moved.status.as_u16(), 200, "{}", moved.text);
    assert_eq!(moved.json["label"], "Now first");
    let keys = listed(&api).await;
    assert_eq!(
        keys[0]["id"],
        first_id.as_str(),
        "priority 0, older key first"
    );
    assert_eq!(keys[1]["id"], ids[1].as_str());
    assert_eq!(keys[2]["id"], ids[0].as_str());
    let resolved = api.get("/api/resolve?model=openai/gpt-4o-mini").await;
    let candidates: Vec<&str> = resolved.json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        candidates,
        [first_id.as_str(), ids[1].as_str(), ids[0].as_str()],
        "ties by age: {}",
        resolved.text
    );

    // Priority is per key; unknown ids are not found.
    let all = api.patch("/api/keys/openai", json!({"priority": 3})).await;
    assert_eq!(all.status.as_u16(), 400, "{}", all.text);
    for path in [
        "/api/keys/openai/k00000000000000ff",
        "/api/keys/openai/not-an-id",
    ] {
        let answer = api.patch(path, json!({"enabled": false})).await;
        assert_eq!(answer.status.as_u16(), 404, "{path}: {}", answer.text);
        assert_eq!(api.delete(path).await.status.as_u16(), 404, "{path}");
    }

    // POST /api/keys replaces the primary key, keeping its id.
    let replaced = api
        .post(
            "/api/keys",
            json!({"service": "openai", "apiKey": "sk-proj-multikey0replaced00000000000005"}),
        )
        .await;
    assert_eq!(replaced.status.as_u16(), 200, "{}", replaced.text);
    assert_eq!(replaced.json["id"], first_id.as_str());
    assert_eq!(replaced.json["label"], "Main");
    assert_eq!(listed(&api).await.len(), 3);

    // Validation and rotation name one key.
    stand_in.accept_keys([SECOND, "sk-proj-multikey0staged000000000000000006"]);
    let checked = api
        .post(
            "/api/keys/validate",
            json!({"service": "openai", "keyId": ids[0]}),
        )
        .await;
    assert_eq!(checked.status.as_u16(), 200, "{}", checked.text);
    assert_eq!(checked.json["keyId"], ids[0].as_str());
    let staged = api
        .put(
            &format!("/api/keys/openai/{}/pending", ids[0]),
            json!({"apiKey": "sk-proj-multikey0staged000000000000000006"}),
        )
        .await;
    assert_eq!(staged.status.as_u16(), 202, "{}", staged.text);
    assert_eq!(staged.json["id"], ids[0].as_str());
    let audit = api.get("/api/audit?limit=50").await;
    let events = audit.json["events"].as_array().unwrap();
    for (action, id) in [
        ("added", &first_id),
        ("added", &ids[0]),
        ("updated", &ids[1]),
        ("replaced", &first_id),
        ("validated", &ids[0]),
        ("rotated", &ids[0]),
    ] {
        assert!(
            events
                .iter()
                .any(|e| e["action"] == action && e["keyId"] == id.as_str()),
            "{action} {id}: {}",
            audit.text
        );
    }

    // One key goes; then every key of the service.
    let gone = api.delete(&format!("/api/keys/openai/{}", ids[1])).await;
    assert_eq!(gone.status.as_u16(), 204, "{}", gone.text);
    assert_eq!(listed(&api).await.len(), 2);
    assert_eq!(api.delete("/api/keys/openai").await.status.as_u16(), 204);
    assert!(listed(&api).await.is_empty());
    assert_eq!(api.delete("/api/keys/openai").await.status.as_u16(), 404);
    drop(server);
    stand_in.shutdown().await;
}

async fn a_rate_limited_key_cools_down_and_the_next_serves(mode: Mode) {
    let stand_in = StandIn::start().await;
    stand_in.accept_keys([FIRST, SECOND]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(mode, &stand_in, dir.path(), &[]);
    let api = Api::new(&server.base, Some(&server.token("rafa", false)));
    let first = api
        .post("/api/keys", json!({"service": "openai", "apiKey": FIRST}))
        .await;
    let first_id = first.json["id"].as_str().unwrap().to_owned();
    let second = add(&api, "openai", json!({"apiKey": SECOND})).await;
    let second_id = second["id"].as_str().unwrap().to_owned();

    // The first key answers 429 with Retry-After: 2; the second serves.
    stand_in.fail_next(Failure::Status(429, Some(2)));
    let before = stand_in.requests().len();
    let answer = api.post("/v1/chat/completions", chat()).await;
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    assert_eq!(keys_seen(&stand_in, before), [FIRST, SECOND]);
    assert_eq!(answer.header("x-byok-key-id"), Some(second_id.as_str()));
    assert_eq!(answer.header("x-byok-path"), Some("user-provider"));

    // Within the 2 s, straight to the second (for every instance: the
    // cooldown is in the store, as the key list shows).
    let keys = listed(&api).await;
    assert!(
        keys[0]["cooldownUntil"].is_string(),
        "{}",
        serde_json::to_string(&keys).unwrap()
    );
    let resolved = api.get("/api/resolve?model=openai/gpt-4o-mini").await;
    assert_eq!(resolved.json["keys"][0]["id"], second_id.as_str());
    let before = stand_in.requests().len();
    let answer = api.post("/v1/chat/completions", chat()).await;
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    assert_eq!(keys_seen(&stand_in, before), [SECOND]);

    // After it, back to the first.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let before = stand_in.requests().len();
    let answer = api.post("/v1/chat/completions", chat()).await;
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    assert_eq!(keys_seen(&stand_in, before), [FIRST]);
    assert_eq!(answer.header("x-byok-key-id"), Some(first_id.as_str()));
    assert!(listed(&api).await[0].get("cooldownUntil").is_none());

    // A streamed request fails over the same way.
    stand_in.fail_next(Failure::Status(503, None));
    let mut body = chat();
    body["stream"] = json!(true);
    let before = stand_in.requests().len();
    let answer = api.post("/v1/chat/completions", body).await;
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    assert!(answer.text.ends_with("data: [DONE]\n\n"), "{}", answer.text);
    assert_eq!(keys_seen(&stand_in, before), [FIRST, SECOND]);

    // Uses are recorded on the keys (off the requests' path: soon after).
    let mut keys = listed(&api).await;
    for _ in 0..50 {
        if keys.iter().all(|k| k["lastUsedAt"].is_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        keys = listed(&api).await;
    }
    assert!(keys.iter().all(|k| k["lastUsedAt"].is_string()), "{keys:?}");
    drop(server);
    stand_in.shutdown().await;
}

async fn a_refused_key_is_marked_and_the_next_serves(mode: Mode) {
    let stand_in = StandIn::start().await;
    // The provider refuses the first key.
    stand_in.accept_keys([SECOND]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(mode, &stand_in, dir.path(), &[]);
    let api = Api::new(&server.base, Some(&server.token("ravi", false)));
    let first = api
        .post("/api/keys", json!({"service": "openai", "apiKey": FIRST}))
        .await;
    let first_id = first.json["id"].as_str().unwrap().to_owned();
    add(&api, "openai", json!({"apiKey": SECOND})).await;

    let before = stand_in.requests().len();
    let answer = api.post("/v1/chat/completions", chat()).await;
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    assert_eq!(keys_seen(&stand_in, before), [FIRST, SECOND]);
    let keys = listed(&api).await;
    assert_eq!(keys[0]["id"], first_id.as_str());
    assert_eq!(keys[0]["lastValidation"], "invalid", "{:?}", keys[0]);
    assert_eq!(keys[1]["lastValidation"], Value::Null);
    let audit = api.get("/api/audit").await;
    assert!(
        audit.json["events"].as_array().unwrap().iter().any(|e| {
            e["action"] == "validated"
                && e["result"] == "invalid"
                && e["keyId"] == first_id.as_str()
        }),
        "{}",
        audit.text
    );
    assert!(!audit.text.contains(FIRST) && !answer.text.contains(FIRST));
    drop(server);
    stand_in.shutdown().await;
}

async fn no_team_credential_after_a_user_key_fails_unless_opted_in(mode: Mode) {
    let stand_in = StandIn::start().await;
    stand_in.accept_keys([FIRST, SECOND, TEAM_GATEWAY_KEY]);
    for opted_in in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut extra = vec![("AI_GATEWAY_API_KEY", TEAM_GATEWAY_KEY)];
        if opted_in {
            extra.push(("BYOK_TEAM_FALLBACK_ON_USER_KEY_FAILURE", "true"));
        }
        let server = start(mode, &stand_in, dir.path(), &extra);
        let api = Api::new(&server.base, Some(&server.token("tova", false)));
        api.post("/api/keys", json!({"service": "openai", "apiKey": FIRST}))
            .await;
        add(&api, "openai", json!({"apiKey": SECOND})).await;
        let consent = api
            .post("/api/user-settings", json!({"allowGatewayFallback": true}))
            .await;
        assert!(consent.status.is_success(), "{}", consent.text);

        stand_in.fail_next(Failure::Status(500, None));
        stand_in.fail_next(Failure::Status(502, None));
        let before = stand_in.requests().len();
        let answer = api.post("/v1/chat/completions", chat()).await;
        let seen = keys_seen(&stand_in, before);
        if opted_in {
            assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
            assert_eq!(seen, [FIRST, SECOND, TEAM_GATEWAY_KEY]);
            assert_eq!(answer.header("x-byok-path"), Some("team-gateway"));
            assert_eq!(answer.header("x-byok-key-id"), None);
        } else {
            assert_eq!(answer.status.as_u16(), 502, "{}", answer.text);
            assert_eq!(seen, [FIRST, SECOND], "the team key is never tried");
        }
        drop(server);
    }
    stand_in.shutdown().await;
}

async fn round_robin_takes_turns_among_equal_priorities(mode: Mode) {
    let stand_in = StandIn::start().await;
    stand_in.accept_keys([FIRST, SECOND, THIRD]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        mode,
        &stand_in,
        dir.path(),
        &[("BYOK_KEY_STRATEGY", "round_robin")],
    );
    let api = Api::new(&server.base, Some(&server.token("ruth", false)));
    api.post("/api/keys", json!({"service": "openai", "apiKey": FIRST}))
        .await;
    add(&api, "openai", json!({"apiKey": SECOND, "priority": 0})).await;
    // A lower priority key is only a fallback.
    add(&api, "openai", json!({"apiKey": THIRD, "priority": 5})).await;
    let before = stand_in.requests().len();
    for _ in 0..6 {
        let answer = api.post("/v1/chat/completions", chat()).await;
        assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    }
    let seen = keys_seen(&stand_in, before);
    let count = |key: &str| seen.iter().filter(|k| *k == key).count();
    assert_eq!(
        (count(FIRST), count(SECOND), count(THIRD)),
        (3, 3, 0),
        "{seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] != w[1]), "turns: {seen:?}");
    drop(server);
    stand_in.shutdown().await;
}

byok_tests::on_every_store!(
    round_robin_takes_turns_among_equal_priorities,
    routes_and_limits,
    a_rate_limited_key_cools_down_and_the_next_serves,
    a_refused_key_is_marked_and_the_next_serves,
    no_team_credential_after_a_user_key_fails_unless_opted_in,
);
