//! The gateway under test: the real `byok-local` binary, built in release
//! mode, started as a child process on a free loopback port with a throwaway
//! data directory and its OpenAI base URL pointed at the stand-in. Also the
//! setup a user needs before calling it: a token and a stored OpenAI key.
//!
//! The child is killed (by pid, through [`std::process::Child::kill`]) when
//! [`Gateway`] is dropped, so every error path after start cleans up too.

use std::error::Error;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

type BoxError = Box<dyn Error + Send + Sync>;

/// The user the benchmark acts as.
pub const BENCH_USER: &str = "bench-user";
/// A fake OpenAI key of a valid shape (`sk-proj-` and 40 characters).
pub const FAKE_OPENAI_KEY: &str = "sk-proj-bench00000000000000000000000000000000000";
/// The operator's (fake) OpenAI key: it serves users without a key of their own.
const FAKE_TEAM_KEY: &str = "sk-proj-benchteam000000000000000000000000000000";
/// The user on the team path in `--budget` runs.
pub const BUDGET_USER: &str = "bench-team-user";
/// How long byok-local may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The line byok-local prints when it listens.
const READY_PREFIX: &str = "byok-local listening on ";

/// Finds the byok-local binary: `explicit` if given, else whatever
/// `cargo build --release -p byok-local` reports it built (a no-op when it is
/// up to date, so the benchmark never measures a stale gateway).
pub fn locate(explicit: Option<PathBuf>) -> Result<PathBuf, BoxError> {
    if let Some(path) = explicit {
        if !path.is_file() {
            return Err(format!("--byok-local {}: no such file", path.display()).into());
        }
        return Ok(path);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("bench crate has no parent directory")?;
    let output = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "-p",
            "byok-local",
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "cargo build --release -p byok-local failed ({}); see the compiler output above \
             (or pass --byok-local PATH to measure a binary built earlier)",
            output.status
        )
        .into());
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "byok-local")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo build did not report a byok-local executable".into())
}

/// A running byok-local.
pub struct Gateway {
    child: Child,
    /// e.g. `http://127.0.0.1:PORT`.
    pub base: String,
    /// A user token for [`BENCH_USER`].
    pub token: String,
    /// Tokens of [`BUDGET_USER`] and of an admin, for `--budget` runs.
    budget_tokens: Option<(String, String)>,
    /// Process id, for the report (and for `perf record -p`).
    pub pid: u32,
    /// Process start → its "listening" line.
    pub listening_after: Duration,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Starts `bin` on 127.0.0.1:0 with a fresh data directory and the OpenAI
    /// base URL `openai_base_url`, waits until it listens, and issues a token.
    /// With `cpu`, it runs on that CPU only (`taskset -c`, which execs it,
    /// so the pid is byok-local's).
    pub fn start(
        bin: &Path,
        openai_base_url: &str,
        cpu: Option<usize>,
    ) -> Result<Gateway, BoxError> {
        let dir = tempfile::Builder::new().prefix("byok-bench-").tempdir()?;
        let data_dir = dir.path().join("data");
        let stderr_path = dir.path().join("byok-local.stderr");
        let env = [
            ("BYOK_LISTEN", "127.0.0.1:0".to_owned()),
            ("BYOK_STORE", "embedded".to_owned()),
            ("BYOK_DATA_DIR", data_dir.display().to_string()),
            ("BYOK_OPENAI_BASE_URL", openai_base_url.to_owned()),
            // A team key for `--budget` runs (users with a key of their own
            // never use it), with no team request limit in the way.
            ("OPENAI_API_KEY", FAKE_TEAM_KEY.to_owned()),
            ("BYOK_TEAM_REQUESTS_PER_MINUTE", "0".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        // A clean environment: no operator keys, secrets or overrides from the caller's shell.
        let command = |args: &[&str]| {
            let mut cmd = Command::new(bin);
            cmd.args(args)
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)));
            if let Some(path) = std::env::var_os("PATH") {
                cmd.env("PATH", path);
            }
            cmd
        };
        let mut serve = command(&["serve"]);
        if let Some(cpu) = cpu {
            let mut pinned = Command::new("taskset");
            pinned
                .args(["-c", &cpu.to_string()])
                .arg(bin)
                .arg("serve")
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)));
            if let Some(path) = std::env::var_os("PATH") {
                pinned.env("PATH", path);
            }
            serve = pinned;
        }
        let spawned = std::time::Instant::now();
        let child = serve
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path)?)
            .spawn()?;
        let mut gateway = Gateway {
            pid: child.id(),
            child,
            base: String::new(),
            token: String::new(),
            budget_tokens: None,
            listening_after: Duration::ZERO,
            stderr_path,
            _dir: dir,
        };
        gateway.base = gateway.wait_ready()?;
        gateway.listening_after = spawned.elapsed();
        let token = |args: &[&str]| -> Result<String, BoxError> {
            let out = command(args)
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .output()?;
            if !out.status.success() {
                return Err(format!(
                    "byok-local token failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )
                .into());
            }
            let token = String::from_utf8(out.stdout)?.trim().to_owned();
            if token.is_empty() {
                return Err("byok-local token printed nothing".into());
            }
            Ok(token)
        };
        gateway.token = token(&["token", "--sub", BENCH_USER])?;
        gateway.budget_tokens = Some((
            token(&["token", "--sub", BUDGET_USER])?,
            token(&["token", "--sub", "bench-admin", "--admin"])?,
        ));
        Ok(gateway)
    }

    /// A target for [`BUDGET_USER`] (no key of their own: the team key
    /// pays) after an admin gave them a paused budget far above what the
    /// run uses, so every request reserves and settles and none is refused.
    pub async fn budget_target(
        &self,
        client: &reqwest::Client,
    ) -> Result<crate::measure::Target, BoxError> {
        let (user, admin) = self
            .budget_tokens
            .as_ref()
            .ok_or("no budget tokens were issued")?;
        let body = json!({"type": "tokens", "period": "monthly", "limit": 1_000_000_000_000u64, "pauseAtLimit": true});
        let resp = client
            .put(format!(
                "{}/api/admin/budgets/users/{BUDGET_USER}",
                self.base
            ))
            .bearer_auth(admin)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(format!(
                "PUT /api/admin/budgets/users/{BUDGET_USER} answered {status}: {text}"
            )
            .into());
        }
        crate::measure::Target::new("budget", format!("{}/v1/chat/completions", self.base), user)
    }

    /// Reads stdout until the ready line; keeps draining it afterwards.
    fn wait_ready(&mut self) -> Result<String, BoxError> {
        let stdout = self
            .child
            .stdout
            .take()
            .ok_or("byok-local stdout not captured")?;
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix(READY_PREFIX) {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(base) => Ok(base),
            Err(_) => {
                // Stdout closed (or the timeout passed): give an exiting process a moment.
                let mut status = self.child.try_wait()?;
                for _ in 0..100 {
                    if status.is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    status = self.child.try_wait()?;
                }
                Err(format!(
                    "byok-local did not report its address ({}); stderr:\n{}",
                    status.map_or_else(|| "still running".to_owned(), |s| s.to_string()),
                    self.stderr_tail()
                )
                .into())
            }
        }
    }

    /// The last lines byok-local wrote to stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stores the benchmark user's OpenAI key.
    pub async fn store_key(&self, client: &reqwest::Client) -> Result<(), BoxError> {
        let body = json!({"service": "openai", "apiKey": FAKE_OPENAI_KEY});
        let resp = client
            .post(format!("{}/api/keys", self.base))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(format!("POST /api/keys answered {status}: {text}").into());
        }
        Ok(())
    }
}
