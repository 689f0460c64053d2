//! The usage ledger as the services use it: every completion attempt's
//! record priced from the model catalog and written to the
//! [`UsageStore`](crate::store::UsageStore) (never failing the request), and
//! the reports behind `GET /api/usage` (a user's own) and
//! `GET /api/admin/usage` (every user's, for the operator), grouped as asked.
//!
//! Days are UTC calendar days. A report spans `from..=to` (both included),
//! by default the 30 days ending today, and at most [`MAX_DAYS`] days.
//! Costs are list prices from the catalog; a group whose requests all went to
//! models without a price has a `null` cost. `teamCostUsd` is what the
//! operator's keys paid, `userCostUsd` what went on the users' own keys.

use crate::budget::BudgetService;
use crate::catalog::Catalog;
use crate::completion::{Outcome, UsageRecord, UsageSink, log_record};
use crate::domain::{TenantId, UserId, now};
use crate::store::usage::{day_text, parse_day, usd_to_nanos};
use crate::store::{
    LedgerOutcome, PaidBy, StoreError, UsageCounts, UsageEntry, UsageRow, UsageStore,
};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use time::Date;

/// The longest span one report may cover.
pub const MAX_DAYS: i64 = 366;

/// The span of a report when `from` is not given.
pub const DEFAULT_DAYS: i64 = 30;

/// Most raw attempts `GET /api/usage/requests` lists, and its default.
pub const MAX_RECENT: usize = 100;
pub const DEFAULT_RECENT: usize = 20;

/// Writes completion records to the ledger, priced from the catalog.
pub struct UsageLedger {
    store: Arc<dyn UsageStore>,
    catalog: Arc<Catalog>,
    /// How long raw entries are kept (`BYOK_USAGE_RETENTION_DAYS`); `None`: not kept.
    retention: Option<Duration>,
    /// Where team-path attempts settle their budget reservations.
    budgets: Option<Arc<BudgetService>>,
}

impl UsageLedger {
    pub fn new(
        store: Arc<dyn UsageStore>,
        catalog: Arc<Catalog>,
        retention: Option<Duration>,
    ) -> Self {
        Self {
            store,
            catalog,
            retention,
            budgets: None,
        }
    }

    /// Settles budget reservations with each recorded attempt.
    #[must_use]
    pub fn with_budgets(mut self, budgets: Arc<BudgetService>) -> Self {
        self.budgets = Some(budgets);
        self
    }

    /// The ledger entry of a completion record.
    pub fn entry(&self, r: UsageRecord) -> UsageEntry {
        let prompt = r.prompt_tokens.unwrap_or(0);
        let completion = r.completion_tokens.unwrap_or(0);
        let cost_nanos = self
            .catalog
            .price(&r.model, prompt, completion)
            .and_then(usd_to_nanos);
        let (outcome, error_code) = match r.outcome {
            Outcome::Completed => (LedgerOutcome::Ok, None),
            Outcome::Failed(code) => (LedgerOutcome::UpstreamError, Some(code.to_owned())),
            Outcome::Cancelled => (LedgerOutcome::Cancelled, None),
            Outcome::Limited => (LedgerOutcome::Limited, Some("rate_limited".to_owned())),
            Outcome::OverBudget => (LedgerOutcome::Limited, Some("budget_exceeded".to_owned())),
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        UsageEntry {
            user: r.user,
            tenant: r.tenant,
            at: now(),
            request_id: r.request_id,
            attempt: r.attempt,
            service: r.provider,
            model: r.model,
            path: r.path,
            prompt_tokens: prompt,
            completion_tokens: completion,
            cost_nanos,
            estimated: r.estimated,
            outcome,
            error_code,
            stream: r.stream,
            fallback: r.fallback,
            time_to_first_byte_ms: r.time_to_first_byte.map(ms),
            duration_ms: ms(r.duration),
        }
    }
}

#[async_trait]
impl UsageSink for UsageLedger {
    async fn record(&self, mut record: UsageRecord) {
        log_record(&record);
        let holds = std::mem::take(&mut record.budget_holds);
        let entry = self.entry(record);
        let settle = async {
            if let (Some(budgets), false) = (&self.budgets, holds.is_empty()) {
                // The entry's own numbers, so the budget and the ledger agree.
                let actual = crate::store::Amount {
                    tokens: entry.prompt_tokens.saturating_add(entry.completion_tokens),
                    nanos: entry.cost_nanos.unwrap_or(0),
                };
                budgets.settle(&holds, actual).await;
            }
        };
        let (written, ()) = tokio::join!(self.store.record_usage(&entry, self.retention), settle);
        if let Err(err) = written {
            tracing::error!(
                target: "byok::usage",
                request_id = entry.request_id.as_str(),
                error = %err,
                "usage not recorded in the ledger"
            );
        }
    }

    async fn release(&self, holds: Vec<crate::budget::HoldRef>) {
        if let Some(budgets) = &self.budgets {
            budgets.release(&holds).await;
        }
    }

    async fn flush(&self) {
        if let Err(err) = self.store.flush_usage().await {
            tracing::error!(target: "byok::usage", error = %err, "usage ledger not flushed");
        }
    }
}

/// What a report groups by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupBy {
    Day,
    Service,
    Model,
    Path,
    User,
    Tenant,
}

impl GroupBy {
    /// What `GET /api/usage` accepts.
    pub const FOR_USER: [Self; 4] = [Self::Day, Self::Model, Self::Service, Self::Path];
    /// What `GET /api/admin/usage` accepts.
    pub const FOR_ADMIN: [Self; 6] = [
        Self::User,
        Self::Day,
        Self::Model,
        Self::Tenant,
        Self::Service,
        Self::Path,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Service => "service",
            Self::Model => "model",
            Self::Path => "path",
            Self::User => "user",
            Self::Tenant => "tenant",
        }
    }
}

/// A report's span and grouping, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageQuery {
    pub from: Date,
    pub to: Date,
    pub group_by: GroupBy,
}

/// Why a report cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{0}")]
    BadQuery(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl UsageQuery {
    /// Checks `from`, `to` (`YYYY-MM-DD`) and `groupBy` (one of `allowed`,
    /// the first being the default) against `today`.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        group_by: Option<&str>,
        allowed: &[GroupBy],
        today: Date,
    ) -> Result<Self, UsageError> {
        let bad = |m: String| UsageError::BadQuery(m);
        let day = |name: &str, text: &str| {
            parse_day(text).ok_or_else(|| bad(format!("{name} must be a date as YYYY-MM-DD")))
        };
        let to = to.map(|t| day("to", t)).transpose()?.unwrap_or(today);
        let from = match from {
            Some(f) => day("from", f)?,
            None => to
                .checked_sub(time::Duration::days(DEFAULT_DAYS - 1))
                .unwrap_or(to),
        };
        if from > to {
            return Err(bad("from must not be after to".to_owned()));
        }
        if (to - from).whole_days() >= MAX_DAYS {
            return Err(bad(format!("a report spans at most {MAX_DAYS} days")));
        }
        let group_by = match group_by {
            None => allowed.first().copied().unwrap_or(GroupBy::Day),
            Some(g) => allowed
                .iter()
                .copied()
                .find(|a| a.as_str() == g)
                .ok_or_else(|| {
                    let names: Vec<&str> = allowed.iter().map(|a| a.as_str()).collect();
                    bad(format!("groupBy must be one of {}", names.join(", ")))
                })?,
        };
        Ok(Self { from, to, group_by })
    }
}

/// One group of a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRow {
    /// The group's value (a day as `YYYY-MM-DD`, a service, model, path,
    /// user or tenant id); `None` for usage attributed to no tenant.
    pub key: Option<String>,
    /// Who paid, when the report splits rows by payer (a user's own report).
    pub paid_by: Option<PaidBy>,
    pub counts: UsageCounts,
    pub team_cost_nanos: u64,
    pub user_cost_nanos: u64,
}

impl ReportRow {
    /// The cost, `None` when no request of the group had a price.
    pub fn cost_nanos(&self) -> Option<u64> {
        (self.counts.priced_requests > 0 || self.counts.requests == 0)
            .then_some(self.counts.cost_nanos)
    }
}

/// A report: its groups, in key order, and the totals over all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub query: UsageQuery,
    pub rows: Vec<ReportRow>,
    pub totals: ReportRow,
}

/// Builds reports from the ledger's aggregates.
pub struct UsageReports {
    store: Arc<dyn UsageStore>,
}

impl UsageReports {
    pub fn new(store: Arc<dyn UsageStore>) -> Self {
        Self { store }
    }

    /// `user`'s own usage, rows split by who paid.
    pub async fn user(&self, user: &UserId, query: UsageQuery) -> Result<Report, UsageError> {
        let rows = self.store.user_usage(user, query.from, query.to).await?;
        Ok(build(query, &rows, true))
    }

    /// Every user's usage, for the operator.
    pub async fn all(&self, query: UsageQuery) -> Result<Report, UsageError> {
        let rows = self.store.all_usage(query.from, query.to).await?;
        Ok(build(query, &rows, false))
    }

    /// `user`'s most recent attempts still retained (`BYOK_USAGE_RETENTION_DAYS`),
    /// newest first; `limit` is 1 to [`MAX_RECENT`] (default [`DEFAULT_RECENT`]).
    pub async fn recent(
        &self,
        user: &UserId,
        limit: Option<&str>,
    ) -> Result<Vec<UsageEntry>, UsageError> {
        let limit = match limit {
            None => DEFAULT_RECENT,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_RECENT).contains(n))
                .ok_or_else(|| {
                    UsageError::BadQuery(format!(
                        "limit must be a whole number from 1 to {MAX_RECENT}"
                    ))
                })?,
        };
        Ok(self.store.recent_usage(user, limit).await?)
    }
}

/// Groups `rows` by the query's grouping (and by payer with `split_payer`).
pub fn build(query: UsageQuery, rows: &[UsageRow], split_payer: bool) -> Report {
    let mut groups: BTreeMap<(Option<String>, Option<PaidBy>), ReportRow> = BTreeMap::new();
    let mut totals = ReportRow {
        key: None,
        paid_by: None,
        counts: UsageCounts::default(),
        team_cost_nanos: 0,
        user_cost_nanos: 0,
    };
    for row in rows {
        let key = match query.group_by {
            GroupBy::Day => Some(day_text(row.day)),
            GroupBy::Service => Some(row.service.as_str().to_owned()),
            GroupBy::Model => Some(row.model.clone()),
            GroupBy::Path => Some(row.path.as_str().to_owned()),
            GroupBy::User => Some(row.user.as_str().to_owned()),
            GroupBy::Tenant => row.tenant.as_ref().map(TenantId::to_string),
        };
        let paid_by = PaidBy::of(row.path);
        let group = groups
            .entry((key.clone(), split_payer.then_some(paid_by)))
            .or_insert_with(|| ReportRow {
                key,
                paid_by: split_payer.then_some(paid_by),
                counts: UsageCounts::default(),
                team_cost_nanos: 0,
                user_cost_nanos: 0,
            });
        for target in [&mut *group, &mut totals] {
            target.counts.add(&row.counts);
            match paid_by {
                PaidBy::Team => {
                    target.team_cost_nanos =
                        target.team_cost_nanos.saturating_add(row.counts.cost_nanos);
                }
                PaidBy::User => {
                    target.user_cost_nanos =
                        target.user_cost_nanos.saturating_add(row.counts.cost_nanos);
                }
            }
        }
    }
    Report {
        query,
        rows: groups.into_values().collect(),
        totals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Service;
    use crate::resolve::ResolutionPath;

    fn day(text: &str) -> Date {
        parse_day(text).unwrap()
    }

    #[test]
    fn queries_default_and_refuse_bad_input() {
        let today = day("2026-03-10");
        let q = UsageQuery::parse(None, None, None, &GroupBy::FOR_USER, today).unwrap();
        assert_eq!(
            (q.from, q.to, q.group_by),
            (day("2026-02-09"), today, GroupBy::Day)
        );
        let q = UsageQuery::parse(
            Some("2026-03-01"),
            Some("2026-03-02"),
            Some("user"),
            &GroupBy::FOR_ADMIN,
            today,
        )
        .unwrap();
        assert_eq!(q.group_by, GroupBy::User);
        for (from, to, group) in [
            (Some("2026-3-1"), None, None),
            (Some("2026-03-05"), Some("2026-03-01"), None),
            (Some("2024-01-01"), Some("2026-01-01"), None),
            (None, None, Some("user")),
            (None, None, Some("tenant")),
            (None, Some("tomorrow"), None),
        ] {
            assert!(
                UsageQuery::parse(from, to, group, &GroupBy::FOR_USER, today).is_err(),
                "{from:?} {to:?} {group:?}"
            );
        }
    }

    fn row(d: &str, user: &str, model: &str, path: ResolutionPath, cost: Option<u64>) -> UsageRow {
        UsageRow {
            day: day(d),
            user: UserId::new(user).unwrap(),
            tenant: TenantId::new(format!("t-{user}")),
            service: Service::OpenAi,
            model: model.to_owned(),
            path,
            counts: UsageCounts {
                requests: 2,
                prompt_tokens: 10,
                completion_tokens: 5,
                cost_nanos: cost.unwrap_or(0),
                priced_requests: if cost.is_some() { 2 } else { 0 },
                ..UsageCounts::default()
            },
        }
    }

    /// Keeps what the ledger writes.
    #[derive(Default)]
    struct Kept(std::sync::Mutex<Vec<(UsageEntry, Option<Duration>)>>);

    #[async_trait]
    impl UsageStore for Kept {
        async fn record_usage(
            &self,
            entry: &UsageEntry,
            retention: Option<Duration>,
        ) -> Result<(), StoreError> {
            self.0.lock().unwrap().push((entry.clone(), retention));
            Ok(())
        }
        async fn user_usage(
            &self,
            _: &UserId,
            _: Date,
            _: Date,
        ) -> Result<Vec<UsageRow>, StoreError> {
            Ok(Vec::new())
        }
        async fn all_usage(&self, _: Date, _: Date) -> Result<Vec<UsageRow>, StoreError> {
            Ok(Vec::new())
        }
        async fn recent_usage(&self, _: &UserId, _: usize) -> Result<Vec<UsageEntry>, StoreError> {
            Ok(Vec::new())
        }
    }

    fn record(model: &str, outcome: Outcome, tokens: Option<(u64, u64)>) -> UsageRecord {
        UsageRecord {
            user: UserId::new("u1").unwrap(),
            tenant: TenantId::new("acme"),
            request_id: "req-1".into(),
            attempt: 1,
            provider: Service::Gateway,
            path: ResolutionPath::TeamGateway,
            model: model.into(),
            fallback: true,
            stream: true,
            outcome,
            prompt_tokens: tokens.map(|t| t.0),
            completion_tokens: tokens.map(|t| t.1),
            estimated: false,
            time_to_first_byte: Some(Duration::from_micros(1_500)),
            duration: Duration::from_millis(40),
            budget_holds: Vec::new(),
        }
    }

    #[tokio::test]
    async fn the_ledger_prices_records_and_maps_outcomes() {
        let store = Arc::new(Kept::default());
        let catalog = Arc::new(Catalog::builtin().unwrap());
        let keep = Some(Duration::from_secs(86_400));
        let ledger = UsageLedger::new(store.clone(), catalog.clone(), keep);
        ledger
            .record(record(
                "openai/gpt-4o-mini",
                Outcome::Completed,
                Some((1_000_000, 500_000)),
            ))
            .await;
        ledger
            .record(record(
                "nobody/unpriced",
                Outcome::Failed("upstream_timeout"),
                None,
            ))
            .await;
        ledger
            .record(record("openai/gpt-4o-mini", Outcome::Limited, None))
            .await;
        ledger
            .record(record(
                "openai/gpt-4o-mini",
                Outcome::Cancelled,
                Some((3, 1)),
            ))
            .await;
        let kept = store.0.lock().unwrap().clone();
        assert_eq!(kept.len(), 4);
        assert!(kept.iter().all(|(_, r)| *r == keep));
        let (ok, _) = &kept[0];
        let expected = catalog
            .price("openai/gpt-4o-mini", 1_000_000, 500_000)
            .unwrap();
        assert_eq!(ok.cost_nanos, usd_to_nanos(expected));
        assert_eq!(ok.outcome, LedgerOutcome::Ok);
        assert_eq!(
            (ok.prompt_tokens, ok.completion_tokens),
            (1_000_000, 500_000)
        );
        assert_eq!(ok.tenant.as_ref().map(TenantId::as_str), Some("acme"));
        assert_eq!(
            (ok.attempt, ok.fallback, ok.request_id.as_str()),
            (1, true, "req-1")
        );
        assert_eq!((ok.time_to_first_byte_ms, ok.duration_ms), (Some(1), 40));
        assert_eq!(ok.paid_by(), PaidBy::Team);
        let (failed, _) = &kept[1];
        assert_eq!(failed.cost_nanos, None, "no price, no cost");
        assert_eq!(failed.outcome, LedgerOutcome::UpstreamError);
        assert_eq!(failed.error_code.as_deref(), Some("upstream_timeout"));
        assert_eq!((failed.prompt_tokens, failed.completion_tokens), (0, 0));
        let (limited, _) = &kept[2];
        assert_eq!(limited.outcome, LedgerOutcome::Limited);
        assert_eq!(limited.cost_nanos, Some(0));
        assert_eq!(kept[3].0.outcome, LedgerOutcome::Cancelled);
    }

    #[test]
    fn groups_split_by_payer_and_total_costs() {
        let rows = [
            row(
                "2026-03-01",
                "a",
                "openai/m",
                ResolutionPath::TeamGateway,
                Some(100),
            ),
            row(
                "2026-03-01",
                "a",
                "openai/m",
                ResolutionPath::UserProvider,
                Some(7),
            ),
            row(
                "2026-03-02",
                "b",
                "x/unpriced",
                ResolutionPath::TeamProvider,
                None,
            ),
        ];
        let query = |g| UsageQuery {
            from: day("2026-03-01"),
            to: day("2026-03-02"),
            group_by: g,
        };
        let by_day = build(query(GroupBy::Day), &rows, true);
        assert_eq!(by_day.rows.len(), 3);
        assert_eq!(by_day.rows[0].key.as_deref(), Some("2026-03-01"));
        assert_eq!(by_day.rows[0].paid_by, Some(PaidBy::User));
        assert_eq!(by_day.rows[0].cost_nanos(), Some(7));
        assert_eq!(by_day.rows[2].cost_nanos(), None, "no price: null");
        assert_eq!(by_day.totals.counts.requests, 6);
        assert_eq!(by_day.totals.counts.prompt_tokens, 30);
        assert_eq!(by_day.totals.team_cost_nanos, 100);
        assert_eq!(by_day.totals.user_cost_nanos, 7);

        let by_user = build(query(GroupBy::User), &rows, false);
        assert_eq!(by_user.rows.len(), 2);
        assert_eq!(by_user.rows[0].key.as_deref(), Some("a"));
        assert_eq!(by_user.rows[0].paid_by, None);
        assert_eq!(
            (
                by_user.rows[0].team_cost_nanos,
                by_user.rows[0].user_cost_nanos
            ),
            (100, 7)
        );
        let by_tenant = build(query(GroupBy::Tenant), &rows, false);
        assert_eq!(by_tenant.rows[0].key.as_deref(), Some("t-a"));
    }
}
