//! Tokens from identity providers, verified with their JWKS (`BYOK_JWKS_URL`)
//! by the real byok-local: a key set served on 127.0.0.1, RS256 and ES256
//! tokens shaped like Cognito, Auth0/Clerk, Supabase and Keycloak ones
//! accepted on every router; forged variants (a key the issuer does not
//! publish, `alg: none`, HS256 "signed" with the public key, expired, no
//! `exp`, too long-lived, wrong issuer or audience, an unknown key id)
//! refused with 401; a rotated key picked up by one refresh.

#![expect(
    clippy::unwrap_used,
    reason = "test bodies: a failed step should stop the test loudly"
)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use byok_tests::harness::LocalServer;
use byok_tests::http::Api;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ISSUER: &str = "https://issuer.example.com/";

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/jwks")
        .join(name);
    std::fs::read(&path).unwrap()
}

fn jwk(name: &str) -> Value {
    let all: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    all[name].clone()
}

/// A key set on 127.0.0.1 whose keys can change, counting its fetches.
struct KeySet {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl KeySet {
    async fn start(keys: Vec<Value>) -> Self {
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (k, f) = (keys.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let (k, f) = (k.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    axum::Json(json!({"keys": *k.lock().unwrap()}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            keys,
            fetches,
            task,
        }
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, pem: &str) -> String {
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture(pem)).unwrap(),
        _ => EncodingKey::from_rsa_pem(&fixture(pem)).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, Some("test-rsa-1"), claims, "rsa.pem")
}

fn es256(claims: &Value) -> String {
    sign(Algorithm::ES256, Some("test-ec-1"), claims, "ec.pem")
}

fn claims(sub: &str, aud: &str, extra: Value) -> Value {
    let mut c = json!({"sub": sub, "iss": ISSUER, "aud": aud, "iat": now(), "exp": now() + 3600});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    c
}

async fn status(server: &LocalServer, token: &str, path: &str) -> StatusCode {
    Api::new(&server.base, Some(token)).get(path).await.status
}

/// The routes of every router a user token opens.
const ROUTES: [&str; 5] = [
    "/api/keys",
    "/api/user-settings",
    "/api/resolve?model=openai/gpt-4o-mini",
    "/v1/models",
    "/api/budget",
];

async fn accepted_everywhere(server: &LocalServer, token: &str, shape: &str) {
    for path in ROUTES {
        let got = status(server, token, path).await;
        assert_ne!(got, StatusCode::UNAUTHORIZED, "{shape} on {path}");
        assert!(
            got.is_success() || got == StatusCode::FORBIDDEN,
            "{shape} on {path}: {got}"
        );
    }
    let completion = Api::new(&server.base, Some(token))
        .post(
            "/v1/chat/completions",
            json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_ne!(
        completion.status,
        StatusCode::UNAUTHORIZED,
        "{shape}: {}",
        completion.text
    );
}

fn start(dir: &Path, keys: &KeySet, extra: &[(&str, &str)]) -> LocalServer {
    let mut env = vec![
        ("BYOK_JWKS_URL", keys.url.as_str()),
        ("BYOK_JWT_ISSUER", ISSUER),
        ("BYOK_JWT_MAX_TTL_SECS", "86400"),
    ];
    env.extend_from_slice(extra);
    LocalServer::start(dir, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_tokens_are_accepted_and_forgeries_refused() {
    let keys = KeySet::start(vec![jwk("rsa"), jwk("ec")]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &keys, &[("BYOK_JWT_AUDIENCE", "byok-api")]);
    assert_eq!(keys.fetches.load(Ordering::SeqCst), 1, "fetched at start");

    // Cognito: an ID token with cognito:groups (RS256).
    let cognito = rs256(&claims(
        "4f1c-cognito-user",
        "byok-api",
        json!({"token_use": "id", "cognito:groups": ["admin"], "email": "a@example.com"}),
    ));
    accepted_everywhere(&server, &cognito, "Cognito RS256").await;
    assert_eq!(
        status(&server, &cognito, "/api/admin/usage").await,
        StatusCode::OK
    );

    // Auth0 / Clerk: aud, namespaced custom claims (ES256), no admin group.
    let auth0 = es256(&claims(
        "auth0|65f0c",
        "byok-api",
        json!({"https://example.com/roles": ["user"], "azp": "client-1", "scope": "openid"}),
    ));
    accepted_everywhere(&server, &auth0, "Auth0 ES256").await;
    assert_eq!(
        status(&server, &auth0, "/api/admin/usage").await,
        StatusCode::FORBIDDEN
    );
    // An audience given as a list.
    let listed = rs256(&claims(
        "clerk_user_2",
        "x",
        json!({"aud": ["other", "byok-api"]}),
    ));
    accepted_everywhere(&server, &listed, "Clerk, aud list").await;

    // Forgeries.
    let good = claims("mallory", "byok-api", json!({}));
    let public_pem = String::from_utf8(fixture("rsa.pub.pem")).unwrap();
    let hs_with_public = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("test-rsa-1".into());
        jsonwebtoken::encode(
            &header,
            &good,
            &EncodingKey::from_secret(public_pem.as_bytes()),
        )
        .unwrap()
    };
    let alg_none = {
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&good)
        )
    };
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let forged = [
        (
            "a key the issuer does not publish",
            sign(
                Algorithm::RS256,
                Some("test-rsa-1"),
                &good,
                "rsa-stranger.pem",
            ),
        ),
        ("alg none", alg_none),
        ("HS256 signed with the public key", hs_with_public),
        (
            "ES256 header on an RSA key id",
            sign(Algorithm::ES256, Some("test-rsa-1"), &good, "ec.pem"),
        ),
        (
            "expired",
            rs256(&claims("mallory", "byok-api", json!({"exp": now() - 3600}))),
        ),
        ("no exp", rs256(&no_exp)),
        (
            "too long-lived",
            rs256(&claims(
                "mallory",
                "byok-api",
                json!({"exp": now() + 30 * 86_400}),
            )),
        ),
        (
            "wrong issuer",
            rs256(&claims(
                "mallory",
                "byok-api",
                json!({"iss": "https://evil.example.com/"}),
            )),
        ),
        (
            "wrong audience",
            rs256(&claims("mallory", "someone-else", json!({}))),
        ),
        (
            "unknown key id",
            sign(Algorithm::RS256, Some("nobody"), &good, "rsa.pem"),
        ),
        (
            "no key id, several keys",
            sign(Algorithm::RS256, None, &good, "rsa.pem"),
        ),
    ];
    for (name, token) in &forged {
        for path in ["/api/keys", "/v1/models"] {
            assert_eq!(
                status(&server, token, path).await,
                StatusCode::UNAUTHORIZED,
                "{name} on {path}"
            );
        }
    }
    // The unknown key id made one refresh; it is not repeated within a minute.
    assert_eq!(keys.fetches.load(Ordering::SeqCst), 2);

    let (_, output) = server.stop();
    assert!(
        !output.contains(&cognito) && !output.contains("BEGIN"),
        "no token or key in the log"
    );
    keys.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_picked_up_by_one_refresh() {
    let keys = KeySet::start(vec![jwk("rsa")]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &keys, &[]);
    let rotated = sign(
        Algorithm::RS256,
        Some("test-rsa-2"),
        &claims("rotated-user", "any", json!({})),
        "rsa-rotated.pem",
    );
    keys.keys.lock().unwrap().push(jwk("rotated"));
    assert_eq!(status(&server, &rotated, "/api/keys").await, StatusCode::OK);
    assert_eq!(
        keys.fetches.load(Ordering::SeqCst),
        2,
        "start, then the unknown key id"
    );
    assert_eq!(status(&server, &rotated, "/api/keys").await, StatusCode::OK);
    assert_eq!(keys.fetches.load(Ordering::SeqCst), 2, "cached since");
    server.stop();
    keys.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_and_keycloak_shapes() {
    let keys = KeySet::start(vec![jwk("rsa"), jwk("ec")]).await;

    // Supabase: aud "authenticated", role claim.
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &keys, &[("BYOK_JWT_AUDIENCE", "authenticated")]);
    let supabase = rs256(&claims(
        "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d",
        "authenticated",
        json!({"role": "authenticated", "email": "s@example.com", "app_metadata": {"provider": "email"}}),
    ));
    accepted_everywhere(&server, &supabase, "Supabase").await;
    server.stop();

    // Keycloak: roles under realm_access, named by BYOK_ADMIN_CLAIM.
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &keys,
        &[("BYOK_ADMIN_CLAIM", "realm_access.roles")],
    );
    let admin = es256(&claims(
        "f:realm:kc-admin",
        "account",
        json!({"realm_access": {"roles": ["offline_access", "admin"]}, "preferred_username": "kc"}),
    ));
    let user = es256(&claims(
        "f:realm:kc-user",
        "account",
        json!({"realm_access": {"roles": ["offline_access"]}, "groups": ["admin"]}),
    ));
    accepted_everywhere(&server, &admin, "Keycloak").await;
    assert_eq!(
        status(&server, &admin, "/api/admin/usage").await,
        StatusCode::OK
    );
    assert_eq!(
        status(&server, &user, "/api/admin/usage").await,
        StatusCode::FORBIDDEN,
        "only the configured claim grants admin"
    );
    server.stop();
    keys.task.abort();
}
