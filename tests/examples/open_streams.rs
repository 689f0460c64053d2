//! Memory of open streams on byok-local: N streamed completions (default
//! 200) held open at once by a slow upstream, and byok-local's resident
//! memory before them (warm, one request served) and while they are all
//! open, per stream. The binary is the test harness's: `BYOK_LOCAL_BIN`, else
//! the debug build.
//!
//! `BYOK_LOCAL_BIN=target/release/byok-local cargo run -p byok-tests --example open_streams -- [N]`
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a measurement program: a failed step stops it, figures go to stdout"
)]

use std::time::Duration;

use byok_tests::http::Api;
use byok_tests::stores::{Mode, start};
use byok_tests::upstream::StandIn;
use serde_json::json;

const KEY: &str = "sk-proj-openstreams00000000000000000000001";

/// byok-local's resident memory, KiB (`VmRSS`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn measure(streams: usize) -> (u64, u64) {
    let stand_in = StandIn::start().await;
    // The first chunk goes out at once, the next one after a minute: every
    // stream is open, past its first byte, for the whole measurement.
    stand_in.set_chunk_delay(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        Mode::Embedded,
        &stand_in,
        dir.path(),
        &[("RUST_LOG", "warn")],
    );
    let token = server.token("streamer", false);
    let api = Api::new(&server.base, Some(&token));
    let saved = api
        .post("/api/keys", json!({"service": "openai", "apiKey": KEY}))
        .await;
    assert_eq!(saved.status.as_u16(), 201, "{}", saved.text);
    stand_in.set_chunk_delay(Duration::ZERO);
    assert_eq!(api.chat("openai/gpt-4o-mini").await.status.as_u16(), 200);
    stand_in.set_chunk_delay(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(server.pid());

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(streams)
        .build()
        .unwrap();
    let url = format!("{}/v1/chat/completions", server.base);
    let body = json!({"model": "openai/gpt-4o-mini", "stream": true,
                      "messages": [{"role": "user", "content": "Hi"}]});
    let opened = futures_util::future::join_all((0..streams).map(|_| {
        let (client, url, body, token) = (client.clone(), url.clone(), body.clone(), token.clone());
        async move {
            let mut response = client
                .post(&url)
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 200);
            // Past the first chunk: the stream is relayed, and open.
            let first = response.chunk().await.unwrap();
            assert!(first.is_some());
            response
        }
    }))
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rss_kib(server.pid());
    drop(opened);
    drop(server);
    stand_in.shutdown().await;
    (before, during)
}

#[tokio::main]
async fn main() {
    let streams = std::env::args()
        .nth(1)
        .map_or(200, |n| n.parse::<usize>().unwrap());
    let bin = byok_tests::harness::local_bin();
    let (before, during) = measure(streams).await;
    let per = during.saturating_sub(before) as f64 / streams as f64;
    println!(
        "{}: {streams} open streams (embedded store): resident {before} KiB before, \
         {during} KiB while open: {per:.1} KiB per stream",
        bin.display()
    );
}
