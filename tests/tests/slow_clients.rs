//! Slow, idle and numerous clients cannot hold byok-local: the real binary
//! with a 1 s header timeout and a 2 s body timeout, against raw TCP
//! clients on 127.0.0.1. Connections that dribble a request head, sit idle
//! after a request, or send a body a byte at a time are closed within the
//! configured timeouts (plus two seconds of slack for a loaded machine), and
//! the server keeps answering everyone else meanwhile. The connection cap
//! holds extra connections in the backlog until a slot frees.

use byok_tests::harness::LocalServer;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const BODY_TIMEOUT: Duration = Duration::from_secs(2);
/// What a loaded 2-core machine may add to a timer.
const SLACK: Duration = Duration::from_secs(2);

fn addr(server: &LocalServer) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (or `limit` passes); what
/// it sent, and when it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Option<Instant>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                return (
                    String::from_utf8_lossy(&got).into_owned(),
                    Some(Instant::now()),
                );
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), None),
        }
    }
}

/// Writes `bytes` one at a time, `gap` apart, while the server listens.
async fn dribble(stream: &mut tokio::net::tcp::OwnedWriteHalf, bytes: &[u8], gap: Duration) {
    for b in bytes {
        if stream.write_all(&[*b]).await.is_err() {
            return;
        }
        tokio::time::sleep(gap).await;
    }
}

async fn healthz(addr: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    answer.starts_with("HTTP/1.1 200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_off_and_others_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = LocalServer::start(
        dir.path(),
        &[
            ("BYOK_HEADER_TIMEOUT_SECS", "1"),
            ("BYOK_BODY_TIMEOUT_SECS", "2"),
        ],
    );
    let addr = addr(&server);
    let token = server.token("slow", false);

    // 200 connections dribbling a request head, a byte every 100 ms.
    let started = Instant::now();
    let mut slowloris = Vec::new();
    for _ in 0..200 {
        let addr = addr.clone();
        slowloris.push(tokio::spawn(async move {
            let stream = TcpStream::connect(&addr).await.unwrap();
            let opened = Instant::now();
            let head = b"GET /api/keys HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            let (mut read_half, mut write_half) = stream.into_split();
            let writer = tokio::spawn(async move {
                dribble(&mut write_half, head, Duration::from_millis(100)).await;
                write_half
            });
            let mut sink = Vec::new();
            let closed = tokio::time::timeout(Duration::from_secs(10), read_half.read_to_end(&mut sink))
                .await
                .ok()
                .map(|_| Instant::now());
            writer.abort();
            closed.map(|at| at - opened)
        }));
    }
    // Everyone else is still served meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(healthz(&addr).await, "served during the attack");
    let mut longest = Duration::ZERO;
    for held in slowloris {
        let held = held
            .await
            .unwrap()
            .expect("a dribbling connection was never closed");
        longest = longest.max(held);
    }
    assert!(
        longest <= HEADER_TIMEOUT + SLACK,
        "a dribbling connection stayed open {longest:?}"
    );
    println!(
        "200 dribbling connections: all closed, the longest after {longest:?} (header timeout {HEADER_TIMEOUT:?}); whole attack {:?}",
        started.elapsed()
    );

    // A kept-alive connection that sends no next request is closed too.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = Instant::now();
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let idle_for = closed.expect("an idle connection was never closed") - answered;
    assert!(idle_for <= HEADER_TIMEOUT + SLACK, "idle for {idle_for:?}");

    // A body sent a byte every 300 ms: 408 request_timeout, connection closed.
    let mut slow_body = TcpStream::connect(&addr).await.unwrap();
    let body = br#"{"service":"groq","apiKey":"gsk_slowbody00000000000000000000001"}"#;
    let head = format!(
        "POST /api/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();
    let sent = Instant::now();
    let (mut read_half, mut write_half) = slow_body.into_split();
    let writer = tokio::spawn(async move {
        for b in body {
            if write_half.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), read_half.read_to_end(&mut got)).await;
    let took = sent.elapsed();
    writer.abort();
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(
        took <= BODY_TIMEOUT + SLACK,
        "the slow body was held {took:?}"
    );

    // Nothing was stored from it, and the server is fine.
    assert!(healthz(&addr).await);
    let (status, output) = server.stop();
    assert!(status.success(), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let dir = tempfile::tempdir().unwrap();
    let server = LocalServer::start(
        dir.path(),
        &[
            ("BYOK_HEADER_TIMEOUT_SECS", "2"),
            ("BYOK_MAX_CONNECTIONS", "3"),
        ],
    );
    let addr = addr(&server);
    // Three connections take every slot and say nothing.
    let mut holders = Vec::new();
    for _ in 0..3 {
        holders.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A fourth is accepted by the kernel but not served...
    let waiting = tokio::spawn({
        let addr = addr.clone();
        async move {
            let asked = Instant::now();
            let served = healthz(&addr).await;
            (served, asked.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served beyond the cap");
    // ...until the holders are cut off by the header timeout.
    let (served, waited) = waiting.await.unwrap();
    assert!(served);
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    drop(holders);
    drop(server);
}
