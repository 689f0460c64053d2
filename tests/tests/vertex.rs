//! Google Vertex AI with a user's service account, end to end on both
//! stores: the key file's fields are saved (checked by a token exchange and
//! one authenticated call), a `token_uri` elsewhere is refused; completions
//! stream through the `openai` SDK with an access token the stand-in's
//! token endpoint issued after verifying the JWT's RS256 signature with the
//! account's public key; 20 concurrent requests share one exchange, and a
//! token is exchanged again only near its expiry; an account the endpoint
//! refuses gives `424 upstream_auth`; the private key and the access tokens
//! appear in no response, log line or data file.
#![expect(
    clippy::unwrap_used,
    reason = "test bodies are plain functions run once per store; a failed step stops the test"
)]

use byok_tests::clients::python;
use byok_tests::harness::files_below;
use byok_tests::http::Api;
use byok_tests::stores::{Mode, start};
use byok_tests::upstream::{DEFAULT_REPLY, StandIn, TestServiceAccount, Upstream};
use serde_json::json;
use std::time::Duration;

const PROJECT: &str = "acme-prod-1";
const LOCATION: &str = "us-central1";
const MODEL: &str = "vertex/gemini-2.5-flash";

/// A part of the account's private key that is in no other text.
fn key_fragment(account: &TestServiceAccount) -> String {
    account
        .private_key_pem
        .lines()
        .nth(3)
        .unwrap()
        .chars()
        .take(40)
        .collect()
}

async fn vertex_service_accounts_serve_completions(mode: Mode) {
    let stand_in = StandIn::start().await;
    let alice_sa = TestServiceAccount::generate("byok-alice@acme-prod-1.iam.gserviceaccount.com");
    let bob_sa = TestServiceAccount::generate("byok-bob@acme-prod-1.iam.gserviceaccount.com");
    let carol_sa = TestServiceAccount::generate("byok-carol@acme-prod-1.iam.gserviceaccount.com");
    let stranger = TestServiceAccount::generate("stranger@other-project.iam.gserviceaccount.com");
    for account in [&alice_sa, &bob_sa, &carol_sa] {
        stand_in.accept_service_account(account);
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start(mode, &stand_in, dir.path(), &[("RUST_LOG", "trace")]);
    let token_url = stand_in.token_url();
    let alice = server.token("alice", false);
    let api = Api::new(&server.base, Some(&alice));

    // Bad credentials change nothing and never echo a value.
    let elsewhere = alice_sa.key_file(PROJECT, LOCATION, "https://evil.example/token");
    let mut no_location = alice_sa.key_file(PROJECT, LOCATION, &token_url);
    no_location.as_object_mut().unwrap().remove("location");
    let mut bad_host = alice_sa.key_file(PROJECT, LOCATION, &token_url);
    bad_host["location"] = json!("us-central1.evil.example/x#");
    for (credentials, field) in [
        (elsewhere, "token_uri"),
        (no_location, "location"),
        (bad_host, "location"),
    ] {
        let refused = api
            .post(
                "/api/keys",
                json!({"service": "vertex", "credentials": credentials}),
            )
            .await;
        assert_eq!(refused.status.as_u16(), 422, "{}", refused.text);
        assert_eq!(refused.code(), "invalid_key_format");
        assert!(refused.text.contains(field), "{}", refused.text);
        assert!(!refused.text.contains("evil"), "{}", refused.text);
    }
    let api_key = api
        .post(
            "/api/keys",
            json!({"service": "vertex", "apiKey": "sk-proj-notvertex00000000000001"}),
        )
        .await;
    assert_eq!(api_key.status.as_u16(), 400, "{}", api_key.text);
    assert_eq!(api.get("/api/keys").await.json["keys"], json!([]));
    assert_eq!(stand_in.token_exchanges(), 0);

    // Checked without being stored: a good account, then a refused one.
    let checked = api
        .post(
            "/api/keys/validate",
            json!({"service": "vertex",
                   "credentials": alice_sa.key_file(PROJECT, LOCATION, &token_url)}),
        )
        .await;
    assert_eq!(checked.status.as_u16(), 200, "{}", checked.text);
    assert_eq!(checked.json["valid"], true);
    let checked = api
        .post(
            "/api/keys/validate",
            json!({"service": "vertex",
                   "credentials": stranger.key_file(PROJECT, LOCATION, &token_url)}),
        )
        .await;
    assert_eq!(checked.status.as_u16(), 401, "{}", checked.text);
    assert_eq!(checked.code(), "invalid_key");
    assert_eq!(api.get("/api/keys").await.json["keys"], json!([]));
    let exchanges_before_save = stand_in.token_exchanges();

    // An account the token endpoint refuses is not saved.
    let refused = api
        .post(
            "/api/keys",
            json!({"service": "vertex", "validate": true,
                   "credentials": stranger.key_file(PROJECT, LOCATION, &token_url)}),
        )
        .await;
    assert_eq!(refused.status.as_u16(), 422, "{}", refused.text);
    assert_eq!(refused.code(), "invalid_key");

    // Saved after a token exchange and one authenticated call.
    let saved = api
        .post(
            "/api/keys",
            json!({"service": "vertex", "validate": true,
                   "credentials": alice_sa.key_file(PROJECT, LOCATION, &token_url)}),
        )
        .await;
    assert_eq!(saved.status.as_u16(), 201, "{}", saved.text);
    assert_eq!(
        saved.json["maskedKey"],
        format!("{} ({PROJECT}, {LOCATION})", alice_sa.email)
    );
    assert_eq!(saved.json["lastValidation"], "valid", "{}", saved.text);
    // The check above already holds alice's token: the save reuses it.
    assert_eq!(stand_in.token_exchanges(), exchanges_before_save);
    let checked = stand_in.requests().pop().unwrap();
    assert_eq!(
        checked.path,
        format!("/vertex/v1/projects/{PROJECT}/locations/{LOCATION}/endpoints")
    );
    assert!(checked.key.starts_with("ya29.standin-"), "{}", checked.key);

    // Streamed through the openai SDK with the cached token.
    let chat = python(
        "stream_chat.py",
        vec![
            format!("{}/v1", server.base),
            alice.clone(),
            MODEL.to_owned(),
            "Say hello.".to_owned(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(chat["text"], DEFAULT_REPLY, "{chat}");
    assert!(chat["chunks"].as_u64().unwrap() > 1, "{chat}");
    assert_eq!(chat["provider"], "vertex", "{chat}");
    assert_eq!(
        stand_in.token_exchanges(),
        exchanges_before_save,
        "the token is reused"
    );
    let sent = stand_in.requests().pop().unwrap();
    assert_eq!(sent.upstream, Some(Upstream::Vertex));
    assert_eq!(
        sent.path,
        format!(
            "/vertex/v1/projects/{PROJECT}/locations/{LOCATION}/endpoints/openapi/chat/completions"
        )
    );
    assert_eq!(sent.model, "google/gemini-2.5-flash");
    assert_eq!(sent.key, checked.key);

    // 20 concurrent requests of a user whose account has no token yet:
    // one exchange.
    let bob = server.token("bob", false);
    let bob_api = Api::new(&server.base, Some(&bob));
    let stored = bob_api
        .post(
            "/api/keys",
            json!({"service": "vertex", "credentials": bob_sa.key_file(PROJECT, "global", &token_url)}),
        )
        .await;
    assert_eq!(stored.status.as_u16(), 201, "{}", stored.text);
    let before = stand_in.token_exchanges();
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]});
    let answers = futures_util::future::join_all(
        (0..20).map(|_| bob_api.post("/v1/chat/completions", body.clone())),
    )
    .await;
    for answer in &answers {
        assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    }
    assert_eq!(
        stand_in.token_exchanges(),
        before + 1,
        "one exchange for 20"
    );
    let global = stand_in.requests().pop().unwrap();
    assert_eq!(
        global.path,
        format!(
            "/vertex/v1/projects/{PROJECT}/locations/global/endpoints/openapi/chat/completions"
        )
    );

    // A token is exchanged again only shortly before it expires (61 s
    // tokens are refreshed after 1 s).
    stand_in.set_token_lifetime(61);
    let carol = Api::new(&server.base, Some(&server.token("carol", false)));
    let stored = carol
        .post(
            "/api/keys",
            json!({"service": "vertex", "credentials": carol_sa.key_file(PROJECT, LOCATION, &token_url)}),
        )
        .await;
    assert_eq!(stored.status.as_u16(), 201, "{}", stored.text);
    let before = stand_in.token_exchanges();
    for _ in 0..2 {
        let answer = carol.post("/v1/chat/completions", body.clone()).await;
        assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    }
    assert_eq!(stand_in.token_exchanges(), before + 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let answer = carol.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    assert_eq!(
        stand_in.token_exchanges(),
        before + 2,
        "refreshed near expiry"
    );

    // An account the endpoint refuses, saved without a check: 424.
    let dave = Api::new(&server.base, Some(&server.token("dave", false)));
    let stored = dave
        .post(
            "/api/keys",
            json!({"service": "vertex", "credentials": stranger.key_file(PROJECT, LOCATION, &token_url)}),
        )
        .await;
    assert_eq!(stored.status.as_u16(), 201, "{}", stored.text);
    let calls = stand_in.requests().len();
    let refused = dave.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(refused.status.as_u16(), 424, "{}", refused.text);
    assert_eq!(refused.code(), "upstream_auth");
    assert_eq!(stand_in.requests().len(), calls, "Vertex was not called");

    // No secret part anywhere: responses, the trace log, the data files.
    let issued: Vec<String> = stand_in
        .requests()
        .iter()
        .filter(|r| r.upstream == Some(Upstream::Vertex))
        .map(|r| r.key.clone())
        .collect();
    assert!(!issued.is_empty());
    let mut seen: Vec<String> = vec![saved.text.clone(), refused.text.clone()];
    seen.extend(answers.iter().map(|a| a.text.clone()));
    seen.push(api.get("/api/keys").await.text);
    seen.push(api.get("/api/audit").await.text);
    seen.push(server.output());
    let fragments: Vec<String> = [&alice_sa, &bob_sa, &carol_sa, &stranger]
        .iter()
        .map(|a| key_fragment(a))
        .chain(issued)
        .collect();
    for text in &seen {
        for fragment in &fragments {
            assert!(!text.contains(fragment.as_str()), "a secret part leaked");
        }
    }
    for (file, bytes) in files_below(dir.path()) {
        for fragment in &fragments {
            assert!(
                !byok_tests::harness::contains_bytes(&bytes, fragment.as_bytes()),
                "{} holds a secret part in clear",
                file.display()
            );
        }
    }
    drop(server);
    stand_in.shutdown().await;
}

/// With `BYOK_ROUTE_USER_KEYS_VIA_GATEWAY`, a service account reaches the
/// team gateway in the gateway's Vertex credential shape
/// (`{project, location, googleCredentials: {privateKey, clientEmail}}`),
/// the model as the gateway names it; no token is exchanged here, and what
/// the gateway echoes of the credentials is scrubbed.
async fn vertex_accounts_go_through_the_gateway_in_its_shape(mode: Mode) {
    const TEAM_GATEWAY_KEY: &str = "vck_teamkey0vertex00000000000000000001";
    let stand_in = StandIn::start().await;
    stand_in.accept_keys([TEAM_GATEWAY_KEY]);
    let account = TestServiceAccount::generate("byok-gw@acme-prod-1.iam.gserviceaccount.com");
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        mode,
        &stand_in,
        dir.path(),
        &[
            ("AI_GATEWAY_API_KEY", TEAM_GATEWAY_KEY),
            ("BYOK_ROUTE_USER_KEYS_VIA_GATEWAY", "true"),
        ],
    );
    let api = Api::new(&server.base, Some(&server.token("gwen", false)));
    let stored = api
        .post(
            "/api/keys",
            json!({"service": "vertex",
                   "credentials": account.key_file(PROJECT, LOCATION, &stand_in.token_url())}),
        )
        .await;
    assert_eq!(stored.status.as_u16(), 201, "{}", stored.text);
    stand_in.echo_keys(true);
    let answer = api.chat(MODEL).await;
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    assert_eq!(answer.header("x-byok-path"), Some("user-provider"));
    assert_eq!(answer.header("x-byok-via"), Some("gateway"));
    assert_eq!(stand_in.token_exchanges(), 0, "the gateway exchanges it");
    let sent = stand_in.requests().pop().unwrap();
    assert_eq!(sent.upstream, Some(Upstream::Gateway));
    assert_eq!(sent.key, TEAM_GATEWAY_KEY);
    assert_eq!(sent.model, "google/gemini-2.5-flash");
    assert_eq!(
        sent.body["providerOptions"]["gateway"]["only"],
        json!(["vertex"]),
        "served through Vertex alone, never Google AI Studio on the gateway's credentials"
    );
    let credential = &sent.body["providerOptions"]["gateway"]["byok"]["vertex"][0];
    assert_eq!(credential["project"], PROJECT, "{}", sent.body);
    assert_eq!(credential["location"], LOCATION);
    assert_eq!(
        credential["googleCredentials"]["clientEmail"],
        account.email
    );
    assert_eq!(
        credential["googleCredentials"]["privateKey"],
        account.private_key_pem.as_str()
    );
    // The gateway echoed its bearer into the reply: scrubbed.
    assert!(!answer.text.contains(TEAM_GATEWAY_KEY), "{}", answer.text);
    drop(server);
    stand_in.shutdown().await;
}

async fn the_team_path_uses_a_team_service_account(mode: Mode) {
    let stand_in = StandIn::start().await;
    let team_sa = TestServiceAccount::generate("byok-team@acme-prod-1.iam.gserviceaccount.com");
    stand_in.accept_service_account(&team_sa);
    // The operator's key file, as Google gives it, plus the location.
    let key_file = team_sa
        .key_file(PROJECT, "europe-west4", &stand_in.token_url())
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        mode,
        &stand_in,
        dir.path(),
        &[("VERTEX_API_KEY", key_file.as_str()), ("RUST_LOG", "trace")],
    );
    let api = Api::new(&server.base, Some(&server.token("tina", false)));
    let resolved = api.get(&format!("/api/resolve?model={MODEL}")).await;
    assert_eq!(resolved.json["path"], "team-provider", "{}", resolved.text);
    stand_in.echo_keys(true);
    let answer = api.chat(MODEL).await;
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    assert_eq!(answer.header("x-byok-path"), Some("team-provider"));
    assert_eq!(answer.header("x-byok-paid-by"), Some("team"));
    assert_eq!(stand_in.token_exchanges(), 1, "the team account's token");
    let sent = stand_in.requests().pop().unwrap();
    assert_eq!(sent.upstream, Some(Upstream::Vertex));
    assert_eq!(
        sent.path,
        format!(
            "/vertex/v1/projects/{PROJECT}/locations/europe-west4/endpoints/openapi/chat/completions"
        )
    );
    // The echoed access token is scrubbed, and the private key is nowhere.
    assert!(!answer.text.contains(&sent.key), "{}", answer.text);
    let fragment = key_fragment(&team_sa);
    assert!(!answer.text.contains(&fragment));
    assert!(!server.output().contains(&fragment), "the key in the log");

    // Consent off: refused before any call.
    let off = api
        .post("/api/user-settings", json!({"allowGatewayFallback": false}))
        .await;
    assert_eq!(off.status.as_u16(), 200, "{}", off.text);
    let refused = api.chat(MODEL).await;
    assert_eq!(refused.code(), "consent_required", "{}", refused.text);
    drop(server);

    // A value that is no service account stops the process at start,
    // naming the variable and never the value.
    let dir = tempfile::tempdir().unwrap();
    let (status, printed) = byok_tests::harness::run_to_exit(
        dir.path(),
        &[("VERTEX_API_KEY", "ya29.not-a-service-account-CANARY")],
    );
    assert!(!status.success(), "{printed}");
    assert!(printed.contains("VERTEX_API_KEY"), "{printed}");
    assert!(!printed.contains("CANARY"), "{printed}");
    stand_in.shutdown().await;
}

byok_tests::on_every_store!(
    vertex_service_accounts_serve_completions,
    vertex_accounts_go_through_the_gateway_in_its_shape,
    the_team_path_uses_a_team_service_account
);
