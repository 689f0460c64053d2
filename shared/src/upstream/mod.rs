//! The outgoing side, shared by completions, key checks and rotation: HTTP
//! clients built once per process with their timeouts, the DNS rule for user
//! base URLs (only public addresses, checked when connecting), request
//! building per wire API, and the classification (and redaction) of
//! upstream failures. Depends on the domain only.

pub mod gcp;
mod redact;
pub mod sigv4;

use crate::domain::{ApiKey, Service, WireApi};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
pub(crate) use redact::REDACTED;
pub use redact::{KeyScrubber, redact, redact_known};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long a caller waits on an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    /// TCP (and TLS) connection (`BYOK_UPSTREAM_CONNECT_TIMEOUT_SECS`).
    pub connect: Duration,
    /// From sending the request to the first byte of the body
    /// (`BYOK_UPSTREAM_FIRST_BYTE_TIMEOUT_SECS`).
    pub first_byte: Duration,
    /// Between two chunks of a body (`BYOK_UPSTREAM_IDLE_TIMEOUT_SECS`).
    pub idle: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(120),
            idle: Duration::from_secs(120),
        }
    }
}

/// Largest upstream error body read for its message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Anthropic API version sent with every Messages call.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Idle upstream connections are kept this long for reuse.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The two upstream clients: the operator's (any address: operators point
/// base URLs at self-hosted servers and test stand-ins) and the one for user
/// base URLs (HTTPS only, public addresses only, re-checked at every connect).
///
/// Building one loads and parses the system's root certificates (about 6 ms),
/// so a client made with [`UpstreamClient::deferred`] builds each on its
/// first use: a function whose requests never call upstream never pays.
/// Clones share the clients.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    clients: Arc<Clients>,
}

#[derive(Debug)]
struct Clients {
    connect_timeout: Duration,
    operator: OnceLock<reqwest::Client>,
    user: OnceLock<reqwest::Client>,
    /// Access tokens of Google service accounts (Vertex AI).
    gcp: gcp::TokenCache,
}

/// What one upstream call authenticates with, once a stored credential is
/// prepared: the base URL (filled in for accounts that name it) and the
/// key sent (an API key as stored, or an access token it was exchanged
/// for), plus the secrets to scrub from whatever the upstream answers.
pub struct CallCredential {
    pub base_url: String,
    pub key: ApiKey,
    pub scrub: Vec<ApiKey>,
    /// An AWS access key, which signs the request instead of being sent.
    pub aws: Option<crate::domain::AwsCredentials>,
}

impl UpstreamClient {
    /// Both clients, built now.
    pub fn new(timeouts: &UpstreamTimeouts) -> Result<Self, reqwest::Error> {
        let client = Self::deferred(timeouts);
        client.for_source(false)?;
        client.for_source(true)?;
        Ok(client)
    }

    /// Each client built when first used.
    pub fn deferred(timeouts: &UpstreamTimeouts) -> Self {
        Self {
            clients: Arc::new(Clients {
                connect_timeout: timeouts.connect,
                operator: OnceLock::new(),
                user: OnceLock::new(),
                gcp: gcp::TokenCache::new(crate::domain::GCP_TOKEN_URL),
            }),
        }
    }

    /// Exchanges Google service accounts at `token_url` instead of
    /// Google's endpoint (`BYOK_GCP_TOKEN_URL`; for tests). Call before the
    /// client is cloned.
    #[must_use]
    pub fn with_gcp_token_url(mut self, token_url: &str) -> Self {
        if let Some(clients) = Arc::get_mut(&mut self.clients) {
            clients.gcp = gcp::TokenCache::new(token_url);
        }
        self
    }

    /// The exchanges of service accounts for access tokens made so far.
    pub fn gcp_exchanges(&self) -> u64 {
        self.clients.gcp.exchanges()
    }

    /// What a call to `service` at `base_url` with the stored `secret`
    /// sends: for an API-key service the key itself; for a service account
    /// an access token (cached, or exchanged at the fixed token endpoint
    /// through the operator's client) and the base URL filled in with its
    /// project and location.
    pub async fn call_credential(
        &self,
        service: Service,
        base_url: &str,
        secret: &ApiKey,
    ) -> Result<CallCredential, UpstreamError> {
        use crate::domain::Credential;
        let kind = service.provider().credential;
        let credential = Credential::of_kind(kind, secret).ok_or_else(|| {
            UpstreamError::new(
                UpstreamErrorKind::Auth,
                format!("{service}: the stored credential is not of the kind it takes"),
            )
        })?;
        // Each secret part, and a structured credential's stored form whole.
        let mut scrub = credential.secret_parts();
        if kind != crate::domain::CredentialKind::ApiKey {
            scrub.push(secret.clone());
        }
        match credential {
            Credential::ApiKey(key) => Ok(CallCredential {
                base_url: base_url.to_owned(),
                key,
                scrub,
                aws: None,
            }),
            Credential::Aws(aws) => Ok(CallCredential {
                // The region was checked to a plain id when saved.
                base_url: base_url.replace("{region}", &aws.region),
                key: secret.clone(),
                scrub,
                aws: Some(aws),
            }),
            Credential::GcpServiceAccount(account) => {
                let client = self
                    .for_source(false)
                    .map_err(|err| UpstreamError::from_transport(service, &err))?;
                let token = self.clients.gcp.access_token(client, &account).await?;
                Ok(CallCredential {
                    aws: None,
                    base_url: gcp::vertex_base_url(base_url, &account),
                    scrub: std::iter::once(token.clone()).chain(scrub).collect(),
                    key: token,
                })
            }
        }
    }

    /// Builds the operator's client now if it is not built yet: for a
    /// function whose every request calls upstream.
    pub fn warm(&self) -> Result<(), reqwest::Error> {
        self.for_source(false).map(|_| ())
    }

    /// The client for a base URL the user chose (`true`) or the operator's.
    pub(crate) fn for_source(&self, user_url: bool) -> Result<&reqwest::Client, reqwest::Error> {
        let cell = if user_url {
            &self.clients.user
        } else {
            &self.clients.operator
        };
        if let Some(client) = cell.get() {
            return Ok(client);
        }
        // Two first uses at once may both build; one is kept.
        let built = self.build(user_url)?;
        Ok(cell.get_or_init(|| built))
    }

    fn build(&self, user_url: bool) -> Result<reqwest::Client, reqwest::Error> {
        let builder = reqwest::Client::builder()
            .connect_timeout(self.clients.connect_timeout)
            .pool_idle_timeout(POOL_IDLE)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("byok-gateway/", env!("CARGO_PKG_VERSION")));
        if user_url {
            // No proxy, even if HTTPS_PROXY is set: a proxy would resolve
            // the host itself, past the public-address check.
            builder
                .no_proxy()
                .https_only(true)
                .dns_resolver(Arc::new(PublicOnlyResolver))
                .build()
        } else {
            builder.build()
        }
    }
}

/// Resolves host names like the system does, then keeps only public
/// addresses; a name with none fails the connection. This is the DNS
/// rebinding guard of user base URLs: the addresses checked are the ones
/// connected to.
#[derive(Clone, Copy, Debug, Default)]
pub struct PublicOnlyResolver;

/// A user base URL's host resolved to no public address.
#[derive(Debug, thiserror::Error)]
#[error("the host resolves to no public address")]
pub struct NoPublicAddress;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let public: Vec<SocketAddr> = found
                .filter(|a| crate::domain::base_url::is_public_ip(a.ip()))
                .collect();
            if public.is_empty() {
                return Err(Box::new(NoPublicAddress) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// A request body sent as its pieces, with its exact length (so it goes
/// out with `Content-Length`, not chunked): a rewritten request shares the
/// client's bytes instead of copying them.
#[derive(Debug)]
pub struct PiecewiseBody {
    pieces: std::collections::VecDeque<Bytes>,
    remaining: u64,
}

impl PiecewiseBody {
    pub fn new(pieces: Vec<Bytes>) -> Self {
        let remaining = pieces.iter().map(|p| p.len() as u64).sum();
        Self {
            pieces: pieces.into_iter().filter(|p| !p.is_empty()).collect(),
            remaining,
        }
    }
}

impl http_body::Body for PiecewiseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let next = self.pieces.pop_front();
        if let Some(piece) = &next {
            self.remaining -= piece.len() as u64;
        }
        std::task::Poll::Ready(next.map(|piece| Ok(http_body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// The HTTP request for one upstream call.
pub fn build_request(
    client: &reqwest::Client,
    service: Service,
    base_url: &str,
    key: &ApiKey,
    body: reqwest::Body,
) -> reqwest::RequestBuilder {
    let path = match service.wire_api() {
        WireApi::OpenAiCompatible | WireApi::BedrockConverse => "/chat/completions",
        WireApi::AnthropicMessages => "/messages",
    };
    build_post(client, service, base_url, path, key, body)
}

/// A JSON `POST` of `body` to `path` below `base_url`, with `key` as the
/// service expects it. Anthropic's chat path is its Messages API whatever
/// `path` says, so chat requests stay where [`build_request`] sends them.
pub fn build_post(
    client: &reqwest::Client,
    service: Service,
    base_url: &str,
    path: &str,
    key: &ApiKey,
    body: reqwest::Body,
) -> reqwest::RequestBuilder {
    let path = match (service.wire_api(), path) {
        (WireApi::AnthropicMessages, "/chat/completions") => "/messages",
        _ => path,
    };
    let mut headers = auth_headers(service, key);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    client
        .post(join(base_url, path))
        .headers(headers)
        .body(body)
}

/// A SigV4-signed (`bedrock`, the key's region) request for Amazon
/// Bedrock: `method` to `url` with `body` (JSON, or empty for a `GET`).
pub fn build_signed(
    client: &reqwest::Client,
    method: http::Method,
    url: &str,
    aws: &crate::domain::AwsCredentials,
    body: Vec<u8>,
) -> Result<reqwest::RequestBuilder, UpstreamError> {
    let service = crate::domain::Service::Bedrock;
    let parsed = url::Url::parse(url).map_err(|_| {
        UpstreamError::new(
            UpstreamErrorKind::Unavailable,
            "bedrock: the URL is not valid",
        )
    })?;
    let host = match (parsed.host_str(), parsed.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => {
            return Err(UpstreamError::new(
                UpstreamErrorKind::Unavailable,
                "bedrock: the URL has no host",
            ));
        }
    };
    let mut signed_headers = vec![("host", host.as_str())];
    if !body.is_empty() {
        signed_headers.push(("content-type", "application/json"));
    }
    let key = sigv4::SigningKey {
        access_key_id: &aws.access_key_id,
        secret_access_key: aws.secret_access_key(),
        session_token: aws.session_token(),
    };
    let signature = sigv4::signature_headers(
        &key,
        "bedrock",
        &aws.region,
        std::time::SystemTime::now(),
        &sigv4::Unsigned {
            method: method.as_str(),
            url,
            headers: &signed_headers,
            body: &body,
        },
    )
    .map_err(|e| UpstreamError::new(UpstreamErrorKind::Unavailable, format!("{service}: {e}")))?;
    let mut headers = HeaderMap::with_capacity(6);
    let added = signed_headers
        .iter()
        .skip(1)
        .map(|(name, value)| (*name, *value))
        .chain(
            signature
                .iter()
                .map(|(name, value)| (*name, value.as_str())),
        );
    for (name, value) in added {
        if let (Ok(name), Ok(mut value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            value.set_sensitive(true);
            headers.insert(name, value);
        }
    }
    Ok(client.request(method, url).headers(headers).body(body))
}

/// Checks an AWS access key against Bedrock: `ListFoundationModels` on the
/// control-plane host beside the runtime one (`bedrock.` for
/// `bedrock-runtime.`), signed; `Ok` on any 2xx.
pub async fn check_aws_key(
    client: &reqwest::Client,
    base_url: &str,
    aws: &crate::domain::AwsCredentials,
    timeout: Duration,
) -> Result<(), UpstreamError> {
    let service = crate::domain::Service::Bedrock;
    let control = base_url.replacen("bedrock-runtime", "bedrock", 1);
    let url = join(&control, key_check_path(service));
    let call = build_signed(client, http::Method::GET, &url, aws, Vec::new())?;
    let secret = ApiKey::new(aws.secret_access_key());
    key_check_outcome(call, service, &secret, timeout).await
}

/// A key check's answer: `Ok` on any 2xx, else the classified failure
/// (without `key`); the whole check bounded by `timeout`.
async fn key_check_outcome(
    call: reqwest::RequestBuilder,
    service: Service,
    key: &ApiKey,
    timeout: Duration,
) -> Result<(), UpstreamError> {
    let attempt = async {
        let response = call
            .send()
            .await
            .map_err(|err| UpstreamError::from_transport(service, &err))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let headers = response.headers().clone();
        let body = read_limited(response, timeout).await;
        let scrubber = KeyScrubber::new([key]);
        Err(UpstreamError::from_status(
            service, status, &headers, &body, &scrubber,
        ))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Err(UpstreamError::timed_out(service, timeout)),
    }
}

/// The cheapest call that proves a key ([`crate::domain::Provider::key_check_path`]):
/// the model list where it needs auth, a key endpoint where it is public.
pub(crate) const fn key_check_path(service: Service) -> &'static str {
    service.provider().key_check_path
}

/// The cheapest authenticated call of every upstream: `GET {base}{key check
/// path}` with the service's auth headers. Used to check that a key works.
pub(crate) fn build_models_request(
    client: &reqwest::Client,
    service: Service,
    base_url: &str,
    key: &ApiKey,
) -> reqwest::RequestBuilder {
    client
        .get(join(base_url, key_check_path(service)))
        .headers(auth_headers(service, key))
}

/// Checks `key` against its provider with [`build_models_request`], giving
/// up after `timeout` (connection, answer and error body together). `Ok` on
/// any 2xx; otherwise the classified, redacted failure.
pub async fn check_key(
    client: &reqwest::Client,
    service: Service,
    base_url: &str,
    key: &ApiKey,
    timeout: Duration,
) -> Result<(), UpstreamError> {
    let call = build_models_request(client, service, base_url, key);
    key_check_outcome(call, service, key, timeout).await
}

/// The credential headers of `service`: `Authorization: Bearer` for
/// OpenAI-compatible APIs, `x-api-key` and `anthropic-version` for Anthropic.
fn auth_headers(service: Service, key: &ApiKey) -> HeaderMap {
    let (auth_header, auth_value) = match service.wire_api() {
        // Bedrock requests are signed instead (`build_signed`).
        WireApi::OpenAiCompatible | WireApi::BedrockConverse => {
            (header::AUTHORIZATION, format!("Bearer {}", key.expose()))
        }
        WireApi::AnthropicMessages => (
            header::HeaderName::from_static("x-api-key"),
            key.expose().to_owned(),
        ),
    };
    let mut headers = HeaderMap::with_capacity(4);
    if let Ok(mut value) = HeaderValue::from_str(&auth_value) {
        value.set_sensitive(true);
        headers.insert(auth_header, value);
    }
    if service.wire_api() == WireApi::AnthropicMessages {
        headers.insert(
            header::HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
    }
    headers
}

/// `base_url` + `path`; each leading `/..` of `path` first drops the last
/// segment of the base URL's path (never its host).
fn join(base_url: &str, path: &str) -> String {
    let mut base = base_url.trim_end_matches('/');
    let mut path = path;
    while let Some(rest) = path.strip_prefix("/..") {
        if let Some((parent, _)) = base.rsplit_once('/')
            && !parent.ends_with('/')
        {
            base = parent;
        }
        path = rest;
    }
    let mut url = String::with_capacity(base.len() + path.len());
    url.push_str(base);
    url.push_str(path);
    url
}

/// What went wrong with an upstream, in the terms of SPEC §7.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// 401/403: the provider refused the credential.
    Auth,
    /// 429.
    RateLimited,
    /// 5xx, connection failures, broken streams.
    Unavailable,
    /// No answer within the configured time.
    Timeout,
    /// Any other status (the request's own fault, e.g. 400, 404, 422): kept.
    Rejected(StatusCode),
}

impl UpstreamErrorKind {
    /// The stable error code clients see for this kind (SPEC §5), the one
    /// mapping of upstream failures to codes.
    pub const fn code(self) -> &'static str {
        match self {
            Self::Auth => "upstream_auth",
            Self::RateLimited => "upstream_rate_limited",
            Self::Unavailable => "upstream_unavailable",
            Self::Timeout => "upstream_timeout",
            Self::Rejected(_) => "upstream_error",
        }
    }

    /// Whether another model of the fallback chain may be tried.
    pub(crate) const fn may_fall_back(self) -> bool {
        !matches!(self, UpstreamErrorKind::Rejected(_))
    }
}

/// An upstream failure; the message is already redacted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct UpstreamError {
    pub kind: UpstreamErrorKind,
    pub message: String,
    /// Seconds from the upstream's `Retry-After`, for 429s.
    pub retry_after: Option<u64>,
}

impl UpstreamError {
    pub(crate) fn new(kind: UpstreamErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The error for a non-2xx answer, with the provider's own message
    /// (redacted) when its body has one.
    /// The error for a non-2xx answer; the provider's message is passed on
    /// without the call's credentials (`scrubber`) or anything key-shaped.
    pub(crate) fn from_status(
        service: Service,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        scrubber: &KeyScrubber,
    ) -> Self {
        let kind = match status.as_u16() {
            401 | 403 => UpstreamErrorKind::Auth,
            429 => UpstreamErrorKind::RateLimited,
            500..=599 => UpstreamErrorKind::Unavailable,
            _ => UpstreamErrorKind::Rejected(status),
        };
        let what = match kind {
            UpstreamErrorKind::Auth => "rejected the key",
            UpstreamErrorKind::RateLimited => "is rate limiting this key",
            UpstreamErrorKind::Unavailable => "is unavailable",
            UpstreamErrorKind::Timeout | UpstreamErrorKind::Rejected(_) => "refused the request",
        };
        let mut message = format!("{} {what} (HTTP {})", service.as_str(), status.as_u16());
        if let Some(detail) = provider_message(body) {
            message.push_str(": ");
            message.push_str(&redact_known(&detail, scrubber));
        }
        Self {
            kind,
            message,
            retry_after: retry_after(headers),
        }
    }

    /// The error for a request that got no answer.
    pub(crate) fn from_transport(service: Service, err: &reqwest::Error) -> Self {
        if err.is_timeout() {
            Self::new(
                UpstreamErrorKind::Timeout,
                format!("{} did not answer in time", service.as_str()),
            )
        } else if err.is_connect() {
            Self::new(
                UpstreamErrorKind::Unavailable,
                format!("could not connect to {}", service.as_str()),
            )
        } else {
            Self::new(
                UpstreamErrorKind::Unavailable,
                format!("the connection to {} failed", service.as_str()),
            )
        }
    }

    /// The upstream sent nothing within the first-byte (or idle) timeout.
    pub(crate) fn timed_out(service: Service, waited: Duration) -> Self {
        Self::new(
            UpstreamErrorKind::Timeout,
            format!(
                "{} sent nothing for {:.1} s",
                service.as_str(),
                waited.as_secs_f64()
            ),
        )
    }
}

/// `error.message` (OpenAI, Anthropic, most compatible servers), else a
/// top-level `message` or string `error`.
fn provider_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let value = match &value {
        serde_json::Value::Array(items) => items.first()?.clone(),
        _ => value,
    };
    value
        .pointer("/error/message")
        .or_else(|| value.get("message"))
        .or_else(|| value.get("error").filter(|e| e.is_string()))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
}

/// `Retry-After` in seconds (an HTTP date is not honoured: 1 s is assumed).
fn retry_after(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    Some(value.parse::<u64>().unwrap_or(1))
}

/// An error body, up to [`ERROR_BODY_LIMIT`]; whatever arrived if reading fails.
pub async fn read_limited(response: reqwest::Response, idle: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    use futures_util::StreamExt as _;
    let mut body = response.bytes_stream();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(idle, body.next()).await {
        let room = ERROR_BODY_LIMIT.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= ERROR_BODY_LIMIT {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deferred_client_builds_each_client_on_first_use_and_clones_share_them() {
        let client = UpstreamClient::deferred(&UpstreamTimeouts::default());
        assert!(client.clients.operator.get().is_none());
        assert!(client.clients.user.get().is_none());
        client.warm().unwrap();
        assert!(client.clients.operator.get().is_some());
        assert!(client.clients.user.get().is_none());
        client.clone().for_source(true).unwrap();
        assert!(client.clients.user.get().is_some());
    }

    #[test]
    fn key_check_paths_may_climb_the_base_path_but_never_its_host() {
        let cases = [
            (
                "https://api.x.ai/v1",
                "/models",
                "https://api.x.ai/v1/models",
            ),
            (
                "https://api.x.ai/v1/",
                "/models",
                "https://api.x.ai/v1/models",
            ),
            (
                "https://api.cohere.ai/compatibility/v1",
                "/../../v1/models",
                "https://api.cohere.ai/v1/models",
            ),
            (
                "http://127.0.0.1:9/cohere/compatibility/v1",
                "/../../v1/models",
                "http://127.0.0.1:9/cohere/v1/models",
            ),
            (
                "https://api.perplexity.ai",
                "/../../v1/models",
                "https://api.perplexity.ai/v1/models",
            ),
        ];
        for (base, path, want) in cases {
            assert_eq!(join(base, path), want, "{base} {path}");
        }
    }

    #[test]
    fn a_key_of_any_shape_is_removed_from_messages_by_value() {
        let key = ApiKey::new("team:CANARY:gateway:secret");
        let scrubber = KeyScrubber::new([&key]);
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.expose());
        for echoed in [
            key.expose().to_owned(),
            b64,
            "team%3ACANARY%3Agateway%3Asecret".to_owned(),
        ] {
            let body = format!(r#"{{"error":{{"message":"bad key {echoed} given"}}}}"#);
            let e = UpstreamError::from_status(
                Service::Gateway,
                StatusCode::UNAUTHORIZED,
                &HeaderMap::new(),
                body.as_bytes(),
                &scrubber,
            );
            assert!(!e.message.contains("CANARY"), "{}", e.message);
            assert!(!e.message.contains(&echoed), "{}", e.message);
        }
        let streamed = Bytes::from(format!("data: {{\"k\":\"{}\"}}\n\n", key.expose()));
        let scrubbed = scrubber.scrub_bytes(streamed);
        assert_eq!(&scrubbed[..], b"data: {\"k\":\"[redacted]\"}\n\n");
        let clean = Bytes::from_static(b"data: {}\n\n");
        assert_eq!(scrubber.scrub_bytes(clean.clone()).as_ptr(), clean.as_ptr());
    }

    #[test]
    fn statuses_map_to_kinds_and_messages_are_redacted() {
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-proj-abcdefghijklmnop1234","type":"invalid_request_error"}}"#;
        let e = UpstreamError::from_status(
            Service::OpenAi,
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            body,
            &KeyScrubber::default(),
        );
        assert_eq!(e.kind, UpstreamErrorKind::Auth);
        assert!(!e.message.contains("abcdefghijklmnop"), "{}", e.message);
        assert!(
            e.message
                .starts_with("openai rejected the key (HTTP 401): Incorrect API key provided")
        );

        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        let e = UpstreamError::from_status(
            Service::Anthropic,
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            b"{}",
            &KeyScrubber::default(),
        );
        assert_eq!(
            (e.kind, e.retry_after),
            (UpstreamErrorKind::RateLimited, Some(7))
        );

        for (status, kind) in [
            (403, UpstreamErrorKind::Auth),
            (500, UpstreamErrorKind::Unavailable),
            (503, UpstreamErrorKind::Unavailable),
            (404, UpstreamErrorKind::Rejected(StatusCode::NOT_FOUND)),
            (400, UpstreamErrorKind::Rejected(StatusCode::BAD_REQUEST)),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            let e = UpstreamError::from_status(
                Service::Groq,
                status,
                &HeaderMap::new(),
                b"not json",
                &KeyScrubber::default(),
            );
            assert_eq!(e.kind, kind, "{status}");
            assert_eq!(
                e.kind.may_fall_back(),
                !matches!(kind, UpstreamErrorKind::Rejected(_))
            );
        }
    }

    #[tokio::test]
    async fn user_urls_never_reach_private_addresses() {
        let refused = PublicOnlyResolver
            .resolve("localhost".parse().unwrap())
            .await;
        assert!(refused.is_err());
        let literal = PublicOnlyResolver
            .resolve("127.0.0.1".parse().unwrap())
            .await;
        assert!(literal.is_err());
    }
}
