//! HTTP: axum routers per capability (one per Lambda function, all merged for
//! byok-local), the shared state they run on, and the error mapping.
//! Handlers are thin adapters over [`crate::keys`] and [`crate::resolve`].

mod budget;
mod completion;
mod error;
mod extract;
mod keys;
mod models;
mod resolve;
mod settings;
mod tokens;
mod usage;
mod validate;

pub use error::{ApiError, ErrorCode};
pub use extract::{ApiCaller, ApiJson, Caller, RequestId};

use crate::auth::Authenticator;
use crate::keys::KeyService;
use crate::resolve::Resolver;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use std::sync::Arc;
use std::time::Instant;

/// Largest request body accepted on `/api/*`.
pub const API_BODY_LIMIT: usize = 64 * 1024;

/// Every route served, as (method, path template); `infra/openapi.json`
/// describes exactly these (a test holds them in step).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/api/providers"),
    ("GET", "/api/keys"),
    ("POST", "/api/keys"),
    ("POST", "/api/keys/{service}"),
    ("PATCH", "/api/keys/{service}"),
    ("DELETE", "/api/keys/{service}"),
    ("PATCH", "/api/keys/{service}/{id}"),
    ("DELETE", "/api/keys/{service}/{id}"),
    ("PUT", "/api/keys/{service}/pending"),
    ("DELETE", "/api/keys/{service}/pending"),
    ("PUT", "/api/keys/{service}/{id}/pending"),
    ("DELETE", "/api/keys/{service}/{id}/pending"),
    ("GET", "/api/user-settings"),
    ("POST", "/api/user-settings"),
    ("GET", "/api/resolve"),
    ("POST", "/api/keys/validate"),
    ("GET", "/api/audit"),
    ("GET", "/api/usage"),
    ("GET", "/api/usage/requests"),
    ("GET", "/api/admin/usage"),
    ("GET", "/api/admin/budgets"),
    ("PUT", "/api/admin/budgets/users/{userId}"),
    ("GET", "/api/admin/budgets/users/{userId}"),
    ("DELETE", "/api/admin/budgets/users/{userId}"),
    ("PUT", "/api/admin/budgets/tenants/{tenantId}"),
    ("GET", "/api/admin/budgets/tenants/{tenantId}"),
    ("DELETE", "/api/admin/budgets/tenants/{tenantId}"),
    ("GET", "/api/budget"),
    ("GET", "/api/tokens"),
    ("POST", "/api/tokens"),
    ("DELETE", "/api/tokens/{id}"),
    ("GET", "/v1/models"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/chat/completions"),
];

/// A key record as the keys routes show it (masked), as JSON text.
pub fn key_record_json(
    record: &crate::domain::KeyRecord,
    rotation_age: std::time::Duration,
) -> String {
    serde_json::to_string(&keys::KeyRecordView::new(record, rotation_age)).unwrap_or_default()
}

/// What every handler can reach, built once per process by [`crate::app`]:
/// one shared [`Services`], so the copy axum hands each request is one
/// reference count, not one per service.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services behind [`AppState`].
pub struct Services {
    pub keys: Arc<KeyService>,
    pub resolver: Arc<Resolver>,
    pub auth: Arc<Authenticator>,
    /// The model catalog (shipped with the build, or the operator's file).
    pub catalog: Arc<crate::catalog::Catalog>,
    pub completions: Arc<crate::completion::CompletionService>,
    /// Key checks against providers (rate limited, audited).
    pub validation: Arc<crate::validate::ValidationService>,
    /// The audit log, for `GET /api/audit`.
    pub audit: Arc<crate::audit::AuditLog>,
    /// Staging and cancelling replacement keys.
    pub rotation: Arc<crate::rotation::RotationService>,
    /// Starts the rotation of a staged key.
    pub rotation_trigger: Arc<dyn crate::rotation::RotationTrigger>,
    /// Keys older than this show `rotationDue`.
    pub rotation_age: std::time::Duration,
    /// Usage reports, for `GET /api/usage` and `GET /api/admin/usage`.
    pub usage: Arc<crate::usage::UsageReports>,
    /// Budgets, for the budget routes.
    pub budgets: Arc<crate::budget::BudgetService>,
    /// Personal API keys: their routes, and callers presenting one on `/v1/*`.
    pub tokens: Arc<crate::tokens::ApiTokenService>,
    /// Browser origins allowed to call (`BYOK_CORS_ORIGINS`); `None`: no CORS.
    pub cors: Option<crate::config::CorsPolicy>,
}

/// `GET/POST /api/keys`, `PATCH/DELETE /api/keys/{service}`,
/// `PUT/DELETE /api/keys/{service}/pending`, `GET /api/providers`, `GET /api/audit`,
/// `GET /api/usage`, `GET /api/usage/requests`, `GET /api/admin/usage`,
/// the budget routes (`/api/admin/budgets…`, `GET /api/budget`).
pub fn keys_router(state: AppState) -> Router {
    let cors = state.cors.clone();
    with_cors(finish(keys_routes(state)), cors.as_ref())
}

/// `GET/POST /api/user-settings`.
pub fn settings_router(state: AppState) -> Router {
    let cors = state.cors.clone();
    with_cors(finish(settings_routes(state)), cors.as_ref())
}

/// `GET /api/resolve`, `POST /api/keys/validate`.
pub fn validate_router(state: AppState) -> Router {
    let cors = state.cors.clone();
    with_cors(finish(validate_routes(state)), cors.as_ref())
}

/// `GET /v1/models`.
pub fn models_router(state: AppState) -> Router {
    let cors = state.cors.clone();
    with_cors(finish(models_routes(state)), cors.as_ref())
}

/// `POST /v1/chat/completions` (streamed on Lambda).
pub fn completion_router(state: AppState) -> Router {
    let cors = state.cors.clone();
    with_cors(finish(completion_routes(state)), cors.as_ref())
}

/// Every route in one router, plus `GET /healthz`: byok-local.
pub fn local_router(state: AppState) -> Router {
    local_router_with(state, Router::new())
}

/// [`local_router`] with `extra` routes (byok-local's console) under the
/// same error answers, limits and request log.
pub fn local_router_with(state: AppState, extra: Router) -> Router {
    let cors = state.cors.clone();
    let all = Router::new()
        .route("/healthz", get(healthz))
        .merge(extra)
        .merge(keys_routes(state.clone()))
        .merge(settings_routes(state.clone()))
        .merge(validate_routes(state.clone()))
        .merge(models_routes(state.clone()))
        .merge(completion_routes(state));
    with_cors(finish(all), cors.as_ref())
}

/// Response headers a browser front end may read: who paid and how, the
/// request and budget limits, the request id.
const EXPOSED_HEADERS: [&str; 14] = [
    "x-byok-path",
    "x-byok-via",
    "x-byok-key-id",
    "x-byok-provider",
    "x-byok-model",
    "x-byok-fallback",
    "x-byok-paid-by",
    "x-byok-budget-remaining",
    "x-byok-budget-type",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "retry-after",
    "x-request-id",
];

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// The CORS layer, outermost, so preflights are answered before routing and
/// authentication; without a policy, no CORS headers at all.
fn with_cors(router: Router, policy: Option<&crate::config::CorsPolicy>) -> Router {
    use http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let Some(policy) = policy else {
        return router;
    };
    let origin = if policy.origins.is_empty() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            policy
                .origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    let layer = CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            HeaderName::from_static("x-api-key"),
        ])
        .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
        .allow_credentials(policy.allow_credentials)
        .max_age(PREFLIGHT_MAX_AGE);
    router.layer(layer)
}

fn keys_routes(state: AppState) -> Router {
    Router::new()
        .route("/api/providers", get(keys::providers))
        .route("/api/keys", get(keys::list).post(keys::upsert))
        .route(
            "/api/keys/{service}",
            axum::routing::post(keys::add)
                .patch(keys::update)
                .delete(keys::delete),
        )
        .route(
            "/api/keys/{service}/{id}",
            axum::routing::patch(keys::update_one).delete(keys::delete_one),
        )
        .route(
            "/api/keys/{service}/pending",
            axum::routing::put(keys::stage_pending).delete(keys::cancel_pending),
        )
        .route(
            "/api/keys/{service}/{id}/pending",
            axum::routing::put(keys::stage_pending_one).delete(keys::cancel_pending_one),
        )
        .route("/api/audit", get(keys::audit))
        .route("/api/usage", get(usage::mine))
        .route("/api/usage/requests", get(usage::recent))
        .route("/api/admin/usage", get(usage::all))
        .route("/api/admin/budgets", get(budget::list))
        .route(
            "/api/admin/budgets/users/{userId}",
            axum::routing::put(budget::put_user)
                .get(budget::get_user)
                .delete(budget::delete_user),
        )
        .route(
            "/api/admin/budgets/tenants/{tenantId}",
            axum::routing::put(budget::put_tenant)
                .get(budget::get_tenant)
                .delete(budget::delete_tenant),
        )
        .route("/api/budget", get(budget::mine))
        .route("/api/tokens", get(tokens::list).post(tokens::create))
        .route("/api/tokens/{id}", axum::routing::delete(tokens::revoke))
        .with_state(state)
}

fn settings_routes(state: AppState) -> Router {
    Router::new()
        .route(
            "/api/user-settings",
            get(settings::get).post(settings::save),
        )
        .with_state(state)
}

fn validate_routes(state: AppState) -> Router {
    Router::new()
        .route("/api/resolve", get(resolve::preview))
        .route(
            "/api/keys/validate",
            axum::routing::post(validate::validate),
        )
        .with_state(state)
}

fn models_routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/models", get(models::list))
        .with_state(state)
}

fn completion_routes(state: AppState) -> Router {
    Router::new()
        // The handler reads its body itself, up to `completion::BODY_LIMIT`.
        .route(
            "/v1/chat/completions",
            axum::routing::post(completion::complete),
        )
        .route(
            "/v1/embeddings",
            axum::routing::post(completion::embeddings),
        )
        .route("/v1/messages", axum::routing::post(completion::messages))
        .with_state(state)
}

/// What every router gets: JSON 404/405, the body limit, and a request log.
fn finish(router: Router) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
        .layer(middleware::from_fn(log_request))
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

/// One line per request: method, route template (never the raw query),
/// status, time and request id. The id (the Lambda request id when one was
/// attached, else a fresh random one) is a request extension for handlers
/// and the `x-request-id` response header.
async fn log_request(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = match req.extensions().get::<RequestId>() {
        Some(id) => id.clone(),
        None => {
            let id = RequestId::generate();
            req.extensions_mut().insert(id.clone());
            id
        }
    };
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let mut response = next.run(req).await;
    if let Ok(value) = http::HeaderValue::from_str(request_id.as_str()) {
        response.headers_mut().insert("x-request-id", value);
    }
    tracing::info!(
        %method,
        route,
        request_id = request_id.as_str(),
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}
