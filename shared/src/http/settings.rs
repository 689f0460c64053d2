//! Handlers of the settings function: the user's consent to team fallback.

use super::extract::{ApiJson, Caller, RequestId};
use super::{ApiError, AppState};
use crate::domain::Settings;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct SettingsBody {
    allow_gateway_fallback: bool,
}

impl From<Settings> for SettingsBody {
    fn from(s: Settings) -> Self {
        Self {
            allow_gateway_fallback: s.allow_gateway_fallback,
        }
    }
}

pub(super) async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<SettingsBody>, ApiError> {
    Ok(Json(state.keys.settings(&caller.user).await?.into()))
}

pub(super) async fn save(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request_id: RequestId,
    ApiJson(body): ApiJson<SettingsBody>,
) -> Result<Json<SettingsBody>, ApiError> {
    let settings = Settings {
        allow_gateway_fallback: body.allow_gateway_fallback,
    };
    Ok(Json(
        state
            .keys
            .save_settings(&caller.user, settings, request_id.as_str())
            .await?
            .into(),
    ))
}
