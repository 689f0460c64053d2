//! Budgets on the team path, as the services use them: admins set a budget
//! per user or tenant (tokens or USD, per UTC day, Monday week, month, or
//! in total); each completion the operator pays for reserves its worst case
//! before the upstream is called, and settles to its real usage when it
//! ends. A paused budget refuses a reservation that would pass its limit,
//! so concurrent requests that declare `max_tokens` can never overspend it.
//! Reservations of an instance that died expire after
//! `BYOK_RESERVATION_TTL_SECS`. Crossing an alert threshold raises one
//! `budget.threshold` event per budget, period and threshold.
//!
//! Requests on the users' own keys are never charged. Costs are the
//! catalog's list prices; a model without a price costs nothing in USD, and
//! a paused USD budget refuses it (it could not be held to its limit).
//!
//! Every change of a budget is computed by [`BudgetRecord`]'s methods and
//! applied atomically by the store ([`BudgetStore::update_budget`]).

use crate::audit::AuditLog;
use crate::catalog::Catalog;
use crate::domain::{TenantId, UserId, now};
use crate::events::{BUDGET_THRESHOLD, BudgetEvent, Event, EventSink};
use crate::store::budget::utc_day;
use crate::store::usage::{day_text, epoch_ms, nanos_to_usd, usd_to_nanos};
use crate::store::{
    Amount, AuditAction, BudgetChange, BudgetPage, BudgetRecord, BudgetScope, BudgetStore,
    BudgetTerms, BudgetUnit, Expected, Hold, StoreError,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::sync::Arc;
use std::time::Duration;

pub use crate::config::{DEFAULT_RESERVATION_TTL, DEFAULT_RESERVE_TOKENS};
/// Budgets per page of the operator's list, by default and at most.
pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 200;
/// Alert thresholds when a budget names none.
pub const DEFAULT_THRESHOLDS: [u8; 3] = [80, 90, 100];

/// Conditional writes an admin's change tries before giving up (the
/// budget changing under it all along).
const WRITE_ATTEMPTS: u32 = 40;

/// Why a budget operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// A paused budget would pass its limit: nothing was asked of the upstream.
    #[error("{0}")]
    Exceeded(String),
    /// No such budget.
    #[error("no budget for {0}")]
    NotFound(BudgetScope),
    #[error("cursor is not one this gateway handed out")]
    BadCursor,
    #[error("limit must be a whole number from 1 to {MAX_PAGE}")]
    BadLimit,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one request asks of the team key at worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    pub tokens: u64,
    /// `None`: the model has no price.
    pub nanos: Option<u64>,
}

/// One granted reservation, to settle when the attempt ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRef {
    pub scope: BudgetScope,
    pub id: String,
}

/// Where the budget that binds first stands after a reservation (the
/// `x-byok-budget-*` headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetStatus {
    pub unit: BudgetUnit,
    pub limit: u64,
    pub remaining: u64,
}

impl BudgetStatus {
    fn of(record: &BudgetRecord) -> Self {
        Self {
            unit: record.terms.unit,
            limit: record.terms.limit,
            remaining: record.remaining(),
        }
    }

    /// The one with the smaller share of its limit left.
    fn tighter(a: Option<Self>, b: Self) -> Self {
        match a {
            Some(a)
                if u128::from(a.remaining) * u128::from(b.limit.max(1))
                    <= u128::from(b.remaining) * u128::from(a.limit.max(1)) =>
            {
                a
            }
            _ => b,
        }
    }

    /// `remaining` as the header shows it: tokens, or dollars.
    pub fn remaining_text(&self) -> String {
        amount_text(self.unit, self.remaining)
    }
}

/// An amount in `unit` as text: whole tokens, or dollars with up to nine decimals.
pub fn amount_text(unit: BudgetUnit, amount: u64) -> String {
    match unit {
        BudgetUnit::Tokens => amount.to_string(),
        BudgetUnit::Usd => {
            let text = format!("{}.{:09}", amount / 1_000_000_000, amount % 1_000_000_000);
            text.trim_end_matches('0').trim_end_matches('.').to_owned()
        }
    }
}

/// An amount in `unit` as a JSON number: tokens, or dollars.
pub fn amount_number(unit: BudgetUnit, amount: u64) -> serde_json::Number {
    match unit {
        BudgetUnit::Tokens => amount.into(),
        BudgetUnit::Usd => serde_json::Number::from_f64(nanos_to_usd(amount)).unwrap_or(0.into()),
    }
}

/// A reservation's outcome: the holds to settle and the binding status
/// (`None` when no budget applies).
#[derive(Debug, Default)]
pub struct Reservation {
    pub holds: Vec<HoldRef>,
    pub status: Option<BudgetStatus>,
}

/// Budgets: the admin's routes, the user's view, and reserve/settle for
/// completions on team paths.
pub struct BudgetService {
    store: Arc<dyn BudgetStore>,
    catalog: Arc<Catalog>,
    events: Arc<dyn EventSink>,
    audit: AuditLog,
    default_reserve_tokens: u64,
    reservation_ttl: Duration,
}

impl BudgetService {
    pub fn new(
        store: Arc<dyn BudgetStore>,
        catalog: Arc<Catalog>,
        events: Arc<dyn EventSink>,
        audit: AuditLog,
    ) -> Self {
        Self {
            store,
            catalog,
            events,
            audit,
            default_reserve_tokens: DEFAULT_RESERVE_TOKENS,
            reservation_ttl: DEFAULT_RESERVATION_TTL,
        }
    }

    /// `BYOK_DEFAULT_RESERVE_TOKENS` and `BYOK_RESERVATION_TTL_SECS`.
    #[must_use]
    pub fn with_reservations(mut self, default_tokens: u64, ttl: Duration) -> Self {
        self.default_reserve_tokens = default_tokens;
        self.reservation_ttl = ttl;
        self
    }

    /// Applies `change` to the stored budget of `scope`, after rolling it to
    /// the current period and expiring dead reservations, atomically in the
    /// store. `None`: no such budget; else the record before (rolled the
    /// same way) and after.
    async fn change(
        &self,
        scope: &BudgetScope,
        change: impl Fn(&mut BudgetRecord) + Send + Sync + 'static,
    ) -> Result<Option<(BudgetRecord, BudgetRecord)>, StoreError> {
        let current = |record: &mut BudgetRecord| {
            let at = now();
            record.roll(at);
            record.expire(epoch_ms(at));
        };
        let full: BudgetChange = Arc::new(move |record: &mut BudgetRecord| {
            current(record);
            change(record);
        });
        let updated = self.store.update_budget(scope, full).await?;
        Ok(updated.map(|(mut before, after)| {
            if before.period_key != after.period_key {
                before.roll(now());
            }
            (before, after)
        }))
    }

    /// Sets the terms of `scope`'s budget. A change of limit or type keeps
    /// the period's usage; a change of period starts the new period's count.
    pub async fn put(
        &self,
        admin: &UserId,
        scope: &BudgetScope,
        terms: BudgetTerms,
        request_id: &str,
    ) -> Result<BudgetRecord, BudgetError> {
        let mut attempt = 0;
        let record = loop {
            attempt += 1;
            let at = now();
            let old = self.store.get_budget(scope).await?;
            let (record, expected) = match old {
                Some(old) => {
                    let expected = Expected::Revision(old.revision);
                    let mut record = BudgetRecord {
                        terms: terms.clone(),
                        updated_at: at,
                        updated_by: admin.clone(),
                        revision: old.revision + 1,
                        ..old.clone()
                    };
                    if old.terms.period != terms.period {
                        record.period_key = String::new();
                    }
                    record.roll(at);
                    record.expire(epoch_ms(at));
                    // Thresholds already passed under the old terms stay alerted.
                    (record, expected)
                }
                None => (
                    BudgetRecord {
                        scope: scope.clone(),
                        period_key: terms.period.key(at),
                        terms: terms.clone(),
                        updated_at: at,
                        updated_by: admin.clone(),
                        used: Amount::ZERO,
                        holds: Vec::new(),
                        settled: Vec::new(),
                        alerted: Vec::new(),
                        revision: 1,
                    },
                    Expected::Absent,
                ),
            };
            match self.store.put_budget(&record, expected).await {
                Ok(()) => break record,
                Err(StoreError::Conflict) if attempt < WRITE_ATTEMPTS => {}
                Err(err) => return Err(err.into()),
            }
        };
        tracing::info!(budget = %scope, "budget set");
        self.audit
            .record_budget(
                admin,
                AuditAction::BudgetSet,
                &scope.to_string(),
                request_id,
            )
            .await;
        Ok(record)
    }

    /// The budget of `scope` as of now (its current period), if any.
    pub async fn get(&self, scope: &BudgetScope) -> Result<BudgetRecord, BudgetError> {
        let mut record = self
            .store
            .get_budget(scope)
            .await?
            .ok_or_else(|| BudgetError::NotFound(scope.clone()))?;
        let at = now();
        record.roll(at);
        record.expire(epoch_ms(at));
        Ok(record)
    }

    /// Removes the budget of `scope`: enforcement stops at once.
    pub async fn delete(
        &self,
        admin: &UserId,
        scope: &BudgetScope,
        request_id: &str,
    ) -> Result<(), BudgetError> {
        self.store
            .delete_budget(scope)
            .await?
            .ok_or_else(|| BudgetError::NotFound(scope.clone()))?;
        tracing::info!(budget = %scope, "budget deleted");
        self.audit
            .record_budget(
                admin,
                AuditAction::BudgetDeleted,
                &scope.to_string(),
                request_id,
            )
            .await;
        Ok(())
    }

    /// A page of every budget; `cursor` and `limit` are the client's raw values.
    pub async fn list(
        &self,
        cursor: Option<&str>,
        limit: Option<&str>,
    ) -> Result<(Vec<BudgetRecord>, Option<String>), BudgetError> {
        let after = cursor
            .map(|c| {
                URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .filter(|k| BudgetScope::from_sort_key(k).is_some())
                    .ok_or(BudgetError::BadCursor)
            })
            .transpose()?;
        let limit = match limit {
            None => DEFAULT_PAGE,
            Some(raw) => raw
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or(BudgetError::BadLimit)?,
        };
        let BudgetPage { mut budgets, next } =
            self.store.list_budgets(after.as_deref(), limit).await?;
        let at = now();
        for record in &mut budgets {
            record.roll(at);
            record.expire(epoch_ms(at));
        }
        Ok((budgets, next.map(|k| URL_SAFE_NO_PAD.encode(k))))
    }

    /// The budgets that apply to `user` (theirs, then their tenant's).
    pub async fn applying(
        &self,
        user: &UserId,
        tenant: Option<&TenantId>,
    ) -> Result<Vec<BudgetRecord>, BudgetError> {
        let mut out = Vec::new();
        for scope in scopes(user, tenant) {
            match self.get(&scope).await {
                Ok(record) => out.push(record),
                Err(BudgetError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(out)
    }

    /// What a request asks at worst: its prompt estimate plus `max_output`
    /// (or the default reservation) tokens, priced for `model`.
    pub fn ask(&self, model: &str, prompt_estimate: u64, max_output: Option<u64>) -> Ask {
        let output = max_output.unwrap_or(self.default_reserve_tokens);
        Ask {
            tokens: prompt_estimate.saturating_add(output),
            nanos: self
                .catalog
                .price(model, prompt_estimate, output)
                .and_then(usd_to_nanos),
        }
    }

    /// Reserves `ask` on every budget of `user` (and their tenant); on a
    /// refusal, the holds already granted are released.
    pub async fn reserve(
        &self,
        user: &UserId,
        tenant: Option<&TenantId>,
        ask: Ask,
    ) -> Result<Reservation, BudgetError> {
        let mut reservation = Reservation::default();
        for scope in scopes(user, tenant) {
            match self.reserve_one(&scope, ask).await {
                Ok(Some((hold, status))) => {
                    reservation.holds.push(hold);
                    reservation.status = Some(BudgetStatus::tighter(reservation.status, status));
                }
                Ok(None) => {}
                Err(err) => {
                    self.release(&reservation.holds).await;
                    return Err(err);
                }
            }
        }
        Ok(reservation)
    }

    async fn reserve_one(
        &self,
        scope: &BudgetScope,
        ask: Ask,
    ) -> Result<Option<(HoldRef, BudgetStatus)>, BudgetError> {
        let id = crate::crypto::random_hex::<12>().map_err(StoreError::backend)?;
        let expires_ms = epoch_ms(now())
            .saturating_add(i64::try_from(self.reservation_ttl.as_millis()).unwrap_or(i64::MAX));
        let hold = Hold {
            id: id.clone(),
            amount: Amount {
                tokens: ask.tokens,
                nanos: ask.nanos.unwrap_or(0),
            },
            expires_ms,
        };
        let updated = self
            .change(scope, move |record| {
                let unpriced = record.terms.unit == BudgetUnit::Usd && ask.nanos.is_none();
                if !(unpriced && record.terms.pause_at_limit) {
                    // Refused or not, the record says: the hold is there or not.
                    let _ = record.reserve(hold.clone());
                }
            })
            .await?;
        let Some((_, record)) = updated else {
            return Ok(None);
        };
        let status = BudgetStatus::of(&record);
        if record.holds.iter().any(|h| h.id == id) {
            return Ok(Some((
                HoldRef {
                    scope: scope.clone(),
                    id,
                },
                status,
            )));
        }
        let unpriced = record.terms.unit == BudgetUnit::Usd && ask.nanos.is_none();
        let refusal = if unpriced {
            Refusal::Unpriced
        } else {
            Refusal::OverLimit
        };
        tracing::info!(budget = %scope, "completion refused by a budget");
        Err(BudgetError::Exceeded(refusal.message(scope, &record)))
    }

    /// Replaces each hold by `actual` usage and raises the alerts this
    /// crossed. Never fails: a failure is logged (the hold then expires).
    pub async fn settle(&self, holds: &[HoldRef], actual: Amount) {
        for hold in holds {
            let id = hold.id.clone();
            let settled = self
                .change(&hold.scope, move |record| {
                    record.settle(Some(&id), actual);
                })
                .await;
            match settled {
                Ok(Some((before, after))) => {
                    let events: Vec<Event> = after
                        .alerted
                        .iter()
                        .filter(|t| !before.alerted.contains(t))
                        .map(|threshold| Event::Budget(threshold_event(&after, *threshold)))
                        .collect();
                    if !events.is_empty() {
                        self.events.publish(&events).await;
                    }
                }
                Ok(None) => {}
                Err(err) => tracing::error!(
                    budget = %hold.scope,
                    error = %err,
                    "budget reservation not settled; it will expire"
                ),
            }
        }
    }

    /// Gives back holds whose attempt asked nothing of the upstream.
    pub async fn release(&self, holds: &[HoldRef]) {
        self.settle(holds, Amount::ZERO).await;
    }
}

/// Why a reservation was refused.
enum Refusal {
    OverLimit,
    Unpriced,
}

impl Refusal {
    fn message(&self, scope: &BudgetScope, record: &BudgetRecord) -> String {
        let whose = match scope {
            BudgetScope::User(_) => "your",
            BudgetScope::Tenant(_) => "your organisation's",
        };
        let terms = &record.terms;
        match self {
            Self::OverLimit => format!(
                "{whose} {} {} budget is used up: {} of {} left, less than this request may use; \
                 set max_tokens lower, wait for the next period, or ask an admin to raise it",
                terms.period.as_str(),
                terms.unit.as_str(),
                amount_text(terms.unit, record.remaining()),
                amount_text(terms.unit, terms.limit),
            ),
            Self::Unpriced => format!(
                "{whose} budget counts dollars and this model has no price in the catalog, \
                 so it cannot be charged against it"
            ),
        }
    }
}

/// The scopes whose budgets apply to a request of `user`.
fn scopes(user: &UserId, tenant: Option<&TenantId>) -> Vec<BudgetScope> {
    let mut out = vec![BudgetScope::User(user.clone())];
    out.extend(tenant.cloned().map(BudgetScope::Tenant));
    out
}

fn threshold_event(record: &BudgetRecord, threshold: u8) -> BudgetEvent {
    let unit = record.terms.unit;
    let at = now();
    BudgetEvent {
        event: BUDGET_THRESHOLD,
        unit: unit.as_str(),
        scope: record.scope.kind(),
        id: record.scope.id().to_owned(),
        period: record.terms.period.as_str(),
        period_start: record.terms.period.start(utc_day(at)).map(day_text),
        threshold,
        used: amount_number(unit, record.used.of(unit)),
        limit: amount_number(unit, record.terms.limit),
        at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_are_shown_without_trailing_zeros() {
        assert_eq!(amount_text(BudgetUnit::Usd, 1_500_000_000), "1.5");
        assert_eq!(amount_text(BudgetUnit::Usd, 2_000_000_000), "2");
        assert_eq!(amount_text(BudgetUnit::Usd, 1), "0.000000001");
        assert_eq!(amount_text(BudgetUnit::Usd, 0), "0");
        assert_eq!(amount_text(BudgetUnit::Tokens, 1_000), "1000");
    }

    #[test]
    fn the_tighter_status_has_the_smaller_share_left() {
        let tokens = BudgetStatus {
            unit: BudgetUnit::Tokens,
            limit: 1_000,
            remaining: 500,
        };
        let usd = BudgetStatus {
            unit: BudgetUnit::Usd,
            limit: 10,
            remaining: 1,
        };
        assert_eq!(BudgetStatus::tighter(None, tokens), tokens);
        assert_eq!(BudgetStatus::tighter(Some(tokens), usd), usd);
        assert_eq!(BudgetStatus::tighter(Some(usd), tokens), usd);
    }
}
