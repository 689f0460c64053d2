//! Handler of `POST /api/keys/validate`: reads the body, picks what to check
//! (given key, stored key or model, in that order), calls
//! [`crate::validate::ValidationService`] and shapes the answer.

use super::extract::{ApiJson, Caller, RequestId};
use super::keys::parse_service;
use super::{ApiError, AppState};
use crate::domain::{ApiKey, CredentialDocument};
use crate::validate::{ValidateError, ValidateRequest};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ValidateBody {
    service: Option<String>,
    api_key: Option<ApiKey>,
    /// A structured credential to check (`vertex`), instead of `apiKey`.
    credentials: Option<CredentialDocument>,
    base_url: Option<String>,
    model: Option<String>,
    /// Which stored key of `service` (its primary key if absent).
    key_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ValidationView {
    valid: bool,
    service: &'static str,
    /// `null` for a key given in the request (it is on no resolution path).
    path: Option<&'static str>,
    provider: &'static str,
    base_url_host: String,
    checked_at: String,
    /// The stored key checked (a stored key, or the one a model resolves to).
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
}

pub(super) async fn validate(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request_id: RequestId,
    ApiJson(body): ApiJson<ValidateBody>,
) -> Result<(http::HeaderMap, Json<ValidationView>), ApiError> {
    let service = body.service.as_deref().map(parse_service).transpose()?;
    // A credential given as its fields is checked as the secret it would be stored as.
    let api_key = match (body.api_key, body.credentials, service) {
        (key, None, _) => key,
        (key, Some(doc), Some(service)) => {
            Some(state.keys.secret_from(service, key, Some(&doc))?)
        }
        (_, Some(_), None) => return Err(ValidateError::ServiceRequired.into()),
    };
    let request = match (api_key, service, body.model) {
        (Some(api_key), Some(service), _) => ValidateRequest::Key {
            service,
            api_key,
            base_url: body.base_url,
        },
        (Some(_), None, _) => return Err(ValidateError::ServiceRequired.into()),
        (None, _, _) if body.base_url.is_some() => {
            return Err(ValidateError::BaseUrlWithoutKey.into());
        }
        (None, Some(service), _) => {
            // An id of no possible key names no stored key either.
            let id = body
                .key_id
                .as_deref()
                .map(|raw| {
                    crate::domain::KeyId::parse(raw).ok_or(ValidateError::NoStoredKey(service))
                })
                .transpose()?;
            ValidateRequest::Stored(service, id)
        }
        (None, None, Some(model)) if !model.trim().is_empty() => ValidateRequest::Model(model),
        (None, None, _) => return Err(ValidateError::NothingToValidate.into()),
    };
    let v = state
        .validation
        .validate(&caller.user, request, request_id.as_str())
        .await?;
    // What is left of the caller's checks this minute (the console's Test
    // button shows it).
    let mut limits = http::HeaderMap::new();
    if let Some((left, limit)) = v.checks_left {
        limits.insert("x-ratelimit-limit-requests", limit.into());
        limits.insert("x-ratelimit-remaining-requests", left.into());
    }
    Ok((
        limits,
        Json(ValidationView {
            valid: true,
            service: v.service.as_str(),
            path: v.path.map(|p| p.as_str()),
            provider: v.service.as_str(),
            base_url_host: v.base_url_host,
            checked_at: v.checked_at.format(&Rfc3339).unwrap_or_default(),
            key_id: v.key_id.map(|id| id.to_string()),
        }),
    ))
}
