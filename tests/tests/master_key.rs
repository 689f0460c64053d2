//! `byok-local master-key rotate` end to end, on the real binary: keys
//! stored over HTTP keep working through rotations that are killed (SIGKILL,
//! by pid) at varying moments and then recovered by the next start; a
//! completed rotation replaces the key file; the operator-managed key
//! (`BYOK_MASTER_KEY` + `BYOK_NEW_MASTER_KEY`) is idempotent; and a rotation
//! is refused while a server has the store open.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test bodies and helpers: a failed step is a failed test"
)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use byok::auth::{JwtSecret, issue_token, now_unix};
use byok::crypto::{KEY_FILE, MasterKey};
use byok::store::embedded::DB_FILE;
use byok::store::rekey::NEXT_KEY_FILE;
use byok_tests::harness::{LocalServer, local_bin, run_to_exit};
use byok_tests::upstream::StandIn;
use futures_util::StreamExt as _;
use serde_json::{Value, json};

/// Users with one stored key each.
const USERS: usize = 300;
/// Requests in flight while storing and checking keys.
const CONCURRENCY: usize = 16;
/// Killed rotations.
const ROUNDS: u32 = 20;
const JWT_SECRET: &str = "master-key-e2e-jwt-secret-0123456789abcdef";
const KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const KEY_B: &str = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=";

fn user(i: usize) -> String {
    format!("mk-user-{i:04}")
}

fn user_key(i: usize) -> String {
    format!("sk-proj-masterkey{i:04}000000000000000000000")
}

fn token(i: usize) -> String {
    let secret = JwtSecret::from_text(JWT_SECRET).unwrap();
    issue_token(&secret, &user(i), false, 3600, now_unix())
}

/// byok-local in front of `stand_in` with the test's JWT secret and `extra`.
fn start(stand_in: &StandIn, dir: &Path, extra: &[(&str, &str)]) -> LocalServer {
    let mut env = stand_in.base_url_env();
    env.push(("BYOK_JWT_SECRET".into(), JWT_SECRET.into()));
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    LocalServer::start(dir, &env)
}

/// POSTs `body` to `path` as user `i` (one client for every request: building
/// a client costs more than a request); the status and body.
async fn post(
    client: &reqwest::Client,
    server: &LocalServer,
    i: usize,
    path: &str,
    body: Value,
) -> (reqwest::StatusCode, String) {
    let response = client
        .post(format!("{}{path}", server.base))
        .bearer_auth(token(i))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

/// Stores the key of users `0..users` over HTTP.
async fn store_keys(server: &LocalServer, users: usize) {
    let client = reqwest::Client::new();
    futures_util::stream::iter(0..users)
        .map(|i| {
            let body = json!({"service": "openai", "apiKey": user_key(i)});
            let client = &client;
            async move {
                let (status, text) = post(client, server, i, "/api/keys", body).await;
                assert!(status.is_success(), "{}: {text}", user(i));
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}

/// Every user's completion reaches the stand-in with that user's own key:
/// each stored secret still decrypts under the key the server started with.
async fn assert_every_key_works(server: &LocalServer, stand_in: &StandIn, users: usize) {
    stand_in.clear();
    let client = reqwest::Client::new();
    futures_util::stream::iter(0..users)
        .map(|i| {
            let body = json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": user(i)}]
            });
            let client = &client;
            async move {
                let (status, text) = post(client, server, i, "/v1/chat/completions", body).await;
                assert_eq!(status, 200, "{}: {text}", user(i));
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    let seen: HashMap<String, String> = stand_in
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .map(|r| {
            let who = r.body["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_owned();
            (who, r.key)
        })
        .collect();
    assert_eq!(seen.len(), users);
    for i in 0..users {
        assert_eq!(seen.get(&user(i)), Some(&user_key(i)), "{}", user(i));
    }
}

/// `byok-local master-key rotate` on `dir` with only `env` besides PATH and HOME.
fn rotate_command(dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(local_bin());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("BYOK_DATA_DIR", dir)
        .envs(env.iter().copied())
        .args(["master-key", "rotate"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a rotation to its end; what it printed on stdout.
fn rotate(dir: &Path, env: &[(&str, &str)]) -> String {
    let out = rotate_command(dir, env).output().unwrap();
    assert!(out.status.success(), "rotate failed: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The id of the key in `dir/master.key`.
fn file_key_id(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join(KEY_FILE)).unwrap();
    MasterKey::from_base64(&text).unwrap().key_id()
}

/// The master-key ids of the rows of `secrets`, with their counts.
fn row_key_ids(dir: &Path) -> BTreeMap<String, usize> {
    let conn = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    let mut stmt = conn
        .prepare("SELECT master_key_id, COUNT(*) FROM secrets GROUP BY master_key_id")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            usize::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Where a killed rotation stopped, from the files and the rows.
fn crash_state(dir: &Path, key_before: &str) -> &'static str {
    let ids = row_key_ids(dir);
    let next = dir.join(NEXT_KEY_FILE);
    if next.exists() {
        let next_id = MasterKey::from_base64(&std::fs::read_to_string(next).unwrap())
            .unwrap()
            .key_id();
        assert_eq!(file_key_id(dir), key_before);
        match (ids.get(key_before), ids.get(&next_id)) {
            (Some(_), None) => "new key written, rows still old",
            (None, Some(_)) => "rows re-sealed, key file not yet renamed",
            other => panic!("rows under both or neither key: {other:?} {ids:?}"),
        }
    } else {
        let now = file_key_id(dir);
        assert_eq!(
            ids.keys().collect::<Vec<_>>(),
            vec![&now],
            "all rows under the key file"
        );
        if now == key_before {
            "not started"
        } else {
            "finished"
        }
    }
}

/// Rotations killed by SIGKILL at delays spread over a whole rotation's
/// duration: after each, the next start recovers and every key still works.
#[tokio::test]
async fn killed_rotations_never_lose_a_key() {
    let stand_in = StandIn::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = start(&stand_in, dir, &[]);
    store_keys(&server, USERS).await;
    assert_every_key_works(&server, &stand_in, USERS).await;
    server.stop();
    assert_eq!(row_key_ids(dir).values().sum::<usize>(), USERS);

    // One whole rotation, timed, sets the range of the kill delays.
    let first_key = file_key_id(dir);
    let started = Instant::now();
    let printed = rotate(dir, &[]);
    let whole = started.elapsed();
    assert!(
        printed.contains(&format!("{USERS} secrets re-sealed (0 already")),
        "{printed}"
    );
    assert_ne!(file_key_id(dir), first_key);

    let mut states: BTreeMap<&str, usize> = BTreeMap::new();
    for round in 0..ROUNDS {
        let key_before = file_key_id(dir);
        let delay = whole * round / (ROUNDS - 2);
        let mut child = rotate_command(dir, &[]).spawn().unwrap();
        std::thread::sleep(delay);
        // SIGKILL by pid; a rotation that already ended is simply reaped.
        let _ = child.kill();
        child.wait().unwrap();
        *states.entry(crash_state(dir, &key_before)).or_default() += 1;

        let server = start(&stand_in, dir, &[]);
        let left: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(NEXT_KEY_FILE))
            .collect();
        assert!(left.is_empty(), "recovered at start, yet {left:?} is left");
        assert_every_key_works(&server, &stand_in, USERS).await;
        server.stop();
    }
    eprintln!("whole rotation {whole:?}; states after the kills: {states:?}");

    // A rotation run to its end re-seals every row under a new key file.
    let key_before = file_key_id(dir);
    let printed = rotate(dir, &[]);
    let key_after = file_key_id(dir);
    assert_ne!(key_after, key_before);
    assert!(
        printed.contains(&format!("{USERS} secrets re-sealed (0 already"))
            && printed.contains(&format!("{key_before} -> {key_after}")),
        "{printed}"
    );
    let key_text = std::fs::read_to_string(dir.join(KEY_FILE)).unwrap();
    assert!(
        !printed.contains(key_text.trim()),
        "the new key is never printed"
    );
    assert_eq!(
        row_key_ids(dir),
        BTreeMap::from([(key_after, USERS)]),
        "every row under the new key"
    );
    let server = start(&stand_in, dir, &[]);
    assert_every_key_works(&server, &stand_in, USERS).await;
    server.stop();
}

/// With `BYOK_MASTER_KEY`, the new key comes from `BYOK_NEW_MASTER_KEY`; the
/// old key no longer opens the store, a re-run (also after a kill) is
/// harmless, and neither key is printed.
#[tokio::test]
async fn operator_managed_key_rotation_is_idempotent() {
    const N: usize = 5;
    let stand_in = StandIn::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = start(&stand_in, dir, &[("BYOK_MASTER_KEY", KEY_A)]);
    store_keys(&server, N).await;
    server.stop();

    let both = [("BYOK_MASTER_KEY", KEY_A), ("BYOK_NEW_MASTER_KEY", KEY_B)];
    let mut killed = rotate_command(dir, &both).spawn().unwrap();
    let _ = killed.kill();
    killed.wait().unwrap();
    let printed = rotate(dir, &both);
    assert!(printed.contains("now set BYOK_MASTER_KEY"), "{printed}");
    assert!(
        !printed.contains(KEY_A) && !printed.contains(KEY_B),
        "{printed}"
    );
    let again = rotate(dir, &both);
    assert!(
        again.contains(&format!("0 secrets re-sealed ({N} already")),
        "{again}"
    );
    assert!(!dir.join(KEY_FILE).exists(), "no key file in this mode");

    let (status, output) = run_to_exit(dir, &[("BYOK_MASTER_KEY", KEY_A)]);
    assert!(!status.success());
    assert!(output.contains("master key does not match"), "{output}");
    let server = start(&stand_in, dir, &[("BYOK_MASTER_KEY", KEY_B)]);
    assert_every_key_works(&server, &stand_in, N).await;
    server.stop();

    // Without the new key, nothing happens.
    let out = rotate_command(dir, &[("BYOK_MASTER_KEY", KEY_B)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("BYOK_NEW_MASTER_KEY"), "{}", text(&out));
}

/// A running server keeps the store open: the rotation is refused and
/// changes nothing.
#[tokio::test]
async fn rotation_is_refused_while_the_server_runs() {
    const N: usize = 3;
    let stand_in = StandIn::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = start(&stand_in, dir, &[]);
    store_keys(&server, N).await;
    let key_before = file_key_id(dir);

    let out = rotate_command(dir, &[]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("in use"), "{}", text(&out));
    assert_eq!(file_key_id(dir), key_before);
    assert!(!dir.join(NEXT_KEY_FILE).exists());
    assert_every_key_works(&server, &stand_in, N).await;
    server.stop();
}
