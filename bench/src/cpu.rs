//! CPU time a process has used, from `/proc/PID/stat` (Linux only; `None`
//! elsewhere). The benchmark divides it by the requests of a run to tell the
//! gateway's CPU cost per request apart from the time its requests spend
//! waiting to be scheduled, which on a small machine can dominate latency.

use std::time::Duration;

/// Clock ticks per second of `/proc` times (`USER_HZ`, 100 on Linux).
const USER_HZ: u64 = 100;

/// User + system CPU time of process `pid` (this process when `None`), all
/// threads, dead ones included; 10 ms resolution.
pub fn process_cpu(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3;
    // utime and stime are fields 14 and 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

/// A CPU-time reading of the gateway and of this process.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    gateway: Option<Duration>,
    bench: Option<Duration>,
}

impl Reading {
    pub fn now(gateway_pid: Option<u32>) -> Reading {
        Reading {
            gateway: gateway_pid.and_then(|pid| process_cpu(Some(pid))),
            bench: process_cpu(None),
        }
    }

    /// CPU time used since `self`, for (gateway, bench process).
    pub fn delta(&self, later: &Reading) -> (Option<Duration>, Option<Duration>) {
        let d = |a: Option<Duration>, b: Option<Duration>| Some(b?.saturating_sub(a?));
        (d(self.gateway, later.gateway), d(self.bench, later.bench))
    }

    /// CPU µs per request since `self`, for (gateway, bench process).
    pub fn per_request(&self, later: &Reading, requests: u64) -> (Option<f64>, Option<f64>) {
        let (gateway, bench) = self.delta(later);
        let per = |d: Option<Duration>| {
            d.filter(|_| requests > 0)
                .map(|d| d.as_secs_f64() * 1e6 / requests as f64)
        };
        (per(gateway), per(bench))
    }
}
