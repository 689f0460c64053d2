//! The Lambda function binaries (`keys`, `settings`, `validate`, `models`,
//! `completion`) as deployed: each runs against a local Lambda Runtime API
//! and is invoked with the API Gateway sample events of `infra/events/`,
//! carrying the caller in authorizer claims; answers are checked as API
//! Gateway reads them (`statusCode`, `headers`, `body`; for `completion`, the
//! streamed prelude and body). The store is the embedded one in a temporary
//! directory, shared between functions where a test says so.
//!
//! The binaries must be built first: `cargo build --workspace --bins`.
#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failed step should stop the test loudly"
)]

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use byok_tests::harness::{contains_bytes, files_below};
use byok_tests::lambda_runtime::{FunctionProcess, Invocation, RuntimeApi};
use byok_tests::upstream::{DEFAULT_REPLY, StandIn, Upstream};
use serde_json::{Map, Value, json};

const ALICE: &str = "5f0c2b1e-8a4d-4c7e-9b1a-3d2e6f7a8b9c";
const BOB: &str = "0b7e4c2d-1f3a-4e5b-8c9d-7a6b5c4d3e2f";
/// The key in `post-keys.json`.
const SAMPLE_KEY: &str = "sk-proj-EXAMPLE0000000000000000000000000001";
const TEAM_GATEWAY_KEY: &str = "vck_team0000000000000000000000000001";

/// A sample event of `infra/events/`.
fn event(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../infra/events")
        .join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Where the authorizer claims of an HTTP API (v2) or REST API (v1) event are.
fn claims_pointer(event: &Value) -> &'static str {
    if event
        .pointer("/requestContext/authorizer/jwt/claims")
        .is_some()
    {
        "/requestContext/authorizer/jwt/claims"
    } else {
        "/requestContext/authorizer/claims"
    }
}

/// `event` as user `sub` sends it.
fn as_user(mut event: Value, sub: &str) -> Value {
    let pointer = claims_pointer(&event);
    let claims = event
        .pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .expect("the event carries authorizer claims");
    for name in ["sub", "username", "cognito:username"] {
        if claims.contains_key(name) {
            claims.insert(name.to_owned(), json!(sub));
        }
    }
    event
}

/// `event` with `groups` as its `cognito:groups` claim (`None`: no claim).
fn with_groups(mut event: Value, groups: Option<&str>) -> Value {
    let pointer = claims_pointer(&event);
    let claims = event
        .pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .expect("the event carries authorizer claims");
    match groups {
        Some(g) => claims.insert("cognito:groups".to_owned(), json!(g)),
        None => claims.remove("cognito:groups"),
    };
    event
}

fn headers_mut(event: &mut Value) -> &mut Map<String, Value> {
    event["headers"].as_object_mut().expect("event headers")
}

/// `event` with `body` as its JSON body, sent as text.
fn with_body(mut event: Value, body: &Value) -> Value {
    let text = body.to_string();
    let headers = headers_mut(&mut event);
    headers.insert("content-length".to_owned(), json!(text.len().to_string()));
    headers.insert("content-type".to_owned(), json!("application/json"));
    event["body"] = json!(text);
    event["isBase64Encoded"] = json!(false);
    event
}

/// `event` with `body` as its JSON body, base64-encoded as API Gateway
/// sends bodies it does not treat as text.
fn with_base64_body(event: Value, body: &Value) -> Value {
    let mut event = with_body(event, body);
    let encoded = base64::engine::general_purpose::STANDARD.encode(body.to_string());
    event["body"] = json!(encoded);
    event["isBase64Encoded"] = json!(true);
    event
}

/// `event` as it would look with no authorizer in front and no token.
fn without_auth(mut event: Value) -> Value {
    event["requestContext"]
        .as_object_mut()
        .expect("request context")
        .remove("authorizer");
    headers_mut(&mut event).retain(|name, _| !name.eq_ignore_ascii_case("authorization"));
    event
}

/// An HTTP API event for `method path` reaching the function through the
/// `$default` route (no route of the API matched it).
fn at_default_route(mut event: Value, method: &str, path: &str) -> Value {
    event["routeKey"] = json!("$default");
    event["rawPath"] = json!(path);
    event["rawQueryString"] = json!("");
    let ctx = &mut event["requestContext"];
    ctx["routeKey"] = json!("$default");
    ctx["http"]["method"] = json!(method);
    ctx["http"]["path"] = json!(path);
    let obj = event.as_object_mut().expect("event");
    obj.remove("pathParameters");
    obj.remove("queryStringParameters");
    event
}

/// `get-resolve.json` for `model`.
fn resolve_event(model: &str) -> Value {
    let mut event = event("get-resolve.json");
    event["rawQueryString"] = json!(format!("model={model}"));
    event["queryStringParameters"] = json!({ "model": model });
    event
}

/// An API Gateway proxy response as the function returned it.
#[derive(Debug)]
struct Reply {
    status: u64,
    headers: Map<String, Value>,
    /// The body text, decoded from base64 when `isBase64Encoded`.
    body: String,
    /// The body parsed as JSON (Null when empty or not JSON).
    json: Value,
    /// The whole response document.
    raw: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
    }
}

fn reply(invocation: Invocation) -> Reply {
    let raw = invocation.into_response();
    let status = raw["statusCode"]
        .as_u64()
        .unwrap_or_else(|| panic!("statusCode: {raw}"));
    let headers = raw["headers"].as_object().cloned().unwrap_or_default();
    let text = raw["body"].as_str().unwrap_or_default();
    let body = if raw["isBase64Encoded"] == json!(true) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("base64 body");
        String::from_utf8(bytes).expect("UTF-8 body")
    } else {
        text.to_owned()
    };
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        json,
        raw,
    }
}

/// One function running against its own Runtime API (as each Lambda
/// execution environment has its own).
struct Function {
    runtime: RuntimeApi,
    process: FunctionProcess,
}

impl Function {
    fn start(name: &str, data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let runtime = RuntimeApi::start();
        let data_dir = data_dir.to_str().expect("UTF-8 temp dir");
        let mut all = vec![("BYOK_STORE", "embedded"), ("BYOK_DATA_DIR", data_dir)];
        all.extend_from_slice(env);
        let process = FunctionProcess::start(name, &runtime, &all);
        Self { runtime, process }
    }

    async fn invoke(&self, event: Value) -> Invocation {
        self.process.invoke(&self.runtime, event).await
    }

    async fn call(&self, event: Value) -> Reply {
        reply(self.invoke(event).await)
    }
}

fn assert_json_reply(reply: &Reply, status: u64) {
    assert_eq!(reply.status, status, "{}", reply.raw);
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{}",
        reply.raw
    );
    assert_eq!(reply.raw["isBase64Encoded"], json!(false), "{}", reply.raw);
}

fn assert_error(reply: &Reply, status: u64, code: &str) {
    assert_json_reply(reply, status);
    assert_eq!(reply.json["error"]["code"], code, "{}", reply.raw);
    assert!(
        reply.json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "a human message: {}",
        reply.raw
    );
}

fn key_count(reply: &Reply) -> usize {
    reply.json["keys"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn keys_function_serves_the_http_api_events() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Function::start("keys", dir.path(), &[]);

    // POST: created for the caller in the claims; the key never comes back.
    let created = keys.call(event("post-keys.json")).await;
    assert_json_reply(&created, 201);
    assert_eq!(created.json["service"], "openai", "{}", created.raw);
    assert_eq!(created.json["maskedKey"], "sk-proj-…0001");
    assert_eq!(created.json["label"], "Work");
    assert_eq!(created.json["enabled"], true);
    assert!(!created.raw.to_string().contains(SAMPLE_KEY));
    // API Gateway v2 answers carry set-cookie in `cookies`, never in headers.
    assert_eq!(created.raw["cookies"], json!([]), "{}", created.raw);

    let listed = keys.call(event("get-keys.json")).await;
    assert_json_reply(&listed, 200);
    assert_eq!(key_count(&listed), 1, "{}", listed.raw);
    assert_eq!(listed.json["keys"][0]["maskedKey"], "sk-proj-…0001");
    assert!(!listed.body.contains(SAMPLE_KEY));

    // Another `sub` sees none of them, with or without the admin group.
    for groups in [None, Some("[admin]")] {
        let other = keys
            .call(with_groups(as_user(event("get-keys.json"), BOB), groups))
            .await;
        assert_json_reply(&other, 200);
        assert_eq!(other.json, json!({"keys": []}), "{groups:?}");
    }
    assert_error(
        &keys
            .call(as_user(event("patch-keys-openai.json"), BOB))
            .await,
        404,
        "not_found",
    );

    // PATCH disables.
    let patched = keys.call(event("patch-keys-openai.json")).await;
    assert_json_reply(&patched, 200);
    assert_eq!(patched.json["enabled"], false, "{}", patched.raw);
    assert_eq!(patched.json["createdAt"], created.json["createdAt"]);
    let listed = keys.call(event("get-keys.json")).await;
    assert_eq!(listed.json["keys"][0]["enabled"], false);

    // A base64-encoded body is decoded before the router sees it.
    let bobs = keys
        .call(with_base64_body(
            as_user(event("post-keys.json"), BOB),
            &json!({"service": "groq", "apiKey": "gsk_bob000000000000000000000001"}),
        ))
        .await;
    assert_json_reply(&bobs, 201);
    assert_eq!(bobs.json["maskedKey"], "gsk_…0001", "{}", bobs.raw);

    // Bad input keeps the error shape, and never echoes the key.
    let bad = keys
        .call(with_body(
            event("post-keys.json"),
            &json!({"service": "openai", "apiKey": "not-a-key-0000000000000000"}),
        ))
        .await;
    assert_error(&bad, 422, "invalid_key_format");
    assert!(!bad.body.contains("not-a-key"), "{}", bad.body);

    let providers = keys.call(event("get-providers.json")).await;
    assert_json_reply(&providers, 200);
    assert_eq!(
        providers.json["providers"].as_array().map(Vec::len),
        Some(byok::domain::Service::ALL.len()),
        "{}",
        providers.raw
    );

    // DELETE: 204 with no body, then 404.
    let deleted = keys.call(event("delete-keys-openai.json")).await;
    assert_eq!(deleted.status, 204, "{}", deleted.raw);
    assert_eq!(deleted.body, "", "{}", deleted.raw);
    assert_error(
        &keys.call(event("delete-keys-openai.json")).await,
        404,
        "not_found",
    );
    assert_eq!(key_count(&keys.call(event("get-keys.json")).await), 0);
    assert_eq!(
        key_count(&keys.call(as_user(event("get-keys.json"), BOB)).await),
        1
    );

    // No authorizer claims and no token: 401 with a Bearer challenge.
    let anonymous = keys.call(without_auth(event("get-keys.json"))).await;
    assert_error(&anonymous, 401, "unauthorized");
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    // Claims without a usable subject are not a caller either.
    let mut no_sub = event("get-keys.json");
    no_sub["requestContext"]["authorizer"]["jwt"]["claims"]
        .as_object_mut()
        .unwrap()
        .remove("sub");
    assert_error(&keys.call(no_sub).await, 401, "unauthorized");

    // A route the function does not serve: JSON 404, and 405 for a method.
    assert_error(
        &keys
            .call(at_default_route(event("get-keys.json"), "GET", "/api/nope"))
            .await,
        404,
        "not_found",
    );
    assert_error(
        &keys
            .call(at_default_route(event("get-keys.json"), "PUT", "/api/keys"))
            .await,
        405,
        "method_not_allowed",
    );
    // Settings live in another function.
    assert_error(
        &keys.call(event("get-user-settings.json")).await,
        404,
        "not_found",
    );

    // The key reached neither the data directory in clear nor the logs.
    for (path, bytes) in files_below(dir.path()) {
        assert!(
            !contains_bytes(&bytes, SAMPLE_KEY.as_bytes()),
            "{} holds the key in clear",
            path.display()
        );
    }
    assert!(!keys.process.output().contains(SAMPLE_KEY));
    assert_eq!(keys.runtime.init_error(), None);
    assert!(keys.process.try_exit().is_none(), "still serving");
}

#[tokio::test]
async fn settings_function_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Function::start("settings", dir.path(), &[]);

    let initial = settings.call(event("get-user-settings.json")).await;
    assert_json_reply(&initial, 200);
    assert_eq!(initial.json, json!({"allowGatewayFallback": true}));

    let saved = settings.call(event("post-user-settings.json")).await;
    assert_json_reply(&saved, 200);
    assert_eq!(saved.json, json!({"allowGatewayFallback": false}));
    assert_eq!(
        settings.call(event("get-user-settings.json")).await.json,
        json!({"allowGatewayFallback": false})
    );
    // Per user: another caller still has the default.
    assert_eq!(
        settings
            .call(as_user(event("get-user-settings.json"), BOB))
            .await
            .json,
        json!({"allowGatewayFallback": true})
    );

    let unknown_field = settings
        .call(with_body(
            event("post-user-settings.json"),
            &json!({"allowGatewayFallback": true, "extra": 1}),
        ))
        .await;
    assert_error(&unknown_field, 400, "invalid_request");
    assert_error(
        &settings
            .call(without_auth(event("get-user-settings.json")))
            .await,
        401,
        "unauthorized",
    );
    assert_error(
        &settings.call(event("get-keys.json")).await,
        404,
        "not_found",
    );
}

#[tokio::test]
async fn validate_function_resolves_with_and_without_a_team_key() {
    let dir = tempfile::tempdir().unwrap();
    let without_team = Function::start("validate", dir.path(), &[]);
    assert_error(
        &without_team.call(event("get-resolve.json")).await,
        403,
        "no_credential",
    );
    let missing_model = without_team
        .call(at_default_route(
            event("get-resolve.json"),
            "GET",
            "/api/resolve",
        ))
        .await;
    assert_error(&missing_model, 400, "invalid_request");
    assert_error(
        &without_team
            .call(without_auth(event("get-resolve.json")))
            .await,
        401,
        "unauthorized",
    );

    let with_team = Function::start(
        "validate",
        dir.path(),
        &[("AI_GATEWAY_API_KEY", TEAM_GATEWAY_KEY)],
    );
    let resolved = with_team.call(event("get-resolve.json")).await;
    assert_json_reply(&resolved, 200);
    assert_eq!(
        resolved.json,
        json!({"path": "team-gateway", "provider": "gateway", "model": "openai/gpt-4o-mini",
               "upstreamModel": "openai/gpt-4o-mini", "baseUrlHost": "ai-gateway.vercel.sh",
               "baseUrlSource": "team"}),
        "{}",
        resolved.raw
    );
    assert!(!resolved.raw.to_string().contains(TEAM_GATEWAY_KEY));
    assert!(!with_team.process.output().contains(TEAM_GATEWAY_KEY));
}

#[tokio::test]
async fn models_function_marks_what_the_caller_can_use() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Function::start("keys", dir.path(), &[]);
    let models = Function::start("models", dir.path(), &[]);
    let listed = |reply: &Reply| -> Vec<(String, bool, Value)> {
        reply.json["data"]
            .as_array()
            .expect("data array")
            .iter()
            .map(|m| {
                let id = m["id"].as_str().expect("id").to_owned();
                (
                    id,
                    m["accessible"].as_bool().expect("accessible"),
                    m["via"].clone(),
                )
            })
            .collect()
    };

    let none = models.call(event("get-models.json")).await;
    assert_json_reply(&none, 200);
    assert_eq!(none.json["object"], "list");
    let all = listed(&none);
    assert!(all.len() > 10, "the shipped catalog: {}", none.raw);
    assert!(
        all.iter()
            .all(|(_, accessible, via)| !accessible && via.is_null())
    );

    // The caller's OpenAI key makes OpenAI's models (only) accessible.
    assert_eq!(keys.call(event("post-keys.json")).await.status, 201);
    let some = listed(&models.call(event("get-models.json")).await);
    for (id, accessible, via) in &some {
        let openai = id.starts_with("openai/");
        assert_eq!(*accessible, openai, "{id}");
        assert_eq!(via.as_str(), openai.then_some("user-provider"), "{id}");
    }
    assert_error(
        &models.call(without_auth(event("get-models.json"))).await,
        401,
        "unauthorized",
    );
}

/// The three functions on one data directory, as they share one store when
/// deployed: what `keys` and `settings` write, `validate` resolves with.
#[tokio::test]
async fn functions_share_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    functions_share_the_store(dir.path(), &[]).await;
}

/// As deployed: `BYOK_STORE=aws` (DynamoDB + Secrets Manager on the local emulator).
#[tokio::test]
async fn functions_share_the_aws_store() {
    let dir = tempfile::tempdir().unwrap();
    let table = byok_tests::aws::unique_name("lambda");
    let prefix = format!("{}/", byok_tests::aws::unique_name("lambda"));
    byok::store::dynamo::ensure_table(&byok_tests::aws::dynamo_client(None), &table)
        .await
        .unwrap();
    let endpoint = byok_tests::aws::endpoint();
    let env = [
        ("BYOK_STORE", "aws"),
        ("BYOK_TABLE_NAME", table.as_str()),
        ("BYOK_SECRET_PREFIX", prefix.as_str()),
        ("BYOK_SECRET_RECOVERY_DAYS", "0"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    functions_share_the_store(dir.path(), &env).await;
}

async fn functions_share_the_store(dir: &Path, store_env: &[(&str, &str)]) {
    let mut team = vec![("AI_GATEWAY_API_KEY", TEAM_GATEWAY_KEY)];
    team.extend_from_slice(store_env);
    let keys = Function::start("keys", dir, store_env);
    let settings = Function::start("settings", dir, store_env);
    let validate = Function::start("validate", dir, &team);

    // Before any key: the team gateway serves both users.
    for sub in [ALICE, BOB] {
        let r = validate
            .call(as_user(resolve_event("gpt-4o-mini"), sub))
            .await;
        assert_eq!(r.json["path"], "team-gateway", "{}", r.raw);
    }

    assert_eq!(keys.call(event("post-keys.json")).await.status, 201);
    let alice = validate.call(resolve_event("gpt-4o-mini")).await;
    assert_json_reply(&alice, 200);
    assert_eq!(
        (
            alice.json["path"].as_str(),
            alice.json["provider"].as_str(),
            alice.json["baseUrlSource"].as_str()
        ),
        (Some("user-provider"), Some("openai"), Some("default")),
        "{}",
        alice.raw
    );
    let bob = validate
        .call(as_user(resolve_event("gpt-4o-mini"), BOB))
        .await;
    assert_eq!(bob.json["path"], "team-gateway", "{}", bob.raw);

    // Bob withdraws consent through `settings`: `validate` refuses him.
    let off = settings
        .call(as_user(event("post-user-settings.json"), BOB))
        .await;
    assert_eq!(off.json, json!({"allowGatewayFallback": false}));
    assert_error(
        &validate
            .call(as_user(resolve_event("gpt-4o-mini"), BOB))
            .await,
        403,
        "consent_required",
    );

    // Alice disables her key through `keys`: back to the team gateway.
    assert_eq!(keys.call(event("patch-keys-openai.json")).await.status, 200);
    let r = validate.call(resolve_event("gpt-4o-mini")).await;
    assert_eq!(r.json["path"], "team-gateway", "{}", r.raw);
    assert_eq!(
        keys.call(event("delete-keys-openai.json")).await.status,
        204
    );
}

/// A REST API (payload 1.0) event with a Cognito user pool authorizer.
#[tokio::test]
async fn keys_function_serves_a_rest_api_cognito_event() {
    let dir = tempfile::tempdir().unwrap();
    // Seed a key through the HTTP API event for the same user.
    let keys = Function::start(
        "keys",
        dir.path(),
        &[("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true")],
    );
    assert_eq!(keys.call(event("post-keys.json")).await.status, 201);

    let listed = keys.call(event("rest-get-keys.json")).await;
    assert_eq!(listed.status, 200, "{}", listed.raw);
    assert_eq!(key_count(&listed), 1, "{}", listed.raw);
    assert_eq!(listed.json["keys"][0]["maskedKey"], "sk-proj-…0001");
    // REST answers put every header in `multiValueHeaders`.
    assert_eq!(
        listed.raw["multiValueHeaders"]["content-type"],
        json!(["application/json"]),
        "{}",
        listed.raw
    );
    let other = keys.call(as_user(event("rest-get-keys.json"), BOB)).await;
    assert_eq!(other.json, json!({"keys": []}), "{}", other.raw);
    let anonymous = keys.call(without_auth(event("rest-get-keys.json"))).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.raw);
    assert_eq!(anonymous.json["error"]["code"], "unauthorized");

    // Without AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH the stage prefixes the
    // path (`/prod/api/keys`), which no route matches.
    let prefixed = Function::start("keys", dir.path(), &[]);
    let missed = prefixed.call(event("rest-get-keys.json")).await;
    assert_eq!(missed.status, 404, "{}", missed.raw);
    assert_eq!(missed.json["error"]["code"], "not_found");
}

/// A response the function streamed (`Lambda-Runtime-Function-Response-Mode:
/// streaming`): the prelude API Gateway reads status and headers from, and
/// the body it passes on as it arrives.
#[derive(Debug)]
struct Streamed {
    status: u64,
    headers: Map<String, Value>,
    body: String,
    prelude: Value,
}

impl Streamed {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

fn streamed(invocation: Invocation) -> Streamed {
    let Invocation::StreamedResponse { prelude, body } = invocation else {
        panic!("expected a streamed response, got {invocation:?}");
    };
    let status = prelude["statusCode"]
        .as_u64()
        .unwrap_or_else(|| panic!("statusCode: {prelude}"));
    let headers = prelude["headers"].as_object().cloned().unwrap_or_default();
    let body = String::from_utf8(body).expect("UTF-8 body");
    Streamed {
        status,
        headers,
        body,
        prelude,
    }
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(body: &str) -> Vec<&str> {
    body.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?} in {body:?}"))
        })
        .collect()
}

/// `keys` with ALICE's OpenAI key stored (`post-keys.json`), and
/// `completion` behind the streaming REST API calling `standin` for it.
async fn completion_with_a_stored_key(dir: &Path, standin: &StandIn) -> (Function, Function) {
    let keys = Function::start("keys", dir, &[]);
    assert_eq!(keys.call(event("post-keys.json")).await.status, 201);
    let openai = standin.openai_base();
    let env = [
        ("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true"),
        ("BYOK_OPENAI_BASE_URL", openai.as_str()),
    ];
    let completion = Function::start("completion", dir, &env);
    (keys, completion)
}

/// The completion function's first token follows its prelude at once. The
/// two are small writes on the Runtime API connection one after the other;
/// with Nagle's algorithm on (the runtime client's default) the second
/// waited for the first one's ACK, which the receiver delays by ~40 ms.
#[tokio::test]
async fn the_first_token_follows_the_prelude_without_a_stall() {
    let dir = tempfile::tempdir().unwrap();
    let standin = StandIn::start().await;
    let (_keys, completion) = completion_with_a_stored_key(dir.path(), &standin).await;
    let mut gaps = Vec::new();
    for _ in 0..5 {
        let answer = streamed(completion.invoke(event("post-chat-completions.json")).await);
        assert_eq!(answer.status, 200, "{answer:?}");
        let arrival = completion.runtime.stream_arrivals().pop().unwrap();
        let total = arrival.frames.last().map_or(0, |(_, n)| *n);
        let body_start = total - answer.body.len();
        // The prelude's last byte, before its 8-byte separator.
        let prelude_done = arrival.arrival_of(body_start - 9).unwrap();
        let first_piece = format!("\"content\":\"{}\"", standin.reply_chunks()[0]);
        let at = answer.body.find(&first_piece).unwrap();
        let first_token = arrival.arrival_of(body_start + at).unwrap();
        gaps.push(first_token - prelude_done);
    }
    gaps.sort();
    assert!(
        gaps[2] < Duration::from_millis(20),
        "prelude to first token: {gaps:?}"
    );
}

/// `completion` behind the streaming REST API: a payload 1.0 event with
/// Cognito claims on stage `prod` (`post-chat-completions.json`), the
/// caller's OpenAI key stored by `keys` in the shared store, the upstream a
/// stand-in. The answer is a streamed response, and it is streamed: its
/// first content reaches the Runtime API before the upstream has finished.
#[tokio::test]
async fn completion_function_streams_with_the_users_key() {
    let dir = tempfile::tempdir().unwrap();
    let standin = StandIn::start().await;
    // Far enough apart that one piece sent at the end is told from a stream.
    standin.set_chunk_delay(Duration::from_millis(150));
    let (keys, completion) = completion_with_a_stored_key(dir.path(), &standin).await;
    let sent = event("post-chat-completions.json");
    assert_eq!(sent["requestContext"]["stage"], "prod");
    assert_eq!(
        sent["requestContext"]["path"], "/prod/v1/chat/completions",
        "the stage is in the path API Gateway reports"
    );
    let answer = streamed(completion.invoke(sent).await);

    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.header("content-type"),
        Some("text/event-stream"),
        "{}",
        answer.prelude
    );
    assert_eq!(answer.header("x-byok-path"), Some("user-provider"));
    assert_eq!(answer.header("x-byok-provider"), Some("openai"));

    // OpenAI chunks carrying the stand-in's reply, then [DONE].
    assert!(
        answer.body.ends_with("data: [DONE]\n\n"),
        "{:?}",
        answer.body
    );
    let data = sse_data(&answer.body);
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{d}: {e}")))
        .collect();
    assert!(chunks.len() >= standin.reply_chunks().len(), "{chunks:?}");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"),
        "{chunks:?}"
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, DEFAULT_REPLY);

    // The upstream saw the user's key, the bare model name and a stream request.
    let requests = standin.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].upstream, Some(Upstream::OpenAi));
    assert_eq!(requests[0].path, "/openai/v1/chat/completions");
    assert_eq!(requests[0].key, SAMPLE_KEY);
    assert_eq!(requests[0].model, "gpt-4o-mini");
    assert_eq!(requests[0].body["stream"], true);

    // The attempt is in the usage ledger before the invocation ended: the
    // `keys` function reads it from the shared store.
    let usage = keys.call(event("get-usage.json")).await;
    assert_json_reply(&usage, 200);
    assert_eq!(
        usage.json["usage"][0]["path"], "user-provider",
        "{}",
        usage.raw
    );
    assert_eq!(usage.json["usage"][0]["paidBy"], "user");
    assert_eq!(usage.json["totals"]["requests"], 1);
    assert_eq!(answer.header("x-byok-paid-by"), Some("user"));

    // Streamed, not buffered: the first content chunk reached the Runtime
    // API before the stand-in sent its last event.
    let arrivals = completion.runtime.stream_arrivals();
    assert_eq!(arrivals.len(), 1, "{arrivals:?}");
    let arrival = &arrivals[0];
    let total = arrival.frames.last().map_or(0, |(_, n)| *n);
    let first_piece = format!("\"content\":\"{}\"", standin.reply_chunks()[0]);
    let at = answer
        .body
        .find(&first_piece)
        .unwrap_or_else(|| panic!("{first_piece} in {:?}", answer.body));
    let first_content = arrival
        .arrival_of(total - answer.body.len() + at)
        .expect("the first content arrived");
    assert!(
        standin
            .wait_until(Duration::from_secs(2), |s| s.completed_streams() == 1)
            .await
    );
    let upstream_done = standin.stream_finished_at()[0];
    assert!(
        first_content < upstream_done,
        "the first chunk arrived {:?} after the upstream finished: buffered, not streamed",
        first_content - upstream_done
    );
    assert!(arrival.frames.len() > 2, "{arrival:?}");

    // Errors before the first byte are streamed responses too, JSON bodies
    // with their status: another user has no key and no team fallback.
    let refused = streamed(
        completion
            .invoke(as_user(event("post-chat-completions.json"), BOB))
            .await,
    );
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(refused.header("content-type"), Some("application/json"));
    assert_eq!(
        refused.json()["error"]["code"],
        "no_credential",
        "{refused:?}"
    );
    let anonymous = streamed(
        completion
            .invoke(without_auth(event("post-chat-completions.json")))
            .await,
    );
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert_eq!(anonymous.json()["error"]["code"], "unauthorized");
    assert_eq!(standin.requests().len(), 1, "no upstream call for either");

    // The key reached neither the answers nor the logs.
    for text in [&answer.body, &refused.body, &anonymous.body] {
        assert!(!text.contains(SAMPLE_KEY));
    }
    assert!(!answer.prelude.to_string().contains(SAMPLE_KEY));
    assert!(!completion.process.output().contains(SAMPLE_KEY));
    assert_eq!(completion.runtime.init_error(), None);

    // Without AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH the router sees
    // /prod/v1/chat/completions and answers 404 (why the template sets it).
    let prefixed = Function::start(
        "completion",
        dir.path(),
        &[("BYOK_OPENAI_BASE_URL", standin.openai_base().as_str())],
    );
    let missed = streamed(prefixed.invoke(event("post-chat-completions.json")).await);
    assert_eq!(missed.status, 404, "{missed:?}");
    assert_eq!(missed.json()["error"]["code"], "not_found");
    assert_eq!(standin.requests().len(), 1);
}

/// An event that is not an HTTP event at all is an invocation error, and
/// the function keeps serving.
/// `put-budget.json` (an admin setting the sample user's budget) with
/// `method` and, for a `PUT`, `body`.
fn budget_event(method: &str, body: Option<&Value>) -> Value {
    let mut event = event("put-budget.json");
    event["requestContext"]["http"]["method"] = json!(method);
    let route = format!("{method} /api/admin/budgets/users/{{userId}}");
    event["routeKey"] = json!(route);
    event["requestContext"]["routeKey"] = json!(route);
    with_optional_body(event, body)
}

/// `event` with `body` as its JSON body, or with no body (and no content
/// headers) when there is none.
fn with_optional_body(mut event: Value, body: Option<&Value>) -> Value {
    match body {
        Some(body) => with_body(event, body),
        None => {
            event.as_object_mut().expect("event").remove("body");
            headers_mut(&mut event).retain(|name, _| !name.starts_with("content-"));
            event
        }
    }
}

/// `POST /v1/embeddings` through the completion function's REST front door
/// (`post-embeddings.json`, stage `prod`): answered whole, recorded in the
/// ledger before the invocation ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_function_serves_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let standin = StandIn::start().await;
    let (keys, completion) = completion_with_a_stored_key(dir.path(), &standin).await;
    let answer = streamed(completion.invoke(event("post-embeddings.json")).await);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("x-byok-path"), Some("user-provider"));
    let body: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2), "{body}");
    let requests = standin.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].path, "/openai/v1/embeddings");
    assert_eq!(requests[0].key, SAMPLE_KEY);

    let usage = keys.call(event("get-usage.json")).await;
    assert_json_reply(&usage, 200);
    assert_eq!(usage.json["totals"]["requests"], 1, "{}", usage.raw);
    assert_eq!(usage.json["totals"]["promptTokens"], 8, "{}", usage.raw);
    assert_eq!(usage.json["totals"]["completionTokens"], 0, "{}", usage.raw);
    standin.shutdown().await;
}

/// A team-path completion on Lambda under a paused budget: refused with 402
/// before any upstream call while the budget cannot hold it; once raised,
/// served with the budget headers, and settled before the invocation ended
/// (the `keys` function reads the budget's `used` from the shared store).
#[tokio::test]
async fn completion_function_holds_a_team_budget_within_the_invocation() {
    let dir = tempfile::tempdir().unwrap();
    let standin = StandIn::start().await;
    standin.set_usage(Some((12, 20)));
    let keys = Function::start("keys", dir.path(), &[]);
    let set = keys.call(event("put-budget.json")).await;
    assert_json_reply(&set, 200);
    assert_eq!(set.json["limit"], 10, "{}", set.raw);

    let gateway = standin.gateway_base();
    let env = [
        ("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true"),
        ("AI_GATEWAY_API_KEY", TEAM_GATEWAY_KEY),
        ("AI_GATEWAY_URL", gateway.as_str()),
    ];
    let completion = Function::start("completion", dir.path(), &env);
    let refused = streamed(completion.invoke(event("post-chat-completions.json")).await);
    assert_eq!(refused.status, 402, "{refused:?}");
    assert_eq!(refused.json()["error"]["code"], "budget_exceeded");
    assert_eq!(refused.header("x-byok-paid-by"), Some("team"));
    assert!(standin.requests().is_empty(), "no upstream call");

    let raised = json!({"type": "tokens", "period": "daily", "limit": 1000, "pauseAtLimit": true});
    assert_json_reply(&keys.call(budget_event("PUT", Some(&raised))).await, 200);
    let answer = streamed(completion.invoke(event("post-chat-completions.json")).await);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("x-byok-path"), Some("team-gateway"));
    assert_eq!(answer.header("x-byok-budget-type"), Some("tokens"));
    let remaining: u64 = answer
        .header("x-byok-budget-remaining")
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{answer:?}"));
    assert!(
        remaining < 1000 - 32,
        "the reservation counted: {remaining}"
    );
    assert!(
        answer.body.ends_with("data: [DONE]\n\n"),
        "{:?}",
        answer.body
    );

    let budget = keys.call(budget_event("GET", None)).await;
    assert_json_reply(&budget, 200);
    assert_eq!(
        budget.json["used"], 32,
        "settled in the invocation: {}",
        budget.raw
    );
    assert_eq!(budget.json["reserved"], 0, "{}", budget.raw);
    assert_eq!(budget.json["remaining"], 1000 - 32);

    // A non-admin may not touch budgets.
    let forbidden = keys
        .call(with_groups(budget_event("GET", None), None))
        .await;
    assert_error(&forbidden, 403, "forbidden");
    let deleted = keys.call(budget_event("DELETE", None)).await;
    assert_eq!(deleted.status, 204, "{}", deleted.raw);
}

/// The streaming REST API sends a browser's CORS preflight (no token) to
/// the completion function, which answers it for an allowed origin only.
#[tokio::test]
async fn completion_function_answers_a_cors_preflight() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true"),
        ("BYOK_CORS_ORIGINS", "https://app.example.com"),
    ];
    let completion = Function::start("completion", dir.path(), &env);
    let preflight = |origin: &str| {
        let mut event = without_auth(event("post-chat-completions.json"));
        event["httpMethod"] = json!("OPTIONS");
        event["requestContext"]["httpMethod"] = json!("OPTIONS");
        event["body"] = Value::Null;
        let headers = headers_mut(&mut event);
        headers.retain(|name, _| !name.starts_with("content-"));
        headers.insert("origin".to_owned(), json!(origin));
        headers.insert("access-control-request-method".to_owned(), json!("POST"));
        headers.insert(
            "access-control-request-headers".to_owned(),
            json!("authorization,content-type"),
        );
        if let Some(multi) = event
            .get_mut("multiValueHeaders")
            .and_then(Value::as_object_mut)
        {
            multi.clear();
        }
        event
    };
    let allowed = streamed(
        completion
            .invoke(preflight("https://app.example.com"))
            .await,
    );
    assert!((200..300).contains(&allowed.status), "{allowed:?}");
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example.com"),
        "{allowed:?}"
    );
    let other = streamed(
        completion
            .invoke(preflight("https://evil.example.com"))
            .await,
    );
    assert_eq!(
        other.header("access-control-allow-origin"),
        None,
        "{other:?}"
    );
}

#[tokio::test]
async fn an_event_of_the_wrong_shape_is_an_invocation_error() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Function::start("keys", dir.path(), &[]);
    let error = keys
        .invoke(json!({"source": "aws.events", "detail": {}}))
        .await
        .into_error();
    assert!(
        error["errorType"].as_str().is_some_and(|t| !t.is_empty()),
        "{error}"
    );
    assert!(
        error["errorMessage"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{error}"
    );
    assert_eq!(keys.call(event("get-keys.json")).await.status, 200);
}

/// A configuration the function cannot start with: `main` fails before the
/// runtime client starts, so the process exits non-zero naming the setting
/// (and, if it reports to `/runtime/init/error` at all, says the same there).
#[tokio::test]
async fn misconfiguration_stops_the_function_at_init() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "keys",
        "settings",
        "validate",
        "models",
        "completion",
        "rotation",
    ] {
        let runtime = RuntimeApi::start();
        let data_dir = dir.path().to_str().unwrap();
        let process = FunctionProcess::start(
            name,
            &runtime,
            &[("BYOK_STORE", "bogus"), ("BYOK_DATA_DIR", data_dir)],
        );
        let status = process
            .wait_exit(std::time::Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{name} kept running: {}", process.output()));
        let output = process.output();
        assert!(!status.success(), "{name}: {status}");
        assert!(output.contains("BYOK_STORE"), "{name}: {output}");
        assert!(
            runtime.init_error().is_some(),
            "{name} reports its failed start to /runtime/init/error"
        );
        if let Some(init_error) = runtime.init_error() {
            assert!(
                init_error.to_string().contains("BYOK_STORE"),
                "{name}: {init_error}"
            );
        }
        assert_eq!(runtime.handed_out(), 0, "{name} never asked for an event");
    }
}

/// `event` (a REST API event) as API Gateway passes a `/v1/*` request
/// with no authorizer: no claims, the caller's `Authorization` as sent.
fn unauthorized_rest(mut event: Value, authorization: Option<&str>) -> Value {
    if let Some(context) = event["requestContext"].as_object_mut() {
        context.remove("authorizer");
    }
    for field in ["headers", "multiValueHeaders"] {
        if let Some(headers) = event[field].as_object_mut() {
            headers.retain(|name, _| !name.eq_ignore_ascii_case("authorization"));
            if let Some(value) = authorization {
                let value = if field == "headers" {
                    json!(value)
                } else {
                    json!([value])
                };
                headers.insert("Authorization".to_owned(), value);
            }
        }
    }
    event
}

/// `/v1/*` routes authenticate in the function (the template gives them no
/// API Gateway authorizer): a personal API key made through the keys
/// function serves a completion and the model list; a request without a
/// credential, or with the key once revoked, is 401 with no upstream call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_functions_accept_personal_keys_until_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let standin = StandIn::start().await;
    let keys = Function::start("keys", dir.path(), &[]);
    assert_eq!(keys.call(event("post-keys.json")).await.status, 201);
    let token_event = |method: &str, path: &str, route: &str, body: Option<&Value>| {
        let mut event = event("post-keys.json");
        event["routeKey"] = json!(format!("{method} {route}"));
        event["requestContext"]["routeKey"] = json!(format!("{method} {route}"));
        event["rawPath"] = json!(path);
        event["requestContext"]["http"]["path"] = json!(path);
        event["requestContext"]["http"]["method"] = json!(method);
        with_optional_body(event, body)
    };
    let made = keys
        .call(token_event(
            "POST",
            "/api/tokens",
            "/api/tokens",
            Some(&json!({"name": "lambda test"})),
        ))
        .await;
    assert_json_reply(&made, 201);
    let key = made.json["key"].as_str().expect("the key").to_owned();
    let id = made.json["id"].as_str().expect("its id").to_owned();

    let openai = standin.openai_base();
    let env = [
        ("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true"),
        ("BYOK_OPENAI_BASE_URL", openai.as_str()),
    ];
    let completion = Function::start("completion", dir.path(), &env);
    let bearer = format!("Bearer {key}");
    let served = streamed(
        completion
            .invoke(unauthorized_rest(
                event("post-chat-completions.json"),
                Some(&bearer),
            ))
            .await,
    );
    assert_eq!(served.status, 200, "{served:?}");
    assert_eq!(served.header("x-byok-path"), Some("user-provider"));
    assert!(served.body.ends_with("data: [DONE]\n\n"), "{served:?}");
    assert_eq!(standin.requests().len(), 1);
    assert_eq!(standin.requests()[0].key, SAMPLE_KEY);

    // As the template runs it: GET /v1/models comes through the HTTP API
    // and through the streaming REST API (whose stage is in the path).
    let models = Function::start(
        "models",
        dir.path(),
        &[("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true")],
    );
    let mut list = event("get-models.json");
    if let Some(context) = list["requestContext"].as_object_mut() {
        context.remove("authorizer");
    }
    headers_mut(&mut list).insert("authorization".to_owned(), json!(bearer));
    let listed = models.call(list.clone()).await;
    assert_json_reply(&listed, 200);
    let mut rest = event("rest-get-keys.json");
    rest["resource"] = json!("/v1/models");
    rest["path"] = json!("/v1/models");
    rest["requestContext"]["resourcePath"] = json!("/v1/models");
    rest["requestContext"]["path"] = json!("/prod/v1/models");
    let rest = unauthorized_rest(rest, Some(&bearer));
    let listed_rest = models.call(rest.clone()).await;
    assert_eq!(listed_rest.status, 200, "{}", listed_rest.raw);
    assert_eq!(listed_rest.json["object"], "list", "{}", listed_rest.raw);
    assert_eq!(listed_rest.json["data"], listed.json["data"]);

    let anonymous = streamed(
        completion
            .invoke(unauthorized_rest(event("post-chat-completions.json"), None))
            .await,
    );
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert_eq!(anonymous.json()["error"]["code"], "unauthorized");

    let revoked = keys
        .call(token_event(
            "DELETE",
            &format!("/api/tokens/{id}"),
            "/api/tokens/{id}",
            None,
        ))
        .await;
    assert_eq!(revoked.status, 204, "{revoked:?}");
    let refused = streamed(
        completion
            .invoke(unauthorized_rest(
                event("post-chat-completions.json"),
                Some(&bearer),
            ))
            .await,
    );
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(models.call(list).await.status, 401);
    assert_eq!(standin.requests().len(), 1, "no upstream call once revoked");
    assert!(!completion.process.output().contains(&key[12..]));
    standin.shutdown().await;
}
