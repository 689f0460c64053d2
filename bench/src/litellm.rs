//! The LiteLLM proxy as a peer to compare with (`--litellm PATH`): started
//! from the `litellm` command the caller installed (`pip install
//! 'litellm[proxy]'`), on a free loopback port, one worker, pinned like
//! byok-local, with one model routed to the same stand-in. The comparison is
//! a ratio on this machine, not a claim about LiteLLM elsewhere.
//!
//! The child is killed by pid when [`LiteLlm`] is dropped.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::gateway::FAKE_OPENAI_KEY;
use crate::standin::MODEL;

type BoxError = Box<dyn Error + Send + Sync>;

/// How long LiteLLM may take to answer its liveness probe (it imports a
/// lot of Python on start).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A running LiteLLM proxy.
pub struct LiteLlm {
    child: Child,
    /// e.g. `http://127.0.0.1:PORT`.
    pub base: String,
    pub pid: u32,
    /// The proxy's master key: the bearer its clients send.
    pub master_key: String,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for LiteLlm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl LiteLlm {
    /// Starts `bin` (the `litellm` command) with [`MODEL`] routed to the
    /// OpenAI-style `openai_base_url`, on `cpu` when given, and waits until
    /// it answers.
    pub async fn start(
        bin: &Path,
        openai_base_url: &str,
        cpu: Option<usize>,
        client: &reqwest::Client,
    ) -> Result<LiteLlm, BoxError> {
        if !bin.is_file() {
            return Err(format!(
                "--litellm {}: no such file (python3 -m venv /tmp/litellm && \
                 /tmp/litellm/bin/pip install 'litellm[proxy]' installs it as \
                 /tmp/litellm/bin/litellm)",
                bin.display()
            )
            .into());
        }
        let dir = tempfile::Builder::new()
            .prefix("byok-bench-litellm-")
            .tempdir()?;
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      \
                 model: openai/{MODEL}\n      api_base: {openai_base_url}\n      \
                 api_key: {FAKE_OPENAI_KEY}\n"
            ),
        )?;
        let port = free_port()?;
        // LiteLLM refuses to start without a strong master key; requests
        // then carry it, as byok-local's carry a token.
        let mut random = [0_u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
        let master_key = format!(
            "sk-{}",
            random
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let stderr_path = dir.path().join("litellm.stderr");
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("--config")
            .arg(&config)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--num_workers", "1"])
            // No network at start (the bundled price list), no telemetry,
            // and quiet logs: what a tuned deployment would run.
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .env("LITELLM_TELEMETRY", "False")
            .env("LITELLM_LOG", "ERROR")
            .env("LITELLM_MASTER_KEY", &master_key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path)?);
        let child = cmd.spawn()?;
        let pid = child.id();
        let proxy = LiteLlm {
            child,
            base: format!("http://127.0.0.1:{port}"),
            pid,
            master_key,
            stderr_path,
            _dir: dir,
        };
        let started = Instant::now();
        let probe = format!("{}/health/liveliness", proxy.base);
        loop {
            if let Ok(r) = client.get(&probe).send().await
                && r.status().is_success()
            {
                return Ok(proxy);
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "LiteLLM did not answer {probe} within {START_TIMEOUT:?}; its stderr:\n{}",
                    proxy.stderr_tail()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The last lines LiteLLM wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}
