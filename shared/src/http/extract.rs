//! Extractors: the authenticated caller, the request id, and JSON bodies
//! whose rejections become our error codes (400 bad JSON or unknown field,
//! 413 too large) without echoing request values back.

use super::{ApiError, AppState, ErrorCode};
use crate::auth::{AuthError, AuthorizerClaims, Principal, bearer_token};
use crate::domain::PersonalKey;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use http::StatusCode;
use http::request::Parts;
use serde::de::DeserializeOwned;

/// The signed-in caller: from API Gateway authorizer claims when the request
/// came through one, else from a verified bearer token. A personal API key
/// is refused here: it is for `/v1/*` ([`ApiCaller`]) only.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let claims = parts.extensions.get::<AuthorizerClaims>();
        let authorization = header_text(parts, http::header::AUTHORIZATION.as_str())?;
        if authorization
            .and_then(bearer_token)
            .is_some_and(PersonalKey::is_meant)
        {
            return Err(AuthError::PersonalKeyNotAccepted.into());
        }
        Ok(Caller(
            state
                .auth
                .authenticate_request(claims, authorization)
                .await?,
        ))
    }
}

/// The caller of a `/v1/*` route: a signed-in caller as [`Caller`], or
/// a personal API key. Either may come as a bearer token or, as SDKs that
/// speak Anthropic's API send their key, as `x-api-key`.
#[derive(Debug, Clone)]
pub struct ApiCaller(pub Principal);

impl FromRequestParts<AppState> for ApiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let claims = parts.extensions.get::<AuthorizerClaims>();
        let bearer = header_text(parts, http::header::AUTHORIZATION.as_str())?;
        let presented = match bearer {
            Some(value) => bearer_token(value),
            None => header_text(parts, "x-api-key")?.map(str::trim),
        };
        if let Some(token) = presented.filter(|t| PersonalKey::is_meant(t)) {
            return Ok(ApiCaller(state.tokens.authenticate(token).await?));
        }
        let authorization = match (bearer, presented) {
            (Some(value), _) => Some(value.to_owned()),
            (None, Some(token)) => Some(format!("Bearer {token}")),
            (None, None) => None,
        };
        Ok(ApiCaller(
            state
                .auth
                .authenticate_request(claims, authorization.as_deref())
                .await?,
        ))
    }
}

/// A header's value as text; a value that is not visible ASCII is a
/// malformed credential.
fn header_text<'a>(parts: &'a Parts, name: &str) -> Result<Option<&'a str>, ApiError> {
    match parts.headers.get(name) {
        Some(value) => Ok(Some(value.to_str().map_err(|_| AuthError::Malformed)?)),
        None => Ok(None),
    }
}

/// The id of the request, for audit events and logs: the Lambda request id
/// when the function runtime attached one, else a random UUID-shaped id
/// (the request log middleware inserts it; an extractor never fails).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// An id given by the platform (the Lambda request id).
    pub fn from_platform(id: &str) -> Self {
        Self(
            id.chars()
                .filter(|c| c.is_ascii_graphic())
                .take(128)
                .collect(),
        )
    }

    /// A fresh random (version 4) UUID.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().hyphenated().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate))
    }
}

/// A JSON object body for `/api/*`: anything but a JSON object (bad JSON, an
/// array, a missing or wrong content type) and unknown fields are 400
/// `invalid_request`, an oversized body 413 `payload_too_large`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "expected a JSON body with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "request body is larger than 64 KiB",
                )
            } else {
                ApiError::new(ErrorCode::InvalidRequest, "request body could not be read")
            }
        })?;
        // serde would also read a struct from a JSON array; only objects are accepted.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "request body must be a JSON object",
            ));
        }
        serde_json::from_slice(&bytes).map(Self).map_err(|err| {
            let message = match err.classify() {
                serde_json::error::Category::Data => shape_message(&err.to_string()),
                _ => "request body is not valid JSON".to_owned(),
            };
            ApiError::new(ErrorCode::InvalidRequest, message)
        })
    }
}

fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
}

/// serde's message names the unknown or missing field, which is safe to
/// repeat; any other message may quote a value from the body (a key), so it
/// is replaced by a generic sentence.
fn shape_message(serde_text: &str) -> String {
    let detail = serde_text.rsplit_once(": ").map_or(serde_text, |(_, d)| d);
    for kind in ["unknown field `", "missing field `"] {
        if let Some(rest) = detail.strip_prefix(kind)
            && let Some((field, _)) = rest.split_once('`')
            && field.len() <= 64
            && field
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return format!("{}`{field}`", kind.trim_end_matches('`'));
        }
    }
    "a field of the request body has the wrong type or value".to_owned()
}

/// A body field that may be absent (`None`) but is never `null`
/// (`#[serde(default, deserialize_with = "not_null")]`).
pub(super) fn not_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// The raw `cursor` and `limit` of a paged list's query string (an empty
/// cursor counts as absent: the first page; an empty limit is a wrong
/// limit); the services check them.
pub(super) fn page_query(query: Option<String>) -> (Option<String>, Option<String>) {
    let (mut cursor, mut limit) = (None, None);
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "cursor" if !v.is_empty() => cursor = Some(v.into_owned()),
            "limit" => limit = Some(v.into_owned()),
            _ => {}
        }
    }
    (cursor, limit)
}

#[cfg(test)]
mod tests {
    use super::{RequestId, shape_message};

    #[test]
    fn request_ids_look_like_uuids() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        let parts: Vec<usize> = a.as_str().split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{}", a.as_str());
        assert_eq!(RequestId::from_platform("abc 123").as_str(), "abc123");
    }

    #[test]
    fn repeats_field_names_but_never_values() {
        assert_eq!(
            shape_message(
                "Failed to deserialize the JSON body into the target type: unknown field `apiKeyy`, expected one of `service`, `apiKey` at line 1 column 10"
            ),
            "unknown field `apiKeyy`"
        );
        assert_eq!(
            shape_message("Failed to deserialize: missing field `service` at line 1 column 2"),
            "missing field `service`"
        );
        let leaked = shape_message(
            "Failed to deserialize: invalid type: string \"sk-canary-123\", expected a boolean",
        );
        assert!(!leaked.contains("canary"), "{leaked}");
        let odd = shape_message("x: unknown field `sk-canary-123`, expected");
        assert!(!odd.contains("canary"), "{odd}");
    }
}
