//! Budgets on the team path (see [`crate::budget`]): the stored record of one
//! budget, which both backends keep as one row or item holding the budget's
//! terms, its current period's settled usage, the live reservations and the
//! alert thresholds already crossed this period.
//!
//! Every change is applied atomically to the record as stored
//! ([`BudgetStore::update_budget`]): on DynamoDB a read and a write
//! conditional on the record's `revision` (retried on a conflict), in SQLite
//! one transaction. Concurrent changes from any number of instances
//! serialise on that one record, so a reservation can never be granted
//! against a count another instance has already changed. The arithmetic of a
//! change (period roll-over, expiry of reservations, the limit check,
//! thresholds) lives in [`BudgetRecord`]'s methods, shared by every backend.
//!
//! Amounts are kept in both units at once (tokens and nano-dollars), so
//! changing a budget's type mid-period keeps the period's usage.

use super::{Expected, StoreError};
use crate::domain::{TenantId, Timestamp, UserId};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::fmt;
use time::{Date, Duration as TimeSpan, Month};

/// Whose budget: one user's team-path usage, or all of a tenant's users'.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BudgetScope {
    User(UserId),
    Tenant(TenantId),
}

impl BudgetScope {
    /// `user` or `tenant`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::User(_) => "user",
            Self::Tenant(_) => "tenant",
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Self::User(u) => u.as_str(),
            Self::Tenant(t) => t.as_str(),
        }
    }

    /// The scope of a stored `kind` and `id`.
    pub fn parse(kind: &str, id: &str) -> Option<Self> {
        match kind {
            "user" => UserId::new(id).map(Self::User),
            "tenant" => TenantId::new(id).map(Self::Tenant),
            _ => None,
        }
    }

    /// `{kind}#{id}`: the order budgets are listed in, and page cursors.
    pub fn sort_key(&self) -> String {
        format!("{}#{}", self.kind(), self.id())
    }

    /// Parses [`Self::sort_key`].
    pub fn from_sort_key(key: &str) -> Option<Self> {
        let (kind, id) = key.split_once('#')?;
        Self::parse(kind, id)
    }
}

impl fmt::Display for BudgetScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.id())
    }
}

/// What a budget counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BudgetUnit {
    /// Prompt plus completion tokens.
    Tokens,
    /// List-price cost from the catalog, kept in nano-dollars.
    Usd,
}

impl BudgetUnit {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tokens => "tokens",
            Self::Usd => "usd",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Tokens, Self::Usd]
            .into_iter()
            .find(|u| u.as_str() == text)
    }
}

/// The calendar period a budget's usage counts over, in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BudgetPeriod {
    Daily,
    /// Weeks start on Monday.
    Weekly,
    Monthly,
    /// Never resets: a prepaid allowance an admin may raise.
    Total,
}

impl BudgetPeriod {
    pub const ALL: [Self; 4] = [Self::Daily, Self::Weekly, Self::Monthly, Self::Total];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
            Self::Total => "total",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// The first day of the period holding `day`; `None` for `total`.
    pub fn start(self, day: Date) -> Option<Date> {
        match self {
            Self::Daily => Some(day),
            Self::Weekly => {
                Some(day - TimeSpan::days(i64::from(day.weekday().number_days_from_monday())))
            }
            Self::Monthly => Date::from_calendar_date(day.year(), day.month(), 1).ok(),
            Self::Total => None,
        }
    }

    /// The first day after the period holding `day`; `None` for `total`.
    pub fn end(self, day: Date) -> Option<Date> {
        let start = self.start(day)?;
        match self {
            Self::Daily => start.next_day(),
            Self::Weekly => Some(start + TimeSpan::days(7)),
            Self::Monthly => {
                let (year, month) = match start.month() {
                    Month::December => (start.year() + 1, Month::January),
                    m => (start.year(), m.next()),
                };
                Date::from_calendar_date(year, month, 1).ok()
            }
            Self::Total => None,
        }
    }

    /// The stored key of the period holding `at`: `{period}:{first day}`,
    /// or `total`.
    pub fn key(self, at: Timestamp) -> String {
        match self.start(utc_day(at)) {
            Some(start) => format!("{}:{}", self.as_str(), super::usage::day_text(start)),
            None => "total".to_owned(),
        }
    }
}

/// The UTC calendar day of `at`.
pub fn utc_day(at: Timestamp) -> Date {
    at.to_offset(time::UtcOffset::UTC).date()
}

/// An amount in both units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    #[serde(rename = "t")]
    pub tokens: u64,
    #[serde(rename = "n")]
    pub nanos: u64,
}

impl Amount {
    pub const ZERO: Self = Self {
        tokens: 0,
        nanos: 0,
    };

    /// The amount in `unit`.
    pub const fn of(self, unit: BudgetUnit) -> u64 {
        match unit {
            BudgetUnit::Tokens => self.tokens,
            BudgetUnit::Usd => self.nanos,
        }
    }

    #[must_use]
    pub const fn plus(self, other: Self) -> Self {
        Self {
            tokens: self.tokens.saturating_add(other.tokens),
            nanos: self.nanos.saturating_add(other.nanos),
        }
    }
}

/// A budget's terms, as an admin sets them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetTerms {
    pub unit: BudgetUnit,
    pub period: BudgetPeriod,
    /// In the unit: tokens, or nano-dollars.
    pub limit: u64,
    /// Refuse team-path requests whose reservation would pass the limit.
    pub pause_at_limit: bool,
    /// Percentages of the limit whose crossing raises an alert, ascending.
    pub alert_thresholds: Vec<u8>,
}

/// One live reservation: a request's worst case, held until it settles or
/// expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: String,
    #[serde(flatten)]
    pub amount: Amount,
    /// Unix ms after which the hold no longer counts (its instance is gone).
    #[serde(rename = "e")]
    pub expires_ms: i64,
}

/// A stored budget with its current period's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetRecord {
    pub scope: BudgetScope,
    pub terms: BudgetTerms,
    pub updated_at: Timestamp,
    /// The admin who last set the terms.
    pub updated_by: UserId,
    /// [`BudgetPeriod::key`] of the period the counters below belong to.
    pub period_key: String,
    /// Settled usage of that period.
    pub used: Amount,
    /// Live reservations (of that period).
    pub holds: Vec<Hold>,
    /// Reservations settled, kept (at zero) until they would have expired,
    /// the [`MAX_SETTLED`] most recent: settling one again (a write that
    /// was applied, reported failed and retried) charges nothing.
    pub settled: Vec<Hold>,
    /// Thresholds already alerted this period.
    pub alerted: Vec<u8>,
    /// Bumped by every write; writes are conditional on it.
    pub revision: u64,
}

/// Most settled reservations a budget remembers. A retried settlement
/// follows its first attempt within the same write's retries (well under a
/// second), so this many settlements of one budget in between are needed
/// to forget it (the retry would then charge twice, never too little).
/// Without a bound, a busy budget carried every settlement of the
/// reservation lifetime (15 minutes by default: hundreds of thousands at
/// load), read and rewritten on every request.
pub const MAX_SETTLED: usize = 128;

/// What a reservation attempt found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserve {
    Granted,
    /// A paused budget whose limit the reservation would pass.
    Refused,
}

impl BudgetRecord {
    /// Counters of the period holding `at`: a new period starts from zero
    /// (its holds and alerts too).
    pub fn roll(&mut self, at: Timestamp) {
        let key = self.terms.period.key(at);
        if key != self.period_key {
            self.period_key = key;
            self.used = Amount::ZERO;
            self.holds.clear();
            self.alerted.clear();
        }
    }

    /// Drops reservations whose instance never settled them.
    pub fn expire(&mut self, now_ms: i64) {
        self.holds.retain(|h| h.expires_ms > now_ms);
        self.settled.retain(|h| h.expires_ms > now_ms);
    }

    /// The live reservations' sum.
    pub fn reserved(&self) -> Amount {
        self.holds
            .iter()
            .fold(Amount::ZERO, |sum, h| sum.plus(h.amount))
    }

    /// Used plus reserved, in the budget's unit.
    pub fn committed(&self) -> u64 {
        self.used.plus(self.reserved()).of(self.terms.unit)
    }

    /// What is left under the limit, in the budget's unit (never below 0).
    pub fn remaining(&self) -> u64 {
        self.terms.limit.saturating_sub(self.committed())
    }

    /// Adds `hold` unless the budget is paused at its limit and the hold
    /// would pass it.
    pub fn reserve(&mut self, hold: Hold) -> Reserve {
        let after = self
            .committed()
            .saturating_add(hold.amount.of(self.terms.unit));
        if self.terms.pause_at_limit && after > self.terms.limit {
            return Reserve::Refused;
        }
        self.holds.push(hold);
        Reserve::Granted
    }

    /// Replaces hold `id` (if it still counts) by `actual` usage, and
    /// returns the thresholds this crossed for the first time this period
    /// (now marked as alerted).
    pub fn settle(&mut self, id: Option<&str>, actual: Amount) -> Vec<u8> {
        if let Some(id) = id {
            if self.settled.iter().any(|h| h.id == id) {
                return Vec::new();
            }
            if let Some(at) = self.holds.iter().position(|h| h.id == id) {
                let mut done = self.holds.remove(at);
                done.amount = Amount::ZERO;
                if self.settled.len() >= MAX_SETTLED {
                    let excess = self.settled.len() + 1 - MAX_SETTLED;
                    self.settled.drain(..excess);
                }
                self.settled.push(done);
            }
        }
        self.used = self.used.plus(actual);
        let used = u128::from(self.used.of(self.terms.unit));
        let limit = u128::from(self.terms.limit);
        let crossed: Vec<u8> = self
            .terms
            .alert_thresholds
            .iter()
            .copied()
            .filter(|t| !self.alerted.contains(t) && used * 100 >= u128::from(*t) * limit)
            .collect();
        self.alerted.extend_from_slice(&crossed);
        self.alerted.sort_unstable();
        crossed
    }
}

/// A page of [`BudgetStore::list_budgets`].
#[derive(Debug, Default)]
pub struct BudgetPage {
    pub budgets: Vec<BudgetRecord>,
    /// The sort key to continue after; `None` on the last page.
    pub next: Option<String>,
}

/// A change of a stored budget, applied to the record as stored at the
/// moment of the write (and again if a concurrent write came first).
pub type BudgetChange = std::sync::Arc<dyn Fn(&mut BudgetRecord) + Send + Sync>;

/// Where budgets live. Outside what resolution reads.
#[async_trait]
pub trait BudgetStore: Send + Sync {
    async fn get_budget(&self, scope: &BudgetScope) -> Result<Option<BudgetRecord>, StoreError>;

    /// Applies `change` to the stored budget atomically and returns the
    /// record before and after it (`None`: no such budget). A change that
    /// changes nothing writes nothing; otherwise the revision goes up by one.
    async fn update_budget(
        &self,
        scope: &BudgetScope,
        change: BudgetChange,
    ) -> Result<Option<(BudgetRecord, BudgetRecord)>, StoreError>;

    /// Writes `record` (its `revision` already the new one) if the stored one
    /// matches `expected`; else [`StoreError::Conflict`] and nothing changes.
    async fn put_budget(&self, record: &BudgetRecord, expected: Expected)
    -> Result<(), StoreError>;

    /// Removes the budget; `None` if there was none.
    async fn delete_budget(&self, scope: &BudgetScope) -> Result<Option<BudgetRecord>, StoreError>;

    /// Budgets in [`BudgetScope::sort_key`] order, after `after`, at most `limit`.
    async fn list_budgets(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<BudgetPage, StoreError>;
}

/// Conditional writes tried before an update gives up (other instances
/// changing the same budget all along).
const WRITE_ATTEMPTS: u32 = 40;

/// [`BudgetStore::update_budget`] for stores whose only atomic primitive is
/// a write conditional on the revision: read, change, write if the revision
/// is still the one read; on a conflict, read again after a short, growing,
/// jittered pause.
pub(crate) async fn update_by_revision<S: BudgetStore + ?Sized>(
    store: &S,
    scope: &BudgetScope,
    change: &BudgetChange,
) -> Result<Option<(BudgetRecord, BudgetRecord)>, StoreError> {
    for attempt in 1..=WRITE_ATTEMPTS {
        let Some(before) = store.get_budget(scope).await? else {
            return Ok(None);
        };
        let mut after = before.clone();
        change(&mut after);
        if after == before {
            return Ok(Some((before, after)));
        }
        after.revision = before.revision + 1;
        match store
            .put_budget(&after, Expected::Revision(before.revision))
            .await
        {
            Ok(()) => return Ok(Some((before, after))),
            Err(StoreError::Conflict) if attempt < WRITE_ATTEMPTS => {
                let jitter = u64::from(crate::domain::now().nanosecond() % 5_000);
                let pause = u64::from(attempt.min(10)) * 2_000 + jitter;
                tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
            }
            Err(err) => return Err(err),
        }
    }
    Err(StoreError::Conflict)
}

/// A hold as stored: live, or settled (`"s": true`).
#[derive(Serialize, Deserialize)]
struct StoredHold {
    #[serde(flatten)]
    hold: Hold,
    #[serde(default, rename = "s", skip_serializing_if = "std::ops::Not::not")]
    settled: bool,
}

/// The stored text of a record's live and settled holds (one JSON list).
pub(crate) fn holds_text(holds: &[Hold], settled: &[Hold]) -> String {
    let stored: Vec<StoredHold> = holds
        .iter()
        .map(|h| (h, false))
        .chain(settled.iter().map(|h| (h, true)))
        .map(|(hold, settled)| StoredHold {
            hold: hold.clone(),
            settled,
        })
        .collect();
    serde_json::to_string(&stored).unwrap_or_else(|_| "[]".to_owned())
}

/// The live and the settled holds of [`holds_text`].
pub(crate) fn parse_holds(text: &str) -> Result<(Vec<Hold>, Vec<Hold>), StoreError> {
    let stored: Vec<StoredHold> =
        serde_json::from_str(text).map_err(|_| StoreError::Corrupt("budget holds".into()))?;
    let (settled, live): (Vec<StoredHold>, Vec<StoredHold>) =
        stored.into_iter().partition(|h| h.settled);
    Ok((
        live.into_iter().map(|h| h.hold).collect(),
        settled.into_iter().map(|h| h.hold).collect(),
    ))
}

/// The stored text of a list of percentages: `80,90,100`.
pub(crate) fn percents_text(list: &[u8]) -> String {
    list.iter().map(u8::to_string).collect::<Vec<_>>().join(",")
}

pub(crate) fn parse_percents(text: &str) -> Result<Vec<u8>, StoreError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|p| {
            p.parse::<u8>()
                .map_err(|_| StoreError::Corrupt("budget percentages".into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::{OffsetDateTime, Weekday};

    fn d(y: i32, m: u8, day: u8) -> Date {
        Date::from_calendar_date(y, Month::try_from(m).unwrap(), day).unwrap()
    }

    fn at(day: Date, h: u8, min: u8, offset_hours: i8) -> OffsetDateTime {
        day.with_hms(h, min, 0)
            .unwrap()
            .assume_offset(time::UtcOffset::from_hms(offset_hours, 0, 0).unwrap())
    }

    #[test]
    fn periods_are_utc_calendar_periods_with_monday_weeks() {
        let wed = d(2026, 12, 2);
        assert_eq!(wed.weekday(), Weekday::Wednesday);
        assert_eq!(BudgetPeriod::Daily.start(wed), Some(wed));
        assert_eq!(BudgetPeriod::Daily.end(wed), Some(d(2026, 12, 3)));
        assert_eq!(BudgetPeriod::Weekly.start(wed), Some(d(2026, 11, 30)));
        assert_eq!(BudgetPeriod::Weekly.end(wed), Some(d(2026, 12, 7)));
        let monday = d(2026, 11, 30);
        assert_eq!(BudgetPeriod::Weekly.start(monday), Some(monday));
        let sunday = d(2026, 12, 6);
        assert_eq!(BudgetPeriod::Weekly.start(sunday), Some(monday));
        assert_eq!(BudgetPeriod::Monthly.start(wed), Some(d(2026, 12, 1)));
        assert_eq!(BudgetPeriod::Monthly.end(wed), Some(d(2027, 1, 1)));
        assert_eq!(
            BudgetPeriod::Monthly.end(d(2027, 2, 14)),
            Some(d(2027, 3, 1))
        );
        assert_eq!(BudgetPeriod::Total.start(wed), None);
        assert_eq!(BudgetPeriod::Total.end(wed), None);
        // 23:30 at UTC-5 is the next UTC day.
        let late = at(d(2026, 12, 6), 23, 30, -5);
        assert_eq!(BudgetPeriod::Daily.key(late), "daily:2026-12-07");
        assert_eq!(BudgetPeriod::Weekly.key(late), "weekly:2026-12-07");
        assert_eq!(BudgetPeriod::Monthly.key(late), "monthly:2026-12-01");
        assert_eq!(BudgetPeriod::Total.key(late), "total");
    }

    fn record(pause: bool) -> BudgetRecord {
        BudgetRecord {
            scope: BudgetScope::User(UserId::new("u").unwrap()),
            terms: BudgetTerms {
                unit: BudgetUnit::Tokens,
                period: BudgetPeriod::Daily,
                limit: 1_000,
                pause_at_limit: pause,
                alert_thresholds: vec![80, 90, 100],
            },
            updated_at: crate::domain::now(),
            updated_by: UserId::new("admin").unwrap(),
            period_key: "daily:2026-12-02".into(),
            used: Amount::ZERO,
            holds: Vec::new(),
            settled: Vec::new(),
            alerted: Vec::new(),
            revision: 1,
        }
    }

    fn hold(id: &str, tokens: u64, expires_ms: i64) -> Hold {
        Hold {
            id: id.into(),
            amount: Amount { tokens, nanos: 0 },
            expires_ms,
        }
    }

    #[test]
    fn a_paused_budget_refuses_what_would_pass_its_limit() {
        let mut r = record(true);
        for i in 0..9 {
            assert_eq!(r.reserve(hold(&i.to_string(), 110, 10)), Reserve::Granted);
        }
        assert_eq!(r.committed(), 990);
        assert_eq!(r.reserve(hold("x", 11, 10)), Reserve::Refused);
        assert_eq!(r.reserve(hold("y", 10, 10)), Reserve::Granted);
        assert_eq!(r.remaining(), 0);
        // Settling below the reservation frees the difference.
        assert!(
            r.settle(
                Some("0"),
                Amount {
                    tokens: 60,
                    nanos: 0
                }
            )
            .is_empty()
        );
        assert_eq!(r.committed(), 950);
        // Expired holds stop counting.
        r.expire(10);
        assert_eq!(r.committed(), 60);
        let mut open = record(false);
        assert_eq!(open.reserve(hold("big", 5_000, 10)), Reserve::Granted);
    }

    #[test]
    fn each_threshold_is_crossed_once_per_period() {
        let mut r = record(false);
        assert_eq!(
            r.settle(
                None,
                Amount {
                    tokens: 799,
                    nanos: 0
                }
            ),
            Vec::<u8>::new()
        );
        assert_eq!(
            r.settle(
                None,
                Amount {
                    tokens: 1,
                    nanos: 0
                }
            ),
            vec![80]
        );
        assert_eq!(
            r.settle(
                None,
                Amount {
                    tokens: 300,
                    nanos: 0
                }
            ),
            vec![90, 100]
        );
        assert!(
            r.settle(
                None,
                Amount {
                    tokens: 300,
                    nanos: 0
                }
            )
            .is_empty()
        );
        r.roll(at(d(2026, 12, 3), 0, 0, 0));
        assert_eq!(r.period_key, "daily:2026-12-03");
        assert_eq!((r.used, r.alerted.len()), (Amount::ZERO, 0));
        assert_eq!(
            r.settle(
                None,
                Amount {
                    tokens: 900,
                    nanos: 0
                }
            ),
            vec![80, 90]
        );
        // The same period does not roll.
        r.roll(at(d(2026, 12, 3), 23, 59, 0));
        assert_eq!(r.used.tokens, 900);
    }

    #[test]
    fn a_settlement_counts_once_however_often_it_is_written() {
        let mut r = record(true);
        assert_eq!(r.reserve(hold("a", 500, 1_000)), Reserve::Granted);
        let actual = Amount {
            tokens: 120,
            nanos: 0,
        };
        r.settle(Some("a"), actual);
        // The same write retried after an ambiguous failure.
        r.settle(Some("a"), actual);
        assert_eq!(r.used.tokens, 120);
        assert!(r.holds.is_empty());
        assert_eq!(r.reserved(), Amount::ZERO);
        // Remembered until the hold would have expired, then forgotten.
        r.expire(999);
        assert_eq!(r.settled.len(), 1);
        r.expire(1_000);
        assert!(r.settled.is_empty());
        // A hold that expired before its settlement still charges.
        r.settle(Some("gone"), actual);
        assert_eq!(r.used.tokens, 240);
    }

    #[test]
    fn a_busy_budget_remembers_its_recent_settlements_only() {
        let mut r = record(false);
        let one = Amount {
            tokens: 1,
            nanos: 0,
        };
        for i in 0..1_000 {
            assert_eq!(r.reserve(hold(&i.to_string(), 5, 1_000)), Reserve::Granted);
            r.settle(Some(&i.to_string()), one);
        }
        assert_eq!(r.settled.len(), MAX_SETTLED);
        assert_eq!(r.used.tokens, 1_000);
        // The most recent ones still count once.
        r.settle(Some("999"), one);
        r.settle(Some(&(1_000 - MAX_SETTLED).to_string()), one);
        assert_eq!(r.used.tokens, 1_000);
        assert!(r.holds.is_empty());
    }

    #[test]
    fn scopes_and_lists_round_trip() {
        let scope = BudgetScope::Tenant(TenantId::new("acme#1").unwrap());
        assert_eq!(scope.sort_key(), "tenant#acme#1");
        assert_eq!(BudgetScope::from_sort_key(&scope.sort_key()), Some(scope));
        assert_eq!(BudgetScope::parse("group", "x"), None);
        assert_eq!(
            parse_percents(&percents_text(&[80, 90, 100])).unwrap(),
            [80, 90, 100]
        );
        assert!(parse_percents("").unwrap().is_empty());
        let holds = vec![hold("a", 3, 9)];
        let settled = vec![hold("b", 0, 12)];
        assert_eq!(
            parse_holds(&holds_text(&holds, &settled)).unwrap(),
            (holds.clone(), settled)
        );
        // What stores held before settled holds were kept.
        assert_eq!(
            parse_holds(r#"[{"id":"a","t":3,"n":0,"e":9}]"#).unwrap(),
            (holds, Vec::new())
        );
    }
}
