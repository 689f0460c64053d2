//! byok-local as a process: how fast it starts (process start → listening
//! → first answered completion), its resident memory idle, and what each
//! open stream costs (N streams held open at once by the stand-in, resident
//! memory before and while they are open). Also the machine's description
//! for the report's header. Everything is read from `/proc`.

use std::error::Error;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::measure::{Bodies, Target};
use crate::standin::StandIn;

type BoxError = Box<dyn Error + Send + Sync>;

/// byok-local's start, measured by the benchmark.
#[derive(Clone, Copy, Debug)]
pub struct Startup {
    /// Process start → its "listening" line.
    pub listening: Duration,
    /// Process start → its first completion answered (after storing a key).
    pub first_answer: Duration,
    /// Resident memory right after that first answer, KiB.
    pub idle_rss_kib: u64,
}

/// Memory of open streams.
#[derive(Clone, Copy, Debug)]
pub struct StreamMemory {
    pub streams: usize,
    /// Resident memory before the streams, KiB.
    pub before_kib: u64,
    /// Resident memory with every stream open, KiB.
    pub open_kib: u64,
}

impl StreamMemory {
    /// KiB per open stream.
    pub fn per_stream_kib(&self) -> f64 {
        self.open_kib.saturating_sub(self.before_kib) as f64 / self.streams.max(1) as f64
    }
}

/// `VmRSS` of `pid`, KiB.
pub fn rss_kib(pid: u32) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status").into())
}

/// e.g. `Intel(R) Xeon(R) Platinum 8488C, 2 CPUs, 23.4 GiB, Linux 6.1.0`.
pub fn machine_description(cpus: usize) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or_else(String::new, |kib| {
            format!(", {:.1} GiB", kib / 1024.0 / 1024.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| String::new(), |k| format!(", Linux {}", k.trim()));
    format!("{model}, {cpus} CPUs{memory}{kernel}")
}

/// Opens `streams` streamed completions to `target` at once with the
/// stand-in holding each after its first event, reads `pid`'s resident
/// memory before and while they are all open, then lets them finish.
pub async fn open_streams(
    standin: &StandIn,
    target: &Target,
    bodies: &Bodies,
    pid: u32,
    streams: usize,
) -> Result<StreamMemory, BoxError> {
    // A client of its own: one connection per stream, none reused.
    let client = reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(120))
        .build()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_kib = rss_kib(pid)?;
    standin.hold();
    let mut open = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut response = client
            .post(&target.url)
            .header(reqwest::header::AUTHORIZATION, target.auth.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bodies.stream.clone())
            .send()
            .await?
            .error_for_status()?;
        // Past its first byte: the stream is open end to end.
        response.chunk().await?;
        open.push(response);
    }
    let held = standin.counters.held.load(Ordering::Relaxed);
    if held < streams as u64 {
        standin.release();
        return Err(format!("only {held} of {streams} streams reached the stand-in's hold").into());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open_kib = rss_kib(pid)?;
    standin.release();
    for mut response in open {
        while response.chunk().await?.is_some() {}
    }
    Ok(StreamMemory {
        streams,
        before_kib,
        open_kib,
    })
}
