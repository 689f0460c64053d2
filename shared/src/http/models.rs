//! Handler of `GET /v1/models`: the catalog in the OpenAI list shape, each
//! model marked with whether the caller can reach it and by which path. One
//! metadata read per request; no secret read, no upstream called.

use super::extract::ApiCaller;
use super::{ApiError, AppState};
use crate::catalog::{CatalogModel, accessibility};
use axum::Json;
use axum::extract::State;
use serde::Serialize;

#[derive(Serialize)]
pub(super) struct ModelList {
    object: &'static str,
    data: Vec<ModelView>,
}

/// One model, snake_case like OpenAI's `/v1/models`.
#[derive(Serialize)]
struct ModelView {
    id: String,
    object: &'static str,
    /// The catalog's date (Unix seconds), the same for every model.
    created: i64,
    owned_by: String,
    name: String,
    context_window: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    pricing: PricingView,
    accessible: bool,
    /// The resolution path that would serve the caller, or null.
    via: Option<&'static str>,
}

/// USD per 1M tokens.
#[derive(Serialize)]
struct PricingView {
    input: f64,
    output: f64,
}

pub(super) async fn list(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
) -> Result<Json<ModelList>, ApiError> {
    let snapshot = state.resolver.snapshot(&caller.user).await?;
    let (team, upstreams) = (state.resolver.team(), state.resolver.upstreams());
    let created = state.catalog.created();
    let view = |m: &CatalogModel| {
        let via = accessibility(&snapshot, m.model_id(), team, upstreams);
        let pricing = m.pricing();
        ModelView {
            id: m.id().to_owned(),
            object: "model",
            created,
            owned_by: m.owned_by().to_owned(),
            name: m.name().to_owned(),
            context_window: m.context_window(),
            max_tokens: m.max_output_tokens(),
            pricing: PricingView {
                input: pricing.input,
                output: pricing.output,
            },
            accessible: via.is_some(),
            via: via.map(|p| p.as_str()),
        }
    };
    Ok(Json(ModelList {
        object: "list",
        data: state.catalog.models().iter().map(view).collect(),
    }))
}
