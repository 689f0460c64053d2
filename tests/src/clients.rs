//! Real clients of the gateway, run as the tests' child processes: the
//! Python scripts in `tests/clients/python` (the official `openai` and
//! `anthropic` SDKs) on the interpreter the test script prepared.

#![expect(
    clippy::expect_used,
    reason = "test support: a client that cannot start is a failed test"
)]

use serde_json::Value;
use std::path::PathBuf;

/// Runs `tests/clients/python/{script}` with `args` off the async runtime
/// (servers on the caller's runtime keep answering): its one JSON line on
/// success, else what it printed on stderr (and stdout).
///
/// # Panics
/// When `BYOK_TEST_PYTHON` is not set (the test script sets it) or the
/// interpreter cannot be started.
pub async fn python(script: &str, args: Vec<String>) -> Result<Value, String> {
    let python = std::env::var_os("BYOK_TEST_PYTHON")
        .map(PathBuf::from)
        .expect("BYOK_TEST_PYTHON is not set (the test script sets it)");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("clients/python")
        .join(script);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args(args)
            .output()
    })
    .await
    .expect("the client's thread")
    .expect("the Python interpreter starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        serde_json::from_str(stdout.trim()).map_err(|e| format!("{e}: {stdout}"))
    } else {
        Err(format!(
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
