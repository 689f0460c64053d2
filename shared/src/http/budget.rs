//! Handlers of the budget routes: the admin's `PUT/GET/DELETE
//! /api/admin/budgets/users/{userId}` and `…/tenants/{tenantId}`, the paged
//! `GET /api/admin/budgets`, and the caller's `GET /api/budget`. Bodies in,
//! [`crate::budget`] out, amounts in the budget's unit (tokens, or dollars).

use super::extract::{ApiJson, Caller, RequestId};
use super::{ApiError, AppState, ErrorCode};
use crate::auth::Principal;
use crate::budget::{DEFAULT_THRESHOLDS, amount_number};
use crate::domain::{TenantId, UserId};
use crate::events::rfc3339;
use crate::store::budget::utc_day;
use crate::store::usage::usd_to_nanos;
use crate::store::{BudgetPeriod, BudgetRecord, BudgetScope, BudgetTerms, BudgetUnit};
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

/// Most alert thresholds one budget may have.
const MAX_THRESHOLDS: usize = 10;
/// The largest USD limit accepted (a billion dollars).
const MAX_USD: f64 = 1e9;

/// The body of `PUT /api/admin/budgets/…`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct BudgetBody {
    #[serde(rename = "type")]
    unit: String,
    period: String,
    limit: serde_json::Number,
    #[serde(default)]
    pause_at_limit: bool,
    #[serde(default, deserialize_with = "super::extract::not_null")]
    alert_thresholds: Option<Vec<serde_json::Value>>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message.into())
}

impl BudgetBody {
    fn terms(self) -> Result<BudgetTerms, ApiError> {
        let unit = BudgetUnit::parse(&self.unit)
            .ok_or_else(|| invalid("type must be \"tokens\" or \"usd\""))?;
        let period = BudgetPeriod::parse(&self.period).ok_or_else(|| {
            invalid("period must be \"daily\", \"weekly\", \"monthly\" or \"total\"")
        })?;
        let limit = match unit {
            BudgetUnit::Tokens => self
                .limit
                .as_u64()
                .filter(|n| *n > 0 && i64::try_from(*n).is_ok())
                .ok_or_else(|| invalid("limit must be a whole number of tokens above 0"))?,
            BudgetUnit::Usd => self
                .limit
                .as_f64()
                .filter(|usd| usd.is_finite() && *usd > 0.0 && *usd <= MAX_USD)
                .and_then(usd_to_nanos)
                .filter(|nanos| *nanos > 0)
                .ok_or_else(|| {
                    invalid("limit must be an amount of dollars above 0 and at most 1e9")
                })?,
        };
        let alert_thresholds = match self.alert_thresholds {
            None => DEFAULT_THRESHOLDS.to_vec(),
            Some(list) => {
                if list.len() > MAX_THRESHOLDS {
                    return Err(invalid(format!(
                        "alertThresholds takes at most {MAX_THRESHOLDS} percentages"
                    )));
                }
                let mut out = Vec::with_capacity(list.len());
                for value in list {
                    let percent = value
                        .as_u64()
                        .filter(|p| (1..=100).contains(p))
                        .and_then(|p| u8::try_from(p).ok())
                        .ok_or_else(|| {
                            invalid("alertThresholds must be whole percentages from 1 to 100")
                        })?;
                    if out.contains(&percent) {
                        return Err(invalid("alertThresholds must not repeat a percentage"));
                    }
                    out.push(percent);
                }
                out.sort_unstable();
                out
            }
        };
        Ok(BudgetTerms {
            unit,
            period,
            limit,
            pause_at_limit: self.pause_at_limit,
            alert_thresholds,
        })
    }
}

/// A budget and its current period, as the routes show it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct BudgetView {
    scope: &'static str,
    id: String,
    #[serde(rename = "type")]
    unit: &'static str,
    period: &'static str,
    limit: serde_json::Number,
    pause_at_limit: bool,
    alert_thresholds: Vec<u8>,
    /// Settled usage this period.
    used: serde_json::Number,
    /// Held by requests still running.
    reserved: serde_json::Number,
    /// `limit - used - reserved`, never below 0.
    remaining: serde_json::Number,
    /// The period's bounds (UTC, end excluded); `null` for `total`.
    period_start: Option<String>,
    period_end: Option<String>,
    updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_by: Option<String>,
}

impl BudgetView {
    fn of(r: &BudgetRecord, for_admin: bool) -> Self {
        let unit = r.terms.unit;
        let today = utc_day(crate::domain::now());
        let midnight = |day: time::Date| rfc3339(day.midnight().assume_utc());
        Self {
            scope: r.scope.kind(),
            id: r.scope.id().to_owned(),
            unit: unit.as_str(),
            period: r.terms.period.as_str(),
            limit: amount_number(unit, r.terms.limit),
            pause_at_limit: r.terms.pause_at_limit,
            alert_thresholds: r.terms.alert_thresholds.clone(),
            used: amount_number(unit, r.used.of(unit)),
            reserved: amount_number(unit, r.reserved().of(unit)),
            remaining: amount_number(unit, r.remaining()),
            period_start: r.terms.period.start(today).map(midnight),
            period_end: r.terms.period.end(today).map(midnight),
            updated_at: rfc3339(r.updated_at),
            updated_by: for_admin.then(|| r.updated_by.to_string()),
        }
    }
}

fn admin_only(caller: &Principal) -> Result<(), ApiError> {
    if caller.admin {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "this route is for members of the admin group",
        ))
    }
}

fn user_scope(id: String) -> Result<BudgetScope, ApiError> {
    UserId::new(id)
        .map(BudgetScope::User)
        .ok_or_else(|| invalid("userId must be 1 to 256 characters without control characters"))
}

fn tenant_scope(id: String) -> Result<BudgetScope, ApiError> {
    TenantId::new(id)
        .map(BudgetScope::Tenant)
        .ok_or_else(|| invalid("tenantId must be 1 to 128 characters without control characters"))
}

async fn put(
    state: &AppState,
    caller: &Principal,
    scope: Result<BudgetScope, ApiError>,
    body: BudgetBody,
    request_id: &RequestId,
) -> Result<Json<BudgetView>, ApiError> {
    admin_only(caller)?;
    let scope = scope?;
    let terms = body.terms()?;
    let record = state
        .budgets
        .put(&caller.user, &scope, terms, request_id.as_str())
        .await?;
    Ok(Json(BudgetView::of(&record, true)))
}

async fn get(
    state: &AppState,
    caller: &Principal,
    scope: Result<BudgetScope, ApiError>,
) -> Result<Json<BudgetView>, ApiError> {
    admin_only(caller)?;
    let record = state.budgets.get(&scope?).await?;
    Ok(Json(BudgetView::of(&record, true)))
}

async fn delete(
    state: &AppState,
    caller: &Principal,
    scope: Result<BudgetScope, ApiError>,
    request_id: &RequestId,
) -> Result<StatusCode, ApiError> {
    admin_only(caller)?;
    state
        .budgets
        .delete(&caller.user, &scope?, request_id.as_str())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/admin/budgets/users/{userId}`.
pub(super) async fn put_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request_id: RequestId,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BudgetBody>,
) -> Result<Json<BudgetView>, ApiError> {
    put(&state, &caller, user_scope(id), body, &request_id).await
}

/// `PUT /api/admin/budgets/tenants/{tenantId}`.
pub(super) async fn put_tenant(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request_id: RequestId,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BudgetBody>,
) -> Result<Json<BudgetView>, ApiError> {
    put(&state, &caller, tenant_scope(id), body, &request_id).await
}

/// `GET /api/admin/budgets/users/{userId}`.
pub(super) async fn get_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<BudgetView>, ApiError> {
    get(&state, &caller, user_scope(id)).await
}

/// `GET /api/admin/budgets/tenants/{tenantId}`.
pub(super) async fn get_tenant(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<BudgetView>, ApiError> {
    get(&state, &caller, tenant_scope(id)).await
}

/// `DELETE /api/admin/budgets/users/{userId}`.
pub(super) async fn delete_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request_id: RequestId,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete(&state, &caller, user_scope(id), &request_id).await
}

/// `DELETE /api/admin/budgets/tenants/{tenantId}`.
pub(super) async fn delete_tenant(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request_id: RequestId,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete(&state, &caller, tenant_scope(id), &request_id).await
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct BudgetPageView {
    budgets: Vec<BudgetView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// `GET /api/admin/budgets?cursor=&limit=`.
pub(super) async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<BudgetPageView>, ApiError> {
    admin_only(&caller)?;
    let (cursor, limit) = super::extract::page_query(query);
    let (budgets, next_cursor) = state
        .budgets
        .list(cursor.as_deref(), limit.as_deref())
        .await?;
    Ok(Json(BudgetPageView {
        budgets: budgets.iter().map(|b| BudgetView::of(b, true)).collect(),
        next_cursor,
    }))
}

#[derive(Serialize)]
pub(super) struct MyBudgetsView {
    budgets: Vec<BudgetView>,
}

/// `GET /api/budget`: the budgets that apply to the caller (theirs, then
/// their tenant's); `{"budgets":[]}` when none does.
pub(super) async fn mine(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<MyBudgetsView>, ApiError> {
    let budgets = state
        .budgets
        .applying(&caller.user, caller.tenant.as_ref())
        .await?;
    Ok(Json(MyBudgetsView {
        budgets: budgets.iter().map(|b| BudgetView::of(b, false)).collect(),
    }))
}
