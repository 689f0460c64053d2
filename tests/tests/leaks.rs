//! Keys of any shape never leak, even through an upstream that echoes them:
//! the real byok-local binary at `RUST_LOG=trace` in front of the provider
//! stand-in set to quote the presented key in every error message and at
//! the end of every reply. A user gateway key and a team gateway key, both
//! shaped like nothing a heuristic would catch, go through non-streamed and
//! streamed completions, upstream 4xx and 5xx answers, key validation and
//! the audit log; neither the keys nor their base64 or percent-encoded
//! forms may appear in any response, the server's log or the data
//! directory.

use base64::Engine as _;
use byok_tests::harness::{contains_bytes, files_below};
use byok_tests::http::{Answer, Api};
use byok_tests::stores::{Mode, start};
use byok_tests::upstream::{Failure, StandIn};
use serde_json::json;

/// Odd shapes: no known prefix, separators a tokenizer would split on.
const TEAM_KEY: &str = "team:CANARY:gateway:secret";
const USER_KEY: &str = "user:CANARY/odd+shape=key~0001";

/// Every form of `key` an upstream or a log might carry.
fn forms(key: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let percent: String = key
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    vec![key.to_owned(), b64.encode(key), url.encode(key), percent]
}

fn assert_clean(what: &str, text: &[u8]) {
    for key in [TEAM_KEY, USER_KEY] {
        for form in forms(key) {
            assert!(
                !contains_bytes(text, form.as_bytes()),
                "{what} holds {form}: {}",
                String::from_utf8_lossy(text)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_keys_of_any_shape_never_leak() {
    let stand_in = StandIn::start().await;
    stand_in.accept_keys([TEAM_KEY, USER_KEY]);
    stand_in.echo_keys(true);
    stand_in.set_chunks(1);
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        Mode::Embedded,
        &stand_in,
        dir.path(),
        &[
            ("RUST_LOG", "trace"),
            ("BYOK_VALIDATE_PER_MINUTE", "1000"),
            ("AI_GATEWAY_API_KEY", TEAM_KEY),
        ],
    );
    let own = Api::new(&server.base, Some(&server.token("olive", false)));
    let team = Api::new(&server.base, Some(&server.token("tariq", false)));
    let saved = own
        .post(
            "/api/keys",
            json!({"service": "gateway", "apiKey": USER_KEY, "label": "odd one"}),
        )
        .await;
    assert_eq!(saved.status.as_u16(), 201, "{}", saved.text);
    let consent = team
        .post("/api/user-settings", json!({"allowGatewayFallback": true}))
        .await;
    assert!(consent.status.is_success(), "{}", consent.text);

    let mut answers: Vec<Answer> = vec![saved, consent];
    let chat = |stream: bool| {
        json!({
            "model": "openai/gpt-4o-mini",
            "messages": [{"role": "user", "content": "say my key"}],
            "stream": stream,
        })
    };
    for (api, path) in [(&own, "user-gateway"), (&team, "team-gateway")] {
        for stream in [false, true] {
            let answer = api.post("/v1/chat/completions", chat(stream)).await;
            assert_eq!(answer.status.as_u16(), 200, "{path}: {}", answer.text);
            assert!(
                answer.text.contains("[redacted]"),
                "{path}: the echo was not there to remove: {}",
                answer.text
            );
            answers.push(answer);
        }
        for status in [400, 401, 429, 500, 503] {
            for stream in [false, true] {
                stand_in.fail_next(Failure::Status(status, None));
                let answer = api.post("/v1/chat/completions", chat(stream)).await;
                assert!(
                    !answer.status.is_success() || stream,
                    "{path} {status}: {}",
                    answer.text
                );
                answers.push(answer);
            }
        }
    }
    // Validation: accepted, refused (the refusal quotes the key) and down.
    answers.push(
        own.post("/api/keys/validate", json!({"service": "gateway"}))
            .await,
    );
    stand_in.accept_keys([TEAM_KEY]);
    answers.push(
        own.post("/api/keys/validate", json!({"service": "gateway"}))
            .await,
    );
    stand_in.fail_next(Failure::Status(503, None));
    answers.push(
        own.post(
            "/api/keys/validate",
            json!({"service": "gateway", "apiKey": "other:CANARY:shape:0000002"}),
        )
        .await,
    );
    answers.push(own.get("/api/keys").await);
    answers.push(own.get("/api/audit").await);
    answers.push(own.get("/api/usage/requests").await);
    answers.push(team.get("/api/usage/requests").await);

    for answer in &answers {
        assert_clean("a response", answer.text.as_bytes());
        for (name, value) in &answer.headers {
            assert_clean(name.as_str(), value.as_bytes());
        }
    }
    let log = server.output();
    assert!(log.contains("TRACE"), "the log ran at trace level");
    assert_clean("the log", log.as_bytes());
    drop(server);
    for (path, bytes) in files_below(dir.path()) {
        assert_clean(&path.display().to_string(), &bytes);
    }
    stand_in.shutdown().await;
}
