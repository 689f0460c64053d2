//! Real clients drive the gateway's OpenAI-compatible `POST /v1/chat/completions`:
//! the official Python `openai` SDK and the Vercel AI SDK (`ai` with
//! `@ai-sdk/openai-compatible`) each stream a completion through the real
//! `byok-local` binary, for every way a request can be paid for: the user's
//! OpenAI key, the user's Anthropic key (translated from Anthropic Messages),
//! the user's OpenRouter key for a model whose provider the user has no key
//! for, and the operator's team gateway key.
//!
//! Each run checks what the client saw (the exact text the provider stand-in
//! sent, in several chunks, and the `x-byok-path` / `x-byok-provider` headers)
//! and what the stand-in saw (exactly one completion request, on the right
//! upstream, with the right key and upstream model id).
//!
//! The clients live in `tests/clients/`; `./infra/scripts/test.sh` installs
//! them and exports `BYOK_TEST_PYTHON` (a Python with `openai`) and
//! `BYOK_TEST_NODE_CLIENT_DIR` (`tests/clients/node` with its `node_modules`).
//! Without those variables these tests fail, saying so.

#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "helpers outside #[test] functions: a failed step is a failed test"
)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use byok_tests::harness::LocalServer;
use byok_tests::http::Api;
use byok_tests::upstream::{StandIn, Upstream};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How long one client run may take (interpreter start, SDK import, the call).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

const OPENAI_KEY: &str = "sk-proj-RealClientsUserOpenAi0000000000000000000001";
const ANTHROPIC_KEY: &str = "sk-ant-api03-RealClientsUserAnthropic000000000000001";
const OPENROUTER_KEY: &str = "sk-or-v1-RealClientsUserOpenRouter0000000000000000001";
const TEAM_GATEWAY_KEY: &str = "vck_RealClientsTeamGateway000000000000000001";

/// One way a request is paid for, and what must reach the upstream.
#[derive(Clone, Copy, Debug)]
struct Case {
    /// The user the token is for.
    user: &'static str,
    /// The user's own key, stored before the call (`None`: no key at all).
    key: Option<(&'static str, &'static str)>,
    /// The model the client asks for.
    model: &'static str,
    /// Expected `x-byok-path` and `x-byok-provider`.
    path: &'static str,
    provider: &'static str,
    /// Where the completion must go, with which key and upstream model id.
    upstream: Upstream,
    upstream_path: &'static str,
    upstream_key: &'static str,
    upstream_model: &'static str,
}

const USER_OPENAI: Case = Case {
    user: "rc-openai",
    key: Some(("openai", OPENAI_KEY)),
    model: "gpt-4o-mini",
    path: "user-provider",
    provider: "openai",
    upstream: Upstream::OpenAi,
    upstream_path: "/openai/v1/chat/completions",
    upstream_key: OPENAI_KEY,
    upstream_model: "gpt-4o-mini",
};

const USER_ANTHROPIC: Case = Case {
    user: "rc-anthropic",
    key: Some(("anthropic", ANTHROPIC_KEY)),
    model: "anthropic/claude-3.5-haiku",
    path: "user-provider",
    provider: "anthropic",
    upstream: Upstream::Anthropic,
    upstream_path: "/anthropic/v1/messages",
    upstream_key: ANTHROPIC_KEY,
    upstream_model: "claude-3-5-haiku",
};

const USER_OPENROUTER: Case = Case {
    user: "rc-openrouter",
    key: Some(("openrouter", OPENROUTER_KEY)),
    model: "mistral/mistral-large",
    path: "user-provider",
    provider: "openrouter",
    upstream: Upstream::OpenRouter,
    upstream_path: "/openrouter/v1/chat/completions",
    upstream_key: OPENROUTER_KEY,
    upstream_model: "mistral/mistral-large",
};

const TEAM_GATEWAY: Case = Case {
    user: "rc-team",
    key: None,
    model: "openai/gpt-4o-mini",
    path: "team-gateway",
    provider: "gateway",
    upstream: Upstream::Gateway,
    upstream_path: "/gateway/v1/chat/completions",
    upstream_key: TEAM_GATEWAY_KEY,
    upstream_model: "openai/gpt-4o-mini",
};

const ALL_CASES: [Case; 4] = [USER_OPENAI, USER_ANTHROPIC, USER_OPENROUTER, TEAM_GATEWAY];

/// The two real clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    /// `tests/clients/python/stream_chat.py` on `BYOK_TEST_PYTHON`.
    Python,
    /// `tests/clients/node/stream_chat.mjs` on `node`, in `BYOK_TEST_NODE_CLIENT_DIR`.
    Node,
}

/// What a client printed: its one JSON line.
#[derive(Debug)]
struct ClientAnswer {
    text: String,
    chunks: u64,
    path: Option<String>,
    provider: Option<String>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_owned()
}

fn required_env(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(value) if !value.is_empty() => PathBuf::from(value),
        _ => panic!(
            "{name} is not set: these tests drive the real Python and Node clients, which \
             ./infra/scripts/test.sh installs (openai into target/py, npm ci in tests/clients/node) \
             and points BYOK_TEST_PYTHON / BYOK_TEST_NODE_CLIENT_DIR at; run ./infra/scripts/test.sh"
        ),
    }
}

/// The command that runs `client` with `args` (base URL, token, model, ...),
/// with nothing from the caller's environment beyond PATH and HOME (no real
/// keys, no proxies, no `OPENAI_BASE_URL`).
fn client_command(client: Client, args: &[&str]) -> Command {
    let root = repo_root();
    let mut cmd = match client {
        Client::Python => {
            let python = required_env("BYOK_TEST_PYTHON");
            assert!(
                python.exists(),
                "BYOK_TEST_PYTHON={} does not exist: run ./infra/scripts/test.sh",
                python.display()
            );
            let mut cmd = Command::new(python);
            cmd.arg(root.join("tests/clients/python/stream_chat.py"));
            cmd
        }
        Client::Node => {
            let dir = required_env("BYOK_TEST_NODE_CLIENT_DIR");
            assert!(
                dir.join("node_modules/ai/package.json").exists()
                    && dir
                        .join("node_modules/@ai-sdk/openai-compatible/package.json")
                        .exists(),
                "BYOK_TEST_NODE_CLIENT_DIR={} has no installed node_modules: run \
                 ./infra/scripts/test.sh (npm ci --prefix tests/clients/node)",
                dir.display()
            );
            let mut cmd = Command::new("node");
            cmd.arg(root.join("tests/clients/node/stream_chat.mjs"))
                .current_dir(dir);
            cmd
        }
    };
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `client` to its end ([`CLIENT_TIMEOUT`] at most, then kills it by
/// pid) and parses its JSON line. Blocking: call through `spawn_blocking`.
fn run_client_blocking(client: Client, args: &[String]) -> ClientAnswer {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = client_command(client, &args)
        .spawn()
        .unwrap_or_else(|e| panic!("start the {client:?} client: {e}"));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the client") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    let Some(status) = status else {
        panic!(
            "the {client:?} client did not finish within {CLIENT_TIMEOUT:?} (killed); \
             stdout:\n{out}\nstderr:\n{err}"
        );
    };
    assert!(
        status.success(),
        "the {client:?} client failed ({status}); stdout:\n{out}\nstderr:\n{err}"
    );
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("the {client:?} client printed no JSON line:\n{out}\n{err}"));
    let json: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("the {client:?} client printed bad JSON ({e}): {line}"));
    let text_of = |field: &str| json[field].as_str().map(str::to_owned);
    ClientAnswer {
        text: text_of("text").unwrap_or_else(|| panic!("no text in {line}")),
        chunks: json["chunks"]
            .as_u64()
            .unwrap_or_else(|| panic!("no chunks in {line}")),
        path: text_of("path"),
        provider: text_of("provider"),
    }
}

async fn run_client(client: Client, args: &[&str]) -> ClientAnswer {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || run_client_blocking(client, &args))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// A provider stand-in and a byok-local whose upstreams all point at it, with
/// a team gateway key, and one user per [`Case`] with that case's key stored.
struct Gateway {
    standin: StandIn,
    server: LocalServer,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start() -> Self {
        let standin = StandIn::start().await;
        standin.set_chunks(6);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut bases = standin.base_url_env();
        bases.push(("AI_GATEWAY_API_KEY".to_owned(), TEAM_GATEWAY_KEY.to_owned()));
        let env: Vec<(&str, &str)> = bases
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let server = LocalServer::start(dir.path(), &env);
        Self {
            standin,
            server,
            _dir: dir,
        }
    }

    /// The `/v1` base URL the SDKs are given.
    fn v1(&self) -> String {
        format!("{}/v1", self.server.base)
    }

    /// A token for `case`'s user, with that user's key stored (and checked
    /// to resolve as the case expects, so a resolution bug reads as one).
    async fn user(&self, case: &Case) -> String {
        let token = self.server.token(case.user, false);
        let api = Api::new(&self.server.base, Some(&token));
        if let Some((service, key)) = case.key {
            let stored = api
                .post("/api/keys", json!({"service": service, "apiKey": key}))
                .await;
            assert!(
                stored.status.is_success(),
                "store the {service} key of {}: {} {}",
                case.user,
                stored.status,
                stored.text
            );
        }
        let resolved = api
            .send(
                Method::GET,
                &format!("/api/resolve?model={}", case.model),
                None,
            )
            .await;
        assert_eq!(resolved.status, StatusCode::OK, "{}", resolved.text);
        assert_eq!(
            (
                resolved.json["path"].as_str(),
                resolved.json["provider"].as_str(),
                resolved.json["upstreamModel"].as_str(),
            ),
            (
                Some(case.path),
                Some(case.provider),
                Some(case.upstream_model)
            ),
            "resolution of {case:?}: {}",
            resolved.text
        );
        token
    }

    async fn stop(self) {
        let (status, output) = self.server.stop();
        assert!(
            status.success(),
            "byok-local exit {status}; output:\n{output}"
        );
        self.standin.shutdown().await;
    }
}

/// Exactly one completion reached the stand-in since the last `clear`, on
/// `case`'s upstream with its key and upstream model, streamed or not; and
/// nothing reached any other upstream.
fn assert_one_upstream_call(standin: &StandIn, case: &Case, client: Client, stream: bool) {
    let requests = standin.requests();
    let summary: Vec<String> = requests
        .iter()
        .map(|r| format!("{} {} key={} model={}", r.method, r.path, r.key, r.model))
        .collect();
    assert!(
        requests.iter().all(|r| r.upstream == Some(case.upstream)),
        "{client:?} {case:?}: a request went elsewhere: {summary:#?}"
    );
    let calls: Vec<_> = requests
        .iter()
        .filter(|r| r.method == Method::POST)
        .collect();
    assert_eq!(
        calls.len(),
        1,
        "{client:?} {case:?}: one completion upstream: {summary:#?}"
    );
    let call = calls[0];
    assert_eq!(call.path, case.upstream_path, "{client:?} {case:?}");
    assert_eq!(call.key, case.upstream_key, "{client:?} {case:?}");
    assert_eq!(call.model, case.upstream_model, "{client:?} {case:?}");
    assert_eq!(
        call.body["stream"].as_bool().unwrap_or(false),
        stream,
        "{client:?} {case:?}: streamed upstream iff the client streamed: {}",
        call.body
    );
}

/// What the client saw: the stand-in's exact text, chunked when streamed,
/// and the resolution headers.
fn assert_answer(answer: &ClientAnswer, reply: &str, case: &Case, client: Client, stream: bool) {
    assert_eq!(answer.text, reply, "{client:?} {case:?}: {answer:?}");
    if stream {
        assert!(
            answer.chunks > 1,
            "{client:?} {case:?}: the text arrived in several chunks: {answer:?}"
        );
    }
    assert_eq!(
        (answer.path.as_deref(), answer.provider.as_deref()),
        (Some(case.path), Some(case.provider)),
        "{client:?} {case:?}: x-byok-path / x-byok-provider headers: {answer:?}"
    );
}

/// Both clients stream a completion for `case` through byok-local.
async fn both_clients_stream(case: Case) {
    let gateway = Gateway::start().await;
    let token = gateway.user(&case).await;
    let base = gateway.v1();
    for client in [Client::Python, Client::Node] {
        let reply = format!(
            "Hi from the {} stand-in, {client:?} client: streamed word by word.",
            case.provider
        );
        gateway.standin.set_reply(&reply);
        gateway.standin.clear();
        let answer = run_client(client, &[&base, &token, case.model]).await;
        assert_answer(&answer, &reply, &case, client, true);
        assert_one_upstream_call(&gateway.standin, &case, client, true);
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_openai_key_streams_through_both_sdks() {
    both_clients_stream(USER_OPENAI).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_anthropic_key_streams_translated_through_both_sdks() {
    both_clients_stream(USER_ANTHROPIC).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_openrouter_key_serves_another_providers_model_through_both_sdks() {
    both_clients_stream(USER_OPENROUTER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_gateway_streams_through_both_sdks() {
    both_clients_stream(TEAM_GATEWAY).await;
}

/// The Python SDK without `stream`: one `chat.completion` per path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_non_streaming_on_every_path() {
    let gateway = Gateway::start().await;
    let base = gateway.v1();
    for case in ALL_CASES {
        let token = gateway.user(&case).await;
        let reply = format!("A whole {} answer at once.", case.provider);
        gateway.standin.set_reply(&reply);
        gateway.standin.clear();
        let answer = run_client(Client::Python, &["--no-stream", &base, &token, case.model]).await;
        assert_answer(&answer, &reply, &case, Client::Python, false);
        assert_one_upstream_call(&gateway.standin, &case, Client::Python, false);
    }
    gateway.stop().await;
}

/// The clients themselves, straight against the stand-in's OpenAI upstream
/// (no gateway): when this fails, the SDK install or script is at fault, not
/// byok-local.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_work_against_the_stand_in_directly() {
    let standin = StandIn::start().await;
    standin.set_chunks(4);
    let base = standin.openai_base();
    for client in [Client::Python, Client::Node] {
        let reply = format!("Straight from the stand-in to {client:?}.");
        standin.set_reply(&reply);
        standin.clear();
        let answer = run_client(client, &[&base, OPENAI_KEY, "gpt-4o-mini"]).await;
        assert_eq!(answer.text, reply, "{client:?}: {answer:?}");
        assert_eq!(answer.chunks, 4, "{client:?}: {answer:?}");
        assert_eq!((answer.path, answer.provider), (None, None), "{client:?}");
        let requests = standin.requests();
        assert_eq!(requests.len(), 1, "{client:?}: {requests:?}");
        assert_eq!(requests[0].path, "/openai/v1/chat/completions");
        assert_eq!(requests[0].key, OPENAI_KEY);
        assert_eq!(requests[0].model, "gpt-4o-mini");
        assert_eq!(requests[0].body["stream"], true);
    }
    standin.shutdown().await;
}
