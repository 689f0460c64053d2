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

/// Where screenshots go.
fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screens")
}

/// Runs `tests/clients/node/SCRIPT BASE SCREENSHOTS EXTRA` (off the async
/// runtime, so servers on it keep answering) and returns its stdout,
/// failing with everything it and `server` printed unless it succeeded.
#[expect(
    clippy::expect_used,
    reason = "test support: a failed step stops the test"
)]
async fn run_browser_script(script: &str, server: &LocalServer, extra: String) -> String {
    let node_dir = PathBuf::from(
        std::env::var("BYOK_TEST_NODE_CLIENT_DIR")
            .expect("BYOK_TEST_NODE_CLIENT_DIR (tests/clients/node, set by infra/scripts/test.sh)"),
    );
    let (script, base) = (node_dir.join(script), server.base.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(base)
            .arg(screenshots())
            .arg(extra)
            .output()
            .expect("run node")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the browser run failed:\n{stdout}\n{}\nbyok-local:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.output()
    );
    stdout
}

#[tokio::test]
async fn a_new_user_walks_the_console_in_a_real_browser() {
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
    let stdout = run_browser_script("console.mjs", &server, admin_token).await;
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
        let path = screenshots().join(format!("{name}.png"));
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

    // How the page may sign in.
    let config: serde_json::Value = client
        .get(format!("{}/console/config", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        config,
        serde_json::json!({"oidc": null, "localSession": true})
    );

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

/// A stand-in OIDC issuer on 127.0.0.1 for the console's sign-in: an
/// authorization endpoint that signs the user in at once and sends the
/// browser back with a code, a token endpoint that gives an RS256 ID token
/// only for the PKCE verifier of that code's challenge, and the key set
/// byok-local verifies it with (the test fixtures' RSA key).
struct Issuer {
    base: String,
    /// Token exchanges answered, and refused.
    exchanges: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

const OIDC_CLIENT: &str = "byok-console-test";
const OIDC_USER: &str = "oidc-user";

impl Issuer {
    #[expect(clippy::unwrap_used, reason = "test setup")]
    async fn start() -> Self {
        use axum::extract::Query;
        use axum::response::{IntoResponse, Redirect};
        use base64::Engine as _;
        use sha2::Digest as _;
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/jwks");
        let jwks: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixtures.join("jwks.json")).unwrap()).unwrap();
        let public = jwks["rsa"].clone();
        let private = std::fs::read(fixtures.join("rsa.pem")).unwrap();
        // code -> its PKCE challenge
        let codes: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let exchanges = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let issuer = base.clone();

        let authorize = {
            let codes = codes.clone();
            move |Query(q): Query<HashMap<String, String>>| async move {
                let ok = q.get("response_type").map(String::as_str) == Some("code")
                    && q.get("client_id").map(String::as_str) == Some(OIDC_CLIENT)
                    && q.get("code_challenge_method").map(String::as_str) == Some("S256");
                let (Some(redirect), Some(state), Some(challenge), true) = (
                    q.get("redirect_uri"),
                    q.get("state"),
                    q.get("code_challenge"),
                    ok,
                ) else {
                    return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
                };
                let code = format!("code-{}", codes.lock().unwrap().len() + 1);
                codes
                    .lock()
                    .unwrap()
                    .insert(code.clone(), challenge.clone());
                Redirect::to(&format!("{redirect}?code={code}&state={state}")).into_response()
            }
        };
        let token = {
            let (codes, exchanges, issuer) = (codes.clone(), exchanges.clone(), issuer.clone());
            move |body: axum::body::Bytes| async move {
                let f: HashMap<String, String> =
                    url::form_urlencoded::parse(&body).into_owned().collect();
                exchanges.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let cors = [("access-control-allow-origin", "*")];
                let challenge = f.get("code").and_then(|c| codes.lock().unwrap().remove(c));
                let verifier = f.get("code_verifier").cloned().unwrap_or_default();
                let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(sha2::Sha256::digest(verifier.as_bytes()));
                if challenge.as_deref() != Some(expected.as_str())
                    || f.get("grant_type").map(String::as_str) != Some("authorization_code")
                {
                    return (
                        StatusCode::BAD_REQUEST,
                        cors,
                        axum::Json(serde_json::json!({"error": "invalid_grant"})),
                    )
                        .into_response();
                }
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let claims = serde_json::json!({
                    "iss": issuer, "aud": OIDC_CLIENT, "sub": OIDC_USER,
                    "iat": now, "exp": now + 600, "token_use": "id",
                });
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
                header.kid = Some("test-rsa-1".to_owned());
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(&private).unwrap();
                let id_token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
                (
                    StatusCode::OK,
                    cors,
                    axum::Json(serde_json::json!({
                        "id_token": id_token, "token_type": "Bearer", "expires_in": 600,
                    })),
                )
                    .into_response()
            }
        };
        let app = axum::Router::new()
            .route("/authorize", axum::routing::get(authorize))
            .route("/token", axum::routing::post(token))
            .route(
                "/.well-known/jwks.json",
                axum::routing::get(move || async move {
                    axum::Json(serde_json::json!({"keys": [public]}))
                }),
            );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            base,
            exchanges,
            task,
        }
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn the_console_signs_in_through_an_oidc_issuer_with_pkce() {
    let issuer = Issuer::start().await;
    let stand_in = DevStandIn::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (authorize, token_url, jwks) = (
        format!("{}/authorize", issuer.base),
        format!("{}/token", issuer.base),
        format!("{}/.well-known/jwks.json", issuer.base),
    );
    let server = start_local(
        &stand_in,
        dir.path(),
        &[
            ("BYOK_CONSOLE_DEV_SESSION", "false"),
            ("BYOK_OIDC_AUTHORIZATION_URL", authorize.as_str()),
            ("BYOK_OIDC_TOKEN_URL", token_url.as_str()),
            ("BYOK_OIDC_CLIENT_ID", OIDC_CLIENT),
            ("BYOK_JWKS_URL", jwks.as_str()),
            ("BYOK_JWT_ISSUER", issuer.base.as_str()),
            ("BYOK_JWT_AUDIENCE", OIDC_CLIENT),
        ],
    );
    let stdout = run_browser_script("console_oidc.mjs", &server, OIDC_USER.to_owned()).await;
    assert!(
        stdout.contains("console: signed in through the issuer"),
        "{stdout}"
    );
    assert_eq!(
        issuer.exchanges.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one code exchanged, with its verifier"
    );
}
