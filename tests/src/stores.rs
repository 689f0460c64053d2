//! Running one end-to-end test on every store: byok-local on the embedded
//! store, and with `BYOK_STORE=aws` against the local AWS emulator (fresh
//! table and secret prefix per server).
#![expect(
    clippy::expect_used,
    reason = "test support: a failed step should stop the test loudly"
)]

use crate::harness::LocalServer;
use crate::upstream::StandIn;
use std::path::Path;

/// Which store a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Embedded,
    Aws,
}

/// The variables byok-local needs for `mode`, beyond the stand-in's base
/// URLs: none for the embedded store; for AWS a fresh table, a fresh secret
/// prefix, the emulator's endpoint and dummy credentials.
pub fn store_env(mode: Mode, name: &str) -> Vec<(String, String)> {
    if mode == Mode::Embedded {
        return Vec::new();
    }
    let unique = crate::aws::unique_name(name);
    [
        ("BYOK_STORE", "aws".to_owned()),
        ("BYOK_TABLE_NAME", format!("{unique}-table")),
        ("BYOK_SECRET_PREFIX", format!("{unique}/")),
        ("BYOK_CREATE_TABLE", "true".to_owned()),
        ("BYOK_SECRET_RECOVERY_DAYS", "0".to_owned()),
        ("AWS_ENDPOINT_URL", crate::aws::endpoint()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .to_vec()
}

/// byok-local in `mode` in front of `stand_in`, with `extra` variables.
pub fn start(mode: Mode, stand_in: &StandIn, dir: &Path, extra: &[(&str, &str)]) -> LocalServer {
    start_with(mode, stand_in, dir, extra).0
}

/// [`start`], also returning every variable the server got (to run
/// byok-local commands on the same store).
pub fn start_with(
    mode: Mode,
    stand_in: &StandIn,
    dir: &Path,
    extra: &[(&str, &str)],
) -> (LocalServer, Vec<(String, String)>) {
    let mut env = stand_in.base_url_env();
    env.extend(store_env(mode, "e2e"));
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = LocalServer::start(dir, &pairs);
    (server, env)
}

/// Runs `byok-local ARGS` to completion with `env` (and `BYOK_DATA_DIR=dir`),
/// off the async runtime, so servers on the caller's runtime (the stand-in)
/// keep answering meanwhile.
pub async fn run_command(
    dir: &Path,
    env: &[(String, String)],
    args: &[&str],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(crate::harness::local_bin());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BYOK_DATA_DIR", dir)
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output().expect("run byok-local"))
        .await
        .expect("join")
}

/// Runs each named `async fn(Mode)` once per store, as `embedded::NAME` and
/// `aws::NAME`.
#[macro_export]
macro_rules! on_every_store {
    ($($test:ident),+ $(,)?) => {
        mod embedded {
            $(#[tokio::test] async fn $test() { super::$test($crate::stores::Mode::Embedded).await })+
        }
        mod aws {
            $(#[tokio::test] async fn $test() { super::$test($crate::stores::Mode::Aws).await })+
        }
    };
}
