//! CORS on byok-local: a browser's preflight from an allowed origin is
//! answered (methods, the `authorization` header, a max age) before any
//! authentication; one from another origin gets no CORS headers; actual
//! answers name the origin and expose the `x-byok-*` and rate-limit
//! headers; without `BYOK_CORS_ORIGINS` there are no CORS headers at all.

#![expect(
    clippy::unwrap_used,
    reason = "test bodies: a failed step should stop the test loudly"
)]

use byok_tests::harness::LocalServer;
use reqwest::{Method, StatusCode};

const APP: &str = "http://localhost:5173";
const OTHER: &str = "https://evil.example.com";

async fn preflight(server: &LocalServer, path: &str, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(Method::OPTIONS, format!("{}{path}", server.base))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_succeeds_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let server = LocalServer::start(
        dir.path(),
        &[(
            "BYOK_CORS_ORIGINS",
            "http://localhost:5173, https://app.example.com",
        )],
    );

    for path in ["/v1/chat/completions", "/api/keys", "/api/admin/budgets"] {
        let ok = preflight(&server, path, APP).await;
        assert!(ok.status().is_success(), "{path}: {}", ok.status());
        assert_eq!(
            header(&ok, "access-control-allow-origin"),
            Some(APP),
            "{path}"
        );
        let methods = header(&ok, "access-control-allow-methods").unwrap_or_default();
        assert!(
            methods.contains("POST") && methods.contains("DELETE"),
            "{methods}"
        );
        let headers = header(&ok, "access-control-allow-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(headers.contains("authorization") && headers.contains("content-type"));
        assert_eq!(header(&ok, "access-control-max-age"), Some("600"));
        assert_eq!(header(&ok, "access-control-allow-credentials"), None);

        let refused = preflight(&server, path, OTHER).await;
        assert_eq!(
            header(&refused, "access-control-allow-origin"),
            None,
            "{path}: another origin"
        );
    }

    // An actual request from the allowed origin names it and exposes our headers.
    let token = server.token("cora", false);
    let keys = reqwest::Client::new()
        .get(format!("{}/api/keys", server.base))
        .bearer_auth(&token)
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(keys.status(), StatusCode::OK);
    assert_eq!(header(&keys, "access-control-allow-origin"), Some(APP));
    let exposed = header(&keys, "access-control-expose-headers").unwrap_or_default();
    for name in [
        "x-byok-path",
        "x-byok-paid-by",
        "x-byok-budget-remaining",
        "x-ratelimit-remaining-requests",
        "x-request-id",
    ] {
        assert!(exposed.contains(name), "{name} in {exposed}");
    }
    // Refused requests still carry it, so the browser shows the error.
    let unauthorized = reqwest::Client::new()
        .get(format!("{}/api/keys", server.base))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&unauthorized, "access-control-allow-origin"),
        Some(APP)
    );
    server.stop();
}

#[tokio::test]
async fn without_origins_there_are_no_cors_headers() {
    let dir = tempfile::tempdir().unwrap();
    let server = LocalServer::start(dir.path(), &[]);
    let answer = preflight(&server, "/v1/chat/completions", APP).await;
    assert_eq!(header(&answer, "access-control-allow-origin"), None);
    assert!(answer.status().is_client_error(), "{}", answer.status());
    server.stop();
}

#[tokio::test]
async fn a_wildcard_with_credentials_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (status, output) = byok_tests::harness::run_to_exit(
        dir.path(),
        &[
            ("BYOK_CORS_ORIGINS", "*"),
            ("BYOK_CORS_ALLOW_CREDENTIALS", "true"),
        ],
    );
    assert!(!status.success());
    assert!(output.contains("BYOK_CORS_ORIGINS"), "{output}");
}
