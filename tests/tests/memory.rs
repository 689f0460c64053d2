//! Memory per request is bounded by the body, not by what the body holds:
//! the real byok-local binary takes four concurrent ~19.5 MiB completion
//! bodies of the worst shape for a JSON tree (`[0,0,0,…]`, ten million tiny
//! values), then four of one long string forwarded to the provider
//! stand-in, and its peak resident memory (`VmHWM`) stays under 200 MB.
//! A `serde_json::Value` tree of the first kind took 427 MB for one body.

use byok_tests::harness::LocalServer;
use byok_tests::upstream::StandIn;
use reqwest::StatusCode;

/// Just under the 20 MiB completion body limit.
const BODY_BYTES: usize = 19 * 1024 * 1024 + 512 * 1024;
const PEAK_LIMIT_BYTES: u64 = 200 * 1000 * 1000;

/// A chat request padded to [`BODY_BYTES`] with `fill` repeated inside
/// `padding` (`[` … `]` or `"` … `"`).
fn padded(open: &str, fill: &str, close: &str) -> Vec<u8> {
    let head =
        r#"{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"padding":"#;
    let mut body = Vec::with_capacity(BODY_BYTES + 64);
    body.extend_from_slice(head.as_bytes());
    body.extend_from_slice(open.as_bytes());
    while body.len() + fill.len() + close.len() + 1 < BODY_BYTES {
        body.extend_from_slice(fill.as_bytes());
    }
    if body.ends_with(b",") {
        body.pop();
    }
    body.extend_from_slice(close.as_bytes());
    body.push(b'}');
    body
}

/// Peak resident memory of process `pid`, in bytes (Linux `VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

async fn send_four(base: &str, token: &str, body: &[u8]) -> Vec<StatusCode> {
    let client = reqwest::Client::new();
    let sends = (0..4).map(|_| {
        client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
    });
    futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.map_or(StatusCode::INTERNAL_SERVER_ERROR, |r| r.status()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_twenty_mib_bodies_stay_under_two_hundred_mb() {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = LocalServer::start(
        dir.path(),
        &[
            ("BYOK_OPENAI_BASE_URL", &stand_in.openai_base()),
            ("BYOK_BODY_TIMEOUT_SECS", "120"),
        ],
    );
    let at_start = peak_rss(server.pid());
    let token = server.token("heavy", false);
    let client = reqwest::Client::new();
    let saved = client
        .post(format!("{}/api/keys", server.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({"service": "openai", "apiKey": "sk-proj-memory0000000000000000001"}))
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), StatusCode::CREATED);

    // Ten million tiny values each; read, checked and forwarded as bytes.
    let zeros = padded("[", "0,", "]");
    assert!(zeros.len() <= BODY_BYTES);
    let statuses = send_four(&server.base, &token, &zeros).await;
    let after_zeros = peak_rss(server.pid());
    assert!(
        statuses.iter().all(StatusCode::is_success),
        "{statuses:?}\n{}",
        server.output()
    );

    // One long string each, forwarded.
    let text = padded("\"", "abcdefghij", "\"");
    let statuses = send_four(&server.base, &token, &text).await;
    let after_text = peak_rss(server.pid());
    assert!(statuses.iter().all(StatusCode::is_success), "{statuses:?}");

    println!(
        "byok-local peak RSS: {:.1} MB at start, {:.1} MB after 4 concurrent {:.1} MiB bodies of [0,0,…], {:.1} MB after 4 of one string",
        at_start as f64 / 1e6,
        after_zeros as f64 / 1e6,
        BODY_BYTES as f64 / 1048576.0,
        after_text as f64 / 1e6
    );
    assert!(at_start > 0, "VmHWM readable");
    assert!(
        after_zeros.max(after_text) <= PEAK_LIMIT_BYTES,
        "peak RSS {after_zeros} / {after_text} bytes"
    );
    drop(server);
    stand_in.shutdown().await;
}
