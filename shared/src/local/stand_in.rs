//! `byok-local stand-in`: a development upstream on loopback that speaks
//! the OpenAI (chat completions, embeddings, models) and Anthropic
//! (Messages, models) wire formats, so a first completion works with fake
//! keys and no provider account. It echoes the last user message, streams
//! it word by word at a human pace with a usage event, and refuses keys
//! that contain `invalid` (to show what a bad key looks like). Never a
//! model, never for production: every answer says so.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::LocalError;

/// Where the stand-in listens unless told otherwise.
pub const DEFAULT_STAND_IN_PORT: u16 = 8788;

/// Models the stand-in lists (and answers for any other id too).
const MODELS: [&str; 4] = [
    "gpt-4o-mini",
    "gpt-4o",
    "claude-3-5-haiku-latest",
    "text-embedding-3-small",
];

#[derive(Clone, Copy)]
struct Pace(Duration);

/// Serves the stand-in on 127.0.0.1:`port` until the process stops.
pub async fn run(
    port: u16,
    pace: Duration,
    out: &mut dyn std::io::Write,
) -> Result<(), LocalError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| LocalError::Bind { addr, source })?;
    let addr = listener.local_addr()?;
    writeln!(
        out,
        "byok-local stand-in (a development tool: echoes, never a model) on http://{addr}\n\
         point byok-local at it (in the shell that starts it):\n  \
         export BYOK_OPENAI_BASE_URL=http://{addr}/v1 BYOK_ANTHROPIC_BASE_URL=http://{addr}/v1\n\
         any key of the right shape works (sk-proj-… for OpenAI, sk-ant-… for Anthropic); \
         a key containing \"invalid\" is refused"
    )?;
    out.flush()?;
    axum::serve(listener, router(pace)).await?;
    Ok(())
}

/// The stand-in's routes.
pub fn router(pace: Duration) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/messages", post(messages))
        .with_state(Pace(pace))
}

/// Which wire format a request speaks, from its key header.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wire {
    OpenAi,
    Anthropic,
}

/// The request's key and wire format, or the error answer.
fn caller(headers: &HeaderMap) -> Result<Wire, Box<Response>> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let (wire, key) = if let Some(key) = header("x-api-key") {
        (Wire::Anthropic, key)
    } else if let Some(key) = header("authorization").and_then(|v| v.strip_prefix("Bearer ")) {
        (Wire::OpenAi, key)
    } else {
        return Err(Box::new(error(
            Wire::OpenAi,
            StatusCode::UNAUTHORIZED,
            "no API key",
        )));
    };
    if key.contains("invalid") {
        return Err(Box::new(error(
            wire,
            StatusCode::UNAUTHORIZED,
            "the stand-in refuses keys containing \"invalid\"",
        )));
    }
    Ok(wire)
}

fn error(wire: Wire, status: StatusCode, message: &str) -> Response {
    let body = match wire {
        Wire::OpenAi => json!({"error": {
            "message": message,
            "type": "invalid_request_error",
            "code": if status == StatusCode::UNAUTHORIZED { "invalid_api_key" } else { "bad_request" },
        }}),
        Wire::Anthropic => json!({"type": "error", "error": {
            "type": if status == StatusCode::UNAUTHORIZED { "authentication_error" } else { "invalid_request_error" },
            "message": message,
        }}),
    };
    (status, axum::Json(body)).into_response()
}

async fn models(headers: HeaderMap) -> Response {
    let wire = match caller(&headers) {
        Ok(wire) => wire,
        Err(refused) => return *refused,
    };
    let body = match wire {
        Wire::OpenAi => json!({
            "object": "list",
            "data": MODELS.iter().map(|id| json!({
                "id": id, "object": "model", "created": 1_700_000_000, "owned_by": "stand-in"
            })).collect::<Vec<_>>(),
        }),
        Wire::Anthropic => json!({
            "data": MODELS.iter().filter(|id| id.starts_with("claude-")).map(|id| json!({
                "type": "model", "id": id, "display_name": id, "created_at": "2024-10-22T00:00:00Z"
            })).collect::<Vec<_>>(),
            "has_more": false,
        }),
    };
    axum::Json(body).into_response()
}

/// The text of a message's `content`: a string, or the text parts of a list.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The reply to `messages`: the last user message, echoed.
fn reply_to(messages: &[Value]) -> String {
    let last = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .map(content_text)
        .unwrap_or_default();
    let last: String = last.chars().take(500).collect();
    format!("Stand-in echo: \"{last}\". (This is byok-local's development stand-in, not a model.)")
}

/// Rough token count: words, at least one.
fn tokens(text: &str) -> u64 {
    (text.split_whitespace().count() as u64).max(1)
}

fn prompt_tokens(messages: &[Value]) -> u64 {
    messages
        .iter()
        .filter_map(|m| m.get("content"))
        .map(|c| tokens(&content_text(c)))
        .sum::<u64>()
        .max(1)
}

/// The reply split into streamed pieces (words with their leading space).
fn pieces(reply: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, word) in reply.split(' ').enumerate() {
        out.push(if i == 0 {
            word.to_owned()
        } else {
            format!(" {word}")
        });
    }
    out
}

fn parse(body: &Bytes, wire: Wire) -> Result<Value, Box<Response>> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| {
            Box::new(error(
                wire,
                StatusCode::BAD_REQUEST,
                "the body is not a JSON object",
            ))
        })
}

/// An SSE body from `events`, one every `pace` after the first.
fn paced_sse(events: Vec<String>, pace: Duration) -> Response {
    let stream = futures_util::stream::unfold(
        (events.into_iter(), true),
        move |(mut rest, first)| async move {
            let next = rest.next()?;
            if !first {
                tokio::time::sleep(pace).await;
            }
            Some((Ok::<Bytes, Infallible>(Bytes::from(next)), (rest, false)))
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A chat request's body, model (or `default_model`) and messages, once
/// its key and body pass.
fn chat_request(
    headers: &HeaderMap,
    body: &Bytes,
    wire: Wire,
    default_model: &str,
) -> Result<(Value, String, Vec<Value>), Box<Response>> {
    caller(headers)?;
    let request = parse(body, wire)?;
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(default_model)
        .to_owned();
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok((request, model, messages))
}

async fn chat(State(Pace(pace)): State<Pace>, headers: HeaderMap, body: Bytes) -> Response {
    let (request, model, messages) =
        match chat_request(&headers, &body, Wire::OpenAi, "gpt-4o-mini") {
            Ok(parts) => parts,
            Err(refused) => return *refused,
        };
    let reply = reply_to(&messages);
    let (prompt, completion) = (prompt_tokens(&messages), tokens(&reply));
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
    let id = "chatcmpl-standin";
    let created = 1_700_000_000_u64;
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        return axum::Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                         "finish_reason": "stop", "logprobs": null}],
            "usage": usage,
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        let event = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        });
        format!("data: {event}\n\n")
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    events.extend(
        pieces(&reply)
            .into_iter()
            .map(|p| chunk(json!({"content": p}), Value::Null)),
    );
    events.push(chunk(json!({}), json!("stop")));
    if request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true)
    {
        let event = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage,
        });
        events.push(format!("data: {event}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_owned());
    paced_sse(events, pace)
}

async fn embeddings(headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = caller(&headers) {
        return *refused;
    }
    let request = match parse(&body, Wire::OpenAi) {
        Ok(request) => request,
        Err(refused) => return *refused,
    };
    let inputs: Vec<String> = match request.get("input") {
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) => items.iter().map(content_text).collect(),
        _ => return error(Wire::OpenAi, StatusCode::BAD_REQUEST, "input is missing"),
    };
    // A deterministic 8-dimensional vector per input, from its bytes.
    let vector = |text: &str| -> Vec<f64> {
        let mut v = [0_f64; 8];
        for (i, b) in text.bytes().enumerate() {
            v[i % 8] += f64::from(b) / 255.0;
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
        v.iter().map(|x| x / norm).collect()
    };
    let prompt: u64 = inputs.iter().map(|t| tokens(t)).sum();
    axum::Json(json!({
        "object": "list",
        "data": inputs.iter().enumerate().map(|(i, t)| json!({
            "object": "embedding", "index": i, "embedding": vector(t)
        })).collect::<Vec<_>>(),
        "model": request.get("model").cloned().unwrap_or(Value::Null),
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }))
    .into_response()
}

async fn messages(State(Pace(pace)): State<Pace>, headers: HeaderMap, body: Bytes) -> Response {
    let (request, model, messages) =
        match chat_request(&headers, &body, Wire::Anthropic, "claude-3-5-haiku-latest") {
            Ok(parts) => parts,
            Err(refused) => return *refused,
        };
    let reply = reply_to(&messages);
    let (input, output) = (prompt_tokens(&messages), tokens(&reply));
    let id = "msg_standin";
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        return axum::Json(json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": reply}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": input, "output_tokens": output},
        }))
        .into_response();
    }
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": 1},
            }}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    events.extend(pieces(&reply).into_iter().map(|p| {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
        )
    }));
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": output}}),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    paced_sse(events, pace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_echoes_the_last_user_message_and_streams_it_whole() {
        let messages = vec![
            json!({"role": "user", "content": "first"}),
            json!({"role": "assistant", "content": "ok"}),
            json!({"role": "user", "content": [{"type": "text", "text": "say hi"}]}),
        ];
        let reply = reply_to(&messages);
        assert!(reply.starts_with("Stand-in echo: \"say hi\"."), "{reply}");
        assert!(reply.contains("not a model"));
        assert_eq!(pieces(&reply).concat(), reply);
        assert_eq!(prompt_tokens(&messages), 4);
    }

    #[test]
    fn keys_choose_the_wire_and_invalid_ones_are_refused() {
        let mut headers = HeaderMap::new();
        assert!(caller(&headers).is_err());
        headers.insert("authorization", "Bearer sk-proj-abc".parse().unwrap());
        assert!(matches!(caller(&headers), Ok(Wire::OpenAi)));
        headers.insert("x-api-key", "sk-ant-invalid-1".parse().unwrap());
        let refused = caller(&headers).err().unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    }
}
