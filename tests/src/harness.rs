//! Starts the real `byok-local` binary on 127.0.0.1 port 0 for end-to-end
//! tests, collects everything it prints, and stops it by pid.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a failed step should stop the test loudly"
)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The `byok-local` binary: `BYOK_LOCAL_BIN`, else beside this test binary's
/// `deps` directory (where `cargo build` puts it).
pub fn local_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("BYOK_LOCAL_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("byok-local");
    assert!(
        bin.exists(),
        "{} does not exist: build it first (cargo build -p byok-local), or run the test script",
        bin.display()
    );
    bin
}

/// Environment every started process gets, and nothing from the caller's
/// environment beyond PATH and HOME (so a developer's real keys never leak in).
fn base_command(data_dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(local_bin());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("BYOK_LISTEN", "127.0.0.1:0")
        .env("BYOK_DATA_DIR", data_dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs byok-local expecting it to exit by itself (a refused start); 30 s at most.
pub fn run_to_exit(data_dir: &Path, env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut child = base_command(data_dir, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn byok-local");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "byok-local kept running: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// A running byok-local.
pub struct LocalServer {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub data_dir: PathBuf,
    env: Vec<(String, String)>,
    output: Arc<Mutex<String>>,
}

impl LocalServer {
    /// Starts byok-local on `data_dir` with extra `env`, and waits until it listens.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = base_command(data_dir, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn byok-local");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    output.lock().unwrap().push_str(&format!("{line}\n"));
                    if let Some(addr) = line.strip_prefix("byok-local listening on ") {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                }
            });
        }
        {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
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
        let mut server = Self {
            child: Some(child),
            base: String::new(),
            data_dir: data_dir.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            output,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(base) => server.base = base,
            Err(_) => {
                let out = server.output();
                server.kill();
                panic!("byok-local did not start listening within 30 s; output:\n{out}");
            }
        }
        server
    }

    /// Everything the process printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// A token from `byok-local token` with this server's configuration.
    pub fn token(&self, sub: &str, admin: bool) -> String {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut cmd = base_command(&self.data_dir, &env);
        cmd.args(["token", "--sub", sub]);
        if admin {
            cmd.arg("--admin");
        }
        let out = cmd.output().expect("run byok-local token");
        assert!(
            out.status.success(),
            "token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).expect("utf-8 token");
        let token = token.trim().to_owned();
        assert_eq!(
            token.split('.').count(),
            3,
            "a JWT alone on stdout: {token:?}"
        );
        token
    }

    /// Sends SIGTERM by pid and waits (10 s at most) for a graceful exit.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        let exit = loop {
            if let Some(exit) = child.try_wait().expect("wait") {
                break exit;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("byok-local did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Let the reader threads drain what was printed last.
        std::thread::sleep(Duration::from_millis(100));
        (exit, self.output())
    }

    /// Kills the process with SIGKILL by pid (a crash: nothing is settled
    /// or flushed) and returns what it printed.
    pub fn crash(mut self) -> String {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL failed");
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(100));
        self.output()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every file below `dir`, read as bytes.
pub fn files_below(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("read dir")
            .map_while(Result::ok)
        {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                found.push((path, bytes));
            }
        }
    }
    found
}

/// True if `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
