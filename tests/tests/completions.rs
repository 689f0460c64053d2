//! `POST /v1/chat/completions` end to end: the real byok-local binary on
//! 127.0.0.1 in front of the provider stand-in. Which key and model reach
//! which upstream on every path, OpenAI pass-through and Anthropic
//! translation (streamed and not), streaming that is incremental end to end,
//! every upstream error mapping before the first byte, error events after
//! it, client disconnects cancelling the upstream, the fallback chain, usage
//! records, and keys that never leak.

#![expect(
    clippy::unwrap_used,
    reason = "test bodies and helpers: a failed step is a failed test"
)]

use std::time::{Duration, Instant};

use byok_tests::harness::LocalServer;
use byok_tests::http::{Answer, Api};
use byok_tests::upstream::{DEFAULT_REPLY, Failure, LEAK_CANARY, StandIn};
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const OPENAI_KEY: &str = "sk-proj-userkey0openai0000000000000000001";
const ANTHROPIC_KEY: &str = "sk-ant-api03-userkey0anthropic000000000001";
const OPENROUTER_KEY: &str = "sk-or-v1-userkey0openrouter00000000000001";
const XAI_KEY: &str = "xai-userkey0xai000000000000000000001";
const GOOGLE_KEY: &str = "AIzaSyUserkey0google0000000000000000001";
const GROQ_KEY: &str = "gsk_userkey0groq00000000000000000000001";
const GATEWAY_KEY: &str = "vck_userkey0gateway000000000000000001";
const TEAM_GATEWAY_KEY: &str = "vck_teamkey0gateway000000000000000001";

/// byok-local in front of `stand_in`, with `extra` variables.
fn start(stand_in: &StandIn, dir: &std::path::Path, extra: &[(&str, &str)]) -> LocalServer {
    let mut env = stand_in.base_url_env();
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    LocalServer::start(dir, &env)
}

async fn store_key(api: &Api, service: &str, key: &str) {
    let answer = api
        .post("/api/keys", json!({"service": service, "apiKey": key}))
        .await;
    assert!(answer.status.is_success(), "{}", answer.text);
}

fn chat(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello."}
        ],
        "temperature": 0.2
    })
}

/// A streamed answer as the client saw it.
struct Streamed {
    status: StatusCode,
    headers: HeaderMap,
    /// Every SSE event's data, with the time it was complete at the client.
    events: Vec<(Instant, String)>,
    raw: String,
}

impl Streamed {
    /// The content deltas, in order.
    fn text(&self) -> String {
        self.chunks()
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect()
    }

    /// The JSON chunks (without `[DONE]`).
    fn chunks(&self) -> Vec<Value> {
        self.events
            .iter()
            .filter(|(_, d)| d != "[DONE]")
            .map(|(_, d)| serde_json::from_str(d).unwrap())
            .collect()
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn ends_with_done(&self) -> bool {
        self.events.last().is_some_and(|(_, d)| d == "[DONE]")
    }
}

async fn stream_chat(server: &LocalServer, token: &str, body: &Value) -> Streamed {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let mut events = Vec::new();
    let mut raw = String::new();
    let mut pending = String::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        let text = String::from_utf8(chunk.to_vec()).unwrap();
        raw.push_str(&text);
        pending.push_str(&text);
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            if !data.is_empty() {
                events.push((Instant::now(), data.join("\n")));
            }
        }
    }
    Streamed {
        status,
        headers,
        events,
        raw,
    }
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Every user-key path: the right key and upstream model reach the right
/// upstream, the stream is OpenAI chunks ending with `[DONE]`.
#[tokio::test]
async fn every_service_streams_with_the_users_key() {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&stand_in, dir.path(), &[]);
    let cases = [
        // (service, key, requested model, upstream path, upstream model)
        (
            "openai",
            OPENAI_KEY,
            "gpt-4o-mini",
            "/openai/v1/chat/completions",
            "gpt-4o-mini",
        ),
        (
            "anthropic",
            ANTHROPIC_KEY,
            "anthropic/claude-sonnet-4.5",
            "/anthropic/v1/messages",
            "claude-sonnet-4-5",
        ),
        (
            "xai",
            XAI_KEY,
            "grok-3-mini",
            "/xai/v1/chat/completions",
            "grok-3-mini",
        ),
        (
            "google",
            GOOGLE_KEY,
            "google/gemini-2.0-flash",
            "/google/v1beta/openai/chat/completions",
            "gemini-2.0-flash",
        ),
        (
            "groq",
            GROQ_KEY,
            "groq/llama-3.1-8b-instant",
            "/groq/v1/chat/completions",
            "llama-3.1-8b-instant",
        ),
        (
            "openrouter",
            OPENROUTER_KEY,
            "mistral/mistral-large",
            "/openrouter/v1/chat/completions",
            "mistral/mistral-large",
        ),
    ];
    for (i, (service, key, model, path, upstream_model)) in cases.into_iter().enumerate() {
        // One user per service, so only that key can serve.
        let token = server.token(&format!("user-{service}"), false);
        let api = Api::new(&server.base, Some(&token));
        store_key(&api, service, key).await;
        let streamed = stream_chat(&server, &token, &chat(model, true)).await;
        assert_eq!(
            streamed.status,
            StatusCode::OK,
            "{service}: {}",
            streamed.raw
        );
        assert!(
            streamed
                .header("content-type")
                .starts_with("text/event-stream"),
            "{service}"
        );
        assert_eq!(streamed.header("x-byok-path"), "user-provider", "{service}");
        assert_eq!(streamed.header("x-byok-provider"), service);
        assert_eq!(
            streamed.text(),
            DEFAULT_REPLY,
            "{service}: {}",
            streamed.raw
        );
        assert!(streamed.ends_with_done(), "{service}: {}", streamed.raw);
        assert!(
            streamed.chunks().len() > 3,
            "{service}: several chunks: {}",
            streamed.raw
        );
        for chunk in streamed.chunks() {
            assert_eq!(chunk["object"], "chat.completion.chunk", "{service}");
            assert!(
                chunk.get("usage").is_none(),
                "usage only when asked: {chunk}"
            );
        }
        let requests = stand_in.requests();
        assert_eq!(requests.len(), i + 1, "one upstream call per request");
        let last = requests.last().unwrap();
        assert_eq!(last.path, path, "{service}");
        assert_eq!(last.key, key, "{service}");
        assert_eq!(last.model, upstream_model, "{service}");
    }

    // The user's own gateway key wins over their provider keys.
    let token = server.token("user-openai", false);
    let api = Api::new(&server.base, Some(&token));
    store_key(&api, "gateway", GATEWAY_KEY).await;
    let streamed = stream_chat(&server, &token, &chat("gpt-4o-mini", true)).await;
    assert_eq!(streamed.header("x-byok-path"), "user-gateway");
    assert_eq!(streamed.header("x-byok-provider"), "gateway");
    assert_eq!(streamed.text(), DEFAULT_REPLY);
    let last = stand_in.requests().pop().unwrap();
    assert_eq!(
        (last.path.as_str(), last.key.as_str(), last.model.as_str()),
        (
            "/gateway/v1/chat/completions",
            GATEWAY_KEY,
            "openai/gpt-4o-mini"
        )
    );

    server.stop();
    stand_in.shutdown().await;
}

/// The team gateway serves a keyless user who consents, with the operator's
/// key; without consent it is 403 `consent_required`; without any credential
/// 403 `no_credential`.
#[tokio::test]
async fn team_gateway_path_needs_consent() {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &stand_in,
        dir.path(),
        &[("AI_GATEWAY_API_KEY", TEAM_GATEWAY_KEY)],
    );
    let token = server.token("keyless", false);
    let api = Api::new(&server.base, Some(&token));
    let answer = api
        .post("/v1/chat/completions", chat("gpt-4o-mini", false))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(header(&answer, "x-byok-path"), "team-gateway");
    assert_eq!(header(&answer, "x-byok-provider"), "gateway");
    assert_eq!(answer.json["object"], "chat.completion");
    assert_eq!(
        answer.json["choices"][0]["message"]["content"],
        DEFAULT_REPLY
    );
    let last = stand_in.requests().pop().unwrap();
    assert_eq!(last.key, TEAM_GATEWAY_KEY);
    assert_eq!(last.model, "openai/gpt-4o-mini");

    let off = api
        .post("/api/user-settings", json!({"allowGatewayFallback": false}))
        .await;
    assert!(off.status.is_success(), "{}", off.text);
    let before = stand_in.requests().len();
    let answer = api
        .post("/v1/chat/completions", chat("gpt-4o-mini", true))
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.text);
    assert_eq!(answer.code(), "consent_required");
    assert_eq!(stand_in.requests().len(), before, "no upstream call");
    server.stop();

    let dir = tempfile::tempdir().unwrap();
    let server = start(&stand_in, dir.path(), &[]);
    let api = Api::new(&server.base, Some(&server.token("nobody", false)));
    let answer = api
        .post("/v1/chat/completions", chat("gpt-4o-mini", true))
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.text);
    assert_eq!(answer.code(), "no_credential");
    server.stop();
    stand_in.shutdown().await;
}

/// Non-streamed answers: OpenAI's body is relayed as is; Anthropic's is
/// translated into a `chat.completion` with usage.
#[tokio::test]
async fn non_streamed_answers_pass_through_or_are_translated() {
    let stand_in = StandIn::start().await;
    stand_in.set_usage(Some((12, 5)));
    let dir = tempfile::tempdir().unwrap();
    let server = start(&stand_in, dir.path(), &[]);
    let token = server.token("plain", false);
    let api = Api::new(&server.base, Some(&token));
    store_key(&api, "openai", OPENAI_KEY).await;
    store_key(&api, "anthropic", ANTHROPIC_KEY).await;

    let mut body = chat("openai/gpt-4o-mini", false);
    body["x_vendor_option"] = json!({"keep": [1, 2, 3]});
    body["seed"] = json!(42);
    let answer = api.post("/v1/chat/completions", body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(
        answer.json["choices"][0]["message"]["content"],
        DEFAULT_REPLY
    );
    assert_eq!(answer.json["usage"]["prompt_tokens"], 12);
    let sent = stand_in.requests().pop().unwrap();
    assert_eq!(
        sent.body["x_vendor_option"],
        json!({"keep": [1, 2, 3]}),
        "unknown fields pass"
    );
    assert_eq!(sent.body["seed"], 42);
    assert_eq!(sent.body["temperature"], 0.2);
    assert!(
        sent.body.get("stream_options").is_none(),
        "non-streams are not changed"
    );

    let mut body = chat("claude-3-5-haiku-latest", false);
    body["stop"] = json!(["END"]);
    body["max_tokens"] = json!(64);
    let answer = api.post("/v1/chat/completions", body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(header(&answer, "x-byok-provider"), "anthropic");
    assert_eq!(answer.json["object"], "chat.completion");
    assert_eq!(answer.json["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        answer.json["choices"][0]["message"]["content"],
        DEFAULT_REPLY
    );
    assert_eq!(answer.json["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer.json["usage"]["prompt_tokens"], 12);
    assert_eq!(answer.json["usage"]["completion_tokens"], 5);
    let sent = stand_in.requests().pop().unwrap();
    assert_eq!(sent.path, "/anthropic/v1/messages");
    assert_eq!(sent.body["system"], "Be brief.");
    assert_eq!(sent.body["max_tokens"], 64);
    assert_eq!(sent.body["stop_sequences"], json!(["END"]));
    assert_eq!(sent.body["messages"][0]["role"], "user");
    assert_eq!(sent.headers.get("anthropic-version").unwrap(), "2023-06-01");
    server.stop();
    stand_in.shutdown().await;
}

/// Tool calls stream through the Anthropic translation as OpenAI tool-call
/// deltas whose arguments join into the tool input.
#[tokio::test]
async fn anthropic_tool_use_streams_as_openai_tool_calls() {
    let stand_in = StandIn::start().await;
    stand_in.set_tool_input(json!({"city": "Paris", "unit": "celsius"}));
    let dir = tempfile::tempdir().unwrap();
    let server = start(&stand_in, dir.path(), &[]);
    let token = server.token("tools", false);
    let api = Api::new(&server.base, Some(&token));
    store_key(&api, "anthropic", ANTHROPIC_KEY).await;
    let mut body = chat("anthropic/claude-3-5-haiku-latest", true);
    body["tools"] = json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}
        }
    }]);
    body["stream_options"] = json!({"include_usage": true});
    let streamed = stream_chat(&server, &token, &body).await;
    assert_eq!(streamed.status, StatusCode::OK, "{}", streamed.raw);
    let sent = stand_in.requests().pop().unwrap();
    assert_eq!(sent.body["tools"][0]["name"], "get_weather");
    assert!(sent.body["tools"][0]["input_schema"].is_object());

    let chunks = streamed.chunks();
    let arguments: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    let parsed: Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(parsed, json!({"city": "Paris", "unit": "celsius"}));
    let first_call = chunks
        .iter()
        .find_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["name"].as_str())
        .unwrap();
    assert_eq!(first_call, "get_weather");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"),
        "{}",
        streamed.raw
    );
    let last = chunks.last().unwrap();
    assert_eq!(
        last["choices"],
        json!([]),
        "usage chunk last: {}",
        streamed.raw
    );
    assert!(last["usage"]["prompt_tokens"].as_u64().is_some());
    assert!(streamed.ends_with_done());
    server.stop();
    stand_in.shutdown().await;
}

/// The first token reaches the client while the upstream is still sending,
/// and later chunks arrive spaced as the upstream spaced them.
#[tokio::test]
async fn streaming_is_incremental_end_to_end() {
    let stand_in = StandIn::start().await;
    stand_in.set_chunks(6);
    stand_in.set_chunk_delay(Duration::from_millis(150));
    let dir = tempfile::tempdir().unwrap();
    let server = start(&stand_in, dir.path(), &[]);
    let token = server.token("incremental", false);
    let api = Api::new(&server.base, Some(&token));
    store_key(&api, "openai", OPENAI_KEY).await;
    store_key(&api, "anthropic", ANTHROPIC_KEY).await;

    for model in ["gpt-4o-mini", "claude-3-5-haiku-latest"] {
        let streamed = stream_chat(&server, &token, &chat(model, true)).await;
        assert_eq!(streamed.status, StatusCode::OK, "{model}");
        let content_at: Vec<Instant> = streamed
            .events
            .iter()
            .filter(|(_, d)| d.contains("\"content\":\"") && !d.contains("\"content\":\"\""))
            .map(|(at, _)| *at)
            .collect();
        assert_eq!(content_at.len(), 6, "{model}: {}", streamed.raw);
        let finished = stand_in.streams().last().unwrap().last_chunk_at.unwrap();
        assert!(
            content_at[0] < finished,
            "{model}: the first token arrived before the upstream's last event"
        );
        let spread = content_at[5] - content_at[0];
        assert!(
            spread >= Duration::from_millis(500),
            "{model}: chunks arrived as sent, not at once ({spread:?})"
        );
    }
    server.stop();
    stand_in.shutdown().await;
}

/// Upstream failures before the first byte map to SPEC §7 statuses and
/// codes, for streamed and non-streamed requests and both wire formats;
/// messages are redacted and the route headers are set.
#[tokio::test]
async fn upstream_errors_before_the_first_byte_map_to_statuses() {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &stand_in,
        dir.path(),
        &[("BYOK_UPSTREAM_FIRST_BYTE_TIMEOUT_SECS", "0.5")],
    );
    let token = server.token("failing", false);
    let api = Api::new(&server.base, Some(&token));
    store_key(&api, "openai", OPENAI_KEY).await;
    store_key(&api, "anthropic", ANTHROPIC_KEY).await;

    let cases = [
        (Failure::Status(401, None), 424, "upstream_auth"),
        (Failure::Status(403, None), 424, "upstream_auth"),
        (Failure::Status(429, Some(7)), 429, "upstream_rate_limited"),
        (Failure::Status(500, None), 502, "upstream_unavailable"),
        (Failure::Status(503, None), 502, "upstream_unavailable"),
        (Failure::Status(400, None), 400, "upstream_error"),
        (Failure::Status(404, None), 404, "upstream_error"),
        (Failure::Status(422, None), 422, "upstream_error"),
        (Failure::Hang, 504, "upstream_timeout"),
        (
            Failure::SlowFirstByte(Duration::from_millis(1500)),
            504,
            "upstream_timeout",
        ),
    ];
    for model in ["gpt-4o-mini", "claude-3-5-haiku-latest"] {
        for stream in [true, false] {
            for (failure, status, code) in &cases {
                stand_in.fail_next(failure.clone());
                let answer = api.post("/v1/chat/completions", chat(model, stream)).await;
                let what = format!("{model} stream={stream} {failure:?}");
                assert_eq!(answer.status.as_u16(), *status, "{what}: {}", answer.text);
                assert_eq!(answer.code(), *code, "{what}: {}", answer.text);
                assert!(
                    answer.json["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "{what}"
                );
                assert!(
                    !answer.text.contains(LEAK_CANARY),
                    "{what}: {}",
                    answer.text
                );
                assert!(!answer.text.contains("userkey0"), "{what}: {}", answer.text);
                assert_eq!(header(&answer, "x-byok-path"), "user-provider", "{what}");
                if *status == 429 {
                    assert_eq!(header(&answer, "retry-after"), "7", "{what}");
                }
            }
        }
    }
    server.stop();

    // Nothing listening: 502.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/v1");
    let server = start(
        &stand_in,
        dir.path(),
        &[("BYOK_OPENAI_BASE_URL", url.as_str())],
    );
    let api = Api::new(&server.base, Some(&server.token("refused", false)));
    store_key(&api, "openai", OPENAI_KEY).await;
    let answer = api
        .post("/v1/chat/completions", chat("gpt-4o-mini", true))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text);
    assert_eq!(answer.code(), "upstream_unavailable");
    server.stop();
    stand_in.shutdown().await;
}

/// After the first byte, a broken or stalled upstream ends the stream with
/// an error event and `[DONE]`; the status stays 200.
#[tokio::test]
async fn failures_after_the_first_byte_end_the_stream_with_an_error_event() {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &stand_in,
        dir.path(),
        &[("BYOK_UPSTREAM_IDLE_TIMEOUT_SECS", "0.4")],
    );
    let token = server.token("midstream", false);
    let api = Api::new(&server.base, Some(&token));
    store_key(&api, "openai", OPENAI_KEY).await;
    store_key(&api, "anthropic", ANTHROPIC_KEY).await;

    for model in ["gpt-4o-mini", "claude-3-5-haiku-latest"] {
        stand_in.fail_next(Failure::DropMidStream { after_chunks: 2 });
        let streamed = stream_chat(&server, &token, &chat(model, true)).await;
        assert_eq!(streamed.status, StatusCode::OK, "{model}");
        let chunks = streamed.chunks();
        let error = chunks.last().unwrap();
        assert_eq!(
            error["error"]["code"], "upstream_unavailable",
            "{model}: {}",
            streamed.raw
        );
        assert!(streamed.ends_with_done(), "{model}");
        assert!(
            !streamed.text().is_empty(),
            "{model}: the chunks before the failure arrived"
        );
        assert!(!streamed.raw.contains(LEAK_CANARY));
    }

    // A stall longer than the idle timeout.
    stand_in.set_chunk_delay(Duration::from_millis(1500));
    let streamed = stream_chat(&server, &token, &chat("gpt-4o-mini", true)).await;
    assert_eq!(streamed.status, StatusCode::OK);
    let chunks = streamed.chunks();
    assert_eq!(
        chunks.last().unwrap()["error"]["code"],
        "upstream_timeout",
        "{}",
        streamed.raw
    );
    assert!(streamed.ends_with_done());
    server.stop();
    stand_in.shutdown().await;
}

/// A client that goes away mid-stream cancels the upstream request.
#[tokio::test]
async fn client_disconnect_cancels_the_upstream() {
    let stand_in = StandIn::start().await;
    stand_in.set_chunks(40);
    stand_in.set_chunk_delay(Duration::from_millis(100));
    let dir = tempfile::tempdir().unwrap();
    let server = start(&stand_in, dir.path(), &[]);
    let token = server.token("leaver", false);
    let api = Api::new(&server.base, Some(&token));
    store_key(&api, "openai", OPENAI_KEY).await;
    store_key(&api, "anthropic", ANTHROPIC_KEY).await;

    for (i, model) in ["gpt-4o-mini", "claude-3-5-haiku-latest"]
        .into_iter()
        .enumerate()
    {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", server.base))
            .bearer_auth(&token)
            .json(&chat(model, true))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.bytes_stream();
        let first = body.next().await.unwrap().unwrap();
        assert!(!first.is_empty());
        drop(body);
        let cancelled = stand_in
            .wait_until(Duration::from_secs(5), |s| s.cancelled_streams() == i + 1)
            .await;
        assert!(cancelled, "{model}: the upstream saw the cancellation");
        assert_eq!(stand_in.completed_streams(), 0, "{model}");
    }
    // The cancellation is recorded as usage.
    let logged = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = server.output();
            if out.matches("outcome=\"cancelled\"").count() >= 2 || Instant::now() > deadline {
                break out;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(
        logged.matches("outcome=\"cancelled\"").count() >= 2,
        "{logged}"
    );
    server.stop();
    stand_in.shutdown().await;
}

/// The operator's fallback chain is tried when the requested model fails
/// before its first byte, and never after it or for the request's own fault.
#[tokio::test]
async fn fallback_chain_only_before_the_first_byte() {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &stand_in,
        dir.path(),
        &[(
            "BYOK_FALLBACK_MODELS",
            "anthropic/claude-3-5-haiku-latest,openai/gpt-4o-mini",
        )],
    );
    let token = server.token("fallback", false);
    let api = Api::new(&server.base, Some(&token));
    store_key(&api, "openai", OPENAI_KEY).await;
    store_key(&api, "anthropic", ANTHROPIC_KEY).await;

    // 503 on the requested model: the next model serves.
    stand_in.fail_next(Failure::Status(503, None));
    let streamed = stream_chat(&server, &token, &chat("openai/gpt-4o", true)).await;
    assert_eq!(streamed.status, StatusCode::OK, "{}", streamed.raw);
    assert_eq!(streamed.header("x-byok-provider"), "anthropic");
    assert_eq!(streamed.header("x-byok-fallback"), "true");
    assert_eq!(
        streamed.header("x-byok-model"),
        "anthropic/claude-3-5-haiku-latest"
    );
    assert_eq!(streamed.text(), DEFAULT_REPLY);
    let paths: Vec<String> = stand_in.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        ["/openai/v1/chat/completions", "/anthropic/v1/messages"]
    );

    // Every model fails: the requested model's error is answered.
    stand_in.clear();
    stand_in.fail_always(Failure::Status(429, Some(3)));
    let answer = api
        .post("/v1/chat/completions", chat("openai/gpt-4o", false))
        .await;
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        answer.text
    );
    assert_eq!(answer.code(), "upstream_rate_limited");
    assert_eq!(header(&answer, "x-byok-provider"), "openai");
    assert_eq!(stand_in.requests().len(), 3, "requested + two fallbacks");
    stand_in.clear_failures();

    // The request's own fault (400) does not fall back.
    stand_in.clear();
    stand_in.fail_next(Failure::Status(400, None));
    let answer = api
        .post("/v1/chat/completions", chat("openai/gpt-4o", true))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
    assert_eq!(stand_in.requests().len(), 1);

    // After the first byte there is no fallback: the stream ends with an error.
    stand_in.clear();
    stand_in.fail_next(Failure::DropMidStream { after_chunks: 1 });
    let streamed = stream_chat(&server, &token, &chat("openai/gpt-4o", true)).await;
    assert_eq!(streamed.status, StatusCode::OK);
    assert_eq!(
        streamed.chunks().last().unwrap()["error"]["code"],
        "upstream_unavailable"
    );
    assert_eq!(stand_in.requests().len(), 1);
    server.stop();
    stand_in.shutdown().await;
}

/// Usage is asked of the upstream without changing what a client that did
/// not ask receives, and every request leaves a usage record.
#[tokio::test]
async fn usage_is_recorded_without_changing_the_stream() {
    let stand_in = StandIn::start().await;
    stand_in.set_usage(Some((21, 9)));
    let dir = tempfile::tempdir().unwrap();
    let server = start(&stand_in, dir.path(), &[]);
    let token = server.token("metered", false);
    let api = Api::new(&server.base, Some(&token));
    store_key(&api, "openai", OPENAI_KEY).await;

    let streamed = stream_chat(&server, &token, &chat("gpt-4o-mini", true)).await;
    assert_eq!(
        stand_in.requests().pop().unwrap().body["stream_options"]["include_usage"],
        true
    );
    assert!(!streamed.raw.contains("usage"), "{}", streamed.raw);

    let mut asked = chat("gpt-4o-mini", true);
    asked["stream_options"] = json!({"include_usage": true});
    let streamed = stream_chat(&server, &token, &asked).await;
    let last = streamed.chunks().pop().unwrap();
    assert_eq!(last["usage"]["prompt_tokens"], 21);
    assert_eq!(last["usage"]["completion_tokens"], 9);

    let out = server.output();
    let records: Vec<&str> = out.lines().filter(|l| l.contains(" usage ")).collect();
    assert_eq!(records.len(), 2, "{out}");
    for record in records {
        for field in [
            "provider=\"openai\"",
            "path=\"user-provider\"",
            "model=\"openai/gpt-4o-mini\"",
            "outcome=\"completed\"",
            "prompt_tokens=21",
            "completion_tokens=9",
            "ttfb_ms=",
            "duration_ms=",
        ] {
            assert!(record.contains(field), "{field} in {record}");
        }
    }
    server.stop();
    stand_in.shutdown().await;
}

/// Bad requests get 4xx with stable codes and never reach an upstream.
#[tokio::test]
async fn bad_requests_are_refused_before_any_upstream_call() {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&stand_in, dir.path(), &[]);
    let token = server.token("careless", false);
    let api = Api::new(&server.base, Some(&token));
    store_key(&api, "openai", OPENAI_KEY).await;
    store_key(&api, "gateway", GATEWAY_KEY).await;
    let before = stand_in.requests().len();

    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            400,
            "invalid_request",
        ),
        (json!({"model": 5, "messages": []}), 400, "invalid_request"),
        (json!({"model": "gpt-4o"}), 400, "invalid_request"),
        (
            json!({"model": "gpt-4o", "messages": []}),
            400,
            "invalid_request",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
            400,
            "invalid_request",
        ),
        (
            json!({"model": "llama-3", "messages": [{"role": "user", "content": "x"}]}),
            400,
            "unknown_model",
        ),
        (
            json!({"model": "Open AI/x", "messages": [{"role": "user", "content": "x"}]}),
            400,
            "unknown_model",
        ),
        (json!([1, 2]), 400, "invalid_request"),
    ];
    for (body, status, code) in cases {
        let answer = api.post("/v1/chat/completions", body.clone()).await;
        assert_eq!(answer.status.as_u16(), status, "{body}: {}", answer.text);
        assert_eq!(answer.code(), code, "{body}");
    }
    let answer = api
        .send_raw(
            reqwest::Method::POST,
            "/v1/chat/completions",
            b"{not json".to_vec(),
            Some("application/json"),
        )
        .await;
    assert_eq!(answer.code(), "invalid_request");
    let unauthenticated = Api::new(&server.base, None)
        .post("/v1/chat/completions", chat("gpt-4o", true))
        .await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);

    // Bodies up to 20 MiB are accepted (not the 64 KiB of /api/*); above, 413.
    let mut big = chat("gpt-4o-mini", false);
    big["messages"][1]["content"] = json!("x".repeat(200 * 1024));
    let answer = api.post("/v1/chat/completions", big).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let mut huge = chat("gpt-4o-mini", false);
    huge["messages"][1]["content"] = json!("x".repeat(21 * 1024 * 1024));
    let answer = api.post("/v1/chat/completions", huge).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.code(), "payload_too_large");
    assert_eq!(
        stand_in.requests().len(),
        before + 1,
        "only the valid request went upstream"
    );
    server.stop();
    stand_in.shutdown().await;
}

/// A user gateway URL whose host has no public address fails with 502 at
/// connect time; nothing is sent.
#[tokio::test]
async fn user_base_url_that_resolves_nowhere_public_is_502() {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&stand_in, dir.path(), &[]);
    let token = server.token("rebinder", false);
    let api = Api::new(&server.base, Some(&token));
    let saved = api
        .post(
            "/api/keys",
            json!({"service": "gateway", "apiKey": GATEWAY_KEY, "baseUrl": "https://gateway.nowhere.invalid/v1"}),
        )
        .await;
    assert!(saved.status.is_success(), "{}", saved.text);
    let answer = api
        .post("/v1/chat/completions", chat("gpt-4o-mini", true))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text);
    assert_eq!(answer.code(), "upstream_unavailable");
    assert_eq!(header(&answer, "x-byok-path"), "user-gateway");
    assert!(stand_in.requests().is_empty());
    server.stop();
    stand_in.shutdown().await;
}

/// Keys never appear in completion answers, streams, error events or the
/// server's debug output, and upstream messages quoting keys are redacted.
#[tokio::test]
async fn completion_paths_never_leak_keys() {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let team_canary = "vck_teamCANARY7f3a9c1e5b2d8e4f6a0c11";
    let server = start(
        &stand_in,
        dir.path(),
        &[("RUST_LOG", "debug"), ("AI_GATEWAY_API_KEY", team_canary)],
    );
    let token = server.token("canary", false);
    let api = Api::new(&server.base, Some(&token));
    let user_canary = "sk-proj-userCANARY7f3a9c1e5b2d8e4f6a0c22";
    let anthropic_canary = "sk-ant-api03-userCANARY7f3a9c1e5b2d8e4f33";
    store_key(&api, "openai", user_canary).await;
    store_key(&api, "anthropic", anthropic_canary).await;

    let mut seen = Vec::new();
    for model in [
        "gpt-4o-mini",
        "claude-3-5-haiku-latest",
        "mistral/mistral-large",
    ] {
        for stream in [true, false] {
            seen.push(stream_chat(&server, &token, &chat(model, stream)).await.raw);
            for failure in [
                Failure::Status(401, None),
                Failure::Status(429, Some(1)),
                Failure::Status(500, None),
                Failure::DropMidStream { after_chunks: 1 },
            ] {
                stand_in.fail_next(failure);
                let s = stream_chat(&server, &token, &chat(model, stream)).await;
                seen.push(format!("{:?} {}", s.headers, s.raw));
            }
        }
    }
    // The keys did reach the upstreams.
    let keys: Vec<String> = stand_in.requests().iter().map(|r| r.key.clone()).collect();
    for key in [user_canary, anthropic_canary, team_canary] {
        assert!(keys.iter().any(|k| k == key), "{key} was used");
    }
    seen.push(server.output());
    for text in &seen {
        for canary in [
            user_canary,
            anthropic_canary,
            team_canary,
            LEAK_CANARY,
            "CANARY7f3a9c",
        ] {
            assert!(!text.contains(canary), "{canary} leaked: {text}");
        }
    }
    server.stop();
    stand_in.shutdown().await;
}
