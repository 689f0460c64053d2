//! The one error type of the HTTP layer and the one place every error of
//! the services becomes a status, a stable code and the
//! `{"error":{"code","message"}}` body: each `From` impl here matches its
//! error exhaustively (no wildcard arm, so a new variant must be mapped),
//! and [`ApiError::level`] decides how loudly a refusal is logged. Internal
//! details go to the log, never to the client.

use crate::auth::AuthError;
use crate::keys::KeyError;
use crate::resolve::ResolveError;
use crate::store::StoreError;
use crate::upstream::UpstreamErrorKind;
use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use std::borrow::Cow;

/// Every error code a client can receive; frontends rely on these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    UnknownModel,
    /// The model's provider does not offer what was asked (embeddings of a
    /// provider without them).
    UnsupportedModel,
    Unauthorized,
    InvalidKey,
    BudgetExceeded,
    Forbidden,
    ConsentRequired,
    NoCredential,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    /// The request body did not arrive in time (byok-local).
    RequestTimeout,
    InvalidKeyFormat,
    InvalidBaseUrl,
    /// A label shaped like a key (stored in clear, so refused).
    InvalidLabel,
    RateLimited,
    UpstreamAuth,
    UpstreamRateLimited,
    UpstreamUnavailable,
    UpstreamTimeout,
    /// Any other upstream refusal; keeps the upstream's status.
    UpstreamError,
    /// A replacement key is already staged for this key.
    RotationPending,
    /// The service already has as many keys as it may.
    KeyLimitReached,
    /// The user already has as many personal API keys as they may.
    TokenLimitReached,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 26] = [
        ErrorCode::InvalidRequest,
        ErrorCode::UnknownModel,
        ErrorCode::UnsupportedModel,
        ErrorCode::Unauthorized,
        ErrorCode::InvalidKey,
        ErrorCode::BudgetExceeded,
        ErrorCode::Forbidden,
        ErrorCode::ConsentRequired,
        ErrorCode::NoCredential,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RequestTimeout,
        ErrorCode::InvalidKeyFormat,
        ErrorCode::InvalidBaseUrl,
        ErrorCode::InvalidLabel,
        ErrorCode::RateLimited,
        ErrorCode::UpstreamAuth,
        ErrorCode::UpstreamRateLimited,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::UpstreamTimeout,
        ErrorCode::UpstreamError,
        ErrorCode::RotationPending,
        ErrorCode::KeyLimitReached,
        ErrorCode::TokenLimitReached,
        ErrorCode::Internal,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnknownModel => "unknown_model",
            ErrorCode::UnsupportedModel => "unsupported_model",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::BudgetExceeded => "budget_exceeded",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ConsentRequired => "consent_required",
            ErrorCode::NoCredential => "no_credential",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::InvalidKeyFormat => "invalid_key_format",
            ErrorCode::InvalidBaseUrl => "invalid_base_url",
            ErrorCode::InvalidLabel => "invalid_label",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UpstreamAuth => "upstream_auth",
            ErrorCode::UpstreamRateLimited => "upstream_rate_limited",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::RotationPending => "rotation_pending",
            ErrorCode::KeyLimitReached => "key_limit_reached",
            ErrorCode::TokenLimitReached => "token_limit_reached",
            ErrorCode::Internal => "internal",
        }
    }

    /// The code of an upstream failure: [`UpstreamErrorKind::code`], the one
    /// mapping of kinds to codes (completions also record it in the ledger).
    pub fn of_upstream(kind: UpstreamErrorKind) -> Self {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == kind.code())
            .unwrap_or(Self::UpstreamError)
    }

    /// How loudly an answer with this code is logged: server faults as
    /// errors, upstream failures as warnings, limits as info, the caller's
    /// own mistakes at debug.
    pub const fn level(self) -> tracing::Level {
        match self {
            ErrorCode::Internal => tracing::Level::ERROR,
            ErrorCode::UpstreamAuth
            | ErrorCode::UpstreamRateLimited
            | ErrorCode::UpstreamUnavailable
            | ErrorCode::UpstreamTimeout
            | ErrorCode::UpstreamError => tracing::Level::WARN,
            ErrorCode::RateLimited | ErrorCode::BudgetExceeded | ErrorCode::ConsentRequired => {
                tracing::Level::INFO
            }
            ErrorCode::InvalidRequest
            | ErrorCode::UnknownModel
            | ErrorCode::UnsupportedModel
            | ErrorCode::Unauthorized
            | ErrorCode::InvalidKey
            | ErrorCode::Forbidden
            | ErrorCode::NoCredential
            | ErrorCode::NotFound
            | ErrorCode::MethodNotAllowed
            | ErrorCode::PayloadTooLarge
            | ErrorCode::RequestTimeout
            | ErrorCode::InvalidKeyFormat
            | ErrorCode::InvalidBaseUrl
            | ErrorCode::InvalidLabel
            | ErrorCode::RotationPending
            | ErrorCode::KeyLimitReached
            | ErrorCode::TokenLimitReached => tracing::Level::DEBUG,
        }
    }

    pub const fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidRequest | ErrorCode::UnknownModel | ErrorCode::UnsupportedModel => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::Unauthorized | ErrorCode::InvalidKey => StatusCode::UNAUTHORIZED,
            ErrorCode::BudgetExceeded => StatusCode::PAYMENT_REQUIRED,
            ErrorCode::Forbidden | ErrorCode::ConsentRequired | ErrorCode::NoCredential => {
                StatusCode::FORBIDDEN
            }
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::RotationPending
            | ErrorCode::KeyLimitReached
            | ErrorCode::TokenLimitReached => StatusCode::CONFLICT,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::InvalidKeyFormat | ErrorCode::InvalidBaseUrl | ErrorCode::InvalidLabel => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ErrorCode::RateLimited | ErrorCode::UpstreamRateLimited => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ErrorCode::UpstreamAuth => StatusCode::FAILED_DEPENDENCY,
            ErrorCode::UpstreamUnavailable | ErrorCode::UpstreamError => StatusCode::BAD_GATEWAY,
            ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answered to the client: a stable code and a human sentence.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: Cow<'static, str>,
    retry_after_secs: Option<u64>,
    /// The upstream's own status, for [`ErrorCode::UpstreamError`].
    status: Option<StatusCode>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_secs: None,
            status: None,
        }
    }

    /// An upstream refusal passed on with the upstream's 4xx status (a
    /// non-error status becomes 502).
    pub fn upstream_error(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        let mut err = Self::new(ErrorCode::UpstreamError, message);
        if status.is_client_error() || status.is_server_error() {
            err.status = Some(status);
        }
        err
    }

    /// `POST /api/keys` with `validate: true`: the provider refused the key,
    /// so nothing was saved. 422, not the 401 of `POST /api/keys/validate`:
    /// the request, not the caller's token, is what cannot be processed.
    pub fn key_refused_not_saved(service: crate::domain::Service) -> Self {
        let mut err = Self::new(
            ErrorCode::InvalidKey,
            format!(
                "{} refused this key, so nothing was saved; send \"saveInvalid\": true to save it anyway",
                service.display_name()
            ),
        );
        err.status = Some(StatusCode::UNPROCESSABLE_ENTITY);
        err
    }

    /// A 500 whose detail is logged here and never sent.
    pub fn internal(detail: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %ErrorChain(detail), "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The level this answer is logged at ([`ErrorCode::level`]).
    pub fn level(&self) -> tracing::Level {
        self.code.level()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // An internal error's detail was logged where it was built.
        let (code, message) = (self.code.as_str(), self.message.as_ref());
        match self.level() {
            tracing::Level::ERROR => {}
            tracing::Level::WARN => tracing::warn!(code, message, "request failed"),
            tracing::Level::INFO => tracing::info!(code, message, "request refused"),
            _ => tracing::debug!(code, message, "request refused"),
        }
        let body = serde_json::json!({
            "error": { "code": self.code.as_str(), "message": self.message }
        });
        let status = self.status.unwrap_or(self.code.status());
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.code == ErrorCode::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<KeyError> for ApiError {
    fn from(err: KeyError) -> Self {
        let code = match &err {
            KeyError::KeyFormat(_) => ErrorCode::InvalidKeyFormat,
            KeyError::BaseUrl(_) => ErrorCode::InvalidBaseUrl,
            KeyError::BaseUrlNotAccepted(_)
            | KeyError::InvalidLabel
            | KeyError::EmptyPatch
            | KeyError::PriorityNeedsKey(_)
            | KeyError::InvalidPriority
            | KeyError::ApiKeyExpected(_)
            | KeyError::CredentialsExpected(_) => ErrorCode::InvalidRequest,
            KeyError::LabelLooksLikeKey => ErrorCode::InvalidLabel,
            KeyError::NotFound(_) | KeyError::KeyNotFound(..) => ErrorCode::NotFound,
            KeyError::TooManyKeys { .. } => ErrorCode::KeyLimitReached,
            KeyError::Store(store) => return Self::from_store(store),
        };
        Self::new(code, err.to_string())
    }
}

impl From<crate::rotation::RotationError> for ApiError {
    fn from(err: crate::rotation::RotationError) -> Self {
        use crate::rotation::RotationError as E;
        let code = match &err {
            E::KeyFormat(_) => ErrorCode::InvalidKeyFormat,
            E::NotFound(_) | E::NothingPending => ErrorCode::NotFound,
            E::AlreadyPending => ErrorCode::RotationPending,
            E::Store(store) => return Self::from_store(store),
            E::RateLimited { retry_after_secs } => {
                let secs = *retry_after_secs;
                return Self::new(ErrorCode::RateLimited, err.to_string()).with_retry_after(secs);
            }
            E::NothingStaged(_) | E::Superseded | E::Rejected | E::Unreachable | E::Trigger(_) => {
                return Self::internal(&err);
            }
        };
        Self::new(code, err.to_string())
    }
}

impl From<ResolveError> for ApiError {
    fn from(err: ResolveError) -> Self {
        let code = match &err {
            ResolveError::Model(_) => ErrorCode::UnknownModel,
            ResolveError::ConsentRequired => ErrorCode::ConsentRequired,
            ResolveError::NoCredential => ErrorCode::NoCredential,
            ResolveError::Store(store) => return Self::from_store(store),
        };
        Self::new(code, err.to_string())
    }
}

impl From<crate::audit::AuditError> for ApiError {
    fn from(err: crate::audit::AuditError) -> Self {
        use crate::audit::AuditError as E;
        match err {
            E::Store(store) => Self::from_store(&store),
            E::BadCursor | E::BadLimit => Self::new(ErrorCode::InvalidRequest, err.to_string()),
        }
    }
}

impl From<crate::completion::CompletionError> for ApiError {
    fn from(err: crate::completion::CompletionError) -> Self {
        use crate::completion::CompletionError as E;
        match err {
            E::InvalidRequest(message) => Self::new(ErrorCode::InvalidRequest, message),
            E::UnsupportedModel(message) => Self::new(ErrorCode::UnsupportedModel, message),
            E::Resolve(err) => err.into(),
            E::Secret(err) | E::Limiter(err) => Self::internal(&err),
            E::Budget(err) => err.into(),
            E::RateLimited {
                retry_after_secs, ..
            } => Self::new(ErrorCode::RateLimited, err.to_string())
                .with_retry_after(retry_after_secs),
            E::BudgetExceeded(message) => Self::new(ErrorCode::BudgetExceeded, message),
            E::Upstream(err) => {
                let code = ErrorCode::of_upstream(err.kind);
                if let UpstreamErrorKind::Rejected(status) = err.kind {
                    return Self::upstream_error(status, err.message);
                }
                let api = Self::new(code, err.message);
                match err.retry_after {
                    Some(secs) => api.with_retry_after(secs),
                    None => api,
                }
            }
        }
    }
}

impl From<crate::budget::BudgetError> for ApiError {
    fn from(err: crate::budget::BudgetError) -> Self {
        use crate::budget::BudgetError as E;
        match err {
            E::Store(store) => Self::internal(&store),
            E::NotFound(_) => Self::new(ErrorCode::NotFound, err.to_string()),
            E::Exceeded(message) => Self::new(ErrorCode::BudgetExceeded, message),
            E::BadCursor | E::BadLimit => Self::new(ErrorCode::InvalidRequest, err.to_string()),
        }
    }
}

impl From<crate::validate::ValidateError> for ApiError {
    fn from(err: crate::validate::ValidateError) -> Self {
        use crate::validate::ValidateError as E;
        let message = err.to_string();
        match err {
            E::Resolve(inner) => inner.into(),
            E::Secret(e) | E::Store(e) => Self::internal(&e),
            E::RateLimited { retry_after_secs } => {
                Self::new(ErrorCode::RateLimited, message).with_retry_after(retry_after_secs)
            }
            // Upstream messages are already redacted.
            E::Upstream(e) => match e.kind {
                UpstreamErrorKind::Auth => Self::new(ErrorCode::InvalidKey, e.message),
                UpstreamErrorKind::RateLimited => {
                    Self::new(ErrorCode::UpstreamRateLimited, e.message)
                        .with_retry_after(e.retry_after.unwrap_or(1).max(1))
                }
                UpstreamErrorKind::Unavailable | UpstreamErrorKind::Timeout => {
                    Self::new(ErrorCode::of_upstream(e.kind), e.message)
                }
                // Neither accepted nor refused (e.g. a 404 for /models): not an answer.
                UpstreamErrorKind::Rejected(_) => {
                    Self::upstream_error(StatusCode::BAD_GATEWAY, e.message)
                }
            },
            E::KeyFormat(_) => Self::new(ErrorCode::InvalidKeyFormat, message),
            E::BaseUrl(_) => Self::new(ErrorCode::InvalidBaseUrl, message),
            E::NoStoredKey(_) => Self::new(ErrorCode::NoCredential, message),
            E::NothingToValidate
            | E::ServiceRequired
            | E::BaseUrlWithoutKey
            | E::BaseUrlNotAccepted(_) => Self::new(ErrorCode::InvalidRequest, message),
        }
    }
}

impl From<crate::usage::UsageError> for ApiError {
    fn from(err: crate::usage::UsageError) -> Self {
        match err {
            crate::usage::UsageError::Store(store) => Self::from_store(&store),
            crate::usage::UsageError::BadQuery(message) => {
                Self::new(ErrorCode::InvalidRequest, message)
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        tracing::debug!(reason = %err, "request not authenticated");
        let code = match err {
            AuthError::Unavailable => ErrorCode::Internal,
            _ => ErrorCode::Unauthorized,
        };
        Self::new(code, err.to_string())
    }
}

impl From<crate::tokens::TokenError> for ApiError {
    fn from(err: crate::tokens::TokenError) -> Self {
        use crate::tokens::TokenError as E;
        let code = match &err {
            E::InvalidName | E::InvalidExpiry => ErrorCode::InvalidRequest,
            E::NameLooksLikeKey => ErrorCode::InvalidLabel,
            E::TooMany { .. } => ErrorCode::TokenLimitReached,
            E::NotFound => ErrorCode::NotFound,
            E::Store(store) => return Self::from_store(store),
        };
        Self::new(code, err.to_string())
    }
}

impl ApiError {
    fn from_store(err: &StoreError) -> Self {
        Self::internal(err)
    }
}

/// Displays an error with its sources, for the log.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_upstream_kind_has_its_code() {
        for kind in [
            UpstreamErrorKind::Auth,
            UpstreamErrorKind::RateLimited,
            UpstreamErrorKind::Unavailable,
            UpstreamErrorKind::Timeout,
            UpstreamErrorKind::Rejected(StatusCode::NOT_FOUND),
        ] {
            assert_eq!(
                ErrorCode::of_upstream(kind).as_str(),
                kind.code(),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn codes_are_unique_snake_case_with_error_statuses() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code:?}");
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
    }
}
