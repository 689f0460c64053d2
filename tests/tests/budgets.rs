//! Budgets end to end: the real byok-local in front of the provider
//! stand-in, on the embedded store and with `BYOK_STORE=aws` against the
//! local AWS emulator.
//!
//! - A paused token budget of 1,000 and 40 concurrent streamed team-path
//!   completions with `max_tokens` 100: the upstream is asked for no more
//!   than the limit, the refused get 402 `budget_exceeded` with no upstream
//!   call, and the ledger and the budget's `used` agree exactly. Each alert
//!   threshold fires once (events file and signed webhook), also when a
//!   second wave crosses 100 % with the pause lifted; BYOK completions are
//!   never charged.
//! - A USD budget priced from the catalog behaves the same.
//! - Tenant budgets bind every user of the tenant; the admin routes check
//!   their input, page, and are audited; deleting a budget stops
//!   enforcement at once; `GET /api/budget` shows what applies.
//! - A reservation of a crashed process (SIGKILL) expires and frees the budget.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test bodies are plain functions run once per store; a failed step stops the test"
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use byok_tests::harness::LocalServer;
use byok_tests::http::{Answer, Api};
use byok_tests::stores::{Mode, start_with};
use byok_tests::upstream::StandIn;
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

const OPENAI_KEY: &str = "sk-proj-budget0userkey00000000000000001";
const TEAM_GATEWAY_KEY: &str = "vck_budget0teamkey0000000000000000001";
/// Served by the user's own OpenAI key.
const BYOK_MODEL: &str = "openai/gpt-4o-mini";
/// The users have no Anthropic key: served by the team gateway.
const TEAM_MODEL: &str = "anthropic/claude-haiku-4.5";
const WEBHOOK_SECRET: &str = "whsec-budget-test-0000000000000001";
/// What the stand-in reports for every answer.
const PROMPT_TOKENS: u64 = 5;
const COMPLETION_TOKENS: u64 = 100;

byok_tests::on_every_store!(
    concurrent_requests_never_overspend_a_paused_token_budget,
    a_usd_budget_is_held_with_catalog_prices,
    tenant_budgets_and_the_admin_routes,
    a_crashed_reservation_expires,
);

fn chat(model: &str, stream: bool, max_tokens: Option<u64>) -> Value {
    let mut body = json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "Count to three, please."}]
    });
    if let Some(max) = max_tokens {
        body["max_tokens"] = json!(max);
    }
    body
}

/// A local receiver of the alert webhook: every POST's signature header and body.
#[derive(Clone, Default)]
struct Webhook {
    received: Arc<Mutex<Vec<(String, String)>>>,
}

impl Webhook {
    async fn start() -> (Self, String, tokio::task::JoinHandle<()>) {
        let hook = Self::default();
        let seen = hook.clone();
        let app = axum::Router::new().route(
            "/alerts",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let seen = seen.clone();
                async move {
                    let signature = headers
                        .get("x-byok-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    seen.received.lock().unwrap().push((signature, body));
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/alerts", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (hook, url, task)
    }

    fn received(&self) -> Vec<(String, String)> {
        self.received.lock().unwrap().clone()
    }
}

struct Setup {
    stand_in: StandIn,
    server: LocalServer,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    events_file: std::path::PathBuf,
    admin: Api,
}

async fn setup(mode: Mode, extra: &[(&str, &str)]) -> Setup {
    let stand_in = StandIn::start().await;
    stand_in.set_usage(Some((PROMPT_TOKENS, COMPLETION_TOKENS)));
    stand_in.set_chunks(3);
    stand_in.set_chunk_delay(Duration::from_millis(20));
    let dir = tempfile::tempdir().unwrap();
    let events_file = dir.path().join("events.jsonl");
    let events = events_file.to_str().unwrap().to_owned();
    let mut vars = vec![
        ("AI_GATEWAY_API_KEY", TEAM_GATEWAY_KEY),
        ("BYOK_TEAM_REQUESTS_PER_MINUTE", "0"),
        ("BYOK_EVENTS_FILE", events.as_str()),
    ];
    vars.extend_from_slice(extra);
    let (server, env) = start_with(mode, &stand_in, dir.path(), &vars);
    let admin = Api::new(&server.base, Some(&server.token("root", true)));
    Setup {
        stand_in,
        server,
        env,
        dir,
        events_file,
        admin,
    }
}

impl Setup {
    fn api(&self, user: &str) -> Api {
        Api::new(&self.server.base, Some(&self.server.token(user, false)))
    }

    async fn with_openai_key(&self, user: &str) -> Api {
        let api = self.api(user);
        let saved = api
            .post(
                "/api/keys",
                json!({"service": "openai", "apiKey": OPENAI_KEY}),
            )
            .await;
        assert!(saved.status.is_success(), "{}", saved.text);
        api
    }

    async fn set_budget(&self, path: &str, body: Value) -> Value {
        let answer = self.admin.put(path, body).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        answer.json
    }

    async fn budget(&self, path: &str) -> Value {
        let answer = self.admin.get(path).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        answer.json
    }

    /// The budget once nothing is reserved any more: a client has the whole
    /// answer a moment before its attempt is settled.
    async fn settled(&self, path: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let budget = self.budget(path).await;
            if budget["reserved"] == 0 || Instant::now() > deadline {
                return budget;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `budget.threshold` events written so far, as (id, threshold), sorted.
    fn threshold_events(&self) -> Vec<(String, u64)> {
        let text = std::fs::read_to_string(&self.events_file).unwrap_or_default();
        let mut events: Vec<(String, u64)> = text
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .filter(|e| e["event"] == "budget.threshold")
            .map(|e| (e["id"].as_str().unwrap().to_owned(), n(&e["threshold"])))
            .collect();
        // Concurrent settlements publish in any order.
        events.sort();
        events
    }

    async fn stop(self) {
        let (_, output) = self.server.stop();
        for key in [OPENAI_KEY, TEAM_GATEWAY_KEY, WEBHOOK_SECRET] {
            assert!(!output.contains(key), "a secret reached the log");
        }
        self.stand_in.shutdown().await;
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("a count: {v}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("a number: {v}"))
}

/// Streams one completion to the end: status, headers, body text.
async fn stream(
    server: &LocalServer,
    token: &str,
    body: &Value,
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let mut chunks = response.bytes_stream();
    let mut text = Vec::new();
    while let Some(chunk) = chunks.next().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    (status, headers, String::from_utf8(text).unwrap())
}

/// The team-path row of the user's ledger, once `requests` attempts are in.
async fn team_ledger(api: &Api, requests: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = api.get("/api/usage?groupBy=path").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        let row = answer.json["usage"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["path"] == "team-gateway")
            .cloned();
        if let Some(row) = row
            && (n(&row["requests"]) >= requests || Instant::now() > deadline)
        {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "no team-path usage: {}",
            answer.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The HMAC-SHA256 signature the gateway sends, recomputed.
fn signature(t: &str, body: &str) -> String {
    use hmac::Mac as _;
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(
        WEBHOOK_SECRET.as_bytes(),
    )
    .unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Waits until the webhook has `count` deliveries; checks each signature.
async fn webhook_events(hook: &Webhook, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while hook.received().len() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hook.received()
        .into_iter()
        .map(|(header, body)| {
            let (t, v1) = header
                .strip_prefix("t=")
                .and_then(|rest| rest.split_once(",v1="))
                .unwrap_or_else(|| panic!("signature header: {header:?}"));
            let age = time::OffsetDateTime::now_utc().unix_timestamp() - t.parse::<i64>().unwrap();
            assert!((0..60).contains(&age), "a fresh timestamp: {t}");
            assert_eq!(v1, signature(t, &body), "the HMAC of t.body");
            serde_json::from_str(&body).unwrap()
        })
        .collect()
}

async fn concurrent_requests_never_overspend_a_paused_token_budget(mode: Mode) {
    let (hook, hook_url, hook_task) = Webhook::start().await;
    let s = setup(
        mode,
        &[
            ("BYOK_ALERT_WEBHOOK_URL", hook_url.as_str()),
            ("BYOK_ALERT_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ],
    )
    .await;
    let api = s.with_openai_key("vera").await;
    let token = s.server.token("vera", false);
    let path = "/api/admin/budgets/users/vera";
    let stored = s
        .set_budget(
            path,
            json!({"type": "tokens", "period": "daily", "limit": 1000,
                   "pauseAtLimit": true, "alertThresholds": [80, 50, 100]}),
        )
        .await;
    assert_eq!(stored["alertThresholds"], json!([50, 80, 100]));
    assert_eq!((n(&stored["used"]), n(&stored["remaining"])), (0, 1000));

    let before = s.stand_in.count("/chat/completions");
    let body = chat(TEAM_MODEL, true, Some(100));
    let wave = (0..40).map(|_| stream(&s.server, &token, &body));
    let answers = futures_util::future::join_all(wave).await;
    let admitted: Vec<_> = answers.iter().filter(|a| a.0 == StatusCode::OK).collect();
    let refused: Vec<_> = answers
        .iter()
        .filter(|a| a.0 == StatusCode::PAYMENT_REQUIRED)
        .collect();
    assert_eq!(admitted.len() + refused.len(), 40, "only 200 or 402");
    assert!(
        !admitted.is_empty() && !refused.is_empty(),
        "{} admitted",
        admitted.len()
    );
    let admitted_n = admitted.len() as u64;
    // Each admitted request may use its prompt and 100 tokens: never past the limit.
    assert!(
        admitted_n * (PROMPT_TOKENS + 100) <= 1000,
        "{admitted_n} requests of up to {} tokens",
        PROMPT_TOKENS + 100
    );
    assert_eq!(
        s.stand_in.count("/chat/completions") - before,
        admitted.len(),
        "refused requests never reach the upstream"
    );
    for (_, headers, text) in &refused {
        let error: Value = serde_json::from_str(text).unwrap();
        assert_eq!(error["error"]["code"], "budget_exceeded", "{text}");
        assert_eq!(headers["x-byok-paid-by"], "team");
    }
    for (_, headers, text) in &admitted {
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert_eq!(headers["x-byok-budget-type"], "tokens");
        let remaining: u64 = headers["x-byok-budget-remaining"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(remaining <= 1000);
    }

    // The ledger and the budget agree exactly once everything settled.
    let per_request = PROMPT_TOKENS + COMPLETION_TOKENS;
    let row = team_ledger(&api, 40).await;
    assert_eq!(n(&row["requests"]), 40, "admitted and refused: {row}");
    assert_eq!(n(&row["limitedRequests"]), refused.len() as u64);
    let ledger_tokens = n(&row["promptTokens"]) + n(&row["completionTokens"]);
    assert_eq!(ledger_tokens, admitted_n * per_request);
    let budget = s.settled(path).await;
    assert_eq!(n(&budget["used"]), ledger_tokens, "{budget}");
    assert_eq!(n(&budget["reserved"]), 0, "{budget}");
    assert_eq!(n(&budget["remaining"]), 1000 - ledger_tokens);
    assert_eq!(budget["periodStart"].as_str().unwrap().len(), 20);

    // BYOK completions of the same user are recorded, never charged.
    for _ in 0..3 {
        let answer = api
            .post("/v1/chat/completions", chat(BYOK_MODEL, false, Some(100)))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        assert_eq!(answer.headers["x-byok-paid-by"], "user");
        assert!(answer.headers.get("x-byok-budget-remaining").is_none());
    }
    assert_eq!(n(&s.settled(path).await["used"]), ledger_tokens);

    // Thresholds crossed so far fired once each.
    let expected: Vec<u64> = [50, 80, 100]
        .into_iter()
        .filter(|t| ledger_tokens * 100 >= t * 1000)
        .collect();
    let fired: Vec<u64> = s.threshold_events().into_iter().map(|e| e.1).collect();
    assert_eq!(fired, expected, "one event per crossed threshold");

    // Lifting the pause keeps the period's usage; a second wave crosses 100 %.
    let lifted = s
        .set_budget(
            path,
            json!({"type": "tokens", "period": "daily", "limit": 1000,
                   "pauseAtLimit": false, "alertThresholds": [50, 80, 100]}),
        )
        .await;
    assert_eq!(n(&lifted["used"]), ledger_tokens, "no silent reset");
    let wave = (0..6).map(|_| stream(&s.server, &token, &body));
    for (status, _, text) in futures_util::future::join_all(wave).await {
        assert_eq!(status, StatusCode::OK, "{text}");
    }
    let total = ledger_tokens + 6 * per_request;
    let row = team_ledger(&api, 46).await;
    assert_eq!(n(&row["promptTokens"]) + n(&row["completionTokens"]), total);
    assert_eq!(n(&s.settled(path).await["used"]), total);
    let fired: Vec<u64> = s.threshold_events().into_iter().map(|e| e.1).collect();
    assert_eq!(
        fired,
        [50, 80, 100],
        "each threshold exactly once per period"
    );

    // The webhook got the same events, signed.
    let delivered = webhook_events(&hook, 3).await;
    let mut thresholds: Vec<u64> = delivered.iter().map(|e| n(&e["threshold"])).collect();
    thresholds.sort_unstable();
    assert_eq!(thresholds, [50, 80, 100]);
    for event in &delivered {
        assert_eq!(event["event"], "budget.threshold");
        assert_eq!(event["type"], "tokens");
        assert_eq!(
            (event["scope"].as_str(), event["id"].as_str()),
            (Some("user"), Some("vera"))
        );
        assert_eq!(event["period"], "daily");
        assert_eq!(n(&event["limit"]), 1000);
        assert!(n(&event["used"]) * 100 >= n(&event["threshold"]) * 1000);
        assert!(event["periodStart"].is_string() && event["at"].is_string());
    }
    hook_task.abort();
    s.stop().await;
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
        f(&entry["pricing"]["input"]),
        f(&entry["pricing"]["output"]),
    )
}

async fn a_usd_budget_is_held_with_catalog_prices(mode: Mode) {
    let s = setup(mode, &[]).await;
    let api = s.api("uma");
    let (input, output) = price(&api, TEAM_MODEL).await;
    let per_request = (PROMPT_TOKENS as f64 * input + COMPLETION_TOKENS as f64 * output) / 1e6;
    let limit = (per_request * 6.5 * 1e6).round() / 1e6;
    let path = "/api/admin/budgets/users/uma";
    s.set_budget(
        path,
        json!({"type": "usd", "period": "monthly", "limit": limit, "pauseAtLimit": true}),
    )
    .await;

    let before = s.stand_in.count("/chat/completions");
    let wave =
        (0..20).map(|_| api.post("/v1/chat/completions", chat(TEAM_MODEL, false, Some(100))));
    let answers: Vec<Answer> = futures_util::future::join_all(wave).await;
    let admitted: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .collect();
    let refused: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::PAYMENT_REQUIRED)
        .collect();
    assert_eq!(admitted.len() + refused.len(), 20);
    assert!(
        !admitted.is_empty() && !refused.is_empty(),
        "{} admitted",
        admitted.len()
    );
    assert!(admitted.len() as f64 * per_request <= limit + 1e-12);
    assert_eq!(
        s.stand_in.count("/chat/completions") - before,
        admitted.len()
    );
    for a in &refused {
        assert_eq!(a.code(), "budget_exceeded");
        assert!(a.text.contains("monthly usd budget"), "{}", a.text);
    }
    for a in &admitted {
        assert_eq!(a.headers["x-byok-budget-type"], "usd");
        let left: f64 = a.headers["x-byok-budget-remaining"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((0.0..=limit).contains(&left), "{left}");
    }
    let row = team_ledger(&api, 20).await;
    let budget = s.settled(path).await;
    assert_eq!(budget["type"], "usd");
    assert!(
        (f(&budget["used"]) - f(&row["teamCostUsd"])).abs() < 1e-9,
        "budget {budget} vs ledger {row}"
    );
    assert!((f(&budget["used"]) - admitted.len() as f64 * per_request).abs() < 1e-9);
    assert!(f(&budget["remaining"]) >= 0.0);
    // A month's period: from the 1st to the 1st.
    assert!(
        budget["periodStart"]
            .as_str()
            .unwrap()
            .ends_with("-01T00:00:00Z")
    );
    assert!(
        budget["periodEnd"]
            .as_str()
            .unwrap()
            .ends_with("-01T00:00:00Z")
    );
    s.stop().await;
}

async fn tenant_budgets_and_the_admin_routes(mode: Mode) {
    let s = setup(mode, &[("BYOK_TENANT_CLAIM", "org_id")]).await;
    let token_with_tenant = |user: &str, tenant: &str| {
        let mut cmd = std::process::Command::new(byok_tests::harness::local_bin());
        cmd.env_clear()
            .env("BYOK_DATA_DIR", s.dir.path())
            .env("BYOK_TENANT_CLAIM", "org_id")
            .args(["token", "--sub", user, "--tenant", tenant]);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let ada = Api::new(&s.server.base, Some(&token_with_tenant("ada", "acme")));
    let bo = Api::new(&s.server.base, Some(&token_with_tenant("bo", "acme")));
    let cy = s.api("cy");

    // Admins only.
    let body = json!({"type": "tokens", "period": "weekly", "limit": 330, "pauseAtLimit": true});
    for (method, route) in [
        ("PUT", "/api/admin/budgets/tenants/acme"),
        ("GET", "/api/admin/budgets/tenants/acme"),
        ("DELETE", "/api/admin/budgets/tenants/acme"),
        ("GET", "/api/admin/budgets"),
    ] {
        let answer = match method {
            "PUT" => ada.put(route, body.clone()).await,
            "GET" => ada.get(route).await,
            _ => ada.delete(route).await,
        };
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{method} {route}"
        );
    }
    // Bad input is refused and changes nothing.
    for bad in [
        json!({"type": "gbp", "period": "daily", "limit": 1}),
        json!({"type": "tokens", "period": "hourly", "limit": 1}),
        json!({"type": "tokens", "period": "daily", "limit": -1}),
        json!({"type": "tokens", "period": "daily", "limit": 1.5}),
        json!({"type": "tokens", "period": "daily", "limit": 0}),
        json!({"type": "usd", "period": "daily", "limit": "5"}),
        json!({"type": "tokens", "period": "daily", "limit": 10, "alertThresholds": [0]}),
        json!({"type": "tokens", "period": "daily", "limit": 10, "alertThresholds": [101]}),
        json!({"type": "tokens", "period": "daily", "limit": 10, "alertThresholds": [80, 80]}),
        json!({"type": "tokens", "period": "daily", "limit": 10, "pauseAtLimit": "yes"}),
        json!({"type": "tokens", "period": "daily", "limit": 10, "extra": 1}),
        json!({"period": "daily", "limit": 10}),
    ] {
        let answer = s
            .admin
            .put("/api/admin/budgets/tenants/acme", bad.clone())
            .await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{bad}: {}",
            answer.text
        );
    }
    let missing = s.admin.get("/api/admin/budgets/tenants/acme").await;
    assert_eq!(
        (missing.status, missing.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    assert_eq!(ada.get("/api/budget").await.json, json!({"budgets": []}));

    // A paused tenant budget binds every user of the tenant together.
    let stored = s.set_budget("/api/admin/budgets/tenants/acme", body).await;
    assert_eq!(
        (stored["scope"].as_str(), stored["id"].as_str()),
        (Some("tenant"), Some("acme"))
    );
    assert_eq!(stored["updatedBy"], "root");
    let start = time::OffsetDateTime::parse(
        stored["periodStart"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(
        start.weekday(),
        time::Weekday::Monday,
        "weeks start on Monday"
    );
    let mut served = 0;
    for i in 0..8 {
        let api = if i % 2 == 0 { &ada } else { &bo };
        let answer = api
            .post("/v1/chat/completions", chat(TEAM_MODEL, false, Some(100)))
            .await;
        match answer.status {
            StatusCode::OK => served += 1,
            StatusCode::PAYMENT_REQUIRED => {
                assert!(answer.text.contains("organisation"), "{}", answer.text);
            }
            other => panic!("{other}: {}", answer.text),
        }
    }
    assert!(
        (1..=3).contains(&served),
        "330 tokens hold at most 3 requests of 105: {served}"
    );
    let tenant = s.settled("/api/admin/budgets/tenants/acme").await;
    assert_eq!(
        n(&tenant["used"]),
        served * (PROMPT_TOKENS + COMPLETION_TOKENS)
    );
    // A user outside the tenant is not bound by it.
    let answer = cy
        .post("/v1/chat/completions", chat(TEAM_MODEL, false, Some(100)))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert!(answer.headers.get("x-byok-budget-type").is_none());

    // The user's own budget applies as well; GET /api/budget shows both.
    s.set_budget(
        "/api/admin/budgets/users/ada",
        json!({"type": "usd", "period": "total", "limit": 25}),
    )
    .await;
    let mine = ada.get("/api/budget").await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.text);
    let scopes: Vec<(&str, &str)> = mine.json["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["scope"].as_str().unwrap(), b["id"].as_str().unwrap()))
        .collect();
    assert_eq!(scopes, [("user", "ada"), ("tenant", "acme")]);
    let own = &mine.json["budgets"][0];
    assert_eq!(
        (own["period"].as_str(), own["periodStart"].is_null()),
        (Some("total"), true)
    );
    assert!(own.get("updatedBy").is_none(), "not shown to users");
    assert_eq!(
        bo.get("/api/budget").await.json["budgets"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The operator's list, paged.
    let first = s.admin.get("/api/admin/budgets?limit=1").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.json["budgets"].as_array().unwrap().len(), 1);
    let cursor = first.json["nextCursor"].as_str().unwrap().to_owned();
    let rest = s
        .admin
        .get(&format!("/api/admin/budgets?limit=10&cursor={cursor}"))
        .await;
    let mut listed: Vec<String> = [&first, &rest]
        .iter()
        .flat_map(|page| page.json["budgets"].as_array().unwrap().clone())
        .map(|b| {
            format!(
                "{}:{}",
                b["scope"].as_str().unwrap(),
                b["id"].as_str().unwrap()
            )
        })
        .collect();
    listed.sort();
    assert_eq!(listed, ["tenant:acme", "user:ada"]);
    assert!(rest.json.get("nextCursor").is_none());
    for bad in ["limit=0", "limit=201", "cursor=%%%", "cursor=bm9wZQ"] {
        let answer = s.admin.get(&format!("/api/admin/budgets?{bad}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
    }

    // Deleting stops enforcement at once; a second delete finds nothing.
    let deleted = s.admin.delete("/api/admin/budgets/tenants/acme").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    let again = s.admin.delete("/api/admin/budgets/tenants/acme").await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let answer = bo
        .post("/v1/chat/completions", chat(TEAM_MODEL, false, Some(100)))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);

    // Every change is in the admin's audit log.
    let audit = s.admin.get("/api/audit").await;
    let changes: Vec<(String, String)> = audit.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e.get("service").is_none(), "{e}");
            (
                e["action"].as_str().unwrap().to_owned(),
                e["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("budget_deleted", "tenant:acme"),
        ("budget_set", "user:ada"),
        ("budget_set", "tenant:acme"),
    ]
    .iter()
    .map(|(a, r)| ((*a).to_owned(), (*r).to_owned()))
    .collect();
    assert_eq!(changes, expected);
    s.stop().await;
}

async fn a_crashed_reservation_expires(mode: Mode) {
    const TTL_SECS: u64 = 6;
    let ttl = TTL_SECS.to_string();
    let s = setup(mode, &[("BYOK_RESERVATION_TTL_SECS", ttl.as_str())]).await;
    let path = "/api/admin/budgets/users/kai";
    s.set_budget(
        path,
        json!({"type": "tokens", "period": "daily", "limit": 1000, "pauseAtLimit": true}),
    )
    .await;
    // A long stream holds 900 tokens when the process dies.
    s.stand_in.set_chunks(200);
    s.stand_in.set_chunk_delay(Duration::from_millis(50));
    let token = s.server.token("kai", false);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.server.base))
        .bearer_auth(&token)
        .json(&chat(TEAM_MODEL, true, Some(880)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let reserved_at = Instant::now();
    let mut body = response.bytes_stream();
    assert!(!body.next().await.unwrap().unwrap().is_empty());
    let held = s.budget(path).await;
    assert!(n(&held["reserved"]) >= 880, "{held}");
    assert_eq!(n(&held["used"]), 0);

    // Kill it mid-stream: nothing settles.
    let Setup {
        stand_in,
        server,
        env,
        dir,
        events_file,
        admin: _,
    } = s;
    let output = server.crash();
    drop(body);
    assert!(!output.contains(TEAM_GATEWAY_KEY));
    stand_in.set_chunks(3);
    stand_in.set_chunk_delay(Duration::from_millis(5));
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = LocalServer::start(dir.path(), &pairs);
    let admin = Api::new(&server.base, Some(&server.token("root", true)));
    let s = Setup {
        stand_in,
        server,
        env,
        dir,
        events_file,
        admin,
    };
    let api = s.api("kai");
    let after_restart = s.budget(path).await;
    let still_held = reserved_at.elapsed() < Duration::from_secs(TTL_SECS - 1);
    if still_held {
        // The dead process's hold still counts until it expires.
        assert!(n(&after_restart["reserved"]) >= 880, "{after_restart}");
        let refused = api
            .post("/v1/chat/completions", chat(TEAM_MODEL, false, Some(500)))
            .await;
        assert_eq!(refused.code(), "budget_exceeded", "{}", refused.text);
    }
    // Then it expires and frees the budget.
    let deadline = reserved_at + Duration::from_secs(TTL_SECS + 10);
    loop {
        let now = s.budget(path).await;
        if n(&now["reserved"]) == 0 {
            assert!(
                reserved_at.elapsed() >= Duration::from_secs(TTL_SECS - 1),
                "not before its TTL"
            );
            assert_eq!(n(&now["remaining"]), 1000, "{now}");
            break;
        }
        assert!(Instant::now() < deadline, "the hold never expired: {now}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let answer = api
        .post("/v1/chat/completions", chat(TEAM_MODEL, false, Some(500)))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let last = s.settled(path).await;
    assert_eq!(
        n(&last["used"]),
        PROMPT_TOKENS + COMPLETION_TOKENS,
        "{last}"
    );
    s.stop().await;
}
