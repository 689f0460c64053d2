//! Handlers of the keys function: providers, and the user's key records.
//! Each extracts the caller and body, calls [`crate::keys::KeyService`] and
//! shapes the answer; nothing else.

use super::extract::{ApiJson, Caller, RequestId, not_null};
use super::{ApiError, AppState, ErrorCode};
use crate::domain::{
    ApiKey, CredentialDocument, KeyId, KeyRecord, Service, UserBaseUrl, ValidationResult,
};
use crate::keys::{KeyAdd, KeyPatch, KeyUpsert, Upserted};
use axum::Json;
use axum::extract::{Path, RawQuery, State};
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
    /// How many keys a user may store for the service.
    max_keys: usize,
}

pub(super) async fn providers(
    State(state): State<AppState>,
    _caller: Caller,
) -> Json<serde_json::Value> {
    let max_keys = state.keys.max_keys();
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
                crate::domain::service::WireApi::BedrockConverse => "bedrock",
            },
            max_keys,
        })
        .collect();
    Json(serde_json::json!({ "providers": providers }))
}

/// A key record as every keys route returns it: masked, never the secret.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyRecordView {
    service: &'static str,
    id: String,
    /// Lower is tried first; the lowest is the service's primary key.
    priority: u32,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    rotated_at: Option<String>,
    /// The key is older than the operator's rotation age.
    rotation_due: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pending: Option<PendingView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_rotation: Option<RotationOutcomeView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_used_at: Option<String>,
    /// Present while the key is skipped after a provider rate limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    cooldown_until: Option<String>,
}

/// A staged replacement key, until it is promoted or rejected.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PendingView {
    masked_key: String,
    staged_at: String,
    /// `staged` until a rotation takes the key up, then `testing`.
    status: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RotationOutcomeView {
    at: String,
    /// `rotated` or `rejected`.
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

impl KeyRecordView {
    /// The view of `r`; `rotation_age` decides `rotationDue`.
    pub(crate) fn new(r: &KeyRecord, rotation_age: std::time::Duration) -> Self {
        let now = crate::domain::now();
        let age = now - r.keyed_at();
        Self {
            service: r.service.as_str(),
            id: r.id.to_string(),
            priority: r.priority,
            last_used_at: r.last_used_at.map(rfc3339),
            cooldown_until: r.cooldown_until.filter(|_| r.cooling_at(now)).map(rfc3339),
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
            rotated_at: r.rotated_at.map(rfc3339),
            rotation_due: time::Duration::try_from(rotation_age).is_ok_and(|max| age >= max),
            pending: r.pending.as_ref().map(|p| PendingView {
                masked_key: p.masked_key.clone(),
                staged_at: rfc3339(p.staged_at),
                status: if p.token.is_some() {
                    "testing"
                } else {
                    "staged"
                },
            }),
            last_rotation: r.last_rotation.map(|o| RotationOutcomeView {
                at: rfc3339(o.at),
                result: if o.rejected.is_some() {
                    "rejected"
                } else {
                    "rotated"
                },
                reason: o.rejected.map(|r| r.as_str()),
            }),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct KeyUpsertBody {
    service: String,
    #[serde(default, deserialize_with = "not_null")]
    api_key: Option<ApiKey>,
    /// A structured credential (`vertex`: a service account's fields).
    #[serde(default, deserialize_with = "not_null")]
    credentials: Option<CredentialDocument>,
    #[serde(default, deserialize_with = "present")]
    base_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "not_null")]
    label: Option<String>,
    /// Check the key with its provider before saving it (counts toward
    /// the validation limit; skipped when the limit is used up). A key the
    /// provider refuses is not saved, unless `save_invalid`.
    #[serde(default)]
    validate: bool,
    /// With `validate`: save a refused key anyway (marked `invalid`).
    #[serde(default)]
    save_invalid: bool,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

pub(super) fn parse_service(raw: &str) -> Result<Service, ApiError> {
    raw.parse().map_err(|_| {
        let names: Vec<&str> = Service::ALL.iter().map(|s| s.as_str()).collect();
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("unknown service: use one of {}", names.join(", ")),
        )
    })
}

pub(super) async fn upsert(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request_id: RequestId,
    ApiJson(body): ApiJson<KeyUpsertBody>,
) -> Result<Response, ApiError> {
    let service = parse_service(&body.service)?;
    let secret = state
        .keys
        .secret_from(service, body.api_key, body.credentials.as_ref())?;
    let verdict = if body.validate {
        let base_url = match &body.base_url {
            Some(given) => given.clone(),
            // A replaced key keeps its base URL: check against that one.
            None if service.accepts_base_url() => state
                .keys
                .list(&caller.user)
                .await?
                .into_iter()
                .find(|k| k.service == service)
                .and_then(|k| k.base_url),
            None => None,
        };
        state
            .validation
            .check_before_save(
                &caller.user,
                service,
                &secret,
                base_url,
                request_id.as_str(),
            )
            .await
    } else {
        None
    };
    if verdict == Some(ValidationResult::Invalid) && !body.save_invalid {
        return Err(ApiError::key_refused_not_saved(service));
    }
    let request = KeyUpsert {
        service,
        api_key: secret,
        base_url: body.base_url,
        label: body.label,
    };
    let upserted = state
        .keys
        .upsert(&caller.user, request, request_id.as_str())
        .await?;
    let (status, mut record) = match upserted {
        Upserted::Created(r) => (StatusCode::CREATED, r),
        Upserted::Replaced(r) => (StatusCode::OK, r),
    };
    if let Some(result) = verdict {
        record = state
            .validation
            .mark(&record, result)
            .await
            .unwrap_or(record);
    }
    Ok((
        status,
        Json(KeyRecordView::new(&record, state.rotation_age)),
    )
        .into_response())
}

/// Parses a key id from a path; an id of no possible key is not found.
fn parse_key_id(service: Service, raw: &str) -> Result<KeyId, ApiError> {
    KeyId::parse(raw).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("no {service} key with id {} is stored", raw.escape_debug()),
        )
    })
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct KeyAddBody {
    #[serde(default, deserialize_with = "not_null")]
    api_key: Option<ApiKey>,
    #[serde(default, deserialize_with = "not_null")]
    credentials: Option<CredentialDocument>,
    #[serde(default, deserialize_with = "not_null")]
    label: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    priority: Option<u32>,
    #[serde(default, deserialize_with = "not_null")]
    base_url: Option<String>,
}

/// `POST /api/keys/{service}`: another key for the service → 201.
pub(super) async fn add(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request_id: RequestId,
    Path(service): Path<String>,
    ApiJson(body): ApiJson<KeyAddBody>,
) -> Result<Response, ApiError> {
    let service = parse_service(&service)?;
    let secret = state
        .keys
        .secret_from(service, body.api_key, body.credentials.as_ref())?;
    let request = KeyAdd {
        api_key: secret,
        label: body.label,
        priority: body.priority,
        base_url: body.base_url,
    };
    let record = state
        .keys
        .add(&caller.user, service, request, request_id.as_str())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(KeyRecordView::new(&record, state.rotation_age)),
    )
        .into_response())
}

pub(super) async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let keys = state.keys.list(&caller.user).await?;
    let views: Vec<KeyRecordView> = keys
        .iter()
        .map(|k| KeyRecordView::new(k, state.rotation_age))
        .collect();
    Ok(Json(serde_json::json!({ "keys": views })))
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct KeyPatchBody {
    #[serde(default, deserialize_with = "not_null")]
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "not_null")]
    label: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    priority: Option<u32>,
}

impl KeyPatchBody {
    fn patch(self) -> KeyPatch {
        KeyPatch {
            enabled: self.enabled,
            label: self.label,
            priority: self.priority,
        }
    }
}

/// `PATCH /api/keys/{service}`: every key of the service; answers with
/// the primary key's record (as when a service had one key).
pub(super) async fn update(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request_id: RequestId,
    Path(service): Path<String>,
    ApiJson(body): ApiJson<KeyPatchBody>,
) -> Result<Json<KeyRecordView>, ApiError> {
    let service = parse_service(&service)?;
    let records = state
        .keys
        .update(
            &caller.user,
            service,
            None,
            body.patch(),
            request_id.as_str(),
        )
        .await?;
    let primary = records
        .first()
        .ok_or_else(|| ApiError::from(crate::keys::KeyError::NotFound(service)))?;
    Ok(Json(KeyRecordView::new(primary, state.rotation_age)))
}

/// `PATCH /api/keys/{service}/{id}`: one key.
pub(super) async fn update_one(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request_id: RequestId,
    Path((service, id)): Path<(String, String)>,
    ApiJson(body): ApiJson<KeyPatchBody>,
) -> Result<Json<KeyRecordView>, ApiError> {
    let service = parse_service(&service)?;
    let id = parse_key_id(service, &id)?;
    let records = state
        .keys
        .update(
            &caller.user,
            service,
            Some(&id),
            body.patch(),
            request_id.as_str(),
        )
        .await?;
    let record = records
        .first()
        .ok_or_else(|| ApiError::from(crate::keys::KeyError::KeyNotFound(service, id)))?;
    Ok(Json(KeyRecordView::new(record, state.rotation_age)))
}

/// `DELETE /api/keys/{service}`: every key of the service.
pub(super) async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request_id: RequestId,
    Path(service): Path<String>,
) -> Result<StatusCode, ApiError> {
    let service = parse_service(&service)?;
    state
        .keys
        .delete(&caller.user, service, None, request_id.as_str())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/keys/{service}/{id}`: one key.
pub(super) async fn delete_one(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request_id: RequestId,
    Path((service, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let service = parse_service(&service)?;
    let id = parse_key_id(service, &id)?;
    state
        .keys
        .delete(&caller.user, service, Some(&id), request_id.as_str())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct StagePendingBody {
    api_key: ApiKey,
}

/// `PUT /api/keys/{service}/pending`: stages a replacement of the
/// primary key and starts its rotation (see [`stage`]).
pub(super) async fn stage_pending(
    state: State<AppState>,
    caller: Caller,
    request_id: RequestId,
    Path(service): Path<String>,
    body: ApiJson<StagePendingBody>,
) -> Result<Response, ApiError> {
    let service = parse_service(&service)?;
    stage(state, caller, request_id, service, None, body).await
}

/// `PUT /api/keys/{service}/{id}/pending`: the same for key `id`.
pub(super) async fn stage_pending_one(
    state: State<AppState>,
    caller: Caller,
    request_id: RequestId,
    Path((service, id)): Path<(String, String)>,
    body: ApiJson<StagePendingBody>,
) -> Result<Response, ApiError> {
    let service = parse_service(&service)?;
    let id = parse_key_id(service, &id)?;
    stage(state, caller, request_id, service, Some(id), body).await
}

/// Stages a replacement key and starts its rotation; 202 with the record
/// showing it pending. The current key keeps serving until the new one
/// passes its test.
async fn stage(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request_id: RequestId,
    service: Service,
    id: Option<KeyId>,
    ApiJson(body): ApiJson<StagePendingBody>,
) -> Result<Response, ApiError> {
    let record = state
        .rotation
        .stage(
            &caller.user,
            service,
            id.as_ref(),
            &body.api_key,
            request_id.as_str(),
        )
        .await?;
    if let Err(err) = state.rotation_trigger.start(&record).await {
        // Not started: take the staged key back so a retry can stage again.
        if let Err(cancel) = state
            .rotation
            .cancel(&caller.user, service, Some(&record.id), request_id.as_str())
            .await
        {
            tracing::warn!(%service, error = %cancel, "unstarted rotation not cancelled");
        }
        return Err(err.into());
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(KeyRecordView::new(&record, state.rotation_age)),
    )
        .into_response())
}

/// `DELETE /api/keys/{service}/pending`: cancels a staged or running
/// rotation of the primary key; the current key stays.
pub(super) async fn cancel_pending(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request_id: RequestId,
    Path(service): Path<String>,
) -> Result<Json<KeyRecordView>, ApiError> {
    let service = parse_service(&service)?;
    let record = state
        .rotation
        .cancel(&caller.user, service, None, request_id.as_str())
        .await?;
    Ok(Json(KeyRecordView::new(&record, state.rotation_age)))
}

/// `DELETE /api/keys/{service}/{id}/pending`: the same for key `id`.
pub(super) async fn cancel_pending_one(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request_id: RequestId,
    Path((service, id)): Path<(String, String)>,
) -> Result<Json<KeyRecordView>, ApiError> {
    let service = parse_service(&service)?;
    let id = parse_key_id(service, &id)?;
    let record = state
        .rotation
        .cancel(&caller.user, service, Some(&id), request_id.as_str())
        .await?;
    Ok(Json(KeyRecordView::new(&record, state.rotation_age)))
}

/// One audit event as `GET /api/audit` lists it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuditEventView {
    id: String,
    at: String,
    action: &'static str,
    /// Absent on events about no key (budget changes).
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<&'static str>,
    /// The key's id, on events about one key.
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<String>,
    request_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AuditPageView {
    events: Vec<AuditEventView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

pub(super) async fn audit(
    State(state): State<AppState>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<AuditPageView>, ApiError> {
    let (cursor, limit) = super::extract::page_query(query);
    let page = state
        .audit
        .list(&caller.user, cursor.as_deref(), limit.as_deref())
        .await?;
    Ok(Json(AuditPageView {
        events: page
            .events
            .into_iter()
            .map(|e| AuditEventView {
                id: e.id.to_string(),
                at: rfc3339(e.at),
                action: e.action.as_str(),
                service: e.service.map(crate::domain::Service::as_str),
                key_id: e.key_id.map(|id| id.to_string()),
                result: e.result,
                request_id: e.request_id,
            })
            .collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    }))
}
