//! Handlers of the personal API key routes (keys function): make one
//! (shown once), list them, revoke one. Signing in with a personal key
//! does not reach these routes: [`super::extract::Caller`] refuses it.

use super::extract::{ApiJson, Caller, RequestId, not_null};
use super::{ApiError, AppState};
use crate::domain::ApiTokenRecord;
use axum::Json;
use axum::extract::{Path, State};
use http::StatusCode;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct CreateBody {
    name: String,
    #[serde(default, deserialize_with = "not_null")]
    expires_in_days: Option<u32>,
}

/// A personal key as listed: never the key, only its start.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(super) struct TokenView {
    id: String,
    name: String,
    prefix: String,
    created_at: String,
    expires_at: Option<String>,
    last_used_at: Option<String>,
    expired: bool,
}

impl TokenView {
    fn new(record: &ApiTokenRecord, now: crate::domain::Timestamp) -> Self {
        let text = crate::events::rfc3339;
        Self {
            id: record.id.to_string(),
            name: record.name.clone(),
            prefix: record.prefix.clone(),
            created_at: text(record.created_at),
            expires_at: record.expires_at.map(text),
            last_used_at: record.last_used_at.map(text),
            expired: record.is_expired(now),
        }
    }
}

/// The answer to making a key: its record and, this once, the key.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(super) struct CreatedView {
    #[serde(flatten)]
    token: TokenView,
    key: String,
}

#[derive(Serialize, Debug)]
pub(super) struct TokenList {
    tokens: Vec<TokenView>,
}

pub(super) async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request_id: RequestId,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<(StatusCode, Json<CreatedView>), ApiError> {
    let made = state
        .tokens
        .create(
            &caller,
            &body.name,
            body.expires_in_days,
            request_id.as_str(),
        )
        .await?;
    let view = CreatedView {
        token: TokenView::new(&made.record, crate::domain::now()),
        key: made.key.expose().to_owned(),
    };
    Ok((StatusCode::CREATED, Json(view)))
}

pub(super) async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<TokenList>, ApiError> {
    let now = crate::domain::now();
    let tokens = state.tokens.list(&caller.user).await?;
    Ok(Json(TokenList {
        tokens: tokens.iter().map(|t| TokenView::new(t, now)).collect(),
    }))
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request_id: RequestId,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .tokens
        .revoke(&caller.user, &id, request_id.as_str())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
