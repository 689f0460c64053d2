//! The model catalog: the shipped `shared/catalog/models.json` is sound, a
//! refresh from the Vercel AI Gateway's model list merges as documented,
//! accessibility follows the resolution contract for every user state, and
//! `GET /v1/models` serves it marked for the caller.

#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions: a failed step is a failed test"
)]

use std::collections::{BTreeSet, HashSet};

use byok::auth::{JwtSecret, issue_token, now_unix};
use byok::catalog::{Catalog, CatalogError, accessibility, refresh_from_gateway_list};
use byok::config::Config;
use byok::domain::{ApiKey, KeyId, KeyRecord, ModelId, SecretRef, Service, Settings, UserId, now};
use byok::keys::KeyUpsert;
use byok::resolve::{ResolutionPath, TeamCredentials, Upstreams};
use byok::store::UserSnapshot;
use serde_json::{Value, json};

const SHIPPED: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/catalog/models.json"
));

#[test]
fn shipped_catalog_is_sound() {
    let raw: Value = serde_json::from_str(SHIPPED).unwrap();
    assert_eq!(raw["version"], 1);
    assert!(raw["source"].as_str().is_some_and(|s| !s.is_empty()));
    let models = raw["models"].as_array().unwrap();
    assert!(models.len() >= 30, "{} models", models.len());

    let mut ids = HashSet::new();
    let mut namespaces = BTreeSet::new();
    for m in models {
        let id = m["id"].as_str().unwrap();
        let parsed = ModelId::parse(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(parsed.canonical(), id, "ids are canonical provider/model");
        assert!(ids.insert(id), "{id} is listed twice");
        namespaces.insert(parsed.namespace().to_owned());
        assert!(
            m["name"].as_str().is_some_and(|n| !n.trim().is_empty()),
            "{id}"
        );
        assert!(m["context_window"].as_u64().is_some_and(|c| c > 0), "{id}");
        for side in ["input", "output"] {
            let price = m["pricing"][side].as_f64().unwrap_or(-1.0);
            assert!(price.is_finite() && price >= 0.0, "{id} {side} price");
        }
    }
    for ns in [
        "openai",
        "anthropic",
        "google",
        "xai",
        "groq",
        "mistral",
        "meta-llama",
        "deepseek",
    ] {
        assert!(namespaces.contains(ns), "no {ns} model");
    }

    let catalog = Catalog::builtin().unwrap();
    assert_eq!(catalog.models().len(), models.len());
    assert_eq!(catalog.updated(), raw["updated"].as_str().unwrap());
    let listed: Vec<&str> = catalog.models().iter().map(|m| m.id()).collect();
    let shipped: Vec<&str> = models.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(listed, shipped, "catalog order is file order");
}

#[test]
fn prices_are_usd_per_million_tokens() {
    let catalog = Catalog::builtin().unwrap();
    let model = catalog.get("openai/gpt-4o-mini").unwrap();
    assert_eq!(model.name(), "GPT-4o mini");
    assert_eq!(model.context_window(), 128_000);
    let cost = catalog.price("openai/gpt-4o-mini", 2_000, 1_000).unwrap();
    assert!(
        (cost - (2_000.0 * 0.15 + 1_000.0 * 0.6) / 1e6).abs() < 1e-15,
        "{cost}"
    );
    assert_eq!(
        catalog.price("gpt-4o-mini", 2_000, 1_000),
        Some(cost),
        "bare ids too"
    );
    assert_eq!(catalog.price("openai/not-in-the-catalog", 1, 1), None);
    assert_eq!(catalog.price("not an id", 1, 1), None);
}

const CURRENT: &str = r#"{
  "version": 1,
  "updated": "2026-01-15",
  "source": "test",
  "models": [
    {"id": "openai/gpt-4o", "name": "GPT-4o (old)", "context_window": 128000, "pricing": {"input": 5.0, "output": 15.0}},
    {"id": "anthropic/claude-3.5-haiku", "name": "Claude 3.5 Haiku", "context_window": 200000, "max_output_tokens": 8192, "pricing": {"input": 1.0, "output": 5.0}},
    {"id": "mistral/only-here", "name": "Only here", "context_window": 32000, "pricing": {"input": 0.5, "output": 1.5}}
  ]
}"#;

/// The shape of `GET https://ai-gateway.vercel.sh/v1/models`.
fn gateway_list() -> String {
    json!({
        "object": "list",
        "data": [
            {"id": "openai/gpt-4o", "object": "model", "created": 1_700_000_000, "owned_by": "openai",
             "name": "GPT-4o", "description": "…", "context_window": 128_000, "max_tokens": 16_384,
             "type": "language", "tags": ["vision"],
             "pricing": {"input": "0.0000025", "output": "0.00001", "input_cache_read": "0.00000125"}},
            {"id": "openai/text-embedding-3-small", "object": "model", "owned_by": "openai",
             "name": "text-embedding-3-small", "type": "embedding",
             "context_window": 8192, "pricing": {"input": "0.00000002"}},
            {"id": "google/gemini-2.5-flash", "object": "model", "owned_by": "google",
             "name": "Gemini 2.5 Flash", "context_window": 1_048_576, "max_tokens": 65_536,
             "pricing": {"input": "0.0000003", "output": "0.0000025"}},
            {"id": "anthropic/claude-3.5-haiku", "object": "model", "owned_by": "anthropic",
             "name": "Claude 3.5 Haiku", "type": "language",
             "pricing": {"input": "0.0000008", "output": "0.000004"}},
            {"id": "xai/grok-unpriced", "object": "model", "owned_by": "xai", "name": "No price",
             "context_window": 256_000, "type": "language"},
            {"id": "deepseek/deepseek-r1", "object": "model", "owned_by": "deepseek",
             "name": "DeepSeek R1", "context_window": 128_000, "type": "language",
             "pricing": {"input": 5.5e-7, "output": 2.19e-6}},
            {"id": "bfl/flux-pro", "object": "model", "owned_by": "bfl", "name": "FLUX", "type": "image",
             "pricing": {"image": "0.04"}},
            {"id": "Not A Canonical Id", "object": "model", "type": "language", "context_window": 1,
             "pricing": {"input": "0", "output": "0"}},
            {"id": "openai/gpt-4o", "object": "model", "name": "duplicate", "context_window": 1,
             "type": "language", "pricing": {"input": "1", "output": "1"}},
            {"id": "meta/llama-negative", "object": "model", "type": "language", "context_window": 8192,
             "pricing": {"input": "-1", "output": "-1"}},
            42,
            {"object": "model", "name": "no id"}
        ]
    })
    .to_string()
}

#[test]
fn refresh_merges_the_gateway_list_over_the_current_catalog() {
    let current = Catalog::from_json(CURRENT).unwrap();
    let merged = refresh_from_gateway_list(&gateway_list(), &current).unwrap();

    let ids: Vec<&str> = merged.models().iter().map(|m| m.id()).collect();
    assert_eq!(
        ids,
        [
            "openai/gpt-4o",
            "anthropic/claude-3.5-haiku",
            "mistral/only-here",
            "deepseek/deepseek-r1",
            "google/gemini-2.5-flash",
        ],
        "current order kept, new models appended by id; embeddings, images, \
         unpriced new models, negative prices, bad ids and duplicates left out"
    );

    let gpt = merged.get("openai/gpt-4o").unwrap();
    assert_eq!(gpt.name(), "GPT-4o");
    assert_eq!((gpt.pricing().input, gpt.pricing().output), (2.5, 10.0));
    assert_eq!(gpt.max_output_tokens(), Some(16_384));

    let haiku = merged.get("anthropic/claude-3.5-haiku").unwrap();
    assert_eq!(
        haiku.context_window(),
        200_000,
        "kept: the gateway gave none"
    );
    assert_eq!(haiku.max_output_tokens(), Some(8_192));
    assert_eq!((haiku.pricing().input, haiku.pricing().output), (0.8, 4.0));

    let only = merged.get("mistral/only-here").unwrap();
    assert_eq!(only, current.get("mistral/only-here").unwrap());

    let flash = merged.get("google/gemini-2.5-flash").unwrap();
    assert_eq!((flash.pricing().input, flash.pricing().output), (0.3, 2.5));
    assert_eq!(flash.context_window(), 1_048_576);
    let r1 = merged.get("deepseek/deepseek-r1").unwrap();
    assert_eq!((r1.pricing().input, r1.pricing().output), (0.55, 2.19));

    assert_eq!(
        merged.updated(),
        "2026-01-15",
        "the command stamps the date"
    );
    assert_ne!(merged.source(), current.source());

    // What the operator command writes reads back as the same catalog.
    let written = merged
        .clone()
        .with_updated("2026-11-20")
        .unwrap()
        .to_json()
        .unwrap();
    let reread = Catalog::from_json(&written).unwrap();
    assert_eq!(reread.models(), merged.models());
    assert_eq!(reread.updated(), "2026-11-20");
}

#[test]
fn refresh_keeps_every_shipped_model_and_refuses_an_empty_or_broken_list() {
    let shipped = Catalog::builtin().unwrap();
    let merged = refresh_from_gateway_list(&gateway_list(), &shipped).unwrap();
    for m in shipped.models() {
        assert!(merged.get(m.id()).is_some(), "{} dropped", m.id());
    }

    let empty = json!({"object": "list", "data": []}).to_string();
    assert!(matches!(
        refresh_from_gateway_list(&empty, &shipped),
        Err(CatalogError::EmptyGatewayList)
    ));
    let embeddings_only = json!({"object": "list", "data": [
        {"id": "openai/text-embedding-3-small", "type": "embedding", "context_window": 8192,
         "pricing": {"input": "0.00000002", "output": "0"}}
    ]})
    .to_string();
    assert!(matches!(
        refresh_from_gateway_list(&embeddings_only, &shipped),
        Err(CatalogError::EmptyGatewayList)
    ));
    assert!(matches!(
        refresh_from_gateway_list(r#"{"object":"list"}"#, &shipped),
        Err(CatalogError::Json(_))
    ));
    assert!(matches!(
        refresh_from_gateway_list("<html>", &shipped),
        Err(CatalogError::Json(_))
    ));
}

fn key(service: Service, enabled: bool) -> KeyRecord {
    let t = now();
    KeyRecord {
        user: UserId::new("catalog-user").unwrap(),
        service,
        id: KeyId::first(),
        priority: 0,
        last_used_at: None,
        cooldown_until: None,
        label: service.display_name().to_owned(),
        masked_key: "sk-…0000".to_owned(),
        enabled,
        base_url: None,
        created_at: t,
        updated_at: t,
        last_validated_at: None,
        last_validation: None,
        secret: SecretRef {
            id: format!("catalog-user/{service}"),
            version: "v1".to_owned(),
        },
        revision: 1,
        rotated_at: None,
        pending: None,
        last_rotation: None,
    }
}

fn team(services: &[Service]) -> TeamCredentials {
    let team = TeamCredentials::default();
    for svc in services {
        team.insert(*svc, ApiKey::new(format!("team-key-for-{svc}-000000")));
    }
    team
}

fn snapshot(keys: Vec<KeyRecord>, consent: bool) -> UserSnapshot {
    UserSnapshot {
        settings: Settings {
            allow_gateway_fallback: consent,
        },
        keys,
    }
}

/// For every catalog model: (namespace, how the user would reach it).
fn reach(user: &UserSnapshot, team: &TeamCredentials) -> Vec<(String, Option<ResolutionPath>)> {
    let upstreams = Upstreams::default();
    Catalog::builtin()
        .unwrap()
        .models()
        .iter()
        .map(|m| {
            let via = accessibility(user, m.model_id(), team, &upstreams);
            (m.owned_by().to_owned(), via)
        })
        .collect()
}

#[test]
fn accessibility_follows_the_resolution_contract() {
    use ResolutionPath::*;
    use byok::domain::service::named::*;

    // No keys: only a team key (with consent, the default) serves.
    let nobody = snapshot(vec![], true);
    assert!(
        reach(&nobody, &team(&[]))
            .iter()
            .all(|(_, via)| via.is_none())
    );
    assert!(
        reach(&nobody, &team(&[Gateway]))
            .iter()
            .all(|(_, via)| *via == Some(TeamGateway))
    );
    for (ns, via) in reach(&nobody, &team(&[OpenAi])) {
        let want = (ns == "openai").then_some(TeamProvider);
        assert_eq!(via, want, "{ns} with a team openai key");
    }

    // An openai key serves openai models directly, nothing else.
    for (ns, via) in reach(&snapshot(vec![key(OpenAi, true)], true), &team(&[])) {
        let want = (ns == "openai").then_some(UserProvider);
        assert_eq!(via, want, "{ns} with an openai key");
    }
    // … and a groq key the groq-hosted models.
    for (ns, via) in reach(&snapshot(vec![key(Groq, true)], true), &team(&[])) {
        let want = (ns == "groq").then_some(UserProvider);
        assert_eq!(via, want, "{ns} with a groq key");
    }

    // OpenRouter serves every model; a gateway key too, before anything else.
    let openrouter = snapshot(vec![key(OpenRouter, true)], false);
    assert!(
        reach(&openrouter, &team(&[]))
            .iter()
            .all(|(_, via)| *via == Some(UserProvider))
    );
    let gateway = snapshot(vec![key(Gateway, true), key(OpenAi, true)], false);
    assert!(
        reach(&gateway, &team(&[Gateway]))
            .iter()
            .all(|(_, via)| *via == Some(UserGateway))
    );

    // Consent off: a team key serves nothing.
    let no_consent = snapshot(vec![], false);
    assert!(
        reach(&no_consent, &team(&[Gateway, OpenAi, OpenRouter]))
            .iter()
            .all(|(_, via)| via.is_none())
    );
    // … but the user's own keys still do.
    for (ns, via) in reach(
        &snapshot(vec![key(Anthropic, true)], false),
        &team(&[Gateway]),
    ) {
        let want = (ns == "anthropic").then_some(UserProvider);
        assert_eq!(via, want, "{ns} with an anthropic key, consent off");
    }

    // A disabled key counts as no key.
    for (ns, via) in reach(
        &snapshot(vec![key(OpenRouter, false)], true),
        &team(&[OpenAi]),
    ) {
        let want = (ns == "openai").then_some(TeamProvider);
        assert_eq!(via, want, "{ns} with a disabled openrouter key");
    }
}

/// `GET /v1/models` through byok-local's router on an embedded store.
#[tokio::test]
async fn models_route_marks_what_the_caller_can_reach() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_string_lossy().into_owned();
    let vars = [
        ("BYOK_STORE", "embedded"),
        ("BYOK_DATA_DIR", data_dir.as_str()),
        ("AI_GATEWAY_API_KEY", "vck_team_catalog_000000000001"),
    ];
    let config = Config::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    })
    .unwrap();
    let secret = JwtSecret::from_text("catalog-test-secret-0123456789abcdef").unwrap();
    let token = issue_token(&secret, "carol", false, 3_600, now_unix());
    let state = byok::app::local_state(&config, secret).await.unwrap();
    let carol = UserId::new("carol").unwrap();
    state
        .keys
        .upsert(
            &carol,
            KeyUpsert {
                service: Service::OpenAi,
                api_key: ApiKey::new("sk-proj-catalog_test_00000001"),
                base_url: None,
                label: None,
            },
            "test",
        )
        .await
        .unwrap();
    let keys = state.keys.clone();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, byok::http::local_router(state))
            .await
            .unwrap();
    });
    let client = reqwest::Client::new();
    let get = |token: Option<&str>| {
        let mut req = client.get(format!("{base}/v1/models"));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send()
    };

    let anonymous = get(None).await.unwrap();
    assert_eq!(anonymous.status(), 401);

    let answer = get(Some(&token)).await.unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["object"], "list");
    let shipped = Catalog::builtin().unwrap();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), shipped.models().len());
    let entry = |id: &str| {
        data.iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed"))
    };

    let mini = entry("openai/gpt-4o-mini");
    assert_eq!(mini["object"], "model");
    assert_eq!(mini["owned_by"], "openai");
    assert_eq!(mini["created"], shipped.created());
    assert_eq!(mini["context_window"], 128_000);
    assert_eq!(mini["pricing"], json!({"input": 0.15, "output": 0.6}));
    assert_eq!(
        (&mini["accessible"], &mini["via"]),
        (&json!(true), &json!("user-provider"))
    );
    let sonnet = entry("anthropic/claude-sonnet-4.5");
    assert_eq!(
        (&sonnet["accessible"], &sonnet["via"]),
        (&json!(true), &json!("team-gateway"))
    );
    assert!(
        !body.to_string().contains("sk-proj-"),
        "no key in the answer"
    );

    // Consent off: only the user's own key still serves.
    keys.save_settings(
        &carol,
        Settings {
            allow_gateway_fallback: false,
        },
        "req-catalog",
    )
    .await
    .unwrap();
    let body: Value = get(Some(&token)).await.unwrap().json().await.unwrap();
    for m in body["data"].as_array().unwrap() {
        let openai = m["owned_by"] == "openai";
        assert_eq!(m["accessible"], json!(openai), "{}", m["id"]);
        let want = if openai {
            json!("user-provider")
        } else {
            Value::Null
        };
        assert_eq!(m["via"], want, "{}", m["id"]);
    }
    server.abort();
}

/// Serves `body` with `status` at `GET /v1/models` on 127.0.0.1; returns the
/// base URL and the server task (aborted by the caller).
async fn model_list_server(status: u16, body: String) -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route(
        "/v1/models",
        axum::routing::get(move || {
            let body = body.clone();
            async move {
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    [("content-type", "application/json")],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}/v1"), task)
}

fn refresh_command(
    data_dir: &std::path::Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(byok_tests::harness::local_bin());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BYOK_DATA_DIR", data_dir)
        .args(["catalog", "refresh"])
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The operator command downloads the gateway's list (default
/// `$AI_GATEWAY_URL/models`), writes the merged catalog, and byok-local
/// serves it with `BYOK_CATALOG_FILE`; a failed download changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_refresh_command_writes_a_catalog_that_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models.json");
    let file_str = file.to_str().unwrap().to_owned();
    let (gateway, server_task) = model_list_server(200, gateway_list()).await;

    let out = refresh_command(
        dir.path(),
        &[("AI_GATEWAY_URL", gateway.as_str())],
        &["--out", &file_str],
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("models"), "{printed}");
    let written = Catalog::from_json(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let expected =
        refresh_from_gateway_list(&gateway_list(), &Catalog::builtin().unwrap()).unwrap();
    let ids = |c: &Catalog| {
        c.models()
            .iter()
            .map(|m| m.id().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&written),
        ids(&expected),
        "the documented merge, written out"
    );
    assert!(written.get("deepseek/deepseek-r1").is_some());
    assert!(
        written.updated() >= Catalog::builtin().unwrap().updated(),
        "dated today"
    );
    assert_eq!(
        written.get("openai/gpt-4o").unwrap().context_window(),
        128_000,
        "the gateway's values"
    );

    // A broken download leaves the file as it was.
    let before = std::fs::read(&file).unwrap();
    let (broken, broken_task) = model_list_server(500, "{}".into()).await;
    let out = refresh_command(
        dir.path(),
        &[("BYOK_CATALOG_FILE", file_str.as_str())],
        &["--from", &format!("{broken}/models")],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 500"),
        "{:?}",
        out
    );
    assert_eq!(std::fs::read(&file).unwrap(), before);
    let out = refresh_command(dir.path(), &[], &["--from", &format!("{gateway}/models")]);
    assert!(!out.status.success(), "no destination given");

    // byok-local serves the refreshed catalog.
    let server = byok_tests::harness::LocalServer::start(
        dir.path(),
        &[("BYOK_CATALOG_FILE", file_str.as_str())],
    );
    let api = byok_tests::http::Api::new(&server.base, Some(&server.token("reader", false)));
    let models = api.get("/v1/models").await;
    let ids: Vec<&str> = models.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&"deepseek/deepseek-r1"), "{ids:?}");
    server.stop();
    server_task.abort();
    broken_task.abort();
}
