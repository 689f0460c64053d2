//! Key rotation and the key-health sweep end to end: the real byok-local
//! binary on 127.0.0.1 in front of the provider stand-in, on the embedded
//! store and with `BYOK_STORE=aws` against the local AWS emulator.
//!
//! A staged key (`PUT /api/keys/{service}/pending`) shows as pending, is
//! tested against its provider and promoted, or rejected and never
//! promoted; completions keep succeeding throughout and use the new key once
//! it is promoted; a cancel keeps the current key; the sweep marks an
//! invalid key, flags old keys, removes orphaned secrets and emits the
//! events, touching nothing valid.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test bodies are plain functions run once per store; a failed step stops the test"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use byok::crypto::MasterKey;
use byok::domain::{ApiKey, Service, UserId};
use byok::store::SecretStore;
use byok_tests::http::{Answer, Api};
use byok_tests::stores::{Mode, run_command, start_with};
use byok_tests::upstream::{Failure, StandIn};
use reqwest::Method;
use serde_json::{Value, json};

const OLD_KEY: &str = "sk-proj-rotation0old000000000000000001";
const NEW_KEY: &str = "sk-proj-rotation0new000000000000000002";
/// The stand-in refuses keys containing `bad`.
const BAD_KEY: &str = "sk-proj-rotation0bad000000000000000003";

byok_tests::on_every_store!(
    a_staged_key_is_tested_then_promoted,
    a_refused_key_is_never_promoted,
    completions_never_fail_during_rotation,
    pending_is_shown_and_can_be_cancelled,
    the_sweep_marks_flags_and_removes_orphans,
);

async fn put(api: &Api, path: &str, body: Value) -> Answer {
    api.send(Method::PUT, path, Some(&body)).await
}

async fn stored(api: &Api, service: &str) -> Value {
    let keys = api.get("/api/keys").await;
    assert!(keys.status.is_success(), "{}", keys.text);
    keys.json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["service"] == service)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Polls `GET /api/keys` until the key shows no pending rotation.
async fn settled(api: &Api, service: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let key = stored(api, service).await;
        if key.get("pending").is_none() {
            return key;
        }
        assert!(Instant::now() < deadline, "rotation never settled: {key}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn complete(api: &Api) -> Answer {
    api.post(
        "/v1/chat/completions",
        json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
}

/// The key the stand-in saw on the last chat completion.
fn last_completion_key(stand_in: &StandIn) -> String {
    stand_in
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.ends_with("/chat/completions"))
        .map(|r| r.key)
        .expect("a completion reached the stand-in")
}

fn events(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

struct Setup {
    stand_in: StandIn,
    server: byok_tests::harness::LocalServer,
    env: Vec<(String, String)>,
    api: Api,
    events_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn dir(&self) -> &Path {
        self._dir.path()
    }
}

async fn setup(mode: Mode, extra: &[(&str, &str)]) -> Setup {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let events_file = dir.path().join("events.jsonl");
    let mut vars = vec![
        ("BYOK_EVENTS_FILE", events_file.to_str().unwrap()),
        ("BYOK_VALIDATE_PER_MINUTE", "1000"),
    ];
    vars.extend_from_slice(extra);
    let (server, env) = start_with(mode, &stand_in, dir.path(), &vars);
    let api = Api::new(&server.base, Some(&server.token("rosa", false)));
    let saved = api
        .post("/api/keys", json!({"service": "openai", "apiKey": OLD_KEY}))
        .await;
    assert!(saved.status.is_success(), "{}", saved.text);
    Setup {
        stand_in,
        server,
        env,
        api,
        events_file,
        _dir: dir,
    }
}

async fn a_staged_key_is_tested_then_promoted(mode: Mode) {
    let s = setup(mode, &[]).await;
    let before = stored(&s.api, "openai").await;

    let staged = put(
        &s.api,
        "/api/keys/openai/pending",
        json!({"apiKey": NEW_KEY}),
    )
    .await;
    assert_eq!(staged.status.as_u16(), 202, "{}", staged.text);
    assert_eq!(
        staged.json["maskedKey"], before["maskedKey"],
        "the current key still serves"
    );
    assert_eq!(staged.json["pending"]["maskedKey"], "sk-proj-…0002");
    assert!(!staged.text.contains(NEW_KEY) && !staged.text.contains(OLD_KEY));

    let after = settled(&s.api, "openai").await;
    assert_eq!(after["maskedKey"], "sk-proj-…0002", "{after}");
    assert_eq!(after["lastRotation"]["result"], "rotated");
    assert!(after["rotatedAt"].is_string());
    assert_eq!(after["lastValidation"], "valid");
    // The new key was tested against the provider before promotion.
    assert!(
        s.stand_in
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/models") && r.key == NEW_KEY),
        "the new key was checked"
    );

    let answer = complete(&s.api).await;
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    assert_eq!(last_completion_key(&s.stand_in), NEW_KEY);

    // Audit: staged, then rotated; the event stream says rotated.
    let audit = s.api.get("/api/audit").await;
    let results: Vec<&str> = audit.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "rotated")
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["rotated", "staged"], "{}", audit.text);
    let events = events(&s.events_file);
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "key.rotated" && e["service"] == "openai" && e["user"] == "rosa"),
        "{events:?}"
    );
    let text = std::fs::read_to_string(&s.events_file).unwrap();
    assert!(!text.contains(NEW_KEY) && !text.contains(OLD_KEY));
    let out = s.server.output();
    assert!(
        !out.contains(NEW_KEY) && !out.contains(OLD_KEY),
        "a key reached the log"
    );
}

async fn a_refused_key_is_never_promoted(mode: Mode) {
    let s = setup(mode, &[]).await;
    let staged = put(
        &s.api,
        "/api/keys/openai/pending",
        json!({"apiKey": BAD_KEY}),
    )
    .await;
    assert_eq!(staged.status.as_u16(), 202, "{}", staged.text);
    let after = settled(&s.api, "openai").await;
    assert_eq!(
        after["maskedKey"], "sk-proj-…0001",
        "the old key stays: {after}"
    );
    assert_eq!(after["lastRotation"]["result"], "rejected");
    assert_eq!(after["lastRotation"]["reason"], "invalid_key");
    assert!(after.get("rotatedAt").is_none());

    let answer = complete(&s.api).await;
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    assert_eq!(last_completion_key(&s.stand_in), OLD_KEY);

    let events = events(&s.events_file);
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "key.rotation_failed" && e["reason"] == "invalid_key"),
        "{events:?}"
    );
    assert!(!events.iter().any(|e| e["type"] == "key.rotated"));

    // Nothing stray blocks the next rotation: a good key goes through.
    let again = put(
        &s.api,
        "/api/keys/openai/pending",
        json!({"apiKey": NEW_KEY}),
    )
    .await;
    assert_eq!(again.status.as_u16(), 202, "{}", again.text);
    assert_eq!(
        settled(&s.api, "openai").await["maskedKey"],
        "sk-proj-…0002"
    );
}

async fn completions_never_fail_during_rotation(mode: Mode) {
    let s = setup(mode, &[]).await;
    s.stand_in.set_chunk_delay(Duration::from_millis(1));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let api = Api::new(&s.server.base, Some(&s.server.token("rosa", false)));
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let answer = complete(&api).await;
                statuses.push((answer.status.as_u16(), answer.text));
            }
            statuses
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for key in [NEW_KEY, "sk-proj-rotation0third0000000000000004"] {
        let staged = put(&s.api, "/api/keys/openai/pending", json!({"apiKey": key})).await;
        assert_eq!(staged.status.as_u16(), 202, "{}", staged.text);
        settled(&s.api, "openai").await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for worker in workers {
        for (status, text) in worker.await.unwrap() {
            total += 1;
            assert_eq!(status, 200, "a completion failed during rotation: {text}");
        }
    }
    assert!(total >= 8, "only {total} completions ran");
    let keys: Vec<String> = s
        .stand_in
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .map(|r| r.key)
        .collect();
    assert!(keys.contains(&OLD_KEY.to_owned()));
    assert_eq!(
        keys.last().map(String::as_str),
        Some("sk-proj-rotation0third0000000000000004")
    );
}

async fn pending_is_shown_and_can_be_cancelled(mode: Mode) {
    let s = setup(mode, &[]).await;
    // Bad input changes nothing.
    for (path, body, status, code) in [
        (
            "/api/keys/openai/pending",
            json!({"apiKey": "nope"}),
            422,
            "invalid_key_format",
        ),
        (
            "/api/keys/openai/pending",
            json!({"apiKey": NEW_KEY, "x": 1}),
            400,
            "invalid_request",
        ),
        (
            "/api/keys/nosuch/pending",
            json!({"apiKey": NEW_KEY}),
            400,
            "invalid_request",
        ),
        (
            "/api/keys/groq/pending",
            json!({"apiKey": "gsk_rotation0groq00000000000001"}),
            404,
            "not_found",
        ),
    ] {
        let answer = put(&s.api, path, body).await;
        assert_eq!(
            (answer.status.as_u16(), answer.code()),
            (status, code),
            "{path}: {}",
            answer.text
        );
    }
    assert!(stored(&s.api, "openai").await.get("pending").is_none());
    let cancel_nothing = s.api.delete("/api/keys/openai/pending").await;
    assert_eq!(
        cancel_nothing.status.as_u16(),
        404,
        "{}",
        cancel_nothing.text
    );

    // A slow provider check keeps the rotation pending long enough to look.
    s.stand_in
        .fail_next(Failure::SlowFirstByte(Duration::from_secs(3)));
    let staged = put(
        &s.api,
        "/api/keys/openai/pending",
        json!({"apiKey": NEW_KEY}),
    )
    .await;
    assert_eq!(staged.status.as_u16(), 202, "{}", staged.text);
    let shown = stored(&s.api, "openai").await;
    assert_eq!(shown["pending"]["maskedKey"], "sk-proj-…0002", "{shown}");
    assert!(["staged", "testing"].contains(&shown["pending"]["status"].as_str().unwrap()));
    let twice = put(
        &s.api,
        "/api/keys/openai/pending",
        json!({"apiKey": NEW_KEY}),
    )
    .await;
    assert_eq!(
        (twice.status.as_u16(), twice.code()),
        (409, "rotation_pending"),
        "{}",
        twice.text
    );

    let cancelled = s.api.delete("/api/keys/openai/pending").await;
    assert_eq!(cancelled.status.as_u16(), 200, "{}", cancelled.text);
    assert!(cancelled.json.get("pending").is_none());
    assert_eq!(cancelled.json["lastRotation"]["reason"], "cancelled");
    // The rotation in flight finds itself cancelled and promotes nothing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = stored(&s.api, "openai").await;
    assert_eq!(after["maskedKey"], "sk-proj-…0001", "{after}");
    assert_eq!(after["lastRotation"]["reason"], "cancelled");
    assert_eq!(complete(&s.api).await.status.as_u16(), 200);
    assert_eq!(last_completion_key(&s.stand_in), OLD_KEY);
}

/// Stores an orphan: a secret no key record references (what a crash
/// between a secret write and its metadata write leaves).
async fn orphan_secret(mode: Mode, dir: &Path, env: &[(String, String)]) {
    let user = UserId::new("orphan-owner").unwrap();
    let key = ApiKey::new("gsk_rotation0orphan000000000000001");
    match mode {
        Mode::Embedded => {
            let master = MasterKey::load_or_create(dir).unwrap();
            let store = byok::store::embedded::EmbeddedStore::open(dir, master).unwrap();
            store
                .put_secret(&user, Service::Groq, &key, None)
                .await
                .unwrap();
        }
        Mode::Aws => {
            let prefix = env
                .iter()
                .find(|(k, _)| k == "BYOK_SECRET_PREFIX")
                .map(|(_, v)| v.clone())
                .unwrap();
            let store = byok::store::secrets_manager::SecretsManagerStore::new(
                byok_tests::aws::secrets_client(None),
                byok::store::secrets_manager::SecretsManagerOptions {
                    prefix,
                    kms_key_id: None,
                    deletion: byok::store::secrets_manager::SecretDeletion::Force,
                },
            );
            store
                .put_secret(&user, Service::Groq, &key, None)
                .await
                .unwrap();
        }
    }
}

async fn the_sweep_marks_flags_and_removes_orphans(mode: Mode) {
    let s = setup(mode, &[]).await;
    // A second user whose key the provider now refuses.
    let bob = Api::new(&s.server.base, Some(&s.server.token("bob", false)));
    let saved = bob
        .post("/api/keys", json!({"service": "openai", "apiKey": BAD_KEY}))
        .await;
    assert!(saved.status.is_success(), "{}", saved.text);
    orphan_secret(mode, s.dir(), &s.env).await;

    let mut env = s.env.clone();
    env.push(("BYOK_REVALIDATE_AFTER_HOURS".into(), "0".into()));
    env.push(("BYOK_ORPHAN_GRACE_MINUTES".into(), "0".into()));
    env.push(("BYOK_ROTATION_AGE_DAYS".into(), "0".into()));
    env.push(("BYOK_STALE_AFTER_DAYS".into(), "0".into()));
    let out = run_command(s.dir(), &env, &["sweep"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["keys"], 2, "{report}");
    assert_eq!(report["checked"], 2, "{report}");
    assert_eq!(
        (report["valid"].as_u64(), report["invalid"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(report["rotationDue"], 2, "rotation age 0: every key is due");
    assert_eq!(report["stale"], 2, "stale age 0: every key is stale");
    assert_eq!(report["orphansRemoved"], 1, "{report}");
    for text in [&stdout, &stderr] {
        assert!(!text.contains(BAD_KEY) && !text.contains(OLD_KEY));
    }

    // The invalid key is marked, the valid one untouched beyond its check.
    let bobs = stored(&bob, "openai").await;
    assert_eq!(bobs["lastValidation"], "invalid", "{bobs}");
    let rosas = stored(&s.api, "openai").await;
    assert_eq!(rosas["lastValidation"], "valid", "{rosas}");
    assert_eq!(rosas["maskedKey"], "sk-proj-…0001");
    assert_eq!(
        rosas["rotationDue"], false,
        "the server's rotation age is the default"
    );
    assert_eq!(complete(&s.api).await.status.as_u16(), 200);
    assert_eq!(last_completion_key(&s.stand_in), OLD_KEY);

    let events = events(&s.events_file);
    let of = |kind: &str| events.iter().filter(|e| e["type"] == kind).count();
    assert_eq!(of("key.invalid"), 1, "{events:?}");
    assert_eq!(of("key.rotation_due"), 2, "{events:?}");
    assert_eq!(of("key.stale"), 2, "{events:?}");
    assert!(
        events
            .iter()
            .filter(|e| e["type"] == "key.stale")
            .all(|e| e["keyId"].as_str().is_some_and(|id| id.starts_with('k'))),
        "{events:?}"
    );
    let invalid = events.iter().find(|e| e["type"] == "key.invalid").unwrap();
    assert_eq!(
        (invalid["user"].as_str(), invalid["service"].as_str()),
        (Some("bob"), Some("openai"))
    );

    // A second sweep finds no orphan and, with the default ages, nothing stale.
    let out = run_command(s.dir(), &s.env, &["sweep"]).await;
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            report["checked"].as_u64(),
            report["rotationDue"].as_u64(),
            report["orphansRemoved"].as_u64(),
            report["stale"].as_u64()
        ),
        (Some(0), Some(0), Some(0), Some(0)),
        "{report}"
    );
}
