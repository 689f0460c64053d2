//! A provider stand-in for tests: a real HTTP server on 127.0.0.1 that speaks
//! the upstreams' wire formats (OpenAI-compatible chat completions and model
//! lists, Anthropic Messages with real SSE), records every request, and can be
//! scripted at runtime to fail, hang, drop a stream or answer slowly.
//!
//! Every upstream lives under its own path prefix ([`Upstream::prefix`]) so a
//! test can point every `BYOK_<SERVICE>_BASE_URL` and `AI_GATEWAY_URL` at one
//! [`StandIn`] and still tell the upstreams apart in [`StandIn::requests`].
//!
//! Order of a request: it is recorded; the next scripted [`Failure`] (if
//! any) is applied; then auth is checked (401 in the provider's error shape);
//! then it is routed. Every error body carries [`LEAK_CANARY`], a fake
//! key-looking string, so tests can check that the gateway redacts upstream
//! messages.
#![expect(
    clippy::expect_used,
    reason = "test support: a stand-in that cannot start, or a failed self-test step, should stop loudly"
)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// A fake key-looking string present in every error body the stand-in sends.
pub const LEAK_CANARY: &str = "sk-proj-LEAKCANARY0000000000000001";
/// The default reply text.
pub const DEFAULT_REPLY: &str = "Hello from the stand-in";
/// The default number of chunks a reply is streamed in.
pub const DEFAULT_CHUNKS: usize = 5;
/// The default delay between two streamed chunks.
pub const DEFAULT_CHUNK_DELAY: Duration = Duration::from_millis(20);
/// Key prefixes accepted by default (a key must also not contain `bad`).
pub const KNOWN_KEY_PREFIXES: &[&str] = &["sk-", "xai-", "AIza", "gsk_", "vck_"];
/// How long the producer waits before aborting a connection, so the chunks
/// already handed to the server are flushed to the client first.
const FLUSH_GRACE: Duration = Duration::from_millis(20);

/// The upstreams the stand-in impersonates, each under its own path prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Upstream {
    OpenAi,
    Anthropic,
    OpenRouter,
    Gateway,
    Groq,
    Xai,
    Google,
    Mistral,
    DeepSeek,
    Together,
    Fireworks,
    Perplexity,
    Cerebras,
    Cohere,
    Vertex,
    Bedrock,
}

impl Upstream {
    pub const ALL: [Upstream; 16] = [
        Upstream::OpenAi,
        Upstream::Anthropic,
        Upstream::OpenRouter,
        Upstream::Gateway,
        Upstream::Groq,
        Upstream::Xai,
        Upstream::Google,
        Upstream::Mistral,
        Upstream::DeepSeek,
        Upstream::Together,
        Upstream::Fireworks,
        Upstream::Perplexity,
        Upstream::Cerebras,
        Upstream::Cohere,
        Upstream::Vertex,
        Upstream::Bedrock,
    ];

    /// The path prefix of this upstream's base URL.
    pub const fn prefix(self) -> &'static str {
        match self {
            Upstream::OpenAi => "/openai/v1",
            Upstream::Anthropic => "/anthropic/v1",
            Upstream::OpenRouter => "/openrouter/v1",
            Upstream::Gateway => "/gateway/v1",
            Upstream::Groq => "/groq/v1",
            Upstream::Xai => "/xai/v1",
            Upstream::Google => "/google/v1beta/openai",
            Upstream::Mistral => "/mistral/v1",
            // The real base URLs have no version in them.
            Upstream::DeepSeek => "/deepseek",
            Upstream::Together => "/together/v1",
            Upstream::Fireworks => "/fireworks/inference/v1",
            Upstream::Perplexity => "/perplexity",
            Upstream::Cerebras => "/cerebras/v1",
            Upstream::Cohere => "/cohere/compatibility/v1",
            // Followed by /v1/projects/{project}/locations/{location}/endpoints.
            Upstream::Vertex => "/vertex",
            // Followed by /{region}/model/{modelId}/converse[-stream].
            Upstream::Bedrock => "/bedrock-runtime",
        }
    }

    /// The service id byok-local knows this upstream by.
    pub const fn service(self) -> &'static str {
        match self {
            Upstream::OpenAi => "openai",
            Upstream::Anthropic => "anthropic",
            Upstream::OpenRouter => "openrouter",
            Upstream::Gateway => "gateway",
            Upstream::Groq => "groq",
            Upstream::Xai => "xai",
            Upstream::Google => "google",
            Upstream::Mistral => "mistral",
            Upstream::DeepSeek => "deepseek",
            Upstream::Together => "together",
            Upstream::Fireworks => "fireworks",
            Upstream::Perplexity => "perplexity",
            Upstream::Cerebras => "cerebras",
            Upstream::Cohere => "cohere",
            Upstream::Vertex => "vertex",
            Upstream::Bedrock => "bedrock",
        }
    }

    /// The upstream a request path belongs to, and the rest of the path.
    pub fn from_path(path: &str) -> Option<(Upstream, &str)> {
        let found = Upstream::ALL.into_iter().find_map(|up| {
            let rest = path.strip_prefix(up.prefix())?;
            (rest.is_empty() || rest.starts_with('/')).then_some((up, rest))
        });
        // Vertex: `/v1/projects/{project}/locations/{location}/endpoints`
        // lists endpoints (the key check); below it, `/openapi` is the
        // OpenAI-compatible API.
        // Bedrock: `/{region}/model/…` on the runtime host; the control
        // plane (`/bedrock/{region}/foundation-models`) beside it.
        if let Some((Upstream::Bedrock, rest)) = found {
            let (_, tail) = rest.strip_prefix('/')?.split_once('/')?;
            return Some((Upstream::Bedrock, &rest[rest.len() - tail.len() - 1..]));
        }
        if let Some(rest) = path.strip_prefix("/bedrock/") {
            let (_, tail) = rest.split_once('/')?;
            return Some((Upstream::Bedrock, &rest[rest.len() - tail.len() - 1..]));
        }
        if let Some((Upstream::Vertex, rest)) = found {
            let (_, tail) = rest.split_once("/endpoints")?;
            let tail = match tail.strip_prefix("/openapi") {
                Some(api) => api,
                None if tail.is_empty() => "/models",
                None => tail,
            };
            return Some((Upstream::Vertex, tail));
        }
        // Cohere's own model list, beside its OpenAI-compatible API (the
        // key check: `/cohere/v1/models`).
        found.or_else(|| {
            let rest = path.strip_prefix("/cohere")?;
            rest.starts_with("/v1/").then_some((Upstream::Cohere, rest))
        })
    }

    /// Model ids `GET {prefix}/models` lists unless [`StandIn::set_models`] says otherwise.
    pub fn default_models(self) -> Vec<String> {
        let ids: &[&str] = match self {
            Upstream::OpenAi => &["gpt-4o-mini", "gpt-4o"],
            Upstream::Anthropic => &["claude-3-5-haiku-latest", "claude-sonnet-4-20250514"],
            Upstream::OpenRouter | Upstream::Gateway => {
                &["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-latest"]
            }
            Upstream::Groq => &["llama-3.1-8b-instant"],
            Upstream::Xai => &["grok-3-mini"],
            Upstream::Google => &["models/gemini-2.0-flash"],
            Upstream::Mistral => &["mistral-small-latest"],
            Upstream::DeepSeek => &["deepseek-v4-flash"],
            Upstream::Together => &["meta-llama/Llama-3.3-70B-Instruct-Turbo"],
            Upstream::Fireworks => &["accounts/fireworks/models/gpt-oss-120b"],
            Upstream::Perplexity => &["sonar"],
            Upstream::Cerebras => &["gpt-oss-120b"],
            Upstream::Cohere => &["command-r-08-2024"],
            Upstream::Vertex => &["google/gemini-2.5-flash"],
            Upstream::Bedrock => &["anthropic.claude-3-5-haiku-20241022-v1:0"],
        };
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    fn owner(self) -> &'static str {
        match self {
            Upstream::OpenAi => "openai",
            Upstream::Anthropic => "anthropic",
            Upstream::OpenRouter => "openrouter",
            Upstream::Gateway => "vercel",
            Upstream::Groq => "groq",
            Upstream::Xai => "xai",
            Upstream::Google => "google",
            Upstream::Mistral => "mistralai",
            Upstream::DeepSeek => "deepseek",
            Upstream::Together => "together",
            Upstream::Fireworks => "fireworks",
            Upstream::Perplexity => "perplexity",
            Upstream::Cerebras => "cerebras",
            Upstream::Cohere => "cohere",
            Upstream::Vertex => "vertex",
            Upstream::Bedrock => "bedrock",
        }
    }
}

/// A scripted misbehaviour, for the next request ([`StandIn::fail_next`]) or
/// every request ([`StandIn::fail_always`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Answer this status with the provider's error JSON (carrying
    /// [`LEAK_CANARY`]) and, if given, `retry-after: SECS`.
    Status(u16, Option<u64>),
    /// Accept the request and never answer (until the client goes away or the
    /// stand-in stops).
    Hang,
    /// Send the response head and `after_chunks` content chunks (OpenAI
    /// content deltas; Anthropic `text_delta`/`input_json_delta` events, after
    /// the `message_start`/`content_block_start`/`ping` preamble), then abort
    /// the connection: no `[DONE]`, no `message_stop`. A non-streaming
    /// request gets half of its JSON body, then the abort.
    DropMidStream { after_chunks: usize },
    /// Wait this long before sending the response head, then answer normally.
    SlowFirstByte(Duration),
}

/// One request as the stand-in received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The upstream its path belongs to (`None` for a path under no prefix).
    pub upstream: Option<Upstream>,
    pub method: Method,
    /// The full request path, e.g. `/openai/v1/chat/completions`.
    pub path: String,
    /// The presented credential: the `Authorization: Bearer` token, or
    /// `x-api-key` (Anthropic first), or `x-goog-api-key`; empty if none.
    pub key: String,
    /// `model` of the JSON body, empty if none.
    pub model: String,
    /// The body as JSON; `Null` when empty, a JSON string of the raw text when
    /// it is not JSON.
    pub body: Value,
    pub headers: HeaderMap,
    pub received_at: Instant,
}

/// How a streamed response ended (from the stand-in's side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamOutcome {
    /// Still sending.
    Running,
    /// Every event, through `[DONE]` / `message_stop`, was sent.
    Completed,
    /// The client went away before the end (its receiving side closed).
    Cancelled,
    /// Aborted on purpose by [`Failure::DropMidStream`].
    Dropped,
    /// The stand-in stopped while sending.
    Stopped,
}

/// Progress of one streamed (`stream: true`) response.
#[derive(Clone, Debug)]
pub struct StreamRecord {
    pub id: u64,
    pub path: String,
    pub started_at: Instant,
    /// When the first event was handed to the server.
    pub first_chunk_at: Option<Instant>,
    /// When the latest event was handed to the server; for a completed
    /// stream, when its last event (`[DONE]` / `message_stop`) was.
    pub last_chunk_at: Option<Instant>,
    /// SSE events sent (every `\n\n`-terminated block).
    pub events_sent: usize,
    /// Content events sent (text deltas, tool-input deltas).
    pub content_chunks_sent: usize,
    pub outcome: StreamOutcome,
}

struct Script {
    reply: String,
    chunks: usize,
    delay: Duration,
    queued: VecDeque<Failure>,
    always: Option<Failure>,
    accepted: Option<HashSet<String>>,
    tool_input: Value,
    usage: Option<(u64, u64)>,
    models: HashMap<Upstream, Vec<String>>,
    echo_key: bool,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            reply: DEFAULT_REPLY.to_owned(),
            chunks: DEFAULT_CHUNKS,
            delay: DEFAULT_CHUNK_DELAY,
            queued: VecDeque::new(),
            always: None,
            accepted: None,
            tool_input: json!({"city": "Paris"}),
            usage: None,
            models: HashMap::new(),
            echo_key: false,
        }
    }
}

/// What one request is served with, copied out of the script.
struct Plan {
    echo_key: bool,
    reply: String,
    chunks: usize,
    delay: Duration,
    failure: Option<Failure>,
    tool_input: Value,
    usage: Option<(u64, u64)>,
}

#[derive(Default)]
struct Log {
    requests: Vec<Recorded>,
    streams: Vec<StreamRecord>,
}

struct Shared {
    script: Mutex<Script>,
    oauth: Mutex<OAuth>,
    log: Mutex<Log>,
    stop: watch::Sender<bool>,
    seq: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn next_id(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn take_plan(&self) -> Plan {
        let mut script = lock(&self.script);
        let failure = script.queued.pop_front().or_else(|| script.always.clone());
        Plan {
            echo_key: script.echo_key,
            reply: script.reply.clone(),
            chunks: script.chunks,
            delay: script.delay,
            failure,
            tool_input: script.tool_input.clone(),
            usage: script.usage,
        }
    }

    fn accepts(&self, key: &str) -> bool {
        if lock(&self.oauth).issued.contains(key) {
            return true;
        }
        match &lock(&self.script).accepted {
            Some(keys) => keys.contains(key),
            None => default_accepts(key),
        }
    }

    fn models(&self, up: Upstream) -> Vec<String> {
        lock(&self.script)
            .models
            .get(&up)
            .cloned()
            .unwrap_or_else(|| up.default_models())
    }

    fn begin_stream(&self, path: &str) -> u64 {
        let id = self.next_id();
        lock(&self.log).streams.push(StreamRecord {
            id,
            path: path.to_owned(),
            started_at: Instant::now(),
            first_chunk_at: None,
            last_chunk_at: None,
            events_sent: 0,
            content_chunks_sent: 0,
            outcome: StreamOutcome::Running,
        });
        id
    }

    fn with_stream(&self, id: Option<u64>, f: impl FnOnce(&mut StreamRecord)) {
        let Some(id) = id else { return };
        if let Some(stream) = lock(&self.log).streams.iter_mut().find(|s| s.id == id) {
            f(stream);
        }
    }

    async fn stopped(&self) {
        let mut stop = self.stop.subscribe();
        // The sender lives as long as `self`: this only returns on a stop.
        let _ = stop.wait_for(|stopped| *stopped).await.map(|_| ());
    }
}

/// Bodies above this are read field by field ([`shallow_json`]).
const LARGE_BODY: usize = 4 * 1024 * 1024;

/// A large JSON object with each top-level field above 1 MiB replaced by a
/// note of its size: the stand-in answers from `model` and `messages`, and
/// a tree of ten million padding values would cost it gigabytes.
fn shallow_json(body: &[u8]) -> Value {
    type Fields = std::collections::BTreeMap<String, Box<serde_json::value::RawValue>>;
    let Ok(fields) = serde_json::from_slice::<Fields>(body) else {
        return Value::String(format!("<{} bytes, not a JSON object>", body.len()));
    };
    let map = fields
        .into_iter()
        .map(|(key, raw)| {
            let value = if raw.get().len() > 1024 * 1024 {
                Value::String(format!("<{} bytes>", raw.get().len()))
            } else {
                serde_json::from_str(raw.get()).unwrap_or(Value::Null)
            };
            (key, value)
        })
        .collect();
    Value::Object(map)
}

fn default_accepts(key: &str) -> bool {
    KNOWN_KEY_PREFIXES.iter().any(|p| key.starts_with(p)) && !key.contains("bad")
}

/// The provider stand-in. Stops when dropped.
pub struct StandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
}

impl StandIn {
    /// Binds 127.0.0.1:0 and serves until dropped or [`StandIn::shutdown`].
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in on 127.0.0.1:0");
        let addr = listener.local_addr().expect("stand-in address");
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            script: Mutex::new(Script::default()),
            oauth: Mutex::new(OAuth::default()),
            log: Mutex::new(Log::default()),
            stop,
            seq: AtomicU64::new(0),
        });
        // Providers take large requests (long contexts).
        let app = Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(Arc::clone(&shared));
        let on_stop = Arc::clone(&shared);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { on_stop.stopped().await })
                .await;
        });
        Self {
            addr,
            shared,
            server: Some(server),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The base URL of one upstream: [`StandIn::base_url`] + its prefix.
    pub fn base_for(&self, upstream: Upstream) -> String {
        format!("{}{}", self.base_url(), upstream.prefix())
    }

    /// byok-local's environment pointing every upstream at this stand-in:
    /// each `BYOK_<SERVICE>_BASE_URL` and `AI_GATEWAY_URL`.
    pub fn base_url_env(&self) -> Vec<(String, String)> {
        [
            ("BYOK_OPENAI_BASE_URL", Upstream::OpenAi),
            ("BYOK_ANTHROPIC_BASE_URL", Upstream::Anthropic),
            ("BYOK_OPENROUTER_BASE_URL", Upstream::OpenRouter),
            ("BYOK_XAI_BASE_URL", Upstream::Xai),
            ("BYOK_GOOGLE_BASE_URL", Upstream::Google),
            ("AI_GATEWAY_URL", Upstream::Gateway),
        ]
        .into_iter()
        .map(|(name, up)| (name.to_owned(), self.base_for(up)))
        .chain(
            Upstream::ALL
                .into_iter()
                .filter(|up| {
                    !matches!(
                        up,
                        Upstream::OpenAi
                            | Upstream::Anthropic
                            | Upstream::OpenRouter
                            | Upstream::Xai
                            | Upstream::Google
                            | Upstream::Gateway
                            | Upstream::Vertex
                            | Upstream::Bedrock
                    )
                })
                .map(|up| {
                    let name = format!("BYOK_{}_BASE_URL", up.service().to_ascii_uppercase());
                    (name, self.base_for(up))
                }),
        )
        .chain([
            (
                "BYOK_VERTEX_BASE_URL".to_owned(),
                format!(
                    "{}/v1/projects/{{project}}/locations/{{location}}/endpoints/openapi",
                    self.base_for(Upstream::Vertex)
                ),
            ),
            ("BYOK_GCP_TOKEN_URL".to_owned(), self.token_url()),
            (
                "BYOK_BEDROCK_BASE_URL".to_owned(),
                format!("{}/{{region}}", self.base_for(Upstream::Bedrock)),
            ),
        ])
        .collect()
    }

    /// The OAuth token endpoint service accounts are exchanged at.
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.base_url())
    }

    /// Accepts JWT assertions signed by `account` at the token endpoint.
    pub fn accept_service_account(&self, account: &TestServiceAccount) {
        lock(&self.shared.oauth)
            .accounts
            .insert(account.email.clone(), account.public_key.clone());
    }

    /// Accepts requests signed (SigV4) with this AWS access key.
    pub fn accept_aws_key(&self, access_key_id: &str, secret: &str, session_token: Option<&str>) {
        lock(&self.shared.oauth).aws.insert(
            access_key_id.to_owned(),
            (secret.to_owned(), session_token.map(str::to_owned)),
        );
    }

    /// Access tokens issued so far.
    pub fn token_exchanges(&self) -> u64 {
        lock(&self.shared.oauth).exchanges
    }

    /// How long issued access tokens live (`expires_in`).
    pub fn set_token_lifetime(&self, secs: u64) {
        lock(&self.shared.oauth).lifetime = Some(secs);
    }

    pub fn openai_base(&self) -> String {
        self.base_for(Upstream::OpenAi)
    }

    pub fn anthropic_base(&self) -> String {
        self.base_for(Upstream::Anthropic)
    }

    pub fn openrouter_base(&self) -> String {
        self.base_for(Upstream::OpenRouter)
    }

    pub fn gateway_base(&self) -> String {
        self.base_for(Upstream::Gateway)
    }

    pub fn groq_base(&self) -> String {
        self.base_for(Upstream::Groq)
    }

    pub fn xai_base(&self) -> String {
        self.base_for(Upstream::Xai)
    }

    /// Google's OpenAI-compatible endpoint (`…/google/v1beta/openai`).
    pub fn google_base(&self) -> String {
        self.base_for(Upstream::Google)
    }

    // ---- script -------------------------------------------------------

    /// The reply text (default [`DEFAULT_REPLY`]).
    pub fn set_reply(&self, text: impl Into<String>) {
        lock(&self.shared.script).reply = text.into();
    }

    /// How many chunks the reply is streamed in (default 5; at least 1, at
    /// most one per character).
    pub fn set_chunks(&self, chunks: usize) {
        lock(&self.shared.script).chunks = chunks;
    }

    /// The delay between two streamed content chunks (default 20 ms); the
    /// first chunk goes out at once.
    pub fn set_chunk_delay(&self, delay: Duration) {
        lock(&self.shared.script).delay = delay;
    }

    /// The input of the scripted Anthropic `tool_use` block (default
    /// `{"city":"Paris"}`).
    pub fn set_tool_input(&self, input: Value) {
        lock(&self.shared.script).tool_input = input;
    }

    /// Fixed `(prompt, completion)` token counts; `None` (the default) counts
    /// whitespace-separated words of the messages' text and of the reply.
    pub fn set_usage(&self, usage: Option<(u64, u64)>) {
        lock(&self.shared.script).usage = usage;
    }

    /// The model ids `GET {prefix}/models` lists for `upstream`.
    pub fn set_models(&self, upstream: Upstream, ids: &[&str]) {
        let ids = ids.iter().map(|id| (*id).to_owned()).collect();
        lock(&self.shared.script).models.insert(upstream, ids);
    }

    /// Echo the presented key back, as a careless or hostile upstream
    /// might: in every error message (instead of [`LEAK_CANARY`]) and at the
    /// end of the reply (whole: set one chunk to keep it in one event).
    pub fn echo_keys(&self, on: bool) {
        lock(&self.shared.script).echo_key = on;
    }

    /// Accept exactly these keys from now on.
    pub fn accept_keys<I, K>(&self, keys: I)
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        let keys = keys.into_iter().map(Into::into).collect();
        lock(&self.shared.script).accepted = Some(keys);
    }

    /// Back to the default rule: a [`KNOWN_KEY_PREFIXES`] prefix and no `bad`.
    pub fn accept_default_keys(&self) {
        lock(&self.shared.script).accepted = None;
    }

    /// Queue a failure for the next request (queued failures apply in order,
    /// one request each, before any [`StandIn::fail_always`]).
    pub fn fail_next(&self, failure: Failure) {
        lock(&self.shared.script).queued.push_back(failure);
    }

    /// Apply this failure to every request until [`StandIn::clear_failures`].
    pub fn fail_always(&self, failure: Failure) {
        lock(&self.shared.script).always = Some(failure);
    }

    /// Forget queued and permanent failures.
    pub fn clear_failures(&self) {
        let mut script = lock(&self.shared.script);
        script.queued.clear();
        script.always = None;
    }

    /// The chunks the current reply text is streamed in.
    pub fn reply_chunks(&self) -> Vec<String> {
        let script = lock(&self.shared.script);
        split_text(&script.reply, script.chunks)
    }

    // ---- recording ----------------------------------------------------

    /// Every request received since the start (or the last [`StandIn::clear`]).
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.log).requests.clone()
    }

    /// How many recorded requests have a path ending with `path_suffix`.
    pub fn count(&self, path_suffix: &str) -> usize {
        lock(&self.shared.log)
            .requests
            .iter()
            .filter(|r| r.path.ends_with(path_suffix))
            .count()
    }

    /// Forget recorded requests and streams.
    pub fn clear(&self) {
        let mut log = lock(&self.shared.log);
        log.requests.clear();
        log.streams.clear();
    }

    /// Every streamed response, in start order.
    pub fn streams(&self) -> Vec<StreamRecord> {
        lock(&self.shared.log).streams.clone()
    }

    fn streams_with(&self, outcome: StreamOutcome) -> usize {
        lock(&self.shared.log)
            .streams
            .iter()
            .filter(|s| s.outcome == outcome)
            .count()
    }

    /// Streams sent to the end.
    pub fn completed_streams(&self) -> usize {
        self.streams_with(StreamOutcome::Completed)
    }

    /// Streams the client abandoned before the end.
    pub fn cancelled_streams(&self) -> usize {
        self.streams_with(StreamOutcome::Cancelled)
    }

    /// Streams aborted by [`Failure::DropMidStream`].
    pub fn dropped_streams(&self) -> usize {
        self.streams_with(StreamOutcome::Dropped)
    }

    /// When the last event of each completed stream was sent, in start order.
    pub fn stream_finished_at(&self) -> Vec<Instant> {
        lock(&self.shared.log)
            .streams
            .iter()
            .filter(|s| s.outcome == StreamOutcome::Completed)
            .filter_map(|s| s.last_chunk_at)
            .collect()
    }

    /// Polls `condition` every 5 ms until it holds (true) or `timeout` passes
    /// (false). Stream outcomes are noticed asynchronously: wait for them.
    pub async fn wait_until(&self, timeout: Duration, condition: impl Fn(&Self) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if condition(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops accepting, ends hanging requests and running streams, and waits
    /// (up to 5 s) for the server to finish.
    pub async fn shutdown(mut self) {
        self.shared.stop.send_replace(true);
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut server)
                .await
                .is_err()
        {
            server.abort();
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

// ---- serving ----------------------------------------------------------

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let upstream = Upstream::from_path(uri.path()).map(|(up, _)| up);
    tokio::select! {
        response = serve(&shared, method, &uri, &headers, &body) => response,
        () = shared.stopped() => error_response(
            upstream,
            StatusCode::SERVICE_UNAVAILABLE,
            "the stand-in is stopping",
            None,
        ),
    }
}

async fn serve(
    shared: &Arc<Shared>,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    if uri.path() == "/oauth2/token" && method == Method::POST {
        return oauth_token(shared, uri, body);
    }
    let path = uri.path().to_owned();
    let routed = Upstream::from_path(uri.path());
    let upstream = routed.map(|(up, _)| up);
    let (key, key_in_right_header) = credential(upstream, headers);
    let json_body = if body.is_empty() {
        Value::Null
    } else if body.len() > LARGE_BODY {
        shallow_json(body)
    } else {
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    };
    let mut model = json_body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    // Bedrock names the model in the path.
    if let Some((Upstream::Bedrock, rest)) = routed
        && let Some(id) = rest.strip_prefix("/model/")
    {
        let id = id.rsplit_once('/').map_or(id, |(id, _)| id);
        model = url::form_urlencoded::parse(format!("m={id}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
    }
    lock(&shared.log).requests.push(Recorded {
        upstream,
        method: method.clone(),
        path: path.clone(),
        key: key.clone(),
        model,
        body: json_body.clone(),
        headers: headers.clone(),
        received_at: Instant::now(),
    });

    let Some((up, rest)) = routed else {
        return error_response(None, StatusCode::NOT_FOUND, "no such upstream prefix", None);
    };
    if up == Upstream::Bedrock {
        return bedrock(shared, &method, uri, headers, body, rest);
    }
    let mut plan = shared.take_plan();
    // The text an error message quotes as "the key".
    let quoted = if plan.echo_key {
        plan.reply = format!("{} {key}", plan.reply);
        key.clone()
    } else {
        LEAK_CANARY.to_owned()
    };
    let mut drop_after = None;
    match plan.failure {
        Some(Failure::Status(code, retry_after)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message =
                format!("stand-in scripted failure {code} for the request made with key {quoted}");
            return error_response(Some(up), status, &message, retry_after);
        }
        Some(Failure::Hang) => return std::future::pending().await,
        Some(Failure::SlowFirstByte(wait)) => tokio::time::sleep(wait).await,
        Some(Failure::DropMidStream { after_chunks }) => drop_after = Some(after_chunks),
        None => {}
    }

    if !key_in_right_header || !shared.accepts(&key) {
        let message = match (up, key_in_right_header) {
            (Upstream::Anthropic, false) => format!("x-api-key header is required ({quoted})"),
            (Upstream::Anthropic, true) => format!("invalid x-api-key: {quoted}"),
            (_, false) => format!(
                "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). \
                 Example: {quoted}"
            ),
            (_, true) => format!(
                "Incorrect API key provided: {quoted}. You can find your API key at \
                 https://platform.openai.com/account/api-keys."
            ),
        };
        return error_response(Some(up), StatusCode::UNAUTHORIZED, &message, None);
    }
    if up == Upstream::Anthropic && !headers.contains_key("anthropic-version") {
        return error_response(
            Some(up),
            StatusCode::BAD_REQUEST,
            "anthropic-version: header is required",
            None,
        );
    }

    let ctx = Ctx {
        shared: Arc::clone(shared),
        up,
        path,
        plan,
        drop_after,
    };
    match (method, rest) {
        (Method::GET, "/models") => models(&ctx),
        // Key checks outside the OpenAI-compatible base.
        (Method::GET, "/v1/models") if up == Upstream::Perplexity || up == Upstream::Cohere => {
            models(&ctx)
        }
        // The key endpoints validation uses where the model list is public.
        (Method::GET, "/key") if up == Upstream::OpenRouter => axum::Json(json!({
            "data": {"label": "sk-or-v1-…", "usage": 0, "limit": null, "is_free_tier": false}
        }))
        .into_response(),
        (Method::GET, "/credits") if up == Upstream::Gateway => {
            axum::Json(json!({"balance": "95.50", "total_used": "4.50"})).into_response()
        }
        // The gateway serves Anthropic's Messages API for the models it routes.
        (Method::POST, "/messages") if up == Upstream::Anthropic || up == Upstream::Gateway => {
            anthropic_messages(&ctx, &json_body)
        }
        (Method::POST, "/chat/completions") if up != Upstream::Anthropic => {
            openai_chat(&ctx, &json_body)
        }
        (Method::POST, "/embeddings") if up != Upstream::Anthropic => {
            openai_embeddings(&ctx, &json_body)
        }
        _ => error_response(
            Some(up),
            StatusCode::NOT_FOUND,
            &format!("Unknown request URL: {}", uri.path()),
            None,
        ),
    }
}

struct Ctx {
    shared: Arc<Shared>,
    up: Upstream,
    path: String,
    plan: Plan,
    drop_after: Option<usize>,
}

impl Ctx {
    fn bad_request(&self, message: &str) -> Response {
        error_response(Some(self.up), StatusCode::BAD_REQUEST, message, None)
    }

    fn usage(&self, request: &Value) -> (u64, u64) {
        self.plan
            .usage
            .unwrap_or_else(|| (prompt_words(request), words(&self.plan.reply).max(1)))
    }
}

/// The presented credential and whether it came in the header this upstream
/// authenticates with.
fn credential(up: Option<Upstream>, headers: &HeaderMap) -> (String, bool) {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if up == Some(Upstream::Bedrock) {
        let akid = get("authorization")
            .and_then(|v| {
                let (_, rest) = v.split_once("Credential=")?;
                rest.split_once('/').map(|(id, _)| id.to_owned())
            })
            .unwrap_or_default();
        return (akid, true);
    }
    let bearer = get("authorization").and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
    });
    let x_api_key = get("x-api-key");
    let (right, fallback) = match up {
        Some(Upstream::Anthropic) => (x_api_key, bearer),
        Some(Upstream::Google) => (bearer.or_else(|| get("x-goog-api-key")), x_api_key),
        _ => (bearer, x_api_key),
    };
    match right {
        Some(key) => (key, true),
        None => (fallback.unwrap_or_default(), false),
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// The provider's error JSON: Anthropic's `{"type":"error","error":{…}}`, or
/// OpenAI's `{"error":{"message","type","param","code"}}` for every other
/// prefix (and unknown paths).
fn error_response(
    up: Option<Upstream>,
    status: StatusCode,
    message: &str,
    retry_after: Option<u64>,
) -> Response {
    let (openai_type, openai_code, anthropic_type) = match status.as_u16() {
        400 => (
            "invalid_request_error",
            Value::Null,
            "invalid_request_error",
        ),
        401 => (
            "invalid_request_error",
            json!("invalid_api_key"),
            "authentication_error",
        ),
        403 => ("permission_error", Value::Null, "permission_error"),
        404 => (
            "invalid_request_error",
            json!("not_found"),
            "not_found_error",
        ),
        413 => ("invalid_request_error", Value::Null, "request_too_large"),
        429 => ("requests", json!("rate_limit_exceeded"), "rate_limit_error"),
        503 | 529 => ("server_error", json!("overloaded"), "overloaded_error"),
        _ => ("server_error", Value::Null, "api_error"),
    };
    let body = if up == Some(Upstream::Anthropic) {
        json!({"type": "error", "error": {"type": anthropic_type, "message": message}})
    } else {
        json!({"error": {
            "message": message,
            "type": openai_type,
            "param": null,
            "code": openai_code,
        }})
    };
    let mut response = json_response(status, &body);
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn models(ctx: &Ctx) -> Response {
    let ids = ctx.shared.models(ctx.up);
    let body = if ctx.up == Upstream::Anthropic {
        let data: Vec<Value> = ids
            .iter()
            .map(|id| {
                json!({
                    "type": "model",
                    "id": id,
                    "display_name": id,
                    "created_at": "2025-01-01T00:00:00Z",
                })
            })
            .collect();
        json!({
            "data": data,
            "has_more": false,
            "first_id": ids.first(),
            "last_id": ids.last(),
        })
    } else {
        let data: Vec<Value> = ids
            .iter()
            .map(|id| {
                json!({
                    "id": id,
                    "object": "model",
                    "created": 1_700_000_000,
                    "owned_by": ctx.up.owner(),
                })
            })
            .collect();
        json!({"object": "list", "data": data})
    };
    json_response(StatusCode::OK, &body)
}

/// OpenAI's embeddings: one 8-value vector per input (a string, or an
/// array of strings or token arrays); usage counts a token per word (or
/// per token given).
fn openai_embeddings(ctx: &Ctx, request: &Value) -> Response {
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if model.is_empty() {
        return ctx.bad_request("you must provide a model parameter");
    }
    let inputs: Vec<Value> = match request.get("input") {
        Some(Value::String(s)) => vec![Value::String(s.clone())],
        Some(Value::Array(items)) if !items.is_empty() => items.clone(),
        _ => return ctx.bad_request("'input' : input must be a string or an array"),
    };
    let tokens: u64 = inputs
        .iter()
        .map(|i| match i {
            Value::String(s) => words(s),
            Value::Array(t) => u64::try_from(t.len()).unwrap_or(u64::MAX),
            _ => 1,
        })
        .sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, _)| {
            let seed = f64::from(u32::try_from(index).unwrap_or(0));
            let vector: Vec<f64> = (0..8).map(|d| (seed + f64::from(d)) / 10.0).collect();
            json!({"object": "embedding", "index": index, "embedding": vector})
        })
        .collect();
    axum::Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}

fn openai_chat(ctx: &Ctx, request: &Value) -> Response {
    if !request.is_object() {
        return ctx.bad_request("We could not parse the JSON body of your request.");
    }
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if model.is_empty() {
        return ctx.bad_request("you must provide a model parameter");
    }
    if !request.get("messages").is_some_and(Value::is_array) {
        return ctx.bad_request("Missing required parameter: 'messages'.");
    }
    let stream = request.get("stream") == Some(&Value::Bool(true));
    let stream_options = request.get("stream_options").filter(|v| !v.is_null());
    if stream_options.is_some() && !stream {
        return ctx.bad_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        );
    }
    let include_usage = stream_options
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let id = format!("chatcmpl-standin{:06}", ctx.shared.next_id());
    let created = unix_now();
    let (prompt, completion) = ctx.usage(request);
    let usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    });

    if !stream {
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": ctx.plan.reply, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage,
            "system_fingerprint": null,
        });
        return json_body_or_drop(ctx, &body);
    }

    let chunk = |choices: Value, usage: Option<&Value>| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if include_usage {
            chunk["usage"] = usage.cloned().unwrap_or(Value::Null);
        }
        format!("data: {chunk}\n\n")
    };
    let mut steps = Vec::new();
    for (i, piece) in split_text(&ctx.plan.reply, ctx.plan.chunks)
        .into_iter()
        .enumerate()
    {
        let delta = if i == 0 {
            json!({"role": "assistant", "content": piece})
        } else {
            json!({"content": piece})
        };
        steps.push(Step::content(
            chunk(
                json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]),
                None,
            ),
            if i == 0 {
                Duration::ZERO
            } else {
                ctx.plan.delay
            },
        ));
    }
    steps.push(Step::event(chunk(
        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]),
        None,
    )));
    if include_usage {
        steps.push(Step::event(chunk(json!([]), Some(&usage))));
    }
    steps.push(Step::event("data: [DONE]\n\n".to_owned()));
    sse_response(ctx, steps)
}

fn anthropic_messages(ctx: &Ctx, request: &Value) -> Response {
    if !request.is_object() {
        return ctx.bad_request("There was an issue with your request body: invalid JSON");
    }
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if model.is_empty() {
        return ctx.bad_request("model: Field required");
    }
    if !request.get("messages").is_some_and(Value::is_array) {
        return ctx.bad_request("messages: Field required");
    }
    if !request.get("max_tokens").is_some_and(Value::is_u64) {
        return ctx.bad_request("max_tokens: Field required");
    }
    let tool_name = request
        .get("tools")
        .and_then(Value::as_array)
        .and_then(|tools| tools.first())
        .map(|tool| {
            tool.get("name")
                .and_then(Value::as_str)
                .unwrap_or("tool")
                .to_owned()
        });
    let stream = request.get("stream") == Some(&Value::Bool(true));
    let seq = ctx.shared.next_id();
    let id = format!("msg_standin{seq:06}");
    let tool_id = format!("toolu_standin{seq:06}");
    let (prompt, completion) = ctx.usage(request);
    let stop_reason = if tool_name.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };

    if !stream {
        let mut content = vec![json!({"type": "text", "text": ctx.plan.reply})];
        if let Some(name) = &tool_name {
            content.push(json!({
                "type": "tool_use",
                "id": tool_id,
                "name": name,
                "input": ctx.plan.tool_input,
            }));
        }
        let body = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": {"input_tokens": prompt, "output_tokens": completion},
        });
        return json_body_or_drop(ctx, &body);
    }

    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let delay = |i: usize| {
        if i == 0 {
            Duration::ZERO
        } else {
            ctx.plan.delay
        }
    };
    let mut steps = vec![
        Step::event(event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": prompt, "output_tokens": 1},
            }}),
        )),
        Step::event(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        )),
        Step::event(event("ping", json!({"type": "ping"}))),
    ];
    let pieces = split_text(&ctx.plan.reply, ctx.plan.chunks);
    let text_chunks = pieces.len();
    for (i, piece) in pieces.into_iter().enumerate() {
        steps.push(Step::content(
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                       "delta": {"type": "text_delta", "text": piece}}),
            ),
            delay(i),
        ));
    }
    steps.push(Step::event(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    )));
    if let Some(name) = &tool_name {
        steps.push(Step::event(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1,
                   "content_block": {"type": "tool_use", "id": tool_id, "name": name, "input": {}}}),
        )));
        for (i, part) in split_text(&ctx.plan.tool_input.to_string(), 3)
            .into_iter()
            .enumerate()
        {
            steps.push(Step::content(
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 1,
                           "delta": {"type": "input_json_delta", "partial_json": part}}),
                ),
                delay(text_chunks + i),
            ));
        }
        steps.push(Step::event(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        )));
    }
    steps.push(Step::event(event(
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": stop_reason, "stop_sequence": null},
               "usage": {"output_tokens": completion}}),
    )));
    steps.push(Step::event(event(
        "message_stop",
        json!({"type": "message_stop"}),
    )));
    sse_response(ctx, steps)
}

// ---- streaming --------------------------------------------------------

/// One write of a streamed body.
struct Step {
    bytes: String,
    delay: Duration,
    content: bool,
}

impl Step {
    fn content(bytes: String, delay: Duration) -> Self {
        Self {
            bytes,
            delay,
            content: true,
        }
    }

    fn event(bytes: String) -> Self {
        Self {
            bytes,
            delay: Duration::ZERO,
            content: false,
        }
    }
}

fn sse_response(ctx: &Ctx, steps: Vec<Step>) -> Response {
    let id = ctx.shared.begin_stream(&ctx.path);
    let body = spawn_body(Arc::clone(&ctx.shared), steps, ctx.drop_after, Some(id));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A JSON body, or (under [`Failure::DropMidStream`]) half of it and an abort.
fn json_body_or_drop(ctx: &Ctx, body: &Value) -> Response {
    if ctx.drop_after.is_none() {
        return json_response(StatusCode::OK, body);
    }
    let text = body.to_string();
    let half = split_text(&text, 2).into_iter().next().unwrap_or_default();
    let steps = vec![Step::content(half, Duration::ZERO)];
    let body = spawn_body(Arc::clone(&ctx.shared), steps, Some(1), None);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// A body fed by a producer task through a channel: when the client goes
/// away the server drops the body, the channel closes, and the producer
/// notices (on its next send, or at once while it waits between chunks).
fn spawn_body(
    shared: Arc<Shared>,
    steps: Vec<Step>,
    drop_after: Option<usize>,
    stream_id: Option<u64>,
) -> Body {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(1);
    tokio::spawn(produce(shared, tx, steps, drop_after, stream_id));
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

async fn produce(
    shared: Arc<Shared>,
    tx: mpsc::Sender<io::Result<Bytes>>,
    steps: Vec<Step>,
    drop_after: Option<usize>,
    id: Option<u64>,
) {
    let finish = |outcome| shared.with_stream(id, |s| s.outcome = outcome);
    let total_content = steps.iter().filter(|s| s.content).count();
    let drop_at = drop_after.map(|n| n.min(total_content));
    let mut content_sent = 0;
    for step in steps {
        if !step.delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(step.delay) => {}
                () = tx.closed() => return finish(StreamOutcome::Cancelled),
                () = shared.stopped() => {
                    let _ = tx.send(Err(io::Error::other("the stand-in stopped"))).await;
                    return finish(StreamOutcome::Stopped);
                }
            }
        }
        if let Some(at) = drop_at
            && content_sent >= at
            && (step.content || content_sent == total_content)
        {
            abort(&tx).await;
            return finish(StreamOutcome::Dropped);
        }
        if tx.send(Ok(Bytes::from(step.bytes))).await.is_err() {
            return finish(StreamOutcome::Cancelled);
        }
        let now = Instant::now();
        shared.with_stream(id, |s| {
            s.first_chunk_at.get_or_insert(now);
            s.last_chunk_at = Some(now);
            s.events_sent += 1;
            if step.content {
                s.content_chunks_sent += 1;
            }
        });
        if step.content {
            content_sent += 1;
        }
    }
    if drop_at.is_some() {
        abort(&tx).await;
        return finish(StreamOutcome::Dropped);
    }
    finish(StreamOutcome::Completed);
}

/// Ends the body with an error, which makes the server abort the connection
/// (no terminating chunk), after a moment for what was sent to be flushed.
async fn abort(tx: &mpsc::Sender<io::Result<Bytes>>) {
    tokio::time::sleep(FLUSH_GRACE).await;
    let error = io::Error::new(
        io::ErrorKind::ConnectionReset,
        "stand-in: dropped mid-stream",
    );
    let _ = tx.send(Err(error)).await;
}

// ---- text helpers -----------------------------------------------------

/// `text` in `n` pieces of (nearly) equal length, split on characters: at
/// least one piece, at most one per character.
fn split_text(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let len = chars.len();
    let n = n.clamp(1, len.max(1));
    (0..n)
        .map(|i| chars[i * len / n..(i + 1) * len / n].iter().collect())
        .collect()
}

fn words(text: &str) -> u64 {
    u64::try_from(text.split_whitespace().count()).unwrap_or(u64::MAX)
}

/// Words of the text of `messages` (string contents and `text` parts) and
/// of Anthropic's `system`; at least 1.
fn prompt_words(request: &Value) -> u64 {
    fn text_words(content: &Value) -> u64 {
        match content {
            Value::String(s) => words(s),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(words)
                .sum(),
            _ => 0,
        }
    }
    let messages: u64 = request
        .get("messages")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m.get("content"))
                .map(text_words)
                .sum()
        })
        .unwrap_or(0);
    let system = request.get("system").map_or(0, text_words);
    (messages + system).max(1)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::Client;

    const OPENAI_KEY: &str = "sk-proj-standin-user-0001";
    const ANTHROPIC_KEY: &str = "sk-ant-api03-standin-user-0001";

    /// Events of an SSE body with their arrival time, and how it ended.
    struct Sse {
        events: Vec<(Instant, String)>,
        error: Option<reqwest::Error>,
    }

    impl Sse {
        fn texts(&self) -> Vec<&str> {
            self.events.iter().map(|(_, e)| e.as_str()).collect()
        }

        /// The JSON of each OpenAI `data:` line but `[DONE]`.
        fn openai_chunks(&self) -> Vec<Value> {
            self.texts()
                .into_iter()
                .filter_map(|e| e.strip_prefix("data: "))
                .filter(|d| *d != "[DONE]")
                .map(|d| serde_json::from_str(d).expect("chunk JSON"))
                .collect()
        }

        /// `(event name, data JSON)` of each Anthropic event.
        fn anthropic_events(&self) -> Vec<(String, Value)> {
            self.texts()
                .into_iter()
                .map(|e| {
                    let (name, data) = e.split_once('\n').expect("two lines");
                    let name = name.strip_prefix("event: ").expect("event line");
                    let data = data.strip_prefix("data: ").expect("data line");
                    (
                        name.to_owned(),
                        serde_json::from_str(data).expect("event JSON"),
                    )
                })
                .collect()
        }
    }

    async fn read_sse(mut response: reqwest::Response) -> Sse {
        let mut buf = String::new();
        let mut events = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(bytes)) => {
                    let now = Instant::now();
                    buf.push_str(std::str::from_utf8(&bytes).expect("utf-8 chunk"));
                    while let Some(end) = buf.find("\n\n") {
                        events.push((now, buf[..end].to_owned()));
                        buf.drain(..end + 2);
                    }
                }
                Ok(None) => {
                    return Sse {
                        events,
                        error: None,
                    };
                }
                Err(e) => {
                    return Sse {
                        events,
                        error: Some(e),
                    };
                }
            }
        }
    }

    fn openai_request(model: &str, stream: bool) -> Value {
        json!({
            "model": model,
            "stream": stream,
            "messages": [{"role": "user", "content": "say hello to me"}],
        })
    }

    fn anthropic_request(stream: bool) -> Value {
        json!({
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 64,
            "stream": stream,
            "messages": [{"role": "user", "content": "say hello"}],
        })
    }

    async fn post_openai(base: &str, key: &str, body: &Value) -> reqwest::Response {
        Client::new()
            .post(format!("{base}/chat/completions"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("send")
    }

    async fn post_anthropic(standin: &StandIn, key: &str, body: &Value) -> reqwest::Response {
        Client::new()
            .post(format!("{}/messages", standin.anthropic_base()))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
            .await
            .expect("send")
    }

    #[tokio::test]
    async fn openai_stream_sends_chunks_in_order_spaced_and_ends_with_done() {
        let standin = StandIn::start().await;
        let sent_at = Instant::now();
        let response = post_openai(
            &standin.openai_base(),
            OPENAI_KEY,
            &openai_request("gpt-4o-mini", true),
        )
        .await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE.as_str()],
            "text/event-stream"
        );
        let sse = read_sse(response).await;
        assert!(sse.error.is_none(), "{:?}", sse.error);
        assert_eq!(sse.texts().last(), Some(&"data: [DONE]"));

        let chunks = sse.openai_chunks();
        assert_eq!(chunks.len(), DEFAULT_CHUNKS + 1, "content chunks + finish");
        let expected = standin.reply_chunks();
        assert_eq!(expected.len(), DEFAULT_CHUNKS);
        for (chunk, piece) in chunks.iter().zip(&expected) {
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["model"], "gpt-4o-mini");
            assert_eq!(chunk["choices"][0]["delta"]["content"], piece.as_str());
            assert!(chunk["choices"][0]["finish_reason"].is_null());
            assert!(chunk.get("usage").is_none(), "no usage unless asked");
        }
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(
            chunks[DEFAULT_CHUNKS]["choices"][0]["finish_reason"],
            "stop"
        );
        let text: String = expected.concat();
        assert_eq!(text, DEFAULT_REPLY);

        // Spacing: the first chunk at once, then one delay between chunks.
        let arrivals: Vec<Instant> = sse.events.iter().map(|(t, _)| *t).collect();
        assert!(arrivals[0] - sent_at < Duration::from_secs(1));
        let spread = arrivals[DEFAULT_CHUNKS - 1] - arrivals[0];
        assert!(
            spread >= DEFAULT_CHUNK_DELAY * 3,
            "chunks arrived within {spread:?}"
        );
        assert!(arrivals.windows(2).all(|w| w[0] <= w[1]));
        assert!(
            standin
                .wait_until(Duration::from_secs(2), |s| s.completed_streams() == 1)
                .await
        );
        assert_eq!(standin.streams()[0].content_chunks_sent, DEFAULT_CHUNKS);
    }

    #[tokio::test]
    async fn include_usage_adds_a_final_usage_chunk_and_non_stream_has_usage() {
        let standin = StandIn::start().await;
        let mut request = openai_request("gpt-4o-mini", true);
        request["stream_options"] = json!({"include_usage": true});
        let sse = read_sse(post_openai(&standin.openai_base(), OPENAI_KEY, &request).await).await;
        let chunks = sse.openai_chunks();
        let last = chunks.last().expect("chunks");
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["prompt_tokens"], 4);
        assert_eq!(last["usage"]["completion_tokens"], 4);
        assert_eq!(last["usage"]["total_tokens"], 8);
        assert!(
            chunks[..chunks.len() - 1]
                .iter()
                .all(|c| c["usage"].is_null())
        );
        assert_eq!(sse.texts().last(), Some(&"data: [DONE]"));

        // stream_options without stream is refused, as OpenAI does.
        request["stream"] = json!(false);
        let refused = post_openai(&standin.openai_base(), OPENAI_KEY, &request).await;
        assert_eq!(refused.status(), 400);

        let response = post_openai(
            &standin.groq_base(),
            "gsk_standin_user_0001",
            &openai_request("llama-3.1-8b-instant", false),
        )
        .await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "llama-3.1-8b-instant");
        assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_REPLY);
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["total_tokens"], 8);
    }

    #[tokio::test]
    async fn anthropic_stream_has_the_real_event_shape() {
        let standin = StandIn::start().await;
        standin.set_usage(Some((11, 7)));
        let response = post_anthropic(&standin, ANTHROPIC_KEY, &anthropic_request(true)).await;
        assert_eq!(response.status(), 200);
        let sse = read_sse(response).await;
        assert!(sse.error.is_none());
        let events = sse.anthropic_events();
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        let mut expected = vec!["message_start", "content_block_start", "ping"];
        expected.extend(["content_block_delta"; DEFAULT_CHUNKS]);
        expected.extend(["content_block_stop", "message_delta", "message_stop"]);
        assert_eq!(names, expected);
        for (name, data) in &events {
            assert_eq!(data["type"], name.as_str());
        }
        assert_eq!(events[0].1["message"]["model"], "claude-3-5-haiku-latest");
        assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 11);
        assert_eq!(events[1].1["content_block"]["type"], "text");
        let text: String = events
            .iter()
            .filter(|(n, _)| n == "content_block_delta")
            .map(|(_, d)| {
                assert_eq!(d["delta"]["type"], "text_delta");
                d["delta"]["text"].as_str().expect("text").to_owned()
            })
            .collect();
        assert_eq!(text, DEFAULT_REPLY);
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert_eq!(delta["usage"]["output_tokens"], 7);

        let response = post_anthropic(&standin, ANTHROPIC_KEY, &anthropic_request(false)).await;
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["type"], "message");
        assert_eq!(body["content"][0]["text"], DEFAULT_REPLY);
        assert_eq!(body["stop_reason"], "end_turn");
        assert_eq!(
            body["usage"],
            json!({"input_tokens": 11, "output_tokens": 7})
        );
    }

    #[tokio::test]
    async fn anthropic_tool_use_is_scripted_when_the_request_has_tools() {
        let standin = StandIn::start().await;
        standin.set_tool_input(json!({"city": "Paris", "unit": "celsius"}));
        let mut request = anthropic_request(true);
        request["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
        let sse = read_sse(post_anthropic(&standin, ANTHROPIC_KEY, &request).await).await;
        let events = sse.anthropic_events();
        let start = events
            .iter()
            .find(|(n, d)| n == "content_block_start" && d["index"] == 1)
            .expect("tool_use block");
        assert_eq!(start.1["content_block"]["type"], "tool_use");
        assert_eq!(start.1["content_block"]["name"], "get_weather");
        let json_parts: Vec<&str> = events
            .iter()
            .filter(|(_, d)| d["delta"]["type"] == "input_json_delta")
            .map(|(_, d)| d["delta"]["partial_json"].as_str().expect("part"))
            .collect();
        assert!(json_parts.len() > 1);
        let input: Value = serde_json::from_str(&json_parts.concat()).expect("tool input");
        assert_eq!(input, json!({"city": "Paris", "unit": "celsius"}));
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        assert_eq!(events.last().expect("events").0, "message_stop");

        request["stream"] = json!(false);
        let body: Value = post_anthropic(&standin, ANTHROPIC_KEY, &request)
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(body["content"][1]["type"], "tool_use");
        assert_eq!(body["content"][1]["input"]["unit"], "celsius");
        assert_eq!(body["stop_reason"], "tool_use");
    }

    #[tokio::test]
    async fn bad_keys_get_401_in_the_providers_shape() {
        let standin = StandIn::start().await;
        let response = post_openai(
            &standin.openai_base(),
            "sk-proj-bad-key-000000",
            &openai_request("gpt-4o-mini", true),
        )
        .await;
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("message")
                .contains(LEAK_CANARY)
        );

        let response =
            post_anthropic(&standin, "sk-ant-bad-000000", &anthropic_request(false)).await;
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "authentication_error");

        // Anthropic wants x-api-key, not Bearer, and anthropic-version.
        let response = Client::new()
            .post(format!("{}/chat/completions", standin.anthropic_base()))
            .header("x-api-key", ANTHROPIC_KEY)
            .header("anthropic-version", "2023-06-01")
            .json(&anthropic_request(false))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 404, "no chat/completions on Anthropic");
        let response = Client::new()
            .post(format!("{}/messages", standin.anthropic_base()))
            .bearer_auth(ANTHROPIC_KEY)
            .header("anthropic-version", "2023-06-01")
            .json(&anthropic_request(false))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 401);
        let response = Client::new()
            .post(format!("{}/messages", standin.anthropic_base()))
            .header("x-api-key", ANTHROPIC_KEY)
            .json(&anthropic_request(false))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 400);

        // Models: listed with a good key, 401 with a refused one.
        let models: Value = Client::new()
            .get(format!("{}/models", standin.xai_base()))
            .bearer_auth("xai-standin-user-0001")
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        assert_eq!(models["object"], "list");
        assert_eq!(models["data"][0]["id"], "grok-3-mini");
        standin.accept_keys(["xai-only-this-one"]);
        let refused = Client::new()
            .get(format!("{}/models", standin.xai_base()))
            .bearer_auth("xai-standin-user-0001")
            .send()
            .await
            .expect("send");
        assert_eq!(refused.status(), 401);
        let accepted = Client::new()
            .get(format!("{}/models", standin.xai_base()))
            .bearer_auth("xai-only-this-one")
            .send()
            .await
            .expect("send");
        assert_eq!(accepted.status(), 200);
        standin.accept_default_keys();
        let models: Value = Client::new()
            .get(format!("{}/models", standin.anthropic_base()))
            .header("x-api-key", ANTHROPIC_KEY)
            .header("anthropic-version", "2023-06-01")
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        assert_eq!(models["data"][0]["type"], "model");
    }

    #[tokio::test]
    async fn fail_next_answers_scripted_statuses_once_each_in_order() {
        let standin = StandIn::start().await;
        standin.fail_next(Failure::Status(429, Some(7)));
        standin.fail_next(Failure::Status(500, None));
        let request = openai_request("openai/gpt-4o-mini", true);

        let first = post_openai(&standin.openrouter_base(), "sk-or-v1-user", &request).await;
        assert_eq!(first.status(), 429);
        assert_eq!(first.headers()["retry-after"], "7");
        let body: Value = first.json().await.expect("json");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert!(body.to_string().contains(LEAK_CANARY));

        let second = post_openai(&standin.openrouter_base(), "sk-or-v1-user", &request).await;
        assert_eq!(second.status(), 500);
        assert!(second.headers().get("retry-after").is_none());
        assert!(second.text().await.expect("text").contains(LEAK_CANARY));

        let third = post_openai(&standin.openrouter_base(), "sk-or-v1-user", &request).await;
        assert_eq!(third.status(), 200);
        drop(read_sse(third).await);

        standin.fail_always(Failure::Status(529, None));
        for _ in 0..2 {
            let response = post_anthropic(&standin, ANTHROPIC_KEY, &anthropic_request(false)).await;
            assert_eq!(response.status(), 529);
            let body: Value = response.json().await.expect("json");
            assert_eq!(body["error"]["type"], "overloaded_error");
            assert!(body.to_string().contains(LEAK_CANARY));
        }
        standin.clear_failures();
        let response = post_anthropic(&standin, ANTHROPIC_KEY, &anthropic_request(false)).await;
        assert_eq!(response.status(), 200);
    }

    #[tokio::test]
    async fn drop_mid_stream_closes_the_connection_without_done() {
        let standin = StandIn::start().await;
        standin.fail_next(Failure::DropMidStream { after_chunks: 2 });
        let response = post_openai(
            &standin.openai_base(),
            OPENAI_KEY,
            &openai_request("gpt-4o-mini", true),
        )
        .await;
        assert_eq!(response.status(), 200);
        let sse = read_sse(response).await;
        assert!(sse.error.is_some(), "the body must end in an error");
        assert_eq!(sse.openai_chunks().len(), 2);
        assert!(!sse.texts().contains(&"data: [DONE]"));
        assert!(
            standin
                .wait_until(Duration::from_secs(2), |s| s.dropped_streams() == 1)
                .await
        );

        // Anthropic: the preamble, one delta, then the abort.
        standin.fail_next(Failure::DropMidStream { after_chunks: 1 });
        let sse =
            read_sse(post_anthropic(&standin, ANTHROPIC_KEY, &anthropic_request(true)).await).await;
        assert!(sse.error.is_some());
        let names: Vec<String> = sse.anthropic_events().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta"
            ]
        );

        // Non-streaming: half a JSON body.
        standin.fail_next(Failure::DropMidStream { after_chunks: 0 });
        let response = post_openai(
            &standin.openai_base(),
            OPENAI_KEY,
            &openai_request("gpt-4o-mini", false),
        )
        .await;
        assert!(response.text().await.is_err());
    }

    #[tokio::test]
    async fn hang_never_answers_and_slow_first_byte_answers_late() {
        let standin = StandIn::start().await;
        standin.fail_next(Failure::Hang);
        let client = Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .expect("client");
        let started = Instant::now();
        let error = client
            .post(format!("{}/chat/completions", standin.xai_base()))
            .bearer_auth("xai-standin-user-0001")
            .json(&openai_request("grok-3-mini", false))
            .send()
            .await
            .expect_err("a hang must time out");
        assert!(error.is_timeout(), "{error:?}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(standin.count("/chat/completions"), 1);

        standin.fail_next(Failure::SlowFirstByte(Duration::from_millis(150)));
        let started = Instant::now();
        let response = post_openai(
            &standin.openai_base(),
            OPENAI_KEY,
            &openai_request("gpt-4o-mini", false),
        )
        .await;
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(response.status(), 200);
    }

    #[tokio::test]
    async fn a_client_dropping_mid_stream_is_detected_as_cancelled() {
        let standin = StandIn::start().await;
        standin.set_reply("word ".repeat(60));
        standin.set_chunks(50);
        let mut response = post_openai(
            &standin.openai_base(),
            OPENAI_KEY,
            &openai_request("gpt-4o-mini", true),
        )
        .await;
        let first = response.chunk().await.expect("chunk").expect("some chunk");
        assert!(first.starts_with(b"data: "));
        drop(response);
        assert!(
            standin
                .wait_until(Duration::from_secs(3), |s| s.cancelled_streams() == 1)
                .await,
            "{:?}",
            standin.streams()
        );
        assert_eq!(standin.completed_streams(), 0);
        assert!(standin.streams()[0].content_chunks_sent < 50);
        assert!(standin.stream_finished_at().is_empty());
    }

    #[tokio::test]
    async fn the_client_sees_the_first_token_before_the_upstream_finishes() {
        let standin = StandIn::start().await;
        let mut response = post_openai(
            &standin.gateway_base(),
            "vck_standin_user_0001",
            &openai_request("openai/gpt-4o-mini", true),
        )
        .await;
        response.chunk().await.expect("chunk").expect("first chunk");
        let first_seen = Instant::now();
        drop(read_sse(response).await);
        let finished = standin.stream_finished_at();
        assert_eq!(finished.len(), 1);
        assert!(first_seen < finished[0]);
    }

    #[tokio::test]
    async fn requests_are_recorded_with_key_model_and_headers() {
        let standin = StandIn::start().await;
        let response = post_openai(
            &standin.google_base(),
            "AIzaStandinUser0001",
            &openai_request("gemini-2.0-flash", false),
        )
        .await;
        assert_eq!(response.status(), 200);
        let response = post_anthropic(&standin, ANTHROPIC_KEY, &anthropic_request(false)).await;
        assert_eq!(response.status(), 200);

        let requests = standin.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].upstream, Some(Upstream::Google));
        assert_eq!(requests[0].path, "/google/v1beta/openai/chat/completions");
        assert_eq!(requests[0].key, "AIzaStandinUser0001");
        assert_eq!(requests[0].model, "gemini-2.0-flash");
        assert_eq!(requests[0].method, Method::POST);
        assert_eq!(
            requests[0].body["messages"][0]["content"],
            "say hello to me"
        );
        assert_eq!(requests[1].upstream, Some(Upstream::Anthropic));
        assert_eq!(requests[1].key, ANTHROPIC_KEY);
        assert_eq!(requests[1].model, "claude-3-5-haiku-latest");
        assert_eq!(requests[1].headers["anthropic-version"], "2023-06-01");
        assert!(requests[0].received_at <= requests[1].received_at);
        assert_eq!(standin.count("/chat/completions"), 1);
        assert_eq!(standin.count("/messages"), 1);
        standin.clear();
        assert!(standin.requests().is_empty());
        assert_eq!(standin.count(""), 0);
    }

    #[tokio::test]
    async fn shutdown_stops_the_server() {
        let standin = StandIn::start().await;
        let base = standin.openai_base();
        standin.shutdown().await;
        let result = Client::new()
            .get(format!("{base}/models"))
            .bearer_auth(OPENAI_KEY)
            .send()
            .await;
        assert!(result.is_err());
    }

    #[test]
    fn text_splits_into_even_pieces_and_prefixes_route() {
        assert_eq!(split_text("abcdef", 3), ["ab", "cd", "ef"]);
        assert_eq!(split_text("ab", 5), ["a", "b"]);
        assert_eq!(split_text("", 5), [""]);
        assert_eq!(split_text("abc", 0), ["abc"]);
        assert_eq!(
            Upstream::from_path("/groq/v1/chat/completions"),
            Some((Upstream::Groq, "/chat/completions"))
        );
        assert_eq!(Upstream::from_path("/groqx/v1/models"), None);
    }
}

// ---- Google OAuth (service accounts) -----------------------------------

/// The token endpoint's state: the accounts whose signatures it accepts,
/// the access tokens it issued (accepted as bearers by every upstream).
#[derive(Default)]
struct OAuth {
    accounts: HashMap<String, Vec<u8>>,
    /// AWS access keys: id → (secret, session token).
    aws: HashMap<String, (String, Option<String>)>,
    issued: HashSet<String>,
    exchanges: u64,
    lifetime: Option<u64>,
}

/// A throwaway Google service account: a fresh RSA key, its email.
pub struct TestServiceAccount {
    pub email: String,
    pub key_id: String,
    pub private_key_pem: String,
    /// PKCS#1 DER, what the token endpoint verifies with.
    pub public_key: Vec<u8>,
}

impl TestServiceAccount {
    pub fn generate(email: &str) -> Self {
        use aws_lc_rs::encoding::AsDer as _;
        use aws_lc_rs::signature::KeyPair as _;
        use base64::Engine as _;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("an RSA key");
        let der = pair.as_der().expect("PKCS#8");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let body: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
            .collect();
        let public_key = pair.public_key().as_ref().to_vec();
        let key_id = public_key
            .iter()
            .rev()
            .take(20)
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            email: email.to_owned(),
            key_id,
            private_key_pem: format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                body.join("\n")
            ),
            public_key,
        }
    }

    /// The fields of its JSON key file, as Google issues it, plus `location`.
    pub fn key_file(&self, project: &str, location: &str, token_uri: &str) -> Value {
        json!({
            "type": "service_account",
            "project_id": project,
            "private_key_id": self.key_id,
            "private_key": self.private_key_pem,
            "client_email": self.email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "location": location,
        })
    }
}

/// `POST /oauth2/token`: a JWT-bearer grant whose assertion must be signed
/// (RS256) by a known account, for this endpoint, with the cloud-platform
/// scope and a live `exp`; answers an access token as Google does.
fn oauth_token(shared: &Shared, uri: &Uri, body: &Bytes) -> Response {
    use base64::Engine as _;
    let refuse = |why: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": why})),
        )
            .into_response()
    };
    let form: HashMap<String, String> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return refuse("unsupported grant_type");
    }
    let Some(assertion) = form.get("assertion") else {
        return refuse("no assertion");
    };
    let parts: Vec<&str> = assertion.split('.').collect();
    if parts.len() != 3 {
        return refuse("malformed assertion");
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (Ok(header), Ok(claims), Ok(signature)) = (
        b64.decode(parts[0]),
        b64.decode(parts[1]),
        b64.decode(parts[2]),
    ) else {
        return refuse("assertion is not base64url");
    };
    let header: Value = serde_json::from_slice(&header).unwrap_or_default();
    let claims: Value = serde_json::from_slice(&claims).unwrap_or_default();
    if header["alg"] != "RS256" {
        return refuse("alg must be RS256");
    }
    let email = claims["iss"].as_str().unwrap_or_default().to_owned();
    let Some(public_key) = lock(&shared.oauth).accounts.get(&email).cloned() else {
        return refuse("unknown service account");
    };
    let signed = format!("{}.{}", parts[0], parts[1]);
    let verifier = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key,
    );
    if verifier.verify(signed.as_bytes(), &signature).is_err() {
        return refuse("Invalid JWT Signature.");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aud = claims["aud"].as_str().unwrap_or_default();
    let for_here = aud.ends_with(uri.path());
    let scoped = claims["scope"]
        .as_str()
        .is_some_and(|s| s.contains("https://www.googleapis.com/auth/cloud-platform"));
    let live = claims["exp"].as_u64().is_some_and(|exp| exp > now)
        && claims["iat"].as_u64().is_some_and(|iat| iat <= now + 60);
    if !for_here || !scoped || !live {
        return refuse("bad aud, scope or times");
    }
    let mut oauth = lock(&shared.oauth);
    oauth.exchanges += 1;
    let token = format!("ya29.standin-{}-{}", oauth.exchanges, shared.next_id());
    oauth.issued.insert(token.clone());
    let lifetime = oauth.lifetime.unwrap_or(3599);
    axum::Json(json!({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}))
        .into_response()
}

// ---- Amazon Bedrock (SigV4) ---------------------------------------------

/// A Bedrock request: its SigV4 signature recomputed with the registered
/// secret must match, else 403 as Bedrock answers; then Converse,
/// ConverseStream (event-stream frames) or ListFoundationModels.
fn bedrock(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    rest: &str,
) -> Response {
    let refuse = |status: StatusCode, message: &str| {
        (status, axum::Json(json!({ "message": message }))).into_response()
    };
    if let Err(why) = verify_sigv4(shared, method, uri, headers, body) {
        return refuse(StatusCode::FORBIDDEN, why);
    }
    let reply = lock(&shared.script).reply.clone();
    let usage = json!({"inputTokens": 8, "outputTokens": 4, "totalTokens": 12});
    match (method.clone(), rest) {
        (Method::GET, "/foundation-models") => axum::Json(json!({"modelSummaries": [
            {"modelId": "anthropic.claude-3-5-haiku-20241022-v1:0", "providerName": "Anthropic"}
        ]}))
        .into_response(),
        (Method::POST, path) if path.ends_with("/converse") => axum::Json(json!({
            "output": {"message": {"role": "assistant", "content": [{"text": reply}]}},
            "stopReason": "end_turn",
            "usage": usage,
            "metrics": {"latencyMs": 12},
        }))
        .into_response(),
        (Method::POST, path) if path.ends_with("/converse-stream") => {
            let mut events = vec![("messageStart", json!({"role": "assistant"}))];
            let chars: Vec<char> = reply.chars().collect();
            for piece in chars.chunks(4) {
                let text: String = piece.iter().collect();
                events.push((
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 0, "delta": {"text": text}}),
                ));
            }
            events.push(("contentBlockStop", json!({"contentBlockIndex": 0})));
            events.push(("messageStop", json!({"stopReason": "end_turn"})));
            events.push((
                "metadata",
                json!({"usage": usage, "metrics": {"latencyMs": 12}}),
            ));
            let mut bytes = Vec::new();
            for (kind, payload) in events {
                bytes.extend(event_stream_frame(kind, &payload));
            }
            (
                [(header::CONTENT_TYPE, "application/vnd.amazon.eventstream")],
                bytes,
            )
                .into_response()
        }
        _ => refuse(StatusCode::NOT_FOUND, "no such Bedrock operation"),
    }
}

/// One event-stream frame, as Bedrock writes ConverseStream events.
pub fn event_stream_frame(kind: &str, payload: &Value) -> Vec<u8> {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let message = Message::new(payload.to_string().into_bytes())
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("event".into()),
        ))
        .add_header(Header::new(
            ":event-type",
            HeaderValue::String(kind.to_owned().into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut bytes = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&message, &mut bytes)
        .expect("an event-stream frame");
    bytes
}

/// Recomputes the request's SigV4 signature with the secret of the access
/// key it names, over the headers it says it signed; `Err` says why not.
fn verify_sigv4(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), &'static str> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let authorization = get("authorization").ok_or("Missing Authentication Token")?;
    let credential = authorization
        .split_once("Credential=")
        .and_then(|(_, rest)| rest.split_once(','))
        .map(|(c, _)| c)
        .ok_or("malformed Authorization")?;
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[3] != "bedrock" {
        return Err("malformed credential scope");
    }
    let (akid, region) = (scope[0], scope[2]);
    let (secret, token) = lock(&shared.oauth)
        .aws
        .get(akid)
        .cloned()
        .ok_or("The security token included in the request is invalid.")?;
    let signed: Vec<&str> = authorization
        .split_once("SignedHeaders=")
        .and_then(|(_, rest)| rest.split_once(','))
        .map(|(names, _)| names.split(';').collect())
        .ok_or("malformed Authorization")?;
    let given: Vec<(&str, &str)> = signed
        .iter()
        .filter(|name| {
            !matches!(
                **name,
                "x-amz-date" | "x-amz-security-token" | "x-amz-content-sha256"
            )
        })
        .map(|name| (*name, get(name).unwrap_or_default()))
        .collect();
    let date = get("x-amz-date").ok_or("missing x-amz-date")?;
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let when = time::PrimitiveDateTime::parse(date, &format)
        .map_err(|_| "bad x-amz-date")?
        .assume_utc();
    let url = format!(
        "http://{}{}",
        get("host").unwrap_or_default(),
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let expected = byok::upstream::sigv4::signature_headers(
        &byok::upstream::sigv4::SigningKey {
            access_key_id: akid,
            secret_access_key: &secret,
            session_token: token.as_deref(),
        },
        "bedrock",
        region,
        std::time::SystemTime::from(when),
        &byok::upstream::sigv4::Unsigned {
            method: method.as_str(),
            url: &url,
            headers: &given,
            body,
        },
    )
    .map_err(|_| "cannot recompute the signature")?;
    let expected = expected
        .iter()
        .find(|(name, _)| *name == "authorization")
        .map(|(_, v)| v.as_str());
    if expected != Some(authorization) {
        return Err(
            "The request signature we calculated does not match the signature you provided.",
        );
    }
    if token.is_some() && get("x-amz-security-token") != token.as_deref() {
        return Err("The security token included in the request is invalid.");
    }
    Ok(())
}
