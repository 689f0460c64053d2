//! Handler of the resolution preview: which path, provider and upstream a
//! model would use for the caller. No secret is read, no upstream called.

use super::extract::Caller;
use super::{ApiError, AppState, ErrorCode};
use axum::Json;
use axum::extract::{RawQuery, State};
use serde::Serialize;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ResolutionView {
    path: &'static str,
    provider: &'static str,
    model: String,
    upstream_model: String,
    base_url_host: String,
    base_url_source: &'static str,
    /// On a user path: the keys that would be tried, in order (keys cooling
    /// down after a rate limit last); absent on team paths.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    keys: Vec<CandidateKeyView>,
    /// `gateway` when a user-provider path goes through the team gateway
    /// (the user's key in the request, `BYOK_ROUTE_USER_KEYS_VIA_GATEWAY`).
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CandidateKeyView {
    id: String,
    masked_key: String,
    priority: u32,
}

pub(super) async fn preview(
    State(state): State<AppState>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<ResolutionView>, ApiError> {
    let model = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "model")
        .map(|(_, v)| v.into_owned())
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "query parameter model is required",
            )
        })?;
    let r = state.resolver.resolve(&caller.user, &model).await?;
    Ok(Json(ResolutionView {
        path: r.path.as_str(),
        provider: r.provider.as_str(),
        model: r.model,
        upstream_model: r.upstream_model,
        base_url_host: r.base_url_host,
        base_url_source: r.base_url_source.as_str(),
        via: r.via_gateway.then_some("gateway"),
        keys: r
            .keys
            .iter()
            .map(|k| CandidateKeyView {
                id: k.id.to_string(),
                masked_key: k.masked_key.clone(),
                priority: k.priority,
            })
            .collect(),
    }))
}
