//! Handlers of the keys function: providers, and the user's key records.
//! Each extracts the caller and body, calls [`crate::keys::KeyService`] and
//! shapes the answer; nothing else.

use super::extract::{ApiJson, Caller};
use super::{ApiError, AppState, ErrorCode};
use crate::domain::{ApiKey, KeyRecord, Service, UserBaseUrl};
use crate::keys::{KeyPatch, KeyUpsert, Upserted};
use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use time::format_description::well_known::Rfc3339;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProviderView {
    service: &'static str,
    name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_prefix: Option<&'static str>,
    key_format_hint: &'static str,
    docs_url: &'static str,
    accepts_base_url: bool,
    wire_api: &'static str,
}

pub(super) async fn providers(_caller: Caller) -> Json<serde_json::Value> {
    let providers: Vec<ProviderView> = Service::ALL
        .into_iter()
        .map(|svc| ProviderView {
            service: svc.as_str(),
            name: svc.display_name(),
            key_prefix: svc.key_prefix(),
            key_format_hint: svc.key_format_hint(),
            docs_url: svc.docs_url(),
            accepts_base_url: svc.accepts_base_url(),
            wire_api: match svc.wire_api() {
                crate::domain::service::WireApi::OpenAiCompatible => "openai",
                crate::domain::service::WireApi::AnthropicMessages => "anthropic",
            },
        })
        .collect();
    Json(serde_json::json!({ "providers": providers }))
}

/// A key record as every keys route returns it: masked, never the secret.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct KeyRecordView {
    service: &'static str,
    label: String,
    masked_key: String,
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_url_host: Option<String>,
    created_at: String,
    updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_validated_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_validation: Option<&'static str>,
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

impl From<&KeyRecord> for KeyRecordView {
    fn from(r: &KeyRecord) -> Self {
        Self {
            service: r.service.as_str(),
            label: r.label.clone(),
            masked_key: r.masked_key.clone(),
            enabled: r.enabled,
            base_url_host: r
                .base_url
                .as_deref()
                .and_then(|u| UserBaseUrl::parse(u).ok())
                .map(|u| u.host()),
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
            last_validated_at: r.last_validated_at.map(rfc3339),
            last_validation: r.last_validation.map(|v| v.as_str()),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct KeyUpsertBody {
    service: String,
    api_key: ApiKey,
    #[serde(default, deserialize_with = "present")]
    base_url: Option<Option<String>>,
    label: Option<String>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn parse_service(raw: &str) -> Result<Service, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "unknown service: use openai, anthropic, xai, openrouter, google, groq or gateway",
        )
    })
}

pub(super) async fn upsert(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<KeyUpsertBody>,
) -> Result<Response, ApiError> {
    let request = KeyUpsert {
        service: parse_service(&body.service)?,
        api_key: body.api_key,
        base_url: body.base_url,
        label: body.label,
    };
    let (status, record) = match state.keys.upsert(&caller.user, request).await? {
        Upserted::Created(r) => (StatusCode::CREATED, r),
        Upserted::Replaced(r) => (StatusCode::OK, r),
    };
    Ok((status, Json(KeyRecordView::from(&record))).into_response())
}

pub(super) async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let keys = state.keys.list(&caller.user).await?;
    let views: Vec<KeyRecordView> = keys.iter().map(KeyRecordView::from).collect();
    Ok(Json(serde_json::json!({ "keys": views })))
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct KeyPatchBody {
    enabled: Option<bool>,
    label: Option<String>,
}

pub(super) async fn update(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(service): Path<String>,
    ApiJson(body): ApiJson<KeyPatchBody>,
) -> Result<Json<KeyRecordView>, ApiError> {
    let service = parse_service(&service)?;
    let patch = KeyPatch {
        enabled: body.enabled,
        label: body.label,
    };
    let record = state.keys.update(&caller.user, service, patch).await?;
    Ok(Json(KeyRecordView::from(&record)))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(service): Path<String>,
) -> Result<StatusCode, ApiError> {
    let service = parse_service(&service)?;
    state.keys.delete(&caller.user, service).await?;
    Ok(StatusCode::NO_CONTENT)
}
