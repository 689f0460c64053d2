//! Request-scoped BYOK through the team gateway, end to end on both stores:
//! with `BYOK_ROUTE_USER_KEYS_VIA_GATEWAY=true` a user's provider key goes to
//! the team gateway inside `providerOptions.gateway.byok`, authenticated by
//! the team gateway key; the path stays `user-provider` (the user pays, no
//! budget is charged); the key is in no log. Off, nothing changes.
#![expect(
    clippy::unwrap_used,
    reason = "test bodies are plain functions run once per store; a failed step stops the test"
)]

use byok_tests::http::Api;
use byok_tests::stores::{Mode, start};
use byok_tests::upstream::{StandIn, Upstream};
use serde_json::{Value, json};

const USER_OPENAI_KEY: &str = "sk-proj-viagateway0user000000000000000001";
const TEAM_GATEWAY_KEY: &str = "vck_teamkey0viagateway00000000000000001";
const ADMIN: &str = "ops";

fn chat(stream: bool) -> Value {
    json!({
        "model": "openai/gpt-4o-mini",
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
        // A client's own gateway options never reach the gateway on this
        // path: a fallback model would run on the gateway's credentials.
        "providerOptions": {"gateway": {"models": ["anthropic/claude-opus-4"]}}
    })
}

async fn user_keys_go_through_the_team_gateway_when_asked(mode: Mode) {
    let stand_in = StandIn::start().await;
    stand_in.accept_keys([USER_OPENAI_KEY, TEAM_GATEWAY_KEY]);
    for on in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut extra = vec![
            ("AI_GATEWAY_API_KEY", TEAM_GATEWAY_KEY),
            ("RUST_LOG", "debug"),
        ];
        if on {
            extra.push(("BYOK_ROUTE_USER_KEYS_VIA_GATEWAY", "true"));
        }
        let server = start(mode, &stand_in, dir.path(), &extra);
        let api = Api::new(&server.base, Some(&server.token("vida", false)));
        let admin = Api::new(&server.base, Some(&server.token(ADMIN, true)));
        let saved = api
            .post(
                "/api/keys",
                json!({"service": "openai", "apiKey": USER_OPENAI_KEY}),
            )
            .await;
        assert_eq!(saved.status.as_u16(), 201, "{}", saved.text);
        // A budget on the user: a user-paid request must leave it alone.
        let budget = admin
            .put(
                "/api/admin/budgets/users/vida",
                json!({"type": "tokens", "period": "monthly", "limit": 1000, "pauseAtLimit": true}),
            )
            .await;
        assert!(budget.status.is_success(), "{}", budget.text);

        let resolved = api.get("/api/resolve?model=openai/gpt-4o-mini").await;
        assert_eq!(resolved.json["path"], "user-provider", "{}", resolved.text);
        assert_eq!(
            resolved.json.get("via").and_then(Value::as_str),
            on.then_some("gateway"),
            "{}",
            resolved.text
        );

        for stream in [false, true] {
            let before = stand_in.requests().len();
            let answer = api.post("/v1/chat/completions", chat(stream)).await;
            assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
            assert_eq!(answer.header("x-byok-path"), Some("user-provider"));
            assert_eq!(answer.header("x-byok-paid-by"), Some("user"));
            let sent = stand_in.requests()[before..].to_vec();
            assert_eq!(sent.len(), 1, "one upstream call");
            let call = &sent[0];
            if on {
                assert_eq!(call.upstream, Some(Upstream::Gateway));
                assert_eq!(
                    call.key, TEAM_GATEWAY_KEY,
                    "the team gateway key authenticates"
                );
                assert_eq!(call.model, "openai/gpt-4o-mini");
                assert_eq!(
                    call.body["providerOptions"],
                    json!({"gateway": {"byok": {"openai": [{"apiKey": USER_OPENAI_KEY}]}, "only": ["openai"]}}),
                    "the user's key, and only ours, in the gateway's options"
                );
                assert_eq!(answer.header("x-byok-via"), Some("gateway"));
            } else {
                assert_eq!(call.upstream, Some(Upstream::OpenAi));
                assert_eq!(call.key, USER_OPENAI_KEY);
                assert_eq!(call.model, "gpt-4o-mini");
                assert_eq!(answer.header("x-byok-via"), None);
            }
            assert!(!answer.text.contains(USER_OPENAI_KEY));
        }
        let mine = api.get("/api/budget").await;
        let used = &mine.json["budgets"][0]["used"];
        assert_eq!(used, 0, "no budget is charged: {}", mine.text);
        let log = server.output();
        assert!(log.contains("DEBUG"), "the log ran at debug level");
        assert!(!log.contains(USER_OPENAI_KEY) && !log.contains(TEAM_GATEWAY_KEY));
        drop(server);
    }
    stand_in.shutdown().await;
}

byok_tests::on_every_store!(user_keys_go_through_the_team_gateway_when_asked);
