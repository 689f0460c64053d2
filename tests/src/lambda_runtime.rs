//! A Lambda Runtime API (2018-06-01) for tests, served on 127.0.0.1 port 0,
//! and a harness that runs a real function binary against it, so functions
//! are exercised exactly as Lambda drives them: the binary long-polls
//! `/runtime/invocation/next`, handles the event, and posts its answer to
//! `/runtime/invocation/{id}/response` (buffered or streamed) or `/error`.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a failed step should stop the test loudly"
)]

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, HttpBody as _};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long [`RuntimeApi::invoke`] waits for the function's answer.
pub const INVOKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Separates the JSON prelude of a streamed response from its body.
pub const STREAM_PRELUDE_SEPARATOR: [u8; 8] = [0; 8];

/// The account and region every invocation claims to come from.
const FUNCTION_ARN_PREFIX: &str = "arn:aws:lambda:us-east-1:123456789012:function:";

/// What a function answered to one invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// A buffered response: the JSON posted to `/response` (a non-JSON body
    /// is kept as a JSON string).
    Response(Value),
    /// A response posted with `Lambda-Runtime-Function-Response-Mode:
    /// streaming`: the JSON prelude before the 8 NUL bytes, and every byte
    /// after them.
    StreamedResponse { prelude: Value, body: Vec<u8> },
    /// The JSON posted to `/error` (`{"errorType", "errorMessage"}` from
    /// lambda_runtime). Also used for a streamed response that ended with
    /// `Lambda-Runtime-Function-Error-*` trailers, and for a streamed body
    /// that broke the protocol (`errorType` starting with `RuntimeApi.`).
    Error(Value),
}

impl Invocation {
    /// The buffered response; panics on anything else.
    pub fn into_response(self) -> Value {
        match self {
            Invocation::Response(value) => value,
            other => panic!("expected a buffered response, got {other:?}"),
        }
    }

    /// The error body; panics on a response.
    pub fn into_error(self) -> Value {
        match self {
            Invocation::Error(value) => value,
            other => panic!("expected an invocation error, got {other:?}"),
        }
    }
}

/// When the pieces of one streamed response reached the Runtime API: each
/// body frame's arrival time and the bytes received so far, prelude and
/// separator included (so a test can tell whether a function streamed its
/// answer or sent it in one piece at the end).
#[derive(Debug, Clone)]
pub struct StreamArrival {
    pub request_id: String,
    /// `(arrival, bytes received up to and including this frame)`, in order.
    pub frames: Vec<(Instant, usize)>,
}

impl StreamArrival {
    /// When the byte at `offset` (counted from the start of the posted body,
    /// prelude included) arrived, if it did.
    pub fn arrival_of(&self, offset: usize) -> Option<Instant> {
        self.frames
            .iter()
            .find(|(_, received)| *received > offset)
            .map(|(at, _)| *at)
    }
}

/// An event waiting for the function to ask for it.
struct Queued {
    event: Value,
    reply: oneshot::Sender<Invocation>,
}

struct Shared {
    queue: mpsc::UnboundedSender<Queued>,
    next: tokio::sync::Mutex<mpsc::UnboundedReceiver<Queued>>,
    /// Events handed out by `/next` and not yet answered, by request id.
    in_flight: Mutex<HashMap<String, oneshot::Sender<Invocation>>>,
    init_errors: Mutex<Vec<Value>>,
    handed_out: AtomicU64,
    /// Frame timings of every streamed response, in the order they ended.
    arrivals: Mutex<Vec<StreamArrival>>,
}

/// A Runtime API server. Each function process needs its own (as on Lambda,
/// where every execution environment has one); events are served in order.
pub struct RuntimeApi {
    address: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl RuntimeApi {
    /// Starts serving on 127.0.0.1 port 0; call inside a Tokio runtime.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let address = listener.local_addr().expect("local address");
        let listener = tokio::net::TcpListener::from_std(listener)
            .expect("RuntimeApi::start must be called inside a Tokio runtime");
        let (queue, next) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue,
            next: tokio::sync::Mutex::new(next),
            in_flight: Mutex::new(HashMap::new()),
            init_errors: Mutex::new(Vec::new()),
            handed_out: AtomicU64::new(0),
            arrivals: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next_event))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(invocation_response),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/error",
                post(invocation_error),
            )
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .fallback(unknown_endpoint)
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            address,
            shared,
            server,
        }
    }

    /// `host:port`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// Queues `event`, and waits (≤ [`INVOKE_TIMEOUT`]) for the function's answer.
    pub async fn invoke(&self, event: Value) -> Invocation {
        let handed_out = self.shared.handed_out.load(Ordering::SeqCst);
        match self.try_invoke(event, INVOKE_TIMEOUT).await {
            Some(answer) => answer,
            None if self.shared.handed_out.load(Ordering::SeqCst) == handed_out => panic!(
                "no function asked for the event within {INVOKE_TIMEOUT:?} (is one running against {}?)",
                self.address
            ),
            None => {
                panic!("the function took the event but did not answer within {INVOKE_TIMEOUT:?}")
            }
        }
    }

    /// Queues `event`, and waits up to `timeout` for the answer; `None` if
    /// none came (the event then stays queued for the next `/next`).
    pub async fn try_invoke(&self, event: Value, timeout: Duration) -> Option<Invocation> {
        let (reply, answer) = oneshot::channel();
        self.shared
            .queue
            .send(Queued { event, reply })
            .expect("the queue lives as long as the server");
        tokio::time::timeout(timeout, answer).await.ok()?.ok()
    }

    /// The first body posted to `/runtime/init/error`, if any.
    pub fn init_error(&self) -> Option<Value> {
        self.shared.init_errors.lock().unwrap().first().cloned()
    }

    /// How many events functions have taken from `/next` so far.
    pub fn handed_out(&self) -> u64 {
        self.shared.handed_out.load(Ordering::SeqCst)
    }

    /// Frame timings of the streamed responses posted so far, in the order
    /// they ended.
    pub fn stream_arrivals(&self) -> Vec<StreamArrival> {
        self.shared.arrivals.lock().unwrap().clone()
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `GET /runtime/invocation/next`: blocks until an event is queued.
async fn next_event(State(shared): State<Arc<Shared>>) -> Response {
    // The receiver is locked for the whole wait, so concurrent pollers queue up.
    let queued = shared.next.lock().await.recv().await;
    let Some(Queued { event, reply }) = queued else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "runtime API shutting down",
        )
            .into_response();
    };
    let n = shared.handed_out.fetch_add(1, Ordering::SeqCst) + 1;
    let request_id = format!("8f5d3b2a-1c4e-4f6a-9b7d-{n:012x}");
    shared
        .in_flight
        .lock()
        .unwrap()
        .insert(request_id.clone(), reply);
    let deadline = now_ms() + INVOKE_TIMEOUT.as_millis() as u64;
    let trace_id = format!(
        "Root=1-{:08x}-{n:024x};Parent={n:016x};Sampled=0",
        deadline / 1000
    );
    let mut response = axum::Json(event).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        ("lambda-runtime-aws-request-id", request_id),
        ("lambda-runtime-deadline-ms", deadline.to_string()),
        (
            "lambda-runtime-invoked-function-arn",
            format!("{FUNCTION_ARN_PREFIX}byok-test"),
        ),
        ("lambda-runtime-trace-id", trace_id),
    ] {
        headers.insert(name, HeaderValue::try_from(value).expect("header value"));
    }
    response
}

/// Delivers `answer` to whoever invoked `id`.
fn complete(shared: &Shared, id: &str, answer: Invocation) -> Response {
    match shared.in_flight.lock().unwrap().remove(id) {
        Some(reply) => {
            let _ = reply.send(answer);
            (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
        }
        None => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "errorMessage": "Invalid request ID",
                "errorType": "InvalidRequestID"
            })),
        )
            .into_response(),
    }
}

/// Reads a whole request body (chunked or not) and its trailers, if any.
async fn read_body(body: Body) -> Result<(Vec<u8>, HeaderMap), axum::Error> {
    read_body_timed(body, &mut Vec::new()).await
}

/// [`read_body`], noting in `frames` when each data frame arrived and how
/// many bytes had arrived with it.
async fn read_body_timed(
    mut body: Body,
    frames: &mut Vec<(Instant, usize)>,
) -> Result<(Vec<u8>, HeaderMap), axum::Error> {
    let mut data = Vec::new();
    let mut trailers = HeaderMap::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        match frame?.into_data() {
            Ok(bytes) => {
                data.extend_from_slice(&bytes);
                frames.push((Instant::now(), data.len()));
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.extend(t);
                }
            }
        }
    }
    Ok((data, trailers))
}

fn json_or_string(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// `POST /runtime/invocation/{id}/response`, buffered or streamed.
async fn invocation_response(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let streaming = header_text(&headers, "lambda-runtime-function-response-mode")
        .is_some_and(|mode| mode.eq_ignore_ascii_case("streaming"));
    let mut frames = Vec::new();
    let read = read_body_timed(body, &mut frames).await;
    if streaming {
        shared.arrivals.lock().unwrap().push(StreamArrival {
            request_id: id.clone(),
            frames,
        });
    }
    let (data, trailers) = match read {
        Ok(read) => read,
        Err(err) => {
            let answer = Invocation::Error(json!({
                "errorType": "RuntimeApi.BodyReadError",
                "errorMessage": err.to_string(),
            }));
            return complete(&shared, &id, answer);
        }
    };
    let answer = if streaming {
        streamed(&data, &trailers)
    } else {
        Invocation::Response(json_or_string(&data))
    };
    complete(&shared, &id, answer)
}

/// Splits a streamed body into prelude and body; error trailers make it an error.
fn streamed(data: &[u8], trailers: &HeaderMap) -> Invocation {
    if let Some(error_type) = header_text(trailers, "lambda-runtime-function-error-type") {
        let raw = header_text(trailers, "lambda-runtime-function-error-body").unwrap_or_default();
        let message = base64::engine::general_purpose::STANDARD
            .decode(raw.trim())
            .map_or(raw.clone(), |b| String::from_utf8_lossy(&b).into_owned());
        return Invocation::Error(json!({
            "errorType": error_type,
            "errorMessage": message,
            "streamedBytes": data.len(),
        }));
    }
    let Some(at) = data
        .windows(STREAM_PRELUDE_SEPARATOR.len())
        .position(|w| w == STREAM_PRELUDE_SEPARATOR)
    else {
        return Invocation::Error(json!({
            "errorType": "RuntimeApi.MissingPrelude",
            "errorMessage": "a streamed response without the 8 NUL bytes after its JSON prelude",
            "body": String::from_utf8_lossy(data),
        }));
    };
    match serde_json::from_slice(&data[..at]) {
        Ok(prelude) => Invocation::StreamedResponse {
            prelude,
            body: data[at + STREAM_PRELUDE_SEPARATOR.len()..].to_vec(),
        },
        Err(err) => Invocation::Error(json!({
            "errorType": "RuntimeApi.BadPrelude",
            "errorMessage": format!("the prelude of a streamed response is not JSON: {err}"),
            "prelude": String::from_utf8_lossy(&data[..at]),
        })),
    }
}

/// `POST /runtime/invocation/{id}/error`.
async fn invocation_error(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> Response {
    let data = read_body(body).await.map(|(d, _)| d).unwrap_or_default();
    complete(&shared, &id, Invocation::Error(json_or_string(&data)))
}

/// `POST /runtime/init/error`.
async fn init_error(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    let data = read_body(body).await.map(|(d, _)| d).unwrap_or_default();
    shared
        .init_errors
        .lock()
        .unwrap()
        .push(json_or_string(&data));
    (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
}

async fn unknown_endpoint() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"errorMessage": "unknown endpoint", "errorType": "NotFound"})),
    )
        .into_response()
}

/// The directory holding the function binaries: `BYOK_FUNCTION_BIN_DIR`,
/// else the profile directory above this test binary's `deps` directory.
pub fn function_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BYOK_FUNCTION_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_owned()
}

/// The binary of function `name` (`keys`, `settings`, `validate`).
pub fn function_bin(name: &str) -> PathBuf {
    let bin = function_bin_dir().join(name);
    assert!(
        bin.is_file(),
        "Lambda function binary {} does not exist: build it first \
         (cargo build --workspace --bins), or point BYOK_FUNCTION_BIN_DIR at it",
        bin.display()
    );
    bin
}

/// A function binary running against a [`RuntimeApi`], as on Lambda.
pub struct FunctionProcess {
    name: String,
    child: Mutex<Option<Child>>,
    output: Arc<Mutex<String>>,
}

impl FunctionProcess {
    /// Starts function `name` with the Lambda environment, pointed at
    /// `runtime`, plus `env` (applied last, so it may override). Nothing
    /// else from the caller's environment is passed but PATH and HOME.
    pub fn start(name: &str, runtime: &RuntimeApi, env: &[(&str, &str)]) -> Self {
        Self::start_bin(&function_bin(name), name, runtime, env)
    }

    /// [`Self::start`] with the binary at `bin` (another build's, say).
    pub fn start_bin(bin: &Path, name: &str, runtime: &RuntimeApi, env: &[(&str, &str)]) -> Self {
        let function_name = format!("byok-{name}");
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", runtime.address())
            .env("AWS_LAMBDA_FUNCTION_NAME", &function_name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env(
                "AWS_LAMBDA_LOG_STREAM_NAME",
                "2025/06/15/[$LATEST]0123456789abcdef0123456789abcdef",
            )
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{function_name}"),
            )
            .env("AWS_REGION", "us-east-1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn function {name}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().expect("stdout"), output.clone());
        collect(child.stderr.take().expect("stderr"), output.clone());
        Self {
            name: name.to_owned(),
            child: Mutex::new(Some(child)),
            output,
        }
    }

    /// Everything the process printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child
            .lock()
            .unwrap()
            .as_ref()
            .map(Child::id)
            .expect("running")
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&self) -> Option<ExitStatus> {
        self.child
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|c| c.try_wait().expect("wait"))
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                // Let the reader threads drain what was printed last.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`RuntimeApi::invoke`], failing at once (with the process's output)
    /// if this process exits before it answers.
    pub async fn invoke(&self, runtime: &RuntimeApi, event: Value) -> Invocation {
        let exited = async {
            loop {
                if let Some(status) = self.try_exit() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        };
        tokio::select! {
            answer = runtime.try_invoke(event, INVOKE_TIMEOUT) => answer.unwrap_or_else(|| panic!(
                "function {} did not answer within {INVOKE_TIMEOUT:?}; output:\n{}",
                self.name,
                self.output()
            )),
            status = exited => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!(
                    "function {} exited ({status}) instead of answering; output:\n{}",
                    self.name,
                    self.output()
                )
            }
        }
    }

    /// Stops the process (SIGTERM, then SIGKILL after 5 s) and returns its
    /// exit status and output.
    pub fn stop(self) -> (ExitStatus, String) {
        let status = self.terminate().expect("running");
        std::thread::sleep(Duration::from_millis(100));
        (status, self.output())
    }

    fn terminate(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap().take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for FunctionProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Appends everything `reader` yields to `output`, on its own thread.
fn collect(mut reader: impl Read + Send + 'static, output: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            output
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Takes the next event as a function would: its request id and body.
    async fn next(client: &reqwest::Client, api: &RuntimeApi) -> (String, Value) {
        let res = client
            .get(format!(
                "http://{}/2018-06-01/runtime/invocation/next",
                api.address()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        for header in [
            "lambda-runtime-deadline-ms",
            "lambda-runtime-invoked-function-arn",
            "lambda-runtime-trace-id",
        ] {
            assert!(res.headers().contains_key(header), "{header}");
        }
        let id = res.headers()["lambda-runtime-aws-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        (id, res.json().await.unwrap())
    }

    /// Posts raw HTTP/1.1 `request_head` + `body` and returns the status line.
    async fn raw_post(api: &RuntimeApi, request: &[u8]) -> String {
        let mut stream = tokio::net::TcpStream::connect(api.address()).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = vec![0u8; 1024];
        let n = stream.read(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    fn chunked(id: &str, chunks: &[&[u8]], trailers: &str) -> Vec<u8> {
        let mut req = format!(
            "POST /2018-06-01/runtime/invocation/{id}/response HTTP/1.1\r\n\
             Host: localhost\r\n\
             Lambda-Runtime-Function-Response-Mode: streaming\r\n\
             Content-Type: application/vnd.awslambda.http-integration-response\r\n\
             Transfer-Encoding: chunked\r\n\
             Trailer: Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body\r\n\
             Connection: close\r\n\r\n"
        )
        .into_bytes();
        for chunk in chunks {
            req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            req.extend_from_slice(chunk);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(format!("0\r\n{trailers}\r\n").as_bytes());
        req
    }

    #[tokio::test]
    async fn buffered_streamed_and_error_answers() {
        let api = Arc::new(RuntimeApi::start());
        let client = reqwest::Client::new();

        // Buffered.
        let invoke = tokio::spawn({
            let api = api.clone();
            async move { api.invoke(json!({"n": 1})).await }
        });
        let (id, event) = next(&client, &api).await;
        assert_eq!(event, json!({"n": 1}));
        let res = client
            .post(format!(
                "http://{}/2018-06-01/runtime/invocation/{id}/response",
                api.address()
            ))
            .body(r#"{"statusCode":200}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        assert_eq!(
            invoke.await.unwrap(),
            Invocation::Response(json!({"statusCode": 200}))
        );

        // Streamed in chunks, the separator split across two of them.
        let invoke = tokio::spawn({
            let api = api.clone();
            async move { api.invoke(json!({"n": 2})).await }
        });
        let (id, _) = next(&client, &api).await;
        let status = raw_post(
            &api,
            &chunked(
                &id,
                &[
                    br#"{"statusCode":200,"headers":{}}"#,
                    b"\0\0\0\0",
                    b"\0\0\0\0data: 1\n\n",
                    b"\0tail",
                ],
                "",
            ),
        )
        .await;
        assert!(status.contains("202"), "{status}");
        assert_eq!(
            invoke.await.unwrap(),
            Invocation::StreamedResponse {
                prelude: json!({"statusCode": 200, "headers": {}}),
                body: b"data: 1\n\n\0tail".to_vec(),
            }
        );
        let arrivals = api.stream_arrivals();
        assert_eq!(arrivals.len(), 1);
        assert_eq!(arrivals[0].request_id, id);
        let received: Vec<usize> = arrivals[0].frames.iter().map(|(_, n)| *n).collect();
        assert_eq!(received.last(), Some(&(31 + 4 + 13 + 5)), "{received:?}");
        assert!(received.windows(2).all(|w| w[0] < w[1]), "{received:?}");
        assert!(arrivals[0].arrival_of(0).is_some());
        assert!(arrivals[0].arrival_of(31 + 4 + 13 + 5).is_none());

        // Streamed, then failed mid-stream with error trailers.
        let invoke = tokio::spawn({
            let api = api.clone();
            async move { api.invoke(json!({"n": 3})).await }
        });
        let (id, _) = next(&client, &api).await;
        let body = base64::engine::general_purpose::STANDARD.encode("boom");
        let trailers = format!(
            "Lambda-Runtime-Function-Error-Type: Runtime.StreamError\r\n\
             Lambda-Runtime-Function-Error-Body: {body}\r\n"
        );
        raw_post(
            &api,
            &chunked(&id, &[b"{}\0\0\0\0\0\0\0\0partial"], &trailers),
        )
        .await;
        let error = invoke.await.unwrap().into_error();
        assert_eq!(error["errorType"], "Runtime.StreamError");
        assert_eq!(error["errorMessage"], "boom");

        // Invocation error, and an unknown request id.
        let invoke = tokio::spawn({
            let api = api.clone();
            async move { api.invoke(json!({"n": 4})).await }
        });
        let (id, _) = next(&client, &api).await;
        let url = |id: &str| {
            format!(
                "http://{}/2018-06-01/runtime/invocation/{id}/error",
                api.address()
            )
        };
        let diagnostic = json!({"errorType": "Oops", "errorMessage": "failed"});
        let res = client
            .post(url(&id))
            .json(&diagnostic)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        assert_eq!(invoke.await.unwrap(), Invocation::Error(diagnostic));
        let res = client.post(url(&id)).body("{}").send().await.unwrap();
        assert_eq!(res.status(), 400, "an answered id is unknown");
        assert_eq!(api.handed_out(), 4);

        // Init error.
        assert_eq!(api.init_error(), None);
        let res = client
            .post(format!(
                "http://{}/2018-06-01/runtime/init/error",
                api.address()
            ))
            .json(&json!({"errorType": "Init", "errorMessage": "no config"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        assert_eq!(api.init_error().unwrap()["errorMessage"], "no config");

        // Nobody polling: the invocation times out and reports it.
        assert_eq!(
            api.try_invoke(json!({}), Duration::from_millis(50)).await,
            None
        );
    }
}
