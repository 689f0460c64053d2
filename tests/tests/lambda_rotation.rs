//! The `rotation` Lambda function as deployed, with `BYOK_STORE=aws` against
//! the local AWS emulator: it runs against a local Lambda Runtime API and is
//! invoked with the events Secrets Manager and EventBridge send it.
//!
//! Keys are stored through byok-local on the same table and secret prefix;
//! a replacement is staged through the store library directly (staging it
//! through byok-local would run the rotation in byok-local itself, and the
//! emulator's `RotateSecret` cannot invoke a function), so the function's
//! steps are the only driver of the rotation. The emulator's Secrets Manager
//! is then checked for the version stages the protocol leaves behind, and
//! byok-local for what users see and which key completions use.
//!
//! - The four steps (`createSecret`, `setSecret`, `testSecret`,
//!   `finishSecret`), each delivered twice as Secrets Manager retries, promote
//!   the staged key.
//! - A key the provider refuses fails `testSecret` and is never promoted.
//! - `createSecret` with nothing staged fails for good, and after a cancelled
//!   staging leaves the cancel as the outcome.
//! - The scheduled sweep answers its report and puts its events on the
//!   EventBridge bus (read back through an SQS queue the bus's rule targets).
//!
//! The binaries must be built first: `cargo build -p byok-local -p byok-rotation`.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test bodies: a failed step should stop the test loudly"
)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use byok::domain::{ApiKey, KeyRecord, PendingKey, Service, UserId, mask_key, now};
use byok::store::dynamo::DynamoMetadataStore;
use byok::store::secrets_manager::{SecretDeletion, SecretsManagerOptions, SecretsManagerStore};
use byok::store::{Expected, MetadataStore, RotationStore};
use byok_tests::harness::LocalServer;
use byok_tests::http::{Answer, Api};
use byok_tests::lambda_runtime::{FunctionProcess, Invocation, RuntimeApi};
use byok_tests::stores::{Mode, start_with};
use byok_tests::upstream::StandIn;
use serde_json::{Value, json};

const OLD_KEY: &str = "sk-proj-lambdarot0old0000000000000001";
const NEW_KEY: &str = "sk-proj-lambdarot0new0000000000000002";
/// The stand-in refuses keys containing `bad`.
const BAD_KEY: &str = "sk-proj-lambdarot0bad0000000000000003";

const USER: &str = "rosa";
const STEPS: [&str; 4] = ["createSecret", "setSecret", "testSecret", "finishSecret"];

/// A sample event of `infra/events/`.
fn event(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../infra/events")
        .join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The sample event of rotation step `step` for `secret_id` and `token`.
fn step_event(step: &str, secret_id: &str, token: &str) -> Value {
    let file = match step {
        "createSecret" => "rotation-create-secret.json",
        "setSecret" => "rotation-set-secret.json",
        "testSecret" => "rotation-test-secret.json",
        "finishSecret" => "rotation-finish-secret.json",
        other => panic!("no such step {other}"),
    };
    let mut event = event(file);
    assert_eq!(event["Step"], step, "{file}");
    event["SecretId"] = json!(secret_id);
    event["ClientRequestToken"] = json!(token);
    event
}

/// A fresh rotation token: 32 hex digits, as Secrets Manager sends.
fn fresh_token() -> String {
    let hex = |name: String| name.rsplit('-').next().unwrap().to_owned();
    let token = format!(
        "{}{}",
        hex(byok_tests::aws::unique_name("t")),
        hex(byok_tests::aws::unique_name("t"))
    );
    assert_eq!(token.len(), 32, "{token}");
    token
}

fn var<'a>(env: &'a [(String, String)], name: &str) -> &'a str {
    env.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{name} is not in the server's environment"))
}

fn user() -> UserId {
    UserId::new(USER).unwrap()
}

/// byok-local on a fresh AWS table and prefix, with `OLD_KEY` stored for
/// [`USER`]; the variables the server got serve the function too.
struct Setup {
    stand_in: StandIn,
    server: LocalServer,
    env: Vec<(String, String)>,
    api: Api,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Self {
        let stand_in = StandIn::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (server, env) = start_with(
            Mode::Aws,
            &stand_in,
            dir.path(),
            &[("BYOK_VALIDATE_PER_MINUTE", "1000")],
        );
        let api = Api::new(&server.base, Some(&server.token(USER, false)));
        let saved = api
            .post("/api/keys", json!({"service": "openai", "apiKey": OLD_KEY}))
            .await;
        assert!(saved.status.is_success(), "{}", saved.text);
        Self {
            stand_in,
            server,
            env,
            api,
            dir,
        }
    }

    fn meta(&self) -> DynamoMetadataStore {
        DynamoMetadataStore::new(
            byok_tests::aws::dynamo_client(None),
            var(&self.env, "BYOK_TABLE_NAME"),
        )
    }

    fn secrets(&self) -> SecretsManagerStore {
        SecretsManagerStore::new(
            byok_tests::aws::secrets_client(None),
            SecretsManagerOptions {
                prefix: var(&self.env, "BYOK_SECRET_PREFIX").to_owned(),
                kms_key_id: None,
                deletion: SecretDeletion::Force,
            },
        )
    }

    async fn record(&self) -> KeyRecord {
        self.meta()
            .load_user(&user())
            .await
            .unwrap()
            .key(Service::OpenAi)
            .cloned()
            .expect("the key record")
    }

    /// Stages `key` as the replacement of the user's OpenAI key, as
    /// `RotationService::stage` does, without starting a rotation. Returns
    /// the record as it was before.
    async fn stage(&self, key: &str) -> KeyRecord {
        let key = ApiKey::new(key);
        let old = self.record().await;
        let staged = self.secrets().stage(&old.secret.id, &key).await.unwrap();
        assert!(old.pending.is_none(), "{old:?}");
        assert_eq!(staged.id, old.secret.id, "one secret, a version more");
        let new = KeyRecord {
            pending: Some(PendingKey {
                version: staged.version,
                masked_key: mask_key(&key),
                staged_at: now(),
                token: None,
            }),
            revision: old.revision + 1,
            updated_at: now(),
            ..old.clone()
        };
        self.meta()
            .put_key(&new, Expected::Revision(old.revision))
            .await
            .unwrap();
        let shown = self.shown().await;
        assert_eq!(shown["pending"]["status"], "staged", "{shown}");
        old
    }

    /// The user's OpenAI key as `GET /api/keys` shows it.
    async fn shown(&self) -> Value {
        let keys = self.api.get("/api/keys").await;
        assert!(keys.status.is_success(), "{}", keys.text);
        keys.json["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["service"] == "openai")
            .cloned()
            .unwrap_or_else(|| panic!("no OpenAI key: {}", keys.text))
    }

    /// A completion through byok-local, and the key the stand-in saw for it.
    async fn completion_key(&self) -> String {
        let answer: Answer = self
            .api
            .post(
                "/v1/chat/completions",
                json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
        self.stand_in
            .requests()
            .into_iter()
            .rev()
            .find(|r| r.path.ends_with("/chat/completions"))
            .map(|r| r.key)
            .expect("a completion reached the stand-in")
    }

    /// The rotation function on this store, with `extra` variables.
    fn function(&self, extra: &[(&str, &str)]) -> Function {
        let runtime = RuntimeApi::start();
        let data_dir = self.dir.path().to_str().unwrap();
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.push(("BYOK_DATA_DIR", data_dir));
        env.extend_from_slice(extra);
        let process = FunctionProcess::start("rotation", &runtime, &env);
        Function { runtime, process }
    }

    /// Stops byok-local and the stand-in; checks no key reached the log.
    async fn stop(self) {
        let (_, output) = self.server.stop();
        for key in [OLD_KEY, NEW_KEY, BAD_KEY] {
            assert!(!output.contains(key), "byok-local logged a key");
        }
        self.stand_in.shutdown().await;
    }
}

/// The rotation function on its own Runtime API.
struct Function {
    runtime: RuntimeApi,
    process: FunctionProcess,
}

impl Function {
    async fn invoke(&self, event: Value) -> Invocation {
        self.process.invoke(&self.runtime, event).await
    }

    async fn step(&self, step: &str, secret_id: &str, token: &str) -> Invocation {
        self.invoke(step_event(step, secret_id, token)).await
    }

    /// Stops the process; checks it never started badly nor logged a key.
    fn stop(self) -> String {
        assert_eq!(self.runtime.init_error(), None);
        let (_, output) = self.process.stop();
        for key in [OLD_KEY, NEW_KEY, BAD_KEY] {
            assert!(
                !output.contains(key),
                "the function logged a key:\n{output}"
            );
        }
        output
    }
}

/// The message of an invocation error.
fn error_message(invocation: Invocation) -> String {
    let error = invocation.into_error();
    error["errorMessage"]
        .as_str()
        .unwrap_or_else(|| panic!("no errorMessage: {error}"))
        .to_owned()
}

/// Version id → stages of the secret, as Secrets Manager describes it.
async fn stages(secret_id: &str) -> Vec<(String, BTreeSet<String>)> {
    let described = byok_tests::aws::secrets_client(None)
        .describe_secret()
        .secret_id(secret_id)
        .send()
        .await
        .unwrap();
    let mut versions: Vec<(String, BTreeSet<String>)> = described
        .version_ids_to_stages()
        .map(|m| {
            m.iter()
                .map(|(v, s)| (v.clone(), s.iter().cloned().collect()))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
}

/// The version carrying `label`, if one does.
fn labelled(versions: &[(String, BTreeSet<String>)], label: &str) -> Option<String> {
    versions
        .iter()
        .find(|(_, stages)| stages.contains(label))
        .map(|(v, _)| v.clone())
}

/// The key stored in version `version_id` of the secret.
async fn key_in_version(secret_id: &str, version_id: &str) -> String {
    let out = byok_tests::aws::secrets_client(None)
        .get_secret_value()
        .secret_id(secret_id)
        .version_id(version_id)
        .send()
        .await
        .unwrap();
    let value: Value = serde_json::from_str(out.secret_string().unwrap()).unwrap();
    value["apiKey"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn rotation_function_runs_the_four_steps_idempotently() {
    let s = Setup::start().await;
    assert_eq!(s.completion_key().await, OLD_KEY);
    let before = s.stage(NEW_KEY).await;
    let secret_id = before.secret.id.clone();
    let old_version = before.secret.version.clone();
    let function = s.function(&[]);

    let token = fresh_token();
    for step in STEPS {
        // Secrets Manager retries steps: every one may arrive twice.
        for attempt in 1..=2 {
            let reply = function
                .step(step, &secret_id, &token)
                .await
                .into_response();
            assert_eq!(
                reply,
                json!({"step": step, "done": true}),
                "{step} #{attempt}"
            );
        }
        if step == "createSecret" {
            let versions = stages(&secret_id).await;
            assert_eq!(labelled(&versions, "AWSPENDING"), Some(token.clone()));
            assert_eq!(labelled(&versions, "AWSCURRENT"), Some(old_version.clone()));
            assert_eq!(s.shown().await["pending"]["status"], "testing");
            // The current key still serves while the rotation runs.
            assert_eq!(s.completion_key().await, OLD_KEY);
        }
    }

    // Secrets Manager: the token current, the old version previous, no
    // pending or staged label left.
    let versions = stages(&secret_id).await;
    assert_eq!(
        labelled(&versions, "AWSCURRENT"),
        Some(token.clone()),
        "{versions:?}"
    );
    assert_eq!(
        labelled(&versions, "AWSPREVIOUS"),
        Some(old_version.clone()),
        "{versions:?}"
    );
    let labels: BTreeSet<&str> = versions
        .iter()
        .flat_map(|(_, s)| s.iter().map(String::as_str))
        .collect();
    assert_eq!(
        labels,
        BTreeSet::from(["AWSCURRENT", "AWSPREVIOUS"]),
        "{versions:?}"
    );

    // The record names the new version.
    let record = s.record().await;
    assert_eq!(record.secret.id, secret_id);
    assert_eq!(record.secret.version, token);
    assert_eq!(record.masked_key, "sk-proj-…0002");
    assert!(record.rotated_at.is_some(), "{record:?}");
    assert!(record.pending.is_none(), "{record:?}");
    let outcome = record.last_rotation.expect("a rotation outcome");
    assert_eq!(outcome.rejected, None);

    // What the user sees, and what completions use.
    let shown = s.shown().await;
    assert_eq!(shown["maskedKey"], "sk-proj-…0002", "{shown}");
    assert_eq!(shown["lastRotation"]["result"], "rotated", "{shown}");
    assert_eq!(shown["lastValidation"], "valid", "{shown}");
    assert!(shown["rotatedAt"].is_string(), "{shown}");
    assert!(shown.get("pending").is_none(), "{shown}");
    assert_eq!(s.completion_key().await, NEW_KEY);
    // The new key was tested against the provider before promotion.
    assert!(
        s.stand_in
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/models") && r.key == NEW_KEY),
        "testSecret checked the new key"
    );

    // Both versions readable by id: the new one current, the old one kept.
    assert_eq!(key_in_version(&secret_id, &token).await, NEW_KEY);
    assert_eq!(key_in_version(&secret_id, &old_version).await, OLD_KEY);

    function.stop();
    s.stop().await;
}

#[tokio::test]
async fn a_failing_test_step_keeps_the_current_key() {
    let s = Setup::start().await;
    let before = s.stage(BAD_KEY).await;
    let secret_id = before.secret.id.clone();
    let old_version = before.secret.version.clone();
    let function = s.function(&[]);

    let token = fresh_token();
    for step in ["createSecret", "setSecret"] {
        let reply = function
            .step(step, &secret_id, &token)
            .await
            .into_response();
        assert_eq!(reply, json!({"step": step, "done": true}), "{step}");
    }
    let tested = error_message(function.step("testSecret", &secret_id, &token).await);
    assert!(tested.contains("testSecret"), "{tested}");
    assert!(
        tested.contains("final"),
        "a refused key is not retried: {tested}"
    );
    // Secrets Manager would not go on; if it did, finishSecret is refused.
    let finished = error_message(function.step("finishSecret", &secret_id, &token).await);
    assert!(finished.contains("finishSecret"), "{finished}");

    let versions = stages(&secret_id).await;
    assert_eq!(
        labelled(&versions, "AWSCURRENT"),
        Some(old_version.clone()),
        "{versions:?}"
    );
    assert_eq!(labelled(&versions, "AWSPENDING"), None, "{versions:?}");
    assert_eq!(labelled(&versions, "BYOKSTAGED"), None, "{versions:?}");

    let record = s.record().await;
    assert_eq!(record.secret.version, old_version);
    assert!(record.pending.is_none(), "{record:?}");
    let shown = s.shown().await;
    assert_eq!(shown["maskedKey"], "sk-proj-…0001", "{shown}");
    assert_eq!(shown["lastRotation"]["result"], "rejected", "{shown}");
    assert_eq!(shown["lastRotation"]["reason"], "invalid_key", "{shown}");
    assert!(shown.get("pending").is_none(), "{shown}");
    assert!(shown.get("rotatedAt").is_none(), "{shown}");
    assert_eq!(s.completion_key().await, OLD_KEY);
    assert_eq!(key_in_version(&secret_id, &old_version).await, OLD_KEY);

    function.stop();
    s.stop().await;
}

#[tokio::test]
async fn a_create_step_without_a_staged_key_fails_for_good() {
    let s = Setup::start().await;
    let record = s.record().await;
    let function = s.function(&[]);

    let token = fresh_token();
    let message = error_message(
        function
            .step("createSecret", &record.secret.id, &token)
            .await,
    );
    assert!(message.contains("createSecret"), "{message}");
    assert!(message.contains("final"), "{message}");

    let versions = stages(&record.secret.id).await;
    assert_eq!(
        labelled(&versions, "AWSCURRENT"),
        Some(record.secret.version.clone()),
        "{versions:?}"
    );
    assert_eq!(labelled(&versions, "AWSPENDING"), None, "{versions:?}");
    let shown = s.shown().await;
    assert_eq!(shown["maskedKey"], "sk-proj-…0001", "{shown}");
    assert_eq!(shown["lastRotation"]["reason"], "nothing_staged", "{shown}");
    assert_eq!(s.completion_key().await, OLD_KEY);

    // A staging cancelled before its rotation's first step ran: the step
    // stops for good and the cancel stays the recorded outcome.
    s.stage(NEW_KEY).await;
    let cancelled = s.api.delete("/api/keys/openai/pending").await;
    assert_eq!(cancelled.status.as_u16(), 200, "{}", cancelled.text);
    let message = error_message(
        function
            .step("createSecret", &record.secret.id, &fresh_token())
            .await,
    );
    assert!(message.contains("final"), "{message}");
    let shown = s.shown().await;
    assert_eq!(shown["maskedKey"], "sk-proj-…0001", "{shown}");
    assert_eq!(shown["lastRotation"]["reason"], "cancelled", "{shown}");
    assert!(shown.get("pending").is_none(), "{shown}");
    assert_eq!(s.completion_key().await, OLD_KEY);

    function.stop();
    s.stop().await;
}

/// Raw calls to the emulator's EventBridge (JSON protocol) and SQS (JSON
/// protocol); the emulator checks no signature.
struct Emulator {
    client: reqwest::Client,
    endpoint: String,
}

impl Emulator {
    fn new() -> Self {
        Self {
            client: reqwest::Client::new(),
            endpoint: byok_tests::aws::endpoint(),
        }
    }

    /// `service` is the credential scope's, which the emulator routes by.
    async fn call(&self, service: &str, target: &str, content_type: &str, body: Value) -> Value {
        let answer = self
            .client
            .post(&self.endpoint)
            .header("X-Amz-Target", target)
            .header("Content-Type", content_type)
            .header(
                "Authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=testing/20250101/us-east-1/{service}/aws4_request, \
                     SignedHeaders=host, Signature=0"
                ),
            )
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let text = answer.text().await.unwrap();
        assert!(status.is_success(), "{target}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn events(&self, action: &str, body: Value) -> Value {
        self.call(
            "events",
            &format!("AWSEvents.{action}"),
            "application/x-amz-json-1.1",
            body,
        )
        .await
    }

    async fn sqs(&self, action: &str, body: Value) -> Value {
        self.call(
            "sqs",
            &format!("AmazonSQS.{action}"),
            "application/x-amz-json-1.0",
            body,
        )
        .await
    }
}

#[tokio::test]
async fn scheduled_sweep_reports_and_puts_events_on_the_bus() {
    let s = Setup::start().await;
    // A second user whose key the provider refuses.
    let bob = Api::new(&s.server.base, Some(&s.server.token("bob", false)));
    let saved = bob
        .post("/api/keys", json!({"service": "openai", "apiKey": BAD_KEY}))
        .await;
    assert!(saved.status.is_success(), "{}", saved.text);

    // A bus whose one rule sends every byok.keys event to a queue.
    let aws = Emulator::new();
    let bus = byok_tests::aws::unique_name("byok-bus");
    let queue = byok_tests::aws::unique_name("byok-events");
    let queue_url = aws.sqs("CreateQueue", json!({"QueueName": queue})).await["QueueUrl"]
        .as_str()
        .expect("QueueUrl")
        .to_owned();
    aws.events("CreateEventBus", json!({"Name": bus})).await;
    aws.events(
        "PutRule",
        json!({
            "Name": "byok-keys",
            "EventBusName": bus,
            "EventPattern": json!({"source": ["byok.keys"]}).to_string(),
            "State": "ENABLED",
        }),
    )
    .await;
    let targets = aws
        .events(
            "PutTargets",
            json!({
                "Rule": "byok-keys",
                "EventBusName": bus,
                "Targets": [{"Id": "queue", "Arn": format!("arn:aws:sqs:us-east-1:123456789012:{queue}")}],
            }),
        )
        .await;
    assert_eq!(targets["FailedEntryCount"], 0, "{targets}");

    let function = s.function(&[
        ("BYOK_EVENT_BUS_NAME", bus.as_str()),
        ("BYOK_REVALIDATE_AFTER_HOURS", "0"),
        ("BYOK_ROTATION_AGE_DAYS", "0"),
    ]);
    let scheduled = event("scheduled-sweep.json");
    assert_eq!(scheduled["detail-type"], "Scheduled Event");
    let report = function.invoke(scheduled).await.into_response();
    assert_eq!(report["keys"], 2, "{report}");
    assert_eq!(report["checked"], 2, "{report}");
    assert_eq!(
        (report["valid"].as_u64(), report["invalid"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );
    assert_eq!(report["unreachable"], 0, "{report}");
    assert_eq!(report["unreadable"], 0, "{report}");
    assert_eq!(report["rotationDue"], 2, "rotation age 0: every key is due");
    assert_eq!(report["orphansRemoved"], 0, "{report}");
    let reported = report["events"].as_array().expect("events");
    assert_eq!(reported.len(), 3, "{report}");
    let text = report.to_string();
    assert!(!text.contains(OLD_KEY) && !text.contains(BAD_KEY));

    // The same events reached the bus, and through its rule the queue.
    let mut received: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.len() < 3 && Instant::now() < deadline {
        let got = aws
            .sqs(
                "ReceiveMessage",
                json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 1}),
            )
            .await;
        for message in got["Messages"].as_array().into_iter().flatten() {
            let body = message["Body"].as_str().expect("Body");
            assert!(
                !body.contains(OLD_KEY) && !body.contains(BAD_KEY),
                "an event carries a key: {body}"
            );
            received.push(serde_json::from_str(body).unwrap());
        }
    }
    assert_eq!(received.len(), 3, "{received:?}");
    for e in &received {
        assert_eq!(e["source"], "byok.keys", "{e}");
        assert_eq!(e["detail-type"], e["detail"]["type"], "{e}");
        assert!(
            reported.contains(&e["detail"]),
            "{e} was not in the report {report}"
        );
    }
    let of = |kind: &str| -> Vec<&str> {
        let mut users: Vec<&str> = received
            .iter()
            .filter(|e| e["detail-type"] == kind)
            .map(|e| e["detail"]["user"].as_str().unwrap())
            .collect();
        users.sort_unstable();
        users
    };
    assert_eq!(of("key.invalid"), ["bob"], "{received:?}");
    assert_eq!(of("key.rotation_due"), ["bob", USER], "{received:?}");
    let invalid = received
        .iter()
        .find(|e| e["detail-type"] == "key.invalid")
        .unwrap();
    assert_eq!(invalid["detail"]["service"], "openai");
    assert_eq!(invalid["detail"]["maskedKey"], "sk-proj-…0003");
    assert_eq!(invalid["detail"]["reason"], "invalid_key");

    // The sweep marked the keys; the valid one keeps serving.
    let bobs = bob.get("/api/keys").await;
    assert_eq!(
        bobs.json["keys"][0]["lastValidation"], "invalid",
        "{}",
        bobs.text
    );
    assert_eq!(s.shown().await["lastValidation"], "valid");
    assert_eq!(s.completion_key().await, OLD_KEY);

    function.stop();
    s.stop().await;
}
