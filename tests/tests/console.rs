//! The web console end to end in a real browser: `byok-local stand-in`
//! (the development upstream a new user starts first) and byok-local in
//! front of it on the embedded store, driven by headless Chromium through
//! `tests/clients/node/console.mjs` (screenshots in
//! `target/console-screens/`). Also the console's files and its local
//! session's guards, over plain HTTP.
//!
//! Needs `BYOK_TEST_NODE_CLIENT_DIR` (with `node_modules`) and Chromium
//! (`BYOK_TEST_CHROMIUM`, default `chromium`), as the test script installs.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use byok_tests::harness::{LocalServer, local_bin};
use byok_tests::http::Api;
use reqwest::StatusCode;

/// The operator's (fake) Anthropic key: the team path for the preview.
const TEAM_ANTHROPIC_KEY: &str = "sk-ant-api03-ConsoleTeamKey0000000000000000000001";

/// `byok-local stand-in` on a free port, killed by pid when dropped.
struct DevStandIn {
    child: Child,
    /// `http://127.0.0.1:PORT`
    base: String,
}

impl DevStandIn {
    #[expect(
        clippy::unwrap_used,
        clippy::panic,
        reason = "test setup: a failed step stops the test"
    )]
    fn start() -> Self {
        let mut child = Command::new(local_bin())
            .args(["stand-in", "--port", "0", "--pace-ms", "5"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        // Keep reading what it prints, so it never writes to a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let base = first
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
            .map(str::to_owned);
        let Some(base) = base else {
            let _ = child.kill();
            panic!("the stand-in did not say where it listens: {first:?}");
        };
        assert!(
            first.contains("development tool"),
            "not labelled as a development tool: {first}"
        );
        Self { child, base }
    }
}

impl Drop for DevStandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_local(
    stand_in: &DevStandIn,
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> LocalServer {
    let v1 = format!("{}/v1", stand_in.base);
    let mut env = vec![
        ("BYOK_OPENAI_BASE_URL", v1.as_str()),
        ("BYOK_ANTHROPIC_BASE_URL", v1.as_str()),
        ("ANTHROPIC_API_KEY", TEAM_ANTHROPIC_KEY),
    ];
    env.extend_from_slice(extra);
    LocalServer::start(dir, &env)
}

#[tokio::test]
async fn a_new_user_walks_the_console_in_a_real_browser() {
    let node_dir = PathBuf::from(
        std::env::var("BYOK_TEST_NODE_CLIENT_DIR")
            .expect("BYOK_TEST_NODE_CLIENT_DIR (tests/clients/node, set by infra/scripts/test.sh)"),
    );
    let stand_in = DevStandIn::start();
    let dir = tempfile::tempdir().unwrap();
    let server = start_local(&stand_in, dir.path(), &[]);
    // An admin, and a budget on the dev user for the admin screen to show.
    let admin_token = server.token("console-admin", true);
    let admin = Api::new(&server.base, Some(&admin_token));
    let budget = admin
        .put(
            "/api/admin/budgets/users/dev",
            serde_json::json!({"type": "tokens", "period": "monthly", "limit": 100_000, "pauseAtLimit": false}),
        )
        .await;
    assert!(budget.status.is_success(), "{}", budget.text);
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screens");
    let script = node_dir.join("console.mjs");
    let base = server.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(base)
            .arg(&shots)
            .arg(admin_token)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser run failed:\n{stdout}\n{stderr}\nbyok-local:\n{}",
        server.output()
    );
    assert!(stdout.contains("console: all screens ok"), "{stdout}");
    for name in [
        "1-keys",
        "2-who-pays",
        "3-models",
        "4-playground",
        "5-usage",
        "6-audit",
        "8-admin",
    ] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/console-screens")
            .join(format!("{name}.png"));
        assert!(
            std::fs::metadata(&path).is_ok_and(|m| m.len() > 1000),
            "no screenshot {}",
            path.display()
        );
    }
}

#[tokio::test]
async fn the_console_is_served_and_its_local_session_stays_local() {
    let stand_in = DevStandIn::start();
    let dir = tempfile::tempdir().unwrap();
    let server = start_local(&stand_in, dir.path(), &[]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    for (path, kind) in [
        ("/", "text/html"),
        ("/console.js", "text/javascript"),
        ("/console.css", "text/css"),
    ] {
        let r = client
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let headers = r.headers().clone();
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
            "{csp}"
        );
        let body = r.text().await.unwrap();
        for external in ["src=\"http", "href=\"http", "url(http", "import \"http"] {
            assert!(
                !body.contains(external),
                "{path} loads something from elsewhere"
            );
        }
    }

    // The page's own session: same origin, loopback host.
    let session = format!("{}/console/session", server.base);
    let r = client
        .post(&session)
        .header("origin", server.base.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let token = r.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let api = Api::new(&server.base, Some(&token));
    assert_eq!(api.get("/api/keys").await.status, StatusCode::OK);

    // Another site, a rebound DNS name, or a cross-site fetch get none.
    for (header, value) in [
        ("origin", "http://evil.example".to_owned()),
        ("host", "evil.example".to_owned()),
        ("sec-fetch-site", "cross-site".to_owned()),
    ] {
        let r = client
            .post(&session)
            .header(header, value.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{header}: {value}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "no_local_session");
    }

    // Turned off, none at all.
    let off_dir = tempfile::tempdir().unwrap();
    let off = start_local(
        &stand_in,
        off_dir.path(),
        &[("BYOK_CONSOLE_DEV_SESSION", "false")],
    );
    let r = client
        .post(format!("{}/console/session", off.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The page itself is still there, for pasting a token.
    let r = client.get(format!("{}/", off.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
