//! byok-bench: what the gateway costs. Starts a fast in-process upstream
//! stand-in and the real `byok-local` pointed at it, then sends the same
//! chat-completion requests to both (direct vs. through the gateway) in one
//! run on loopback, and prints the figures side by side with the targets:
//! added latency at concurrency 1, added time to first byte when streaming,
//! and throughput at high concurrency.
//!
//! `cargo run --release -p byok-bench -- --help` lists the options.
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line benchmark: the table goes to stdout, progress and errors to stderr"
)]

mod cpu;
mod gateway;
mod litellm;
mod measure;
mod memory;
mod report;
mod standin;

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::gateway::{FAKE_OPENAI_KEY, Gateway};
use crate::measure::{Bodies, Kind, Target};
use crate::report::{CpuRow, Load, Pair, Report, Summary};
use crate::standin::{REPLY, StandIn};

type BoxError = Box<dyn Error + Send + Sync>;

const USAGE: &str = "\
usage: cargo run --release -p byok-bench -- [options]

  --requests N        requests per path at concurrency 1, each for non-streaming
                      and streaming (default 2000)
  --warmup N          unrecorded requests per path before those (default 300)
  --concurrency N     workers in the throughput runs (default 64)
  --duration SECS     throughput run length per path (default 10), in slices of
                      at most 2 s, the paths taking turns
  --no-stream-load    skip the streaming throughput runs
  --json PATH         also write the figures as JSON to PATH
  --strict            exit 1 when a target is missed (default: always exit 0)
  --byok-local PATH   use this byok-local binary instead of building one with
                      `cargo build --release -p byok-local`
  --direct-only       measure the direct path only (no byok-local)
  --baseline PATH     also run this other byok-local build (e.g. an earlier
                      commit's) and compare it with this one at concurrency 1,
                      both in the same run, taking turns request by request
  --pin               run byok-local on CPU 1 and the load generator and
                      stand-in on CPU 0 (with taskset; needs 2 CPUs), so
                      the gateway has a core of its own
  --budget            also compare, on the same byok-local, a user on the
                      team path under a paused budget (reserve and settle on
                      every request) with the user on their own key, taking
                      turns request by request
  --open-streams N    streams held open at once for the memory-per-stream
                      figure (default 200; 0 skips it)
  --litellm PATH      also compare byok-local with the LiteLLM proxy started
                      from PATH (the `litellm` command of
                      `pip install 'litellm[proxy]'`), one worker, on the
                      same stand-in and (with --pin) the same CPU

Exit status: 0, or 1 with --strict and a missed target, or 2 on an error.";

#[derive(Debug)]
struct Options {
    requests: usize,
    warmup: usize,
    concurrency: usize,
    duration: Duration,
    stream_load: bool,
    json: Option<PathBuf>,
    strict: bool,
    byok_local: Option<PathBuf>,
    direct_only: bool,
    baseline: Option<PathBuf>,
    budget: bool,
    pin: bool,
    litellm: Option<PathBuf>,
    open_streams: usize,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, BoxError> {
    let mut opts = Options {
        requests: 2000,
        warmup: 300,
        concurrency: 64,
        duration: Duration::from_secs(10),
        stream_load: true,
        json: None,
        strict: false,
        byok_local: None,
        direct_only: false,
        baseline: None,
        budget: false,
        pin: false,
        litellm: None,
        open_streams: 200,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| -> BoxError { format!("{name} needs a value").into() })
        };
        let positive = |name: &str, v: String| -> Result<usize, BoxError> {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name} needs a positive integer, not {v:?}").into())
        };
        match arg.as_str() {
            "--requests" => opts.requests = positive("--requests", value("--requests")?)?,
            "--warmup" => {
                let v = value("--warmup")?;
                opts.warmup = v
                    .parse()
                    .map_err(|_| format!("--warmup needs an integer, not {v:?}"))?;
            }
            "--concurrency" => {
                opts.concurrency = positive("--concurrency", value("--concurrency")?)?;
            }
            "--duration" => {
                let v = value("--duration")?;
                let secs = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| format!("--duration needs positive seconds, not {v:?}"))?;
                opts.duration = Duration::from_secs_f64(secs);
            }
            "--no-stream-load" => opts.stream_load = false,
            "--json" => opts.json = Some(value("--json")?.into()),
            "--strict" => opts.strict = true,
            "--byok-local" => opts.byok_local = Some(value("--byok-local")?.into()),
            "--direct-only" => opts.direct_only = true,
            "--baseline" => opts.baseline = Some(value("--baseline")?.into()),
            "--budget" => opts.budget = true,
            "--pin" => opts.pin = true,
            "--litellm" => opts.litellm = Some(value("--litellm")?.into()),
            "--open-streams" => {
                let v = value("--open-streams")?;
                opts.open_streams = v
                    .parse()
                    .map_err(|_| format!("--open-streams needs an integer, not {v:?}"))?;
            }
            "-h" | "--help" | "help" => return Ok(None),
            other => return Err(format!("unknown option: {other}\n\n{USAGE}").into()),
        }
    }
    Ok(Some(opts))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("byok-bench: {err}");
            ExitCode::from(2)
        }
    }
}

fn progress(msg: &str) {
    eprintln!("byok-bench: {msg}");
}

/// Set on the benchmark's own re-run under `taskset` (`--pin`): the
/// machine's CPU count before pinning.
const PINNED_ENV: &str = "BYOK_BENCH_PINNED_FROM";
/// The CPU byok-local runs on with `--pin` (the benchmark takes CPU 0).
const GATEWAY_CPU: usize = 1;

/// `--pin`: runs this benchmark again on CPU 0 (`taskset -c 0`), waits for
/// it and passes its exit status on.
fn rerun_pinned() -> Result<ExitCode, BoxError> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return Err(format!("--pin needs 2 CPUs; this process may use {cpus}").into());
    }
    let status = std::process::Command::new("taskset")
        .args(["-c", "0"])
        .arg(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(PINNED_ENV, cpus.to_string())
        .status()
        .map_err(|e| format!("--pin runs taskset (util-linux): {e}"))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(2)),
        None => ExitCode::from(2),
    })
}

async fn run() -> Result<ExitCode, BoxError> {
    let Some(opts) = parse_args(std::env::args().skip(1))? else {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    };
    let pinned_from: Option<usize> = std::env::var(PINNED_ENV).ok().and_then(|v| v.parse().ok());
    if opts.pin && pinned_from.is_none() {
        return tokio::task::spawn_blocking(rerun_pinned).await?;
    }
    let gateway_cpu = pinned_from.map(|_| GATEWAY_CPU);
    let bin = if opts.direct_only {
        None
    } else {
        if opts.byok_local.is_none() {
            progress("building byok-local (cargo build --release -p byok-local)");
        }
        let explicit = opts.byok_local.clone();
        Some(tokio::task::spawn_blocking(move || gateway::locate(explicit)).await??)
    };

    let standin = StandIn::start().await?;
    let client = reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(opts.concurrency + 8)
        .timeout(Duration::from_secs(30))
        .build()?;
    let bodies = Bodies::new();
    let direct = Arc::new(Target::new(
        "direct",
        format!("{}/chat/completions", standin.base_url()),
        FAKE_OPENAI_KEY,
    )?);
    probe(&client, &direct, &bodies).await?;

    let mut gw = None;
    let mut startup = None;
    let mut stream_memory = None;
    if let Some(bin) = &bin {
        let (g, target) = start_gateway(bin, "gateway", &standin, &client, gateway_cpu).await?;
        let target = Arc::new(target);
        let first = std::time::Instant::now();
        let first_answer = measure::plain(&client, &target, &bodies.plain).await;
        if first_answer.is_ok() {
            startup = Some(memory::Startup {
                listening: g.listening_after,
                first_answer: first.elapsed(),
                idle_rss_kib: memory::rss_kib(g.pid)?,
            });
        }
        if let Err(err) = probe(&client, &target, &bodies).await {
            return Err(format!(
                "the gateway's POST /v1/chat/completions does not work yet: {err}\nbyok-local stderr:\n{}",
                g.stderr_tail()
            )
            .into());
        }
        if opts.open_streams > 0 {
            progress(&format!(
                "memory: {} streams held open at once",
                opts.open_streams
            ));
            stream_memory = Some(
                memory::open_streams(&standin, &target, &bodies, g.pid, opts.open_streams).await?,
            );
        }
        gw = Some((g, target));
    }
    let gateway_target = gw.as_ref().map(|(g, t)| (Arc::clone(t), g.pid));

    let result = measure_all(&opts, &client, &standin, &bodies, &direct, gateway_target).await;
    if let Some((g, _)) = &mut gw
        && result.is_err()
        && !g.alive()
    {
        return Err(format!(
            "{}\nbyok-local exited; its stderr:\n{}",
            result.err().map(|e| e.to_string()).unwrap_or_default(),
            g.stderr_tail()
        )
        .into());
    }
    let mut report = result?;
    report.byok_local = bin.map(|b| b.display().to_string());
    report.startup = startup;
    report.stream_memory = stream_memory;
    let baseline = match (&opts.baseline, &gw) {
        (Some(path), Some((g, target))) => {
            Some(compare_baseline(&opts, &client, &standin, &bodies, target, g.pid, path).await?)
        }
        _ => None,
    };
    let budget = match (opts.budget, &gw) {
        (true, Some((g, target))) => {
            Some(compare_budget(&opts, &client, &standin, &bodies, target, g).await?)
        }
        _ => None,
    };
    let litellm = match (&opts.litellm, &gw) {
        (Some(path), Some((g, target))) => {
            Some(compare_litellm(&opts, &client, &standin, &bodies, target, g.pid, path).await?)
        }
        _ => None,
    };
    if let Some((mut g, _)) = gw {
        if !g.alive() {
            report
                .notes
                .push("byok-local was no longer running at the end of the run".to_owned());
        }
        drop(g);
    }
    let other_model = standin
        .counters
        .other_model
        .load(std::sync::atomic::Ordering::Relaxed);
    let refused = standin
        .counters
        .refused
        .load(std::sync::atomic::Ordering::Relaxed);
    if refused > 0 {
        report.notes.push(format!(
            "the stand-in refused {refused} requests (no Bearer key or a body that is not JSON)"
        ));
    }
    if other_model > 0 {
        report.notes.push(format!(
            "the stand-in received {other_model} requests for a model other than {}",
            standin::MODEL
        ));
    }

    if let Some(g) = &report.stream_total.gateway
        && g.p50 > 20_000_000
        && report.stream_total.direct.p50 < 5_000_000
    {
        report.notes.push(format!(
            "gateway streams take {:.1} ms at p50 against {:.2} ms direct; a ~40 ms floor is \
             the signature of Nagle's algorithm meeting delayed ACKs (TCP_NODELAY not set on \
             the gateway's accepted connections)",
            g.p50 as f64 / 1e6,
            report.stream_total.direct.p50 as f64 / 1e6
        ));
    }

    if let Some(budget) = &budget {
        let direct = &report.plain.direct;
        let ttfb_direct = &report.ttfb.direct;
        let [team, _] = &budget.plain;
        let [team_ttfb, _] = &budget.ttfb;
        for (what, d, g, max) in [
            (
                "team path + budget: added p50 ≤ 100 µs (c=1)",
                direct.p50,
                team.p50,
                report::ADDED_P50_MAX_US,
            ),
            (
                "team path + budget: added p99 ≤ 500 µs (c=1)",
                direct.p99,
                team.p99,
                report::ADDED_P99_MAX_US,
            ),
            (
                "team path + budget: added TTFB p50 ≤ 1 ms",
                ttfb_direct.p50,
                team_ttfb.p50,
                report::ADDED_TTFB_MAX_US,
            ),
        ] {
            let added = (g as f64 - d as f64) / 1e3;
            report.extra_checks.push(report::Check {
                what,
                direct: format!("{:.1} µs", d as f64 / 1e3),
                gateway: format!("{:.1} µs", g as f64 / 1e3),
                measured: format!("{added:.1} µs"),
                pass: added <= max,
            });
        }
        let direct_rps = report.load_plain.direct.per_second;
        let share = budget.load[0].0 / direct_rps.max(f64::MIN_POSITIVE);
        report.extra_checks.push(report::Check {
            what: "team path + budget: throughput ≥ 50 % of direct",
            direct: format!("{direct_rps:.0} req/s"),
            gateway: format!("{:.0} req/s", budget.load[0].0),
            measured: format!("{:.1} %", share * 100.0),
            pass: share >= report::THROUGHPUT_MIN_RATIO,
        });
    }
    print!("{}", report.table());
    let mut json = report.json();
    if let Some(baseline) = &baseline {
        print!("{}", baseline.table());
        if let Value::Object(map) = &mut json {
            map.insert("baseline".to_owned(), baseline.json());
        }
    }
    if let Some(budget) = &budget {
        print!("{}", budget.table());
        if let Value::Object(map) = &mut json {
            map.insert("budget".to_owned(), budget.json());
        }
    }
    if let Some(run) = &litellm {
        print!("{}", run.table());
        // byok-local's own figures come from its runs alone (sections 1
        // and 3), not from the interleaved ones next to LiteLLM.
        let direct_p50 = report.plain.direct.p50 as f64 / 1e3;
        let direct_rps = report.load_plain.direct.per_second;
        let byok_p50 = report.plain.gateway.map_or(0.0, |g| g.p50 as f64 / 1e3) - direct_p50;
        let byok_rps = report
            .load_plain
            .gateway
            .as_ref()
            .map_or(0.0, |g| g.per_second);
        let litellm_p50 = run.plain[1].p50 as f64 / 1e3 - direct_p50;
        let litellm_rps = run.load[1].0;
        println!(
            "   added over direct at p50 (c=1, non-streaming): byok-local {byok_p50:.0} µs, \
             LiteLLM {litellm_p50:.0} µs ({:.0}×)\n   \
             throughput at c={}: byok-local {:.1} %, LiteLLM {:.2} % of direct ({:.0}×)",
            litellm_p50 / byok_p50.max(1.0),
            run.concurrency,
            byok_rps / direct_rps * 100.0,
            litellm_rps / direct_rps * 100.0,
            byok_rps / litellm_rps.max(f64::MIN_POSITIVE),
        );
        if let Value::Object(map) = &mut json {
            map.insert("litellm".to_owned(), run.json());
        }
    }
    print!("{}", report.summary());
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")?;
        progress(&format!("wrote {}", path.display()));
    }
    let missed = report.checks().iter().any(|c| !c.pass);
    Ok(if opts.strict && missed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Starts `bin` in front of the stand-in, stores the user's key, and
/// returns it with the target its completions are sent to, named `name`.
async fn start_gateway(
    bin: &std::path::Path,
    name: &'static str,
    standin: &StandIn,
    client: &reqwest::Client,
    cpu: Option<usize>,
) -> Result<(Gateway, Target), BoxError> {
    let base_url = standin.base_url();
    let bin = bin.to_owned();
    let g = tokio::task::spawn_blocking(move || Gateway::start(&bin, &base_url, cpu)).await??;
    progress(&format!(
        "{name}: byok-local (pid {}) listening on {}",
        g.pid, g.base
    ));
    g.store_key(client).await?;
    let target = Target::new(name, format!("{}/v1/chat/completions", g.base), &g.token)?;
    Ok((g, target))
}

/// Two targets side by side (this build against another build, or the
/// team path under a budget against the user's own key), at concurrency 1.
struct BaselineRun {
    /// The section's heading.
    title: String,
    /// Short names of the two, for the columns and the JSON.
    names: [&'static str; 2],
    path: String,
    /// Non-streaming latency: this build, the baseline.
    plain: [Summary; 2],
    /// Streaming time to first byte: this build, the baseline.
    ttfb: [Summary; 2],
    /// Streaming total time: this build, the baseline.
    stream_total: [Summary; 2],
    /// At `concurrency`, non-streaming: (requests/s, byok-local CPU µs per
    /// request) of this build and the baseline.
    load: [(f64, Option<f64>); 2],
    concurrency: usize,
}

impl BaselineRun {
    fn table(&self) -> String {
        let us = |ns: u64| ns as f64 / 1e3;
        let [a, b] = self.names;
        let mut out = format!(
            "\n{}\n   {:<22} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            self.title,
            "figure",
            format!("{a} p50"),
            format!("{b} p50"),
            format!("{a} p99"),
            format!("{b} p99"),
            "Δ p50"
        );
        for (name, pair) in [
            ("latency, non-streaming", &self.plain),
            ("TTFB, streaming", &self.ttfb),
            ("total, streaming", &self.stream_total),
        ] {
            out.push_str(&format!(
                "   {:<22} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>+9.1}\n",
                name,
                us(pair[0].p50),
                us(pair[1].p50),
                us(pair[0].p99),
                us(pair[1].p99),
                us(pair[0].p50) - us(pair[1].p50),
            ));
        }
        let cpu = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |us| format!("{us:.1}"));
        out.push_str(&format!(
            "   c={} non-streaming: {a} {:.0} req/s ({} µs CPU/request), {b} {:.0} req/s ({} µs CPU/request)\n",
            self.concurrency,
            self.load[0].0,
            cpu(self.load[0].1),
            self.load[1].0,
            cpu(self.load[1].1),
        ));
        out
    }

    fn json(&self) -> Value {
        let [a, b] = self.names;
        let pair = |p: &[Summary; 2]| {
            serde_json::json!({
                a: {"p50_us": p[0].p50 as f64 / 1e3, "p99_us": p[0].p99 as f64 / 1e3},
                b: {"p50_us": p[1].p50 as f64 / 1e3, "p99_us": p[1].p99 as f64 / 1e3},
            })
        };
        serde_json::json!({
            "byok_local": self.path,
            "plain": pair(&self.plain),
            "ttfb": pair(&self.ttfb),
            "stream_total": pair(&self.stream_total),
            "load": {
                "concurrency": self.concurrency,
                a: {"per_second": self.load[0].0, "cpu_us_per_request": self.load[0].1},
                b: {"per_second": self.load[1].0, "cpu_us_per_request": self.load[1].1},
            },
        })
    }
}

/// Measures `targets` (two, on the gateways of `pids`) at concurrency 1,
/// taking turns, then each at `opts.concurrency`.
async fn compare(
    opts: &Options,
    client: &reqwest::Client,
    standin: &StandIn,
    bodies: &Bodies,
    targets: [(&Arc<Target>, u32); 2],
) -> Result<Compared, BoxError> {
    let plain_targets: [&Target; 2] = [targets[0].0.as_ref(), targets[1].0.as_ref()];
    let (n, warmup) = (opts.requests, opts.warmup);
    let plain = measure::latency(
        client,
        &plain_targets,
        &bodies.plain,
        Kind::Plain,
        warmup,
        n,
    )
    .await?;
    let stream = measure::latency(
        client,
        &plain_targets,
        &bodies.stream,
        Kind::Stream,
        warmup,
        n,
    )
    .await?;
    let both = |s: &[measure::Samples], pick: fn(&measure::Samples) -> &[u64]| {
        [
            Summary::of(s.first().map(pick).unwrap_or_default()),
            Summary::of(s.get(1).map(pick).unwrap_or_default()),
        ]
    };
    let paths = [
        (targets[0].0, Some(targets[0].1)),
        (targets[1].0, Some(targets[1].1)),
    ];
    let runs = load_runs(opts, client, standin, &paths, &bodies.plain, Kind::Plain).await?;
    let load_of = |r: Option<&PathRun>| {
        r.map_or((0.0, None), |r| {
            (Load::of(&r.run).per_second, r.gateway_us())
        })
    };
    Ok(Compared {
        plain: both(&plain, |s| &s.total),
        ttfb: both(&stream, |s| &s.first_byte),
        stream_total: both(&stream, |s| &s.total),
        load: [load_of(runs.first()), load_of(runs.get(1))],
        concurrency: opts.concurrency,
    })
}

/// What [`compare`] measured of two targets.
struct Compared {
    plain: [Summary; 2],
    ttfb: [Summary; 2],
    stream_total: [Summary; 2],
    load: [(f64, Option<f64>); 2],
    concurrency: usize,
}

impl Compared {
    /// The section titled `title`, the two named `names`.
    fn into_run(self, title: String, names: [&'static str; 2], path: String) -> BaselineRun {
        BaselineRun {
            title,
            names,
            path,
            plain: self.plain,
            ttfb: self.ttfb,
            stream_total: self.stream_total,
            load: self.load,
            concurrency: self.concurrency,
        }
    }
}

/// The same gateway's team path under a paused budget (a reservation and a
/// settlement on every request) against the user's own key.
async fn compare_budget(
    opts: &Options,
    client: &reqwest::Client,
    standin: &StandIn,
    bodies: &Bodies,
    own_key: &Arc<Target>,
    gateway: &Gateway,
) -> Result<BaselineRun, BoxError> {
    let team = Arc::new(gateway.budget_target(client).await?);
    probe(client, &team, bodies).await?;
    progress(&format!(
        "team path under a budget vs own key: {} warm-up + {} requests per path and kind",
        opts.warmup, opts.requests
    ));
    let compared = compare(
        opts,
        client,
        standin,
        bodies,
        [(&team, gateway.pid), (own_key, gateway.pid)],
    )
    .await?;
    Ok(compared.into_run(
        "6. team path under a paused budget vs the user's own key, same byok-local, \
                concurrency 1, taking turns"
            .to_owned(),
        ["budget", "own"],
        "this build".to_owned(),
    ))
}

/// Starts the LiteLLM proxy from `path` and measures `this` (byok-local)
/// against it, as [`compare_baseline`] does with another build.
async fn compare_litellm(
    opts: &Options,
    client: &reqwest::Client,
    standin: &StandIn,
    bodies: &Bodies,
    this: &Arc<Target>,
    this_pid: u32,
    path: &std::path::Path,
) -> Result<BaselineRun, BoxError> {
    let cpu = std::env::var_os(PINNED_ENV).map(|_| GATEWAY_CPU);
    progress("starting the LiteLLM proxy (it takes a while to import)");
    let proxy = litellm::LiteLlm::start(path, &standin.base_url(), cpu, client).await?;
    progress(&format!(
        "litellm: LiteLLM proxy (pid {}) listening on {}",
        proxy.pid, proxy.base
    ));
    let target = Arc::new(Target::new(
        "litellm",
        format!("{}/v1/chat/completions", proxy.base),
        &proxy.master_key,
    )?);
    if let Err(err) = probe(client, &target, bodies).await {
        return Err(format!(
            "LiteLLM's POST /v1/chat/completions does not work: {err}\nits stderr:\n{}",
            proxy.stderr_tail()
        )
        .into());
    }
    progress(&format!(
        "byok-local vs LiteLLM: {} warm-up + {} requests per gateway and kind",
        opts.warmup, opts.requests
    ));
    let compared = compare(
        opts,
        client,
        standin,
        bodies,
        [(this, this_pid), (&target, proxy.pid)],
    )
    .await?;
    drop(proxy);
    Ok(compared.into_run(
        "7. byok-local vs the LiteLLM proxy (one worker, same stand-in, same CPU), \
                concurrency 1, taking turns (byok-local's figures here include the CPU \
                LiteLLM keeps using after each of its answers)"
            .to_owned(),
        ["byok", "litellm"],
        path.display().to_string(),
    ))
}

/// Starts the baseline byok-local and measures it against `this` (the
/// current build's gateway) at concurrency 1, taking turns.
async fn compare_baseline(
    opts: &Options,
    client: &reqwest::Client,
    standin: &StandIn,
    bodies: &Bodies,
    this: &Arc<Target>,
    this_pid: u32,
    path: &std::path::Path,
) -> Result<BaselineRun, BoxError> {
    let cpu = std::env::var_os(PINNED_ENV).map(|_| GATEWAY_CPU);
    let (g, baseline) = start_gateway(path, "baseline", standin, client, cpu).await?;
    probe(client, &baseline, bodies).await?;
    progress(&format!(
        "this build vs the baseline: {} warm-up + {} requests per build and kind",
        opts.warmup, opts.requests
    ));
    let baseline = Arc::new(baseline);
    let compared = compare(
        opts,
        client,
        standin,
        bodies,
        [(this, this_pid), (&baseline, g.pid)],
    )
    .await?;
    drop(g);
    Ok(compared.into_run(
        format!(
            "5. this build vs the baseline build ({}), concurrency 1, taking turns",
            path.display()
        ),
        ["this", "baseline"],
        path.display().to_string(),
    ))
}

/// One request of each kind, checking the reply's content came through intact.
async fn probe(client: &reqwest::Client, target: &Target, bodies: &Bodies) -> Result<(), BoxError> {
    let (_, body) = measure::plain(client, target, &bodies.plain).await?;
    let json: Value = serde_json::from_slice(&body)?;
    let content = json
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str);
    if content != Some(REPLY) {
        return Err(format!("{}: unexpected completion: {json}", target.name).into());
    }
    let (_, body) = measure::stream(client, target, &bodies.stream).await?;
    let text = String::from_utf8(body)?;
    let mut content = String::new();
    let mut usage = false;
    for data in text.lines().filter_map(|l| l.strip_prefix("data:")) {
        let data = data.trim();
        if data == "[DONE]" {
            continue;
        }
        let event: Value = serde_json::from_str(data)?;
        usage |= event.get("usage").is_some_and(|u| !u.is_null());
        if let Some(piece) = event
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            content.push_str(piece);
        }
    }
    if content != REPLY || !usage {
        return Err(format!(
            "{}: unexpected stream (content {content:?}, usage chunk {usage}):\n{text}",
            target.name
        )
        .into());
    }
    Ok(())
}

async fn measure_all(
    opts: &Options,
    client: &reqwest::Client,
    standin: &StandIn,
    bodies: &Bodies,
    direct: &Arc<Target>,
    gateway: Option<(Arc<Target>, u32)>,
) -> Result<Report, BoxError> {
    let (gateway, pid) = match gateway {
        Some((target, pid)) => (Some(target), Some(pid)),
        None => (None, None),
    };
    let mut cpu = Vec::new();
    let mut targets: Vec<&Target> = vec![direct];
    if let Some(g) = &gateway {
        targets.push(g);
    }
    let (n, warmup) = (opts.requests, opts.warmup);
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();

    progress(&format!(
        "latency, concurrency 1, non-streaming: {warmup} warm-up + {n} requests per path"
    ));
    let before = cpu::Reading::now(pid);
    let plain = measure::latency(client, &targets, &bodies.plain, Kind::Plain, warmup, n).await?;
    let per_path = (n + warmup) as u64;
    if gateway.is_some() {
        let (gw_us, _) = before.per_request(&cpu::Reading::now(pid), per_path);
        cpu.push(CpuRow::new("c=1 non-streaming", "gateway", gw_us, None));
    }
    progress(&format!(
        "streaming, concurrency 1: {warmup} warm-up + {n} requests per path"
    ));
    let before = cpu::Reading::now(pid);
    let stream =
        measure::latency(client, &targets, &bodies.stream, Kind::Stream, warmup, n).await?;
    if gateway.is_some() {
        let (gw_us, _) = before.per_request(&cpu::Reading::now(pid), per_path);
        cpu.push(CpuRow::new("c=1 streaming", "gateway", gw_us, None));
    }

    let pair_of = |samples: &[measure::Samples], pick: fn(&measure::Samples) -> &[u64]| Pair {
        direct: Summary::of(samples.first().map(pick).unwrap_or_default()),
        gateway: samples.get(1).map(|s| Summary::of(pick(s))),
    };

    let mut upstream = (0_u64, 0_u64);
    let mut load_pairs = Vec::new();
    let kinds: &[(Kind, &bytes::Bytes)] = if opts.stream_load {
        &[(Kind::Plain, &bodies.plain), (Kind::Stream, &bodies.stream)]
    } else {
        &[(Kind::Plain, &bodies.plain)]
    };
    let mut paths: Vec<(&Arc<Target>, Option<u32>)> = vec![(direct, None)];
    if let Some(g) = &gateway {
        paths.push((g, pid));
    }
    for &(kind, body) in kinds {
        let run = format!("c={} {}", opts.concurrency, kind.as_str());
        let mut runs = load_runs(opts, client, standin, &paths, body, kind).await?;
        let direct_run = runs.remove(0);
        cpu.push(CpuRow::new(&run, "direct", None, direct_run.bench_us()));
        let gateway_run = runs.pop().map(|g| {
            cpu.push(CpuRow::new(&run, "gateway", g.gateway_us(), g.bench_us()));
            upstream.0 += g.served;
            upstream.1 += g.run.completed;
            Load::of(&g.run)
        });
        load_pairs.push(Pair {
            direct: Load::of(&direct_run.run),
            gateway: gateway_run,
        });
    }
    let mut load_pairs = load_pairs.into_iter();
    let load_plain = load_pairs.next().ok_or("no throughput run")?;
    let load_stream = load_pairs.next();

    let cpus = std::env::var(PINNED_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    Ok(Report {
        started_at,
        cpus,
        machine: memory::machine_description(cpus),
        gateway_cpu: std::env::var_os(PINNED_ENV).map(|_| GATEWAY_CPU),
        requests: n,
        warmup,
        concurrency: opts.concurrency,
        duration_s: opts.duration.as_secs_f64(),
        byok_local: None,
        plain: pair_of(&plain, |s| &s.total),
        ttfb: pair_of(&stream, |s| &s.first_byte),
        stream_total: pair_of(&stream, |s| &s.total),
        load_plain,
        load_stream,
        upstream_calls: gateway.is_some().then_some(upstream),
        cpu,
        startup: None,
        stream_memory: None,
        extra_checks: Vec::new(),
        notes: Vec::new(),
    })
}

/// Length of one slice of a throughput run.
const SLICE: Duration = Duration::from_secs(2);

/// A path's throughput run, summed over its slices.
struct PathRun {
    run: measure::LoadRun,
    /// Calls the stand-in answered during the slices.
    served: u64,
    gateway_cpu: Option<Duration>,
    bench_cpu: Option<Duration>,
}

impl PathRun {
    fn per_request(&self, cpu: Option<Duration>) -> Option<f64> {
        let n = self.run.completed;
        cpu.filter(|_| n > 0)
            .map(|d| d.as_secs_f64() * 1e6 / n as f64)
    }
    fn gateway_us(&self) -> Option<f64> {
        self.per_request(self.gateway_cpu)
    }
    fn bench_us(&self) -> Option<f64> {
        self.per_request(self.bench_cpu)
    }
}

/// The throughput runs of every path: after a short unrecorded run per path
/// (which also fills the connection pools), `opts.duration` per path in
/// slices of [`SLICE`], the paths taking turns (the order alternating), so
/// that a change in the machine's background load hits every path alike.
/// Also counts the calls the stand-in answered and the CPU time of the
/// gateway (the path's pid) and of this process during each path's slices.
async fn load_runs(
    opts: &Options,
    client: &reqwest::Client,
    standin: &StandIn,
    paths: &[(&Arc<Target>, Option<u32>)],
    body: &bytes::Bytes,
    kind: Kind,
) -> Result<Vec<PathRun>, BoxError> {
    let warm = opts.duration.min(Duration::from_secs(1));
    let slices = (opts.duration.as_secs_f64() / SLICE.as_secs_f64())
        .ceil()
        .max(1.0) as u32;
    let slice = opts.duration / slices;
    progress(&format!(
        "throughput, {}: {} workers, {:.1} s per path in {slices} slices taking turns (after {:.1} s warm-up)",
        kind.as_str(),
        opts.concurrency,
        opts.duration.as_secs_f64(),
        warm.as_secs_f64()
    ));
    let add = |a: Option<Duration>, b: Option<Duration>| Some(a? + b?);
    let mut out = Vec::with_capacity(paths.len());
    for (target, _) in paths {
        measure::load(
            client,
            Arc::clone(target),
            body,
            kind,
            opts.concurrency,
            warm,
        )
        .await?;
        out.push(PathRun {
            run: measure::LoadRun::default(),
            served: 0,
            gateway_cpu: Some(Duration::ZERO),
            bench_cpu: Some(Duration::ZERO),
        });
    }
    let mut order: Vec<usize> = (0..paths.len()).collect();
    for _ in 0..slices {
        for &i in &order {
            let (target, pid) = paths[i];
            let served = standin.served();
            let before = cpu::Reading::now(pid);
            let run = measure::load(
                client,
                Arc::clone(target),
                body,
                kind,
                opts.concurrency,
                slice,
            )
            .await?;
            let (gateway_cpu, bench_cpu) = before.delta(&cpu::Reading::now(pid));
            let acc = &mut out[i];
            acc.run.absorb(run);
            acc.served += standin.served() - served;
            acc.gateway_cpu = add(acc.gateway_cpu, gateway_cpu);
            acc.bench_cpu = add(acc.bench_cpu, bench_cpu);
        }
        order.reverse();
    }
    Ok(out)
}
