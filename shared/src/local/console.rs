//! The web console, served by byok-local at `/`: the static files of
//! `web/` (embedded in the binary, so nothing to install or build), and a
//! local session: `POST /console/session` hands the page a token for the
//! dev user, but only while byok-local listens on loopback, only to a
//! same-origin page on a loopback host (no other site, and no DNS name
//! rebound to 127.0.0.1, can obtain one), and only while
//! `BYOK_CONSOLE_DEV_SESSION` is not `false`. Anyone who can reach the
//! port from this machine can already run `byok-local token`; the session
//! is what the start banner prints, handed to the browser.
//! `GET /console/config` tells the page how else it may sign in: through
//! the OIDC issuer of `BYOK_OIDC_*` (authorization code with PKCE, done by
//! the page), or by pasting a token.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use std::sync::Arc;

use crate::auth::{JwtSecret, issue_token, now_unix};
use crate::config::ConsoleOidc;

use super::{DEFAULT_TOKEN_TTL_SECS, DEV_USER};

const INDEX_HTML: &str = include_str!("../../../web/index.html");
const CONSOLE_JS: &str = include_str!("../../../web/console.js");
const CONSOLE_CSS: &str = include_str!("../../../web/console.css");

/// What a page of the console may load: only this origin (and the OIDC
/// issuer's token endpoint, which the page calls), no inline script, no
/// framing.
fn content_security_policy(oidc: Option<&ConsoleOidc>) -> String {
    let issuer = oidc
        .and_then(|o| url::Url::parse(&o.token_endpoint).ok())
        .map(|u| format!(" {}", u.origin().ascii_serialization()))
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'{issuer}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// The console's routes. `session` is the secret that signs dev tokens,
/// `None` when no local session is offered; `oidc`, the issuer users sign
/// in with, if any.
pub fn router(session: Option<JwtSecret>, oidc: Option<ConsoleOidc>) -> Router {
    let csp = HeaderValue::from_str(&content_security_policy(oidc.as_ref()))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    let page = |content_type: &'static str, body: &'static str| {
        let csp = csp.clone();
        get(move || async move { asset(content_type, body, csp) })
    };
    let config = Arc::new(json!({"oidc": oidc, "localSession": session.is_some()}));
    Router::new()
        .route("/", page("text/html; charset=utf-8", INDEX_HTML))
        .route(
            "/console.js",
            page("text/javascript; charset=utf-8", CONSOLE_JS),
        )
        .route("/console.css", page("text/css; charset=utf-8", CONSOLE_CSS))
        .route(
            "/console/config",
            get(move || async move { axum::Json((*config).clone()) }),
        )
        .route(
            "/console/session",
            post(
                move |headers: HeaderMap| async move { local_session(session.as_ref(), &headers) },
            ),
        )
}

fn asset(content_type: &'static str, body: &'static str, csp: HeaderValue) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_SECURITY_POLICY, csp),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// Whether `host` (a `Host` header or an origin's host part, with port)
/// names this machine's loopback.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    matches!(name, "127.0.0.1" | "localhost" | "[::1]")
}

fn refused(code: &str, message: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn local_session(secret: Option<&JwtSecret>, headers: &HeaderMap) -> Response {
    let Some(secret) = secret else {
        return refused(
            "no_local_session",
            "no local session: byok-local is not on loopback or BYOK_CONSOLE_DEV_SESSION=false; paste a token",
        );
    };
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST).unwrap_or_default();
    if !is_loopback_host(host) {
        return refused(
            "no_local_session",
            "local sessions are for pages opened on a loopback address",
        );
    }
    // A browser names the page's origin on a POST; it must be this one.
    if let Some(origin) = text(header::ORIGIN) {
        let same = origin
            .strip_prefix("http://")
            .is_some_and(|rest| rest == host);
        if !same {
            return refused(
                "no_local_session",
                "local sessions are for the console's own page",
            );
        }
    }
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site != "same-origin")
    {
        return refused(
            "no_local_session",
            "local sessions are for the console's own page",
        );
    }
    let token = issue_token(secret, DEV_USER, false, DEFAULT_TOKEN_TTL_SECS, now_unix());
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({"token": token, "user": DEV_USER})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_count() {
        for host in [
            "127.0.0.1:8787",
            "localhost:8787",
            "[::1]:8787",
            "127.0.0.1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:8787",
            "127.0.0.1.evil.example",
            "10.0.0.1:8787",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
