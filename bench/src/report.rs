//! Turning samples into figures: percentiles from sorted samples, the
//! "added by the gateway" differences, the pass/fail checks against the
//! targets, and the two renderings (a plain-text table, a JSON document).

use serde_json::{Value, json};

use crate::measure::LoadRun;
use crate::memory::{Startup, StreamMemory};

/// Distribution of one set of samples, in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub n: usize,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: f64,
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Summary {
    pub fn of(samples: &[u64]) -> Summary {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let sum: u128 = sorted.iter().map(|&s| u128::from(s)).sum();
        Summary {
            n: sorted.len(),
            min: sorted.first().copied().unwrap_or(0),
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            max: sorted.last().copied().unwrap_or(0),
            mean: if sorted.is_empty() {
                0.0
            } else {
                sum as f64 / sorted.len() as f64
            },
        }
    }

    fn json(&self) -> Value {
        json!({
            "n": self.n,
            "min_us": us(self.min as f64), "p50_us": us(self.p50 as f64),
            "p90_us": us(self.p90 as f64), "p99_us": us(self.p99 as f64),
            "max_us": us(self.max as f64), "mean_us": us(self.mean),
        })
    }
}

/// Nanoseconds to microseconds, rounded to 0.1.
fn us(ns: f64) -> f64 {
    (ns / 100.0).round() / 10.0
}

/// Difference of two sample values, in µs (may be negative).
fn added_us(gateway: u64, direct: u64) -> f64 {
    us(gateway as f64 - direct as f64)
}

/// One fixed-duration run, summarized.
#[derive(Clone, Debug)]
pub struct Load {
    pub completed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub per_second: f64,
    pub latency: Summary,
}

impl Load {
    pub fn of(run: &LoadRun) -> Load {
        Load {
            completed: run.completed,
            errors: run.errors,
            first_error: run.first_error.clone(),
            seconds: run.elapsed.as_secs_f64(),
            per_second: run.per_second(),
            latency: Summary::of(&run.latencies),
        }
    }

    fn json(&self) -> Value {
        json!({
            "completed": self.completed, "errors": self.errors, "first_error": self.first_error,
            "seconds": (self.seconds * 1000.0).round() / 1000.0,
            "requests_per_second": self.per_second.round(),
            "latency": self.latency.json(),
        })
    }
}

/// A figure for both paths; `gateway` is `None` in `--direct-only` runs.
#[derive(Clone, Debug)]
pub struct Pair<T> {
    pub direct: T,
    pub gateway: Option<T>,
}

/// CPU time per request of one run, from `/proc` (10 ms resolution).
#[derive(Clone, Debug)]
pub struct CpuRow {
    pub run: String,
    pub path: &'static str,
    /// byok-local's CPU µs per request.
    pub gateway_us: Option<f64>,
    /// This process's (load generator and stand-in) CPU µs per request;
    /// only for throughput runs, where one path runs at a time.
    pub bench_us: Option<f64>,
}

impl CpuRow {
    pub fn new(
        run: &str,
        path: &'static str,
        gateway_us: Option<f64>,
        bench_us: Option<f64>,
    ) -> CpuRow {
        CpuRow {
            run: run.to_owned(),
            path,
            gateway_us,
            bench_us,
        }
    }
}

/// Everything a run measured, plus how it was run.
#[derive(Debug)]
pub struct Report {
    pub started_at: String,
    pub cpus: usize,
    /// CPU model, CPUs, memory and kernel, read once.
    pub machine: String,
    /// `--pin`: the CPU byok-local ran on (the benchmark ran on CPU 0).
    pub gateway_cpu: Option<usize>,
    pub requests: usize,
    pub warmup: usize,
    pub concurrency: usize,
    pub duration_s: f64,
    pub byok_local: Option<String>,
    pub plain: Pair<Summary>,
    pub ttfb: Pair<Summary>,
    pub stream_total: Pair<Summary>,
    pub load_plain: Pair<Load>,
    pub load_stream: Option<Pair<Load>>,
    /// Calls the stand-in answered during the gateway's runs, against the
    /// requests the gateway answered: equal when every request went upstream.
    pub upstream_calls: Option<(u64, u64)>,
    /// CPU time per request, by run and path.
    pub cpu: Vec<CpuRow>,
    /// byok-local's start and idle memory.
    pub startup: Option<Startup>,
    /// byok-local's memory with many streams open.
    pub stream_memory: Option<StreamMemory>,
    /// Further rows of the summary (the team path under a budget, LiteLLM).
    pub extra_checks: Vec<Check>,
    /// Anything that looked wrong during the run.
    pub notes: Vec<String>,
}

/// A target, the figures it is checked on, and whether the run met it.
#[derive(Clone, Debug)]
pub struct Check {
    pub what: &'static str,
    /// The figure direct ("-" where only byok-local has one).
    pub direct: String,
    /// The figure through byok-local.
    pub gateway: String,
    /// What the target is checked on: the difference, share or figure.
    pub measured: String,
    pub pass: bool,
}

/// Target: byok-local's resident memory when idle (KiB).
pub const IDLE_RSS_MAX_KIB: u64 = 16 * 1024;
/// Target: resident memory per open stream (KiB).
pub const STREAM_MAX_KIB: f64 = 16.0;

/// Target: added latency at p50, concurrency 1 (µs).
pub const ADDED_P50_MAX_US: f64 = 100.0;
/// Target: added latency at p99, concurrency 1 (µs).
pub const ADDED_P99_MAX_US: f64 = 500.0;
/// Target: gateway throughput as a share of direct, at high concurrency.
pub const THROUGHPUT_MIN_RATIO: f64 = 0.5;
/// Target: added time to first byte, streaming (µs).
pub const ADDED_TTFB_MAX_US: f64 = 1000.0;

impl Report {
    /// The checks against the targets (empty without a gateway run).
    pub fn checks(&self) -> Vec<Check> {
        let mut checks = Vec::new();
        if let Some(g) = &self.plain.gateway {
            let d = &self.plain.direct;
            let p50 = added_us(g.p50, d.p50);
            let p99 = added_us(g.p99, d.p99);
            checks.push(Check {
                what: "added latency p50 ≤ 100 µs (c=1)",
                direct: format!("{} µs", fmt_us(d.p50 as f64)),
                gateway: format!("{} µs", fmt_us(g.p50 as f64)),
                measured: format!("{p50:.1} µs"),
                pass: p50 <= ADDED_P50_MAX_US,
            });
            checks.push(Check {
                what: "added latency p99 ≤ 500 µs (c=1)",
                direct: format!("{} µs", fmt_us(d.p99 as f64)),
                gateway: format!("{} µs", fmt_us(g.p99 as f64)),
                measured: format!("{p99:.1} µs"),
                pass: p99 <= ADDED_P99_MAX_US,
            });
        }
        if let Some(g) = &self.load_plain.gateway {
            let ratio = ratio(g.per_second, self.load_plain.direct.per_second);
            checks.push(Check {
                what: "throughput ≥ 50 % of direct (non-streaming)",
                direct: format!("{:.0} req/s", self.load_plain.direct.per_second),
                gateway: format!("{:.0} req/s", g.per_second),
                measured: format!("{:.1} %", ratio * 100.0),
                pass: ratio >= THROUGHPUT_MIN_RATIO,
            });
        }
        if let Some(g) = &self.ttfb.gateway {
            let d = &self.ttfb.direct;
            for (what, direct, gateway) in [
                ("added TTFB p50 ≤ 1 ms (streaming, c=1)", d.p50, g.p50),
                ("added TTFB p99 ≤ 1 ms (streaming, c=1)", d.p99, g.p99),
            ] {
                let added = added_us(gateway, direct);
                checks.push(Check {
                    what,
                    direct: format!("{} µs", fmt_us(direct as f64)),
                    gateway: format!("{} µs", fmt_us(gateway as f64)),
                    measured: format!("{added:.1} µs"),
                    pass: added <= ADDED_TTFB_MAX_US,
                });
            }
        }
        if let Some(s) = &self.startup {
            checks.push(Check {
                what: "idle resident memory ≤ 16 MB",
                direct: "-".to_owned(),
                gateway: format!("{:.1} MiB", s.idle_rss_kib as f64 / 1024.0),
                measured: format!("{:.1} MiB", s.idle_rss_kib as f64 / 1024.0),
                pass: s.idle_rss_kib <= IDLE_RSS_MAX_KIB,
            });
        }
        if let Some(m) = &self.stream_memory {
            let per = m.per_stream_kib();
            checks.push(Check {
                what: "memory per open stream ≤ 16 KiB",
                direct: "-".to_owned(),
                gateway: format!(
                    "{} streams: +{:.1} MiB",
                    m.streams,
                    (m.open_kib.saturating_sub(m.before_kib)) as f64 / 1024.0
                ),
                measured: format!("{per:.1} KiB"),
                pass: per <= STREAM_MAX_KIB,
            });
        }
        checks.extend(self.extra_checks.iter().cloned());
        checks
    }

    /// The plain-text report.
    pub fn table(&self) -> String {
        let machine = &self.machine;
        let mut out = String::new();
        let line = |out: &mut String, s: &str| {
            out.push_str(s);
            out.push('\n');
        };
        line(
            &mut out,
            "byok-bench: byok-local vs. calling the upstream stand-in directly (loopback, HTTP/1.1 keep-alive)",
        );
        line(
            &mut out,
            &match self.gateway_cpu {
                Some(cpu) => format!(
                    "machine: {machine}; byok-local pinned to CPU {cpu}, the load generator and \
                     the stand-in (one process) to CPU 0"
                ),
                None => format!(
                    "machine: {machine}, shared by {}the load generator and the stand-in (one process)",
                    if self.plain.gateway.is_some() {
                        "byok-local, "
                    } else {
                        ""
                    }
                ),
            },
        );
        line(
            &mut out,
            &format!(
                "run: {} requests per path at concurrency 1 after {} warm-up, paths interleaved; \
                 {} workers for {} s per path per throughput run",
                self.requests, self.warmup, self.concurrency, self.duration_s
            ),
        );
        line(
            &mut out,
            "added = gateway − direct at the same percentile; times in µs",
        );
        line(&mut out, "");

        line(&mut out, "1. latency, concurrency 1, non-streaming");
        let mut rows = vec![row(&["path", "p50", "p90", "p99", "mean", "max"])];
        let latency_row = |name: &str, s: &Summary| {
            vec![
                name.to_owned(),
                fmt_us(s.p50 as f64),
                fmt_us(s.p90 as f64),
                fmt_us(s.p99 as f64),
                fmt_us(s.mean),
                fmt_us(s.max as f64),
            ]
        };
        rows.push(latency_row("direct", &self.plain.direct));
        if let Some(g) = &self.plain.gateway {
            let d = &self.plain.direct;
            rows.push(latency_row("gateway", g));
            rows.push(vec![
                "added".to_owned(),
                format!("{:.1}", added_us(g.p50, d.p50)),
                format!("{:.1}", added_us(g.p90, d.p90)),
                format!("{:.1}", added_us(g.p99, d.p99)),
                format!("{:.1}", us(g.mean - d.mean)),
                String::new(),
            ]);
        }
        render(&mut out, &rows);
        line(&mut out, "");

        line(
            &mut out,
            "2. streaming, concurrency 1 (TTFB = first body chunk)",
        );
        let mut rows = vec![row(&[
            "path",
            "TTFB p50",
            "TTFB p99",
            "total p50",
            "total p99",
        ])];
        let stream_row = |name: &str, f: &Summary, t: &Summary| {
            vec![
                name.to_owned(),
                fmt_us(f.p50 as f64),
                fmt_us(f.p99 as f64),
                fmt_us(t.p50 as f64),
                fmt_us(t.p99 as f64),
            ]
        };
        rows.push(stream_row(
            "direct",
            &self.ttfb.direct,
            &self.stream_total.direct,
        ));
        if let (Some(f), Some(t)) = (&self.ttfb.gateway, &self.stream_total.gateway) {
            let (df, dt) = (&self.ttfb.direct, &self.stream_total.direct);
            rows.push(stream_row("gateway", f, t));
            rows.push(vec![
                "added".to_owned(),
                format!("{:.1}", added_us(f.p50, df.p50)),
                format!("{:.1}", added_us(f.p99, df.p99)),
                format!("{:.1}", added_us(t.p50, dt.p50)),
                format!("{:.1}", added_us(t.p99, dt.p99)),
            ]);
        }
        render(&mut out, &rows);
        line(&mut out, "");

        line(
            &mut out,
            &format!(
                "3. throughput, concurrency {}, closed loop, {} s per path in slices of ≤ 2 s, paths taking turns",
                self.concurrency, self.duration_s
            ),
        );
        let mut rows = vec![row(&["path", "kind", "req/s", "p50", "p99", "errors"])];
        let mut load_rows = |kind: &str, pair: &Pair<Load>| {
            let load_row = |name: &str, l: &Load| {
                vec![
                    name.to_owned(),
                    kind.to_owned(),
                    format!("{:.0}", l.per_second),
                    fmt_us(l.latency.p50 as f64),
                    fmt_us(l.latency.p99 as f64),
                    l.errors.to_string(),
                ]
            };
            rows.push(load_row("direct", &pair.direct));
            if let Some(g) = &pair.gateway {
                rows.push(load_row("gateway", g));
                rows.push(vec![
                    "gateway/direct".to_owned(),
                    kind.to_owned(),
                    format!(
                        "{:.1} %",
                        ratio(g.per_second, pair.direct.per_second) * 100.0
                    ),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
        };
        load_rows("plain", &self.load_plain);
        if let Some(pair) = &self.load_stream {
            load_rows("stream", pair);
        }
        render(&mut out, &rows);
        for (name, l) in self.loads() {
            if let Some(err) = &l.first_error {
                line(
                    &mut out,
                    &format!("   {name}: {} errors, first: {err}", l.errors),
                );
            }
        }
        if let Some((served, answered)) = self.upstream_calls {
            line(
                &mut out,
                &format!(
                    "   upstream calls during gateway runs: {served} for {answered} gateway requests{}",
                    if served == answered {
                        ""
                    } else {
                        " (MISMATCH)"
                    }
                ),
            );
        }
        line(&mut out, "");

        if self
            .cpu
            .iter()
            .any(|c| c.gateway_us.is_some() || c.bench_us.is_some())
        {
            line(
                &mut out,
                "4. CPU time per request (µs, from /proc, 10 ms ticks; bench = load generator + stand-in)",
            );
            let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
            let mut rows = vec![row(&["run", "path", "byok-local", "bench"])];
            rows.extend(self.cpu.iter().map(|c| {
                vec![
                    c.run.clone(),
                    c.path.to_owned(),
                    opt(c.gateway_us),
                    opt(c.bench_us),
                ]
            }));
            render_aligned(&mut out, &rows, 2);
            line(&mut out, "");
        }
        if self.startup.is_some() || self.stream_memory.is_some() {
            line(&mut out, "byok-local as a process (embedded store)");
            let mut rows = Vec::new();
            if let Some(s) = &self.startup {
                rows.push(vec![
                    "process start → listening".to_owned(),
                    format!("{:.1} ms", s.listening.as_secs_f64() * 1e3),
                ]);
                rows.push(vec![
                    "first completion after start".to_owned(),
                    format!("{:.2} ms", s.first_answer.as_secs_f64() * 1e3),
                ]);
                rows.push(vec![
                    "resident memory, idle (after it)".to_owned(),
                    format!("{:.1} MiB", s.idle_rss_kib as f64 / 1024.0),
                ]);
            }
            if let Some(m) = &self.stream_memory {
                rows.push(vec![
                    format!("resident memory, {} streams open", m.streams),
                    format!(
                        "{:.1} → {:.1} MiB, {:.1} KiB per stream",
                        m.before_kib as f64 / 1024.0,
                        m.open_kib as f64 / 1024.0,
                        m.per_stream_kib()
                    ),
                ]);
            }
            render(&mut out, &rows);
            line(&mut out, "");
        }
        for note in &self.notes {
            line(&mut out, &format!("note: {note}"));
        }
        if !self.notes.is_empty() {
            line(&mut out, "");
        }
        out
    }

    /// The summary table: every target with its figures, direct and
    /// through byok-local.
    pub fn summary(&self) -> String {
        let machine = &self.machine;
        let mut out = String::new();
        let line = |out: &mut String, s: &str| {
            out.push_str(s);
            out.push('\n');
        };
        let checks = self.checks();
        if !checks.is_empty() {
            line(&mut out, "");
            line(
                &mut out,
                &format!("summary: direct vs byok-local against the targets ({machine})"),
            );
            let mut rows = vec![row(&["", "target", "direct", "byok-local", "measured"])];
            rows.extend(checks.iter().map(|c| {
                vec![
                    if c.pass { "PASS" } else { "FAIL" }.to_owned(),
                    c.what.to_owned(),
                    c.direct.clone(),
                    c.gateway.clone(),
                    c.measured.clone(),
                ]
            }));
            render_aligned(&mut out, &rows, 2);
        }
        out
    }

    fn loads(&self) -> Vec<(String, &Load)> {
        let mut all = vec![("direct plain".to_owned(), &self.load_plain.direct)];
        if let Some(g) = &self.load_plain.gateway {
            all.push(("gateway plain".to_owned(), g));
        }
        if let Some(pair) = &self.load_stream {
            all.push(("direct stream".to_owned(), &pair.direct));
            if let Some(g) = &pair.gateway {
                all.push(("gateway stream".to_owned(), g));
            }
        }
        all
    }

    /// The JSON document `--json` writes.
    pub fn json(&self) -> Value {
        let pair = |p: &Pair<Summary>| {
            let added = p.gateway.as_ref().map(|g| {
                json!({
                    "p50_us": added_us(g.p50, p.direct.p50),
                    "p90_us": added_us(g.p90, p.direct.p90),
                    "p99_us": added_us(g.p99, p.direct.p99),
                    "mean_us": us(g.mean - p.direct.mean),
                })
            });
            json!({"direct": p.direct.json(), "gateway": p.gateway.map(|g| g.json()), "added": added})
        };
        let load = |p: &Pair<Load>| {
            json!({
                "direct": p.direct.json(),
                "gateway": p.gateway.as_ref().map(Load::json),
                "ratio": p.gateway.as_ref().map(|g| {
                    (ratio(g.per_second, p.direct.per_second) * 1000.0).round() / 1000.0
                }),
            })
        };
        json!({
            "started_at": self.started_at,
            "setup": {
                "cpus": self.cpus,
                "gatewayCpu": self.gateway_cpu,
                "requests": self.requests,
                "warmup": self.warmup,
                "concurrency": self.concurrency,
                "duration_s": self.duration_s,
                "byok_local": self.byok_local,
                "note": "loopback, HTTP/1.1 keep-alive; byok-local, the load generator and the stand-in share the machine's CPUs",
            },
            "latency_c1_plain": pair(&self.plain),
            "stream_c1_ttfb": pair(&self.ttfb),
            "stream_c1_total": pair(&self.stream_total),
            "throughput_plain": load(&self.load_plain),
            "throughput_stream": self.load_stream.as_ref().map(load),
            "upstream_calls": self.upstream_calls.map(|(s, a)| json!({"served": s, "gateway_answered": a})),
            "cpu_us_per_request": self.cpu.iter().map(|c| json!({
                "run": c.run, "path": c.path,
                "byok_local": c.gateway_us.map(|v| (v * 10.0).round() / 10.0),
                "bench": c.bench_us.map(|v| (v * 10.0).round() / 10.0),
            })).collect::<Vec<_>>(),
            "notes": self.notes,
            "machine": self.machine,
            "startup": self.startup.map(|s| json!({
                "listening_ms": s.listening.as_secs_f64() * 1e3,
                "first_answer_ms": s.first_answer.as_secs_f64() * 1e3,
                "idle_rss_kib": s.idle_rss_kib,
            })),
            "stream_memory": self.stream_memory.map(|m| json!({
                "streams": m.streams, "before_kib": m.before_kib, "open_kib": m.open_kib,
                "per_stream_kib": (m.per_stream_kib() * 10.0).round() / 10.0,
            })),
            "targets": self.checks().iter().map(|c| json!({
                "target": c.what, "direct": c.direct, "byok_local": c.gateway,
                "measured": c.measured, "pass": c.pass
            })).collect::<Vec<_>>(),
        })
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

fn fmt_us(ns: f64) -> String {
    format!("{:.1}", us(ns))
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// Appends `rows` as aligned columns: the first left-aligned, the rest right-aligned.
fn render(out: &mut String, rows: &[Vec<String>]) {
    render_aligned(out, rows, 1);
}

/// Appends `rows` as aligned columns: the first `left` left-aligned, the rest right-aligned.
fn render_aligned(out: &mut String, rows: &[Vec<String>], left: usize) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut text = String::from("   ");
        for (c, cell) in r.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            if c > 0 {
                text.push_str("  ");
            }
            if c < left {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            } else {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
}
