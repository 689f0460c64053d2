//! The usage ledger and request limits end to end: the real byok-local in
//! front of the provider stand-in, on the embedded store and with
//! `BYOK_STORE=aws` against the local AWS emulator.
//!
//! Concurrent streamed, cancelled and non-streamed completions add up to the
//! upstream's exact token counts in `GET /api/usage` (cut-short streams
//! estimated and flagged), split between what the operator paid and what
//! went on the user's own key; the team request limit holds under 50
//! concurrent requests without touching other users or BYOK requests;
//! staging keys is limited like validation; the operator's view groups by
//! user and tenant and is for admins only.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test bodies are plain functions run once per store; a failed step stops the test"
)]

use std::time::{Duration, Instant};

use byok_tests::harness::LocalServer;
use byok_tests::http::{Answer, Api};
use byok_tests::stores::{Mode, start};
use byok_tests::upstream::StandIn;
use futures_util::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const OPENAI_KEY: &str = "sk-proj-usage0userkey000000000000000001";
const TEAM_GATEWAY_KEY: &str = "vck_usage0teamkey00000000000000000001";
/// Served by the user's own OpenAI key.
const BYOK_MODEL: &str = "openai/gpt-4o-mini";
/// The user has no Anthropic key: served by the team gateway.
const TEAM_MODEL: &str = "anthropic/claude-haiku-4.5";

byok_tests::on_every_store!(
    streams_are_counted_exactly_and_split_by_payer,
    the_team_limit_holds_across_concurrent_requests,
    staging_keys_is_limited_like_validation,
    the_operator_sees_every_user_and_tenant,
);

fn chat(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "Count to three, please."}]
    })
}

/// Waits until the next request-limit window is at least `margin` away, so
/// a burst is counted in one fixed one-minute window.
async fn away_from_window_end(margin: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into = Duration::from_millis(u64::try_from(now.as_millis() % 60_000).unwrap());
    if into + margin > Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(60) - into + Duration::from_millis(200)).await;
    }
}

/// `GET /api/usage` with `query`, polled until `done` holds (records of
/// cancelled streams land shortly after the client went away).
async fn usage_until(api: &Api, query: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = api.get(&format!("/api/usage{query}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        if done(&answer.json) || Instant::now() > deadline {
            return answer.json;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("a count: {v}"))
}

/// The catalog's list price of `model` (USD per 1M tokens, in and out).
async fn price(api: &Api, model: &str) -> (f64, f64) {
    let models = api.get("/v1/models").await;
    let entry = models.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == model)
        .unwrap_or_else(|| panic!("{model} is in the catalog"))
        .clone();
    (
        entry["pricing"]["input"].as_f64().unwrap(),
        entry["pricing"]["output"].as_f64().unwrap(),
    )
}

fn cost((input, output): (f64, f64), prompt: u64, completion: u64) -> f64 {
    (prompt as f64 * input + completion as f64 * output) / 1e6
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-7
}

struct Setup {
    stand_in: StandIn,
    server: LocalServer,
    _dir: tempfile::TempDir,
}

async fn setup(mode: Mode, extra: &[(&str, &str)]) -> Setup {
    let stand_in = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut vars = vec![("AI_GATEWAY_API_KEY", TEAM_GATEWAY_KEY)];
    vars.extend_from_slice(extra);
    let server = start(mode, &stand_in, dir.path(), &vars);
    Setup {
        stand_in,
        server,
        _dir: dir,
    }
}

async fn with_openai_key(server: &LocalServer, user: &str) -> Api {
    let api = Api::new(&server.base, Some(&server.token(user, false)));
    let saved = api
        .post(
            "/api/keys",
            json!({"service": "openai", "apiKey": OPENAI_KEY}),
        )
        .await;
    assert!(saved.status.is_success(), "{}", saved.text);
    api
}

/// Streams one completion to the end; returns the status and headers.
async fn stream_to_end(server: &LocalServer, token: &str, model: &str) -> (StatusCode, String) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth(token)
        .json(&chat(model, true))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let paid_by = response
        .headers()
        .get("x-byok-paid-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut body = response.bytes_stream();
    let mut text = Vec::new();
    while let Some(chunk) = body.next().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    assert!(
        String::from_utf8(text)
            .unwrap()
            .ends_with("data: [DONE]\n\n"),
        "{model}: the stream ended cleanly"
    );
    (status, paid_by)
}

/// Starts a streamed completion, reads its first chunk, and goes away.
async fn stream_and_cancel(server: &LocalServer, token: &str, model: &str) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth(token)
        .json(&chat(model, true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
}

async fn streams_are_counted_exactly_and_split_by_payer(mode: Mode) {
    let s = setup(mode, &[]).await;
    // Each answer: 13 prompt tokens and 6 completion tokens, in 6 chunks
    // spaced 60 ms apart (a cancelled stream is cut after the first).
    s.stand_in.set_usage(Some((13, 6)));
    s.stand_in.set_reply("one two three four five six");
    s.stand_in.set_chunks(6);
    s.stand_in.set_chunk_delay(Duration::from_millis(60));
    let api = with_openai_key(&s.server, "ulla").await;
    let token = s.server.token("ulla", false);

    // 20 concurrent streams: 10 on the user's key, 10 on the team gateway;
    // 5 more on the team gateway cancelled mid-stream; 3 non-streamed on the user's key.
    let streams = (0..20).map(|i| {
        let model = if i % 2 == 0 { BYOK_MODEL } else { TEAM_MODEL };
        stream_to_end(&s.server, &token, model)
    });
    let cancels = (0..5).map(|_| stream_and_cancel(&s.server, &token, TEAM_MODEL));
    let plain = (0..3).map(|_| {
        let api = &api;
        async move {
            let answer = api
                .post("/v1/chat/completions", chat(BYOK_MODEL, false))
                .await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
            assert_eq!(answer.headers["x-byok-paid-by"], "user");
        }
    });
    let (streamed, (), ()) = tokio::join!(
        futures_util::future::join_all(streams),
        async {
            futures_util::future::join_all(cancels).await;
        },
        async {
            futures_util::future::join_all(plain).await;
        }
    );
    for (i, (status, paid_by)) in streamed.into_iter().enumerate() {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(paid_by, if i % 2 == 0 { "user" } else { "team" });
    }
    let cancelled = s
        .stand_in
        .wait_until(Duration::from_secs(10), |st| st.cancelled_streams() == 5)
        .await;
    assert!(cancelled, "the upstream saw 5 cancellations");

    let totals_done = |v: &Value| v["totals"]["requests"] == 28;
    let by_path = usage_until(&api, "?groupBy=path", totals_done).await;
    let totals = &by_path["totals"];
    assert_eq!(n(&totals["requests"]), 28, "{by_path}");
    assert_eq!(
        n(&totals["estimatedRequests"]),
        5,
        "cancelled ones are estimated: {by_path}"
    );
    assert_eq!(n(&totals["cancelledRequests"]), 5);
    assert_eq!(n(&totals["failedRequests"]), 0);

    let rows = by_path["usage"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{by_path}");
    let own = rows.iter().find(|r| r["path"] == "user-provider").unwrap();
    let team = rows.iter().find(|r| r["path"] == "team-gateway").unwrap();
    assert_eq!(own["paidBy"], "user");
    assert_eq!(team["paidBy"], "team");
    // Completed requests carry exactly the upstream's counts.
    assert_eq!(n(&own["requests"]), 13);
    assert_eq!(n(&own["promptTokens"]), 13 * 13);
    assert_eq!(n(&own["completionTokens"]), 13 * 6);
    assert_eq!(n(&own["estimatedRequests"]), 0);
    assert_eq!(n(&team["requests"]), 15);
    // The 5 cancelled streams are estimated: never zero, never more than the whole answer.
    let estimated_prompt = n(&team["promptTokens"]) - 10 * 13;
    let estimated_completion = n(&team["completionTokens"]) - 10 * 6;
    assert!(
        estimated_prompt >= 5 && estimated_prompt.is_multiple_of(5),
        "same prompt, same estimate: {team}"
    );
    assert!(
        (5..=5 * 6).contains(&estimated_completion),
        "at least a token per cut stream, at most the whole answer: {team}"
    );
    assert_eq!(
        n(&totals["promptTokens"]),
        13 * 23 + estimated_prompt,
        "totals add up"
    );

    // Costs: the user's key paid for the BYOK rows, the operator for the team rows.
    let user_cost = cost(price(&api, BYOK_MODEL).await, 13 * 13, 13 * 6);
    let team_cost = cost(
        price(&api, TEAM_MODEL).await,
        n(&team["promptTokens"]),
        n(&team["completionTokens"]),
    );
    let f = |v: &Value| v.as_f64().unwrap();
    assert!(
        close(f(&totals["userCostUsd"]), user_cost),
        "{totals} vs {user_cost}"
    );
    assert!(
        close(f(&totals["teamCostUsd"]), team_cost),
        "{totals} vs {team_cost}"
    );
    assert!(close(f(&totals["costUsd"]), user_cost + team_cost));
    assert!(close(f(&own["costUsd"]), user_cost));
    assert!(close(f(&own["teamCostUsd"]), 0.0));

    // By day (the default) and by model, the same totals.
    let by_day = api.get("/api/usage").await;
    assert_eq!(by_day.json["groupBy"], "day");
    assert_eq!(by_day.json["totals"], by_path["totals"]);
    let day_rows = by_day.json["usage"].as_array().unwrap();
    assert_eq!(
        day_rows.len(),
        2,
        "one row per payer today: {}",
        by_day.text
    );
    assert!(day_rows.iter().all(|r| r["day"].is_string()));
    let by_model = api.get("/api/usage?groupBy=model").await;
    let models: Vec<&str> = by_model.json["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, [TEAM_MODEL, BYOK_MODEL]);

    // The raw entries: one per attempt, newest first, the cut ones flagged.
    let recent = api.get("/api/usage/requests?limit=100").await;
    assert_eq!(recent.status, StatusCode::OK, "{}", recent.text);
    let entries = recent.json["requests"].as_array().unwrap();
    assert_eq!(entries.len(), 28);
    let cut: Vec<&Value> = entries.iter().filter(|e| e["estimated"] == true).collect();
    assert_eq!(cut.len(), 5);
    assert!(
        cut.iter()
            .all(|e| e["outcome"] == "cancelled" && e["paidBy"] == "team")
    );
    assert!(cut.iter().all(|e| n(&e["completionTokens"]) >= 1));
    let exact = entries.iter().filter(|e| e["outcome"] == "ok").count();
    assert_eq!(exact, 23);
    let times: Vec<time::OffsetDateTime> = entries
        .iter()
        .map(|e| {
            let at = e["at"].as_str().unwrap();
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).unwrap()
        })
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    assert!(
        entries
            .iter()
            .all(|e| e["requestId"].as_str().is_some_and(|id| !id.is_empty()))
    );
    assert_eq!(
        api.get("/api/usage/requests?limit=2").await.json["requests"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    for bad in ["0", "101", "many"] {
        let answer = api.get(&format!("/api/usage/requests?limit={bad}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "limit={bad}");
    }

    // Another user sees nothing of it.
    let other = Api::new(&s.server.base, Some(&s.server.token("otto", false)));
    let theirs = other.get("/api/usage").await;
    assert_eq!(n(&theirs.json["totals"]["requests"]), 0);
    assert!(theirs.json["usage"].as_array().unwrap().is_empty());

    // Bad queries are refused and change nothing.
    for bad in [
        "?from=2026-13-01",
        "?from=2026-03-05&to=2026-03-01",
        "?groupBy=user",
        "?from=2020-01-01&to=2026-01-01",
    ] {
        let answer = api.get(&format!("/api/usage{bad}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(answer.code(), "invalid_request", "{bad}");
    }
    // The canary: no key in any report.
    let everything = format!("{}{}{}{}", by_path, by_day.text, by_model.text, recent.text);
    assert!(!everything.contains(OPENAI_KEY) && !everything.contains(TEAM_GATEWAY_KEY));
    s.server.stop();
    s.stand_in.shutdown().await;
}

async fn the_team_limit_holds_across_concurrent_requests(mode: Mode) {
    let s = setup(mode, &[("BYOK_TEAM_REQUESTS_PER_MINUTE", "10")]).await;
    s.stand_in.set_chunk_delay(Duration::ZERO);
    let api = with_openai_key(&s.server, "tara").await;
    away_from_window_end(Duration::from_secs(20)).await;

    let before = s.stand_in.count("/chat/completions");
    let burst = (0..50).map(|_| api.post("/v1/chat/completions", chat(TEAM_MODEL, false)));
    let answers: Vec<Answer> = futures_util::future::join_all(burst).await;
    let ok: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .collect();
    let limited: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(ok.len(), 10, "exactly the limit is served");
    assert_eq!(limited.len(), 40, "the rest is refused");
    assert_eq!(
        s.stand_in.count("/chat/completions") - before,
        10,
        "only admitted requests reach the upstream"
    );
    for a in &limited {
        assert_eq!(a.code(), "rate_limited");
        let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(a.headers["x-ratelimit-limit-requests"], "10");
        assert_eq!(a.headers["x-ratelimit-remaining-requests"], "0");
        assert_eq!(a.headers["x-byok-paid-by"], "team");
    }
    let mut remaining: Vec<u64> = ok
        .iter()
        .map(|a| {
            assert_eq!(a.headers["x-ratelimit-limit-requests"], "10");
            a.headers["x-ratelimit-remaining-requests"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..10).collect::<Vec<u64>>());

    // The same user's own key is not limited by the team limit.
    for _ in 0..3 {
        let own = api
            .post("/v1/chat/completions", chat(BYOK_MODEL, false))
            .await;
        assert_eq!(own.status, StatusCode::OK, "{}", own.text);
        assert_eq!(own.headers["x-byok-paid-by"], "user");
        assert!(own.headers.get("x-ratelimit-limit-requests").is_none());
    }
    // Another user is unaffected.
    let other = Api::new(&s.server.base, Some(&s.server.token("uwe", false)));
    let theirs = other
        .post("/v1/chat/completions", chat(TEAM_MODEL, false))
        .await;
    assert_eq!(theirs.status, StatusCode::OK, "{}", theirs.text);
    assert_eq!(theirs.headers["x-ratelimit-remaining-requests"], "9");

    // Refused attempts are in the ledger as limited, at zero tokens and cost.
    let usage = usage_until(&api, "?groupBy=path", |v| v["totals"]["requests"] == 53).await;
    let team = usage["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "team-gateway")
        .unwrap()
        .clone();
    assert_eq!(n(&team["requests"]), 50, "{usage}");
    assert_eq!(n(&team["limitedRequests"]), 40);
    // Bad requests we reject ourselves do not count.
    let bad = api
        .post("/v1/chat/completions", json!({"model": TEAM_MODEL}))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    s.server.stop();
    s.stand_in.shutdown().await;
}

async fn staging_keys_is_limited_like_validation(mode: Mode) {
    let s = setup(mode, &[("BYOK_VALIDATE_PER_MINUTE", "3")]).await;
    let api = with_openai_key(&s.server, "stan").await;
    away_from_window_end(Duration::from_secs(20)).await;
    let checks_before = s.stand_in.count("/models");
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..8 {
        let key = format!("sk-proj-usage0staged{i:020}");
        let staged = api
            .send(
                Method::PUT,
                "/api/keys/openai/pending",
                Some(&json!({"apiKey": key})),
            )
            .await;
        match staged.status {
            StatusCode::ACCEPTED => {
                accepted += 1;
                // Wait for the rotation to finish before staging the next key.
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let keys = api.get("/api/keys").await;
                    if keys.json["keys"][0].get("pending").is_none() {
                        break;
                    }
                    assert!(Instant::now() < deadline, "rotation never settled");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            StatusCode::TOO_MANY_REQUESTS => {
                refused = Some(staged);
                break;
            }
            other => panic!("unexpected {other}: {}", staged.text),
        }
    }
    assert_eq!(accepted, 3, "the validation limit applies to staging");
    let refused = refused.unwrap();
    assert_eq!(refused.code(), "rate_limited");
    assert!(refused.headers.get("retry-after").is_some());
    assert_eq!(
        s.stand_in.count("/models") - checks_before,
        3,
        "one provider check per accepted staging, none after"
    );
    // Validation shares the same limit.
    let validate = api
        .post("/api/keys/validate", json!({"service": "openai"}))
        .await;
    assert_eq!(validate.status, StatusCode::TOO_MANY_REQUESTS);
    // A refused staging changed nothing.
    let keys = api.get("/api/keys").await;
    assert!(keys.json["keys"][0].get("pending").is_none());
    s.server.stop();
    s.stand_in.shutdown().await;
}

async fn the_operator_sees_every_user_and_tenant(mode: Mode) {
    let s = setup(mode, &[("BYOK_TENANT_CLAIM", "org_id")]).await;
    s.stand_in.set_usage(Some((5, 2)));
    let token_with_tenant = |user: &str, tenant: &str| {
        let out = std::process::Command::new(byok_tests::harness::local_bin())
            .env_clear()
            .env("BYOK_DATA_DIR", &s.server.data_dir)
            .env("BYOK_TENANT_CLAIM", "org_id")
            .args(["token", "--sub", user, "--tenant", tenant])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let ada = Api::new(&s.server.base, Some(&token_with_tenant("ada", "acme")));
    let bo = Api::new(&s.server.base, Some(&token_with_tenant("bo", "acme")));
    let cy = Api::new(&s.server.base, Some(&s.server.token("cy", false)));
    for (api, count) in [(&ada, 3), (&bo, 1), (&cy, 2)] {
        for _ in 0..count {
            let answer = api
                .post("/v1/chat/completions", chat(TEAM_MODEL, false))
                .await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        }
    }

    let admin = Api::new(&s.server.base, Some(&s.server.token("root", true)));
    // A non-streamed answer's record lands as its response ends.
    let deadline = Instant::now() + Duration::from_secs(15);
    let by_user = loop {
        let answer = admin.get("/api/admin/usage?groupBy=user").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        if answer.json["totals"]["requests"] == 6 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let users: Vec<(String, u64, u64)> = by_user.json["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["user"].as_str().unwrap().to_owned(),
                n(&r["requests"]),
                n(&r["promptTokens"]),
            )
        })
        .collect();
    assert_eq!(
        users,
        [
            ("ada".to_owned(), 3, 15),
            ("bo".to_owned(), 1, 5),
            ("cy".to_owned(), 2, 10)
        ]
    );
    assert_eq!(n(&by_user.json["totals"]["requests"]), 6);
    assert!(by_user.json["totals"]["teamCostUsd"].as_f64().unwrap() > 0.0);

    let by_tenant = admin.get("/api/admin/usage?groupBy=tenant").await;
    assert_eq!(by_tenant.status, StatusCode::OK, "{}", by_tenant.text);
    let tenants: Vec<(Value, u64)> = by_tenant.json["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["tenant"].clone(), n(&r["requests"])))
        .collect();
    assert_eq!(tenants, [(Value::Null, 2), (json!("acme"), 4)]);

    let by_model = admin.get("/api/admin/usage?groupBy=model").await;
    assert_eq!(by_model.json["usage"][0]["model"], TEAM_MODEL);
    let default = admin.get("/api/admin/usage").await;
    assert_eq!(default.json["groupBy"], "user");

    // Not an admin: 403, and nothing leaks.
    let refused = ada.get("/api/admin/usage?groupBy=user").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.code(), "forbidden");
    assert!(!refused.text.contains("bo"));
    let bad = admin.get("/api/admin/usage?groupBy=planet").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    s.server.stop();
    s.stand_in.shutdown().await;
}
