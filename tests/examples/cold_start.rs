//! Cold start of a Lambda function binary, offline: the time from process
//! start to its first answered event through a local Runtime API, median of
//! N runs, for one or more builds side by side (taking turns), with each
//! binary's size. The functions run with `BYOK_STORE=aws` against the local
//! AWS emulator (`AWS_ENDPOINT_URL`, as the test script starts it).
//! With `--team-secrets`, the operator has a team key in Secrets Manager
//! for every provider (`BYOK_TEAM_<ID>_SECRET_ARN`), as a deployment with
//! team keys does.
//!
//! `cargo run -p byok-tests --example cold_start -- [--team-secrets] keys \
//!     get-keys.json /tmp/before/keys target/release/keys`

#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a measurement program: a failed step stops it, figures go to stdout"
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use byok_tests::lambda_runtime::{FunctionProcess, RuntimeApi};

const RUNS: usize = 10;

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let team_secrets = args.first().is_some_and(|a| a == "--team-secrets");
    if team_secrets {
        args.remove(0);
    }
    let [name, event_file, bins @ ..] = args.as_slice() else {
        println!("usage: cold_start [--team-secrets] FUNCTION EVENT.json BINARY [BINARY…]");
        return;
    };
    let event_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../infra/events")
        .join(event_file);
    let event: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(event_path).unwrap()).unwrap();
    let endpoint =
        std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:45123".into());
    let table = format!("cold-start-{}", std::process::id());
    let team_arns = if team_secrets {
        create_team_secrets(&endpoint, &table).await
    } else {
        Vec::new()
    };
    let mut env = vec![
        ("BYOK_STORE", "aws"),
        ("BYOK_TABLE_NAME", table.as_str()),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("RUST_LOG", "warn"),
    ];
    env.extend(team_arns.iter().map(|(var, arn)| (*var, arn.as_str())));
    let bins: Vec<PathBuf> = bins.iter().map(PathBuf::from).collect();
    // Create the table once (not part of any measured start).
    {
        let runtime = RuntimeApi::start();
        let mut first = env.to_vec();
        first.push(("BYOK_CREATE_TABLE", "true"));
        let process = FunctionProcess::start_bin(&bins[0], name, &runtime, &first);
        let _ = process.invoke(&runtime, event.clone()).await;
        process.stop();
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); bins.len()];
    for _ in 0..RUNS {
        for (i, bin) in bins.iter().enumerate() {
            let runtime = RuntimeApi::start();
            let started = Instant::now();
            let process = FunctionProcess::start_bin(bin, name, &runtime, &env);
            let _ = process.invoke(&runtime, event.clone()).await;
            times[i].push(started.elapsed());
            process.stop();
        }
    }
    let with = if team_secrets {
        format!(", {} team secrets", team_arns.len())
    } else {
        String::new()
    };
    println!("{name}: process start → first answered event ({event_file}{with}), median of {RUNS}");
    for (bin, mut t) in bins.iter().zip(times) {
        t.sort();
        let size = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);
        println!(
            "  {:<50} {:>7.1} ms  (min {:.1}, max {:.1})  {:>6.2} MB",
            bin.display(),
            t[t.len() / 2].as_secs_f64() * 1e3,
            t[0].as_secs_f64() * 1e3,
            t[t.len() - 1].as_secs_f64() * 1e3,
            size as f64 / 1e6
        );
    }
}

/// One team secret per provider in the emulator; the variables naming them.
async fn create_team_secrets(endpoint: &str, table: &str) -> Vec<(&'static str, String)> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "cold-start",
        ))
        .load()
        .await;
    let client = aws_sdk_secretsmanager::Client::new(&sdk);
    let mut arns = Vec::new();
    for service in byok::domain::Service::ALL {
        let created = client
            .create_secret()
            .name(format!("{table}/team/{service}"))
            .secret_string(format!("fake-team-key-{service}-0000000000000000"))
            .send()
            .await
            .unwrap();
        arns.push((service.team_secret_env(), created.arn().unwrap().to_owned()));
    }
    arns
}
