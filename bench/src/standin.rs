//! A fast upstream stand-in: an OpenAI-compatible `POST /v1/chat/completions`
//! on 127.0.0.1 that answers at once with fixed bytes, so that whatever the
//! benchmark measures beyond it is the caller's path (direct or through the
//! gateway), not the upstream's work.
//!
//! Non-streaming requests get a small `chat.completion` with usage; requests
//! with `"stream": true` get a fixed SSE stream: a role chunk, content chunks,
//! a finish chunk, a usage chunk (`choices: []`) when
//! `stream_options.include_usage` is true, then `data: [DONE]`. Any Bearer
//! key is accepted; no sleeps anywhere. For the memory measurement,
//! [`StandIn::hold`] makes streams stop after their first event until
//! [`StandIn::release`].

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The model id the stand-in expects (the gateway forwards the bare id).
pub const MODEL: &str = "gpt-4o-mini";
/// The reply text, whole (non-streaming) or split into content chunks.
pub const REPLY: &str = "Hello from the benchmark stand-in.";
/// The content pieces of a streamed reply; they concatenate to [`REPLY`].
const REPLY_PIECES: [&str; 5] = ["Hello", " from the", " benchmark", " stand", "-in."];

/// Counters the stand-in keeps, readable while it runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests answered 200.
    pub served: AtomicU64,
    /// Requests whose `model` was not [`MODEL`] (answered all the same).
    pub other_model: AtomicU64,
    /// Requests refused (no Bearer key, body not JSON).
    pub refused: AtomicU64,
    /// Streams that sent their first event and wait for a release.
    pub held: AtomicU64,
}

/// Pre-rendered responses, shared by every request.
struct Canned {
    completion: Bytes,
    stream: Vec<Bytes>,
    usage_chunk: Bytes,
    done: Bytes,
}

#[derive(Clone)]
struct AppState {
    canned: Arc<Canned>,
    counters: Arc<Counters>,
    /// True while streams are to be held after their first event.
    hold: Arc<tokio::sync::watch::Sender<bool>>,
}

/// A running stand-in; stops when dropped.
pub struct StandIn {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    hold: Arc<tokio::sync::watch::Sender<bool>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl StandIn {
    /// Binds 127.0.0.1:0 and serves on the current runtime.
    pub async fn start() -> io::Result<StandIn> {
        let counters = Arc::new(Counters::default());
        let hold = Arc::new(tokio::sync::watch::Sender::new(false));
        let state = AppState {
            canned: Arc::new(Canned::render()),
            counters: Arc::clone(&counters),
            hold: Arc::clone(&hold),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let listener = listener.tap_io(|tcp| {
            // A failure only costs latency; nothing to report per connection.
            let _ = tcp.set_nodelay(true);
        });
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(StandIn {
            addr,
            counters,
            hold,
            shutdown: Some(tx),
            task,
        })
    }

    /// The OpenAI-style base URL, e.g. `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// From now on, streams stop after their first event until
    /// [`StandIn::release`].
    pub fn hold(&self) {
        self.hold.send_replace(true);
    }

    /// Lets every held stream finish.
    pub fn release(&self) {
        self.hold.send_replace(false);
        self.counters.held.store(0, Ordering::Relaxed);
    }

    /// Requests answered 200 so far.
    pub fn served(&self) -> u64 {
        self.counters.served.load(Ordering::Relaxed)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

impl Canned {
    fn render() -> Canned {
        let created = 1_700_000_000_u64;
        let id = "chatcmpl-bench0001";
        let completion = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": MODEL,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": REPLY, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
            "system_fingerprint": "fp_bench"
        });
        let chunk = |delta: Value, finish: Value| {
            sse(&json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": MODEL,
                "system_fingerprint": "fp_bench",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
            }))
        };
        let mut stream = vec![chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
        )];
        stream.extend(
            REPLY_PIECES
                .iter()
                .map(|piece| chunk(json!({"content": piece}), Value::Null)),
        );
        stream.push(chunk(json!({}), json!("stop")));
        let usage_chunk = sse(&json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
        }));
        Canned {
            completion: Bytes::from(completion.to_string()),
            stream,
            usage_chunk,
            done: Bytes::from_static(b"data: [DONE]\n\n"),
        }
    }
}

fn sse(event: &Value) -> Bytes {
    Bytes::from(format!("data: {event}\n\n"))
}

fn openai_error(status: StatusCode, message: &str) -> Response {
    let body =
        json!({"error": {"message": message, "type": "invalid_request_error", "code": null}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn chat(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|key| !key.trim().is_empty());
    if !bearer {
        state.counters.refused.fetch_add(1, Ordering::Relaxed);
        return openai_error(StatusCode::UNAUTHORIZED, "missing Bearer key");
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        state.counters.refused.fetch_add(1, Ordering::Relaxed);
        return openai_error(StatusCode::BAD_REQUEST, "body is not JSON");
    };
    if request.get("model").and_then(Value::as_str) != Some(MODEL) {
        state.counters.other_model.fetch_add(1, Ordering::Relaxed);
    }
    state.counters.served.fetch_add(1, Ordering::Relaxed);
    let canned = &state.canned;
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            canned.completion.clone(),
        )
            .into_response();
    }
    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let mut events = canned.stream.clone();
    if include_usage {
        events.push(canned.usage_chunk.clone());
    }
    events.push(canned.done.clone());
    let body = if *state.hold.borrow() {
        use futures_util::StreamExt as _;
        let mut rest = events.split_off(1);
        let mut released = state.hold.subscribe();
        let counters = Arc::clone(&state.counters);
        let wait = async move {
            counters.held.fetch_add(1, Ordering::Relaxed);
            let _ = released.wait_for(|holding| !*holding).await;
            futures_util::stream::iter(std::mem::take(&mut rest))
        };
        Body::from_stream(
            futures_util::stream::iter(events)
                .chain(futures_util::stream::once(wait).flatten())
                .map(Ok::<Bytes, Infallible>),
        )
    } else {
        Body::from_stream(futures_util::stream::iter(
            events.into_iter().map(Ok::<Bytes, Infallible>),
        ))
    };
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
