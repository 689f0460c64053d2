//! Handlers of `GET /api/usage` (the caller's own usage),
//! `GET /api/usage/requests` (the caller's recent attempts) and
//! `GET /api/admin/usage` (every user's, admin group only): query strings in,
//! [`crate::usage`] reports out as JSON.

use super::extract::Caller;
use super::{ApiError, AppState, ErrorCode};
use crate::store::UsageEntry;
use crate::store::usage::{day_text, nanos_to_usd};
use crate::usage::{GroupBy, Report, ReportRow, UsageQuery};
use axum::Json;
use axum::extract::{RawQuery, State};
use serde::Serialize;

/// One group of a report, as the API shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UsageRowView {
    #[serde(skip_serializing_if = "Option::is_none")]
    day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    /// Present (possibly `null`) when grouping by tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    paid_by: Option<&'static str>,
    #[serde(flatten)]
    sums: SumsView,
}

/// The sums every row and the totals carry.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SumsView {
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: Option<f64>,
    team_cost_usd: f64,
    user_cost_usd: f64,
    /// Requests whose tokens are estimates (cut-short streams).
    estimated_requests: u64,
    failed_requests: u64,
    cancelled_requests: u64,
    limited_requests: u64,
}

impl SumsView {
    fn of(row: &ReportRow) -> Self {
        let c = &row.counts;
        Self {
            requests: c.requests,
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.completion_tokens,
            cost_usd: row.cost_nanos().map(nanos_to_usd),
            team_cost_usd: nanos_to_usd(row.team_cost_nanos),
            user_cost_usd: nanos_to_usd(row.user_cost_nanos),
            estimated_requests: c.estimated_requests,
            failed_requests: c.failed_requests,
            cancelled_requests: c.cancelled_requests,
            limited_requests: c.limited_requests,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ReportView {
    from: String,
    to: String,
    group_by: &'static str,
    usage: Vec<UsageRowView>,
    totals: SumsView,
}

impl ReportView {
    fn of(report: &Report) -> Self {
        let group_by = report.query.group_by;
        let usage = report
            .rows
            .iter()
            .map(|row| {
                let key = || row.key.clone();
                UsageRowView {
                    day: (group_by == GroupBy::Day).then(key).flatten(),
                    service: (group_by == GroupBy::Service).then(key).flatten(),
                    model: (group_by == GroupBy::Model).then(key).flatten(),
                    path: (group_by == GroupBy::Path).then(key).flatten(),
                    user: (group_by == GroupBy::User).then(key).flatten(),
                    tenant: (group_by == GroupBy::Tenant).then(key),
                    paid_by: row.paid_by.map(|p| p.as_str()),
                    sums: SumsView::of(row),
                }
            })
            .collect();
        Self {
            from: day_text(report.query.from),
            to: day_text(report.query.to),
            group_by: group_by.as_str(),
            usage,
            totals: SumsView::of(&report.totals),
        }
    }
}

/// `from`, `to` and `groupBy` of a query string.
fn query(raw: Option<String>, allowed: &[GroupBy]) -> Result<UsageQuery, ApiError> {
    let (mut from, mut to, mut group_by) = (None, None, None);
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            // Given empty is given wrong (a date or a grouping is required).
            "from" => from = Some(v.into_owned()),
            "to" => to = Some(v.into_owned()),
            "groupBy" => group_by = Some(v.into_owned()),
            _ => {}
        }
    }
    let today = crate::domain::now().to_offset(time::UtcOffset::UTC).date();
    Ok(UsageQuery::parse(
        from.as_deref(),
        to.as_deref(),
        group_by.as_deref(),
        allowed,
        today,
    )?)
}

/// `GET /api/usage?from=&to=&groupBy=day|model|service|path`.
pub(super) async fn mine(
    State(state): State<AppState>,
    Caller(caller): Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<ReportView>, ApiError> {
    let query = query(raw, &GroupBy::FOR_USER)?;
    let report = state.usage.user(&caller.user, query).await?;
    Ok(Json(ReportView::of(&report)))
}

/// `GET /api/admin/usage?from=&to=&groupBy=user|day|model|tenant|service|path`.
pub(super) async fn all(
    State(state): State<AppState>,
    Caller(caller): Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<ReportView>, ApiError> {
    if !caller.admin {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this route is for members of the admin group",
        ));
    }
    let query = query(raw, &GroupBy::FOR_ADMIN)?;
    let report = state.usage.all(query).await?;
    Ok(Json(ReportView::of(&report)))
}

/// One attempt, as `GET /api/usage/requests` shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AttemptView {
    at: String,
    request_id: String,
    attempt: u32,
    service: &'static str,
    model: String,
    path: &'static str,
    paid_by: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: Option<f64>,
    estimated: bool,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<String>,
    stream: bool,
    fallback: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_to_first_byte_ms: Option<u64>,
    duration_ms: u64,
}

impl AttemptView {
    fn of(e: UsageEntry) -> Self {
        Self {
            at: e
                .at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            paid_by: e.paid_by().as_str(),
            request_id: e.request_id,
            attempt: e.attempt,
            service: e.service.as_str(),
            model: e.model,
            path: e.path.as_str(),
            tenant: e.tenant.map(|t| t.to_string()),
            prompt_tokens: e.prompt_tokens,
            completion_tokens: e.completion_tokens,
            cost_usd: e.cost_nanos.map(nanos_to_usd),
            estimated: e.estimated,
            outcome: e.outcome.as_str(),
            error_code: e.error_code,
            stream: e.stream,
            fallback: e.fallback,
            time_to_first_byte_ms: e.time_to_first_byte_ms,
            duration_ms: e.duration_ms,
        }
    }
}

#[derive(Serialize)]
pub(super) struct AttemptsView {
    requests: Vec<AttemptView>,
}

/// `GET /api/usage/requests?limit=`: the caller's most recent attempts.
pub(super) async fn recent(
    State(state): State<AppState>,
    Caller(caller): Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<AttemptsView>, ApiError> {
    let mut limit = None;
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if k == "limit" {
            limit = Some(v.into_owned());
        }
    }
    let entries = state.usage.recent(&caller.user, limit.as_deref()).await?;
    Ok(Json(AttemptsView {
        requests: entries.into_iter().map(AttemptView::of).collect(),
    }))
}
