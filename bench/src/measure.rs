//! The load generator: single requests timed with [`Instant`], the
//! concurrency-1 latency runs (direct and gateway interleaved request by
//! request, so drift in the machine's state hits both alike), and the
//! fixed-duration closed-loop throughput runs at high concurrency.

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::json;

use crate::standin::MODEL;

type BoxError = Box<dyn Error + Send + Sync>;

/// Where a request goes: the stand-in directly, or byok-local.
#[derive(Debug)]
pub struct Target {
    pub name: &'static str,
    pub url: String,
    pub auth: HeaderValue,
}

impl Target {
    pub fn new(name: &'static str, url: String, bearer: &str) -> Result<Target, BoxError> {
        Ok(Target {
            name,
            url,
            auth: HeaderValue::from_str(&format!("Bearer {bearer}"))?,
        })
    }
}

/// The request bodies, identical for both targets.
#[derive(Clone, Debug)]
pub struct Bodies {
    pub plain: Bytes,
    pub stream: Bytes,
}

impl Bodies {
    pub fn new() -> Bodies {
        let messages = json!([
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Say hello."}
        ]);
        let plain = json!({"model": MODEL, "messages": messages, "max_tokens": 16});
        let stream = json!({
            "model": MODEL, "messages": messages, "max_tokens": 16,
            "stream": true, "stream_options": {"include_usage": true}
        });
        Bodies {
            plain: Bytes::from(plain.to_string()),
            stream: Bytes::from(stream.to_string()),
        }
    }
}

/// Timings of one streamed request.
#[derive(Clone, Copy, Debug)]
pub struct StreamTiming {
    /// Until the first body chunk.
    pub first_byte: Duration,
    /// Until the end of the body.
    pub total: Duration,
}

/// One request of either kind, as the latency and load loops see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Plain,
    Stream,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Plain => "non-streaming",
            Kind::Stream => "streaming",
        }
    }
}

fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}

/// Sends one non-streaming request and reads the whole body.
pub async fn plain(
    client: &reqwest::Client,
    target: &Target,
    body: &Bytes,
) -> Result<(Duration, Bytes), BoxError> {
    let start = Instant::now();
    let resp = client
        .post(&target.url)
        .header(AUTHORIZATION, target.auth.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(body.clone())
        .send()
        .await?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    let elapsed = start.elapsed();
    if !status.is_success() {
        return Err(format!("{} answered {status}: {}", target.name, snippet(&bytes)).into());
    }
    Ok((elapsed, bytes))
}

/// Sends one streaming request, timing the first body chunk and the end; the
/// body must end with `data: [DONE]`.
pub async fn stream(
    client: &reqwest::Client,
    target: &Target,
    body: &Bytes,
) -> Result<(StreamTiming, Vec<u8>), BoxError> {
    let start = Instant::now();
    let mut resp = client
        .post(&target.url)
        .header(AUTHORIZATION, target.auth.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(body.clone())
        .send()
        .await?;
    let status = resp.status();
    let mut first_byte = None;
    let mut received = Vec::with_capacity(4096);
    while let Some(chunk) = resp.chunk().await? {
        if first_byte.is_none() && !chunk.is_empty() {
            first_byte = Some(start.elapsed());
        }
        received.extend_from_slice(&chunk);
    }
    let total = start.elapsed();
    if !status.is_success() {
        return Err(format!("{} answered {status}: {}", target.name, snippet(&received)).into());
    }
    let first_byte = first_byte.ok_or_else(|| format!("{}: empty stream", target.name))?;
    if !received.trim_ascii_end().ends_with(b"data: [DONE]") {
        return Err(format!("{}: stream did not end with [DONE]", target.name).into());
    }
    Ok((StreamTiming { first_byte, total }, received))
}

/// Samples (nanoseconds) of one target's concurrency-1 run.
#[derive(Debug, Default)]
pub struct Samples {
    pub total: Vec<u64>,
    /// Streaming runs only.
    pub first_byte: Vec<u64>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Concurrency 1: `warmup` unrecorded then `n` recorded requests per target,
/// interleaved (the order alternates every round so neither target always
/// goes first). Returns one [`Samples`] per target, in order.
pub async fn latency(
    client: &reqwest::Client,
    targets: &[&Target],
    body: &Bytes,
    kind: Kind,
    warmup: usize,
    n: usize,
) -> Result<Vec<Samples>, BoxError> {
    let mut samples: Vec<Samples> = targets
        .iter()
        .map(|_| Samples {
            total: Vec::with_capacity(n),
            first_byte: Vec::with_capacity(if kind == Kind::Stream { n } else { 0 }),
        })
        .collect();
    let mut order: Vec<usize> = (0..targets.len()).collect();
    for round in 0..warmup + n {
        order.reverse();
        for &i in &order {
            let target = targets[i];
            let (total, first_byte) = match kind {
                Kind::Plain => (plain(client, target, body).await?.0, None),
                Kind::Stream => {
                    let (t, _) = stream(client, target, body).await?;
                    (t.total, Some(t.first_byte))
                }
            };
            if round >= warmup {
                samples[i].total.push(nanos(total));
                if let Some(fb) = first_byte {
                    samples[i].first_byte.push(nanos(fb));
                }
            }
        }
    }
    Ok(samples)
}

/// Outcome of a fixed-duration closed-loop run (or of several, summed).
#[derive(Debug, Default)]
pub struct LoadRun {
    pub completed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Latency of every completed request (ns); first byte for streams is not kept.
    pub latencies: Vec<u64>,
}

impl LoadRun {
    /// Adds `other`'s requests, errors, time and samples to `self`.
    pub fn absorb(&mut self, other: LoadRun) {
        self.completed += other.completed;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
    }

    pub fn per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.completed as f64 / secs
        } else {
            0.0
        }
    }
}

/// `concurrency` workers, each sending requests back to back until
/// `duration` has passed; requests in flight at the deadline are finished and
/// counted, and the elapsed time runs until the last of them.
pub async fn load(
    client: &reqwest::Client,
    target: Arc<Target>,
    body: &Bytes,
    kind: Kind,
    concurrency: usize,
    duration: Duration,
) -> Result<LoadRun, BoxError> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let client = client.clone();
        let target = Arc::clone(&target);
        let body = body.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let (mut errors, mut first_error) = (0_u64, None::<String>);
            while Instant::now() < deadline {
                let outcome = match kind {
                    Kind::Plain => plain(&client, &target, &body).await.map(|(d, _)| d),
                    Kind::Stream => stream(&client, &target, &body).await.map(|(t, _)| t.total),
                };
                match outcome {
                    Ok(d) => latencies.push(nanos(d)),
                    Err(err) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| err.to_string());
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut run = LoadRun {
        completed: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for worker in workers {
        let (latencies, errors, first_error) = worker.await?;
        run.completed += latencies.len() as u64;
        run.latencies.extend(latencies);
        run.errors += errors;
        if run.first_error.is_none() {
            run.first_error = first_error;
        }
    }
    run.elapsed = start.elapsed();
    Ok(run)
}
