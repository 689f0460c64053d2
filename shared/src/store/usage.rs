//! The usage ledger as the stores keep it: one entry per completion attempt,
//! folded atomically into per-day aggregates (the read model), plus an
//! optional raw record per attempt that expires.
//!
//! Aggregates are keyed by (user, UTC day, service, model, path, tenant), so
//! a month of one user's usage is at most days × models rows, read in one
//! query, and the operator's view across users reads day by day without
//! scanning anything else. Counters only ever grow by an entry's values
//! (DynamoDB `ADD`, SQLite `UPSERT`), so concurrent writers from any number
//! of instances never lose a request. Costs are kept in whole nano-dollars
//! (integers add exactly on every backend).
//!
//! [`super::embedded`] and [`super::dynamo`] implement [`UsageStore`].

use super::StoreError;
use crate::domain::ResolutionPath;
pub use crate::domain::TenantId;
use crate::domain::{Service, Timestamp, UserId};
use async_trait::async_trait;
use std::time::Duration;
use time::Date;

/// Nano-dollars in one US dollar.
pub const NANOS_PER_USD: f64 = 1e9;

/// Whose credential paid for an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PaidBy {
    /// The user's own gateway or provider key: costs the operator nothing.
    User,
    /// The operator's team gateway or provider key.
    Team,
}

impl PaidBy {
    pub const fn of(path: ResolutionPath) -> Self {
        if path.is_team() {
            Self::Team
        } else {
            Self::User
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Team => "team",
        }
    }
}

/// How one attempt ended, as the ledger keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LedgerOutcome {
    /// The upstream answered in full.
    Ok,
    /// The upstream failed, before or after its first byte.
    UpstreamError,
    /// The client went away before the end.
    Cancelled,
    /// Refused by a request limit before any upstream call.
    Limited,
}

impl LedgerOutcome {
    pub const ALL: [Self; 4] = [
        Self::Ok,
        Self::UpstreamError,
        Self::Cancelled,
        Self::Limited,
    ];

    /// The stored and wire name (never change it).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::UpstreamError => "upstream_error",
            Self::Cancelled => "cancelled",
            Self::Limited => "limited",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == text)
    }
}

/// One completion attempt. Holds no secret and no message content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageEntry {
    pub user: UserId,
    pub tenant: Option<TenantId>,
    /// When the attempt ended; its UTC day is the aggregate's day.
    pub at: Timestamp,
    /// The request's id (attempts of one request share it).
    pub request_id: String,
    /// Attempt number within the request, from 0 (fallbacks count up).
    pub attempt: u32,
    pub service: Service,
    /// Canonical `provider/model`.
    pub model: String,
    pub path: ResolutionPath,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// List-price cost in nano-dollars; `None` when the model has no price.
    pub cost_nanos: Option<u64>,
    /// Token counts are estimates (no usage event from the upstream).
    pub estimated: bool,
    pub outcome: LedgerOutcome,
    /// The error code the client saw, for failed attempts.
    pub error_code: Option<String>,
    pub stream: bool,
    /// The model came from the operator's fallback chain.
    pub fallback: bool,
    pub time_to_first_byte_ms: Option<u64>,
    pub duration_ms: u64,
}

impl UsageEntry {
    pub fn paid_by(&self) -> PaidBy {
        PaidBy::of(self.path)
    }

    /// The UTC day the entry counts on.
    pub fn day(&self) -> Date {
        self.at.to_offset(time::UtcOffset::UTC).date()
    }

    /// What the entry adds to its aggregate.
    pub fn counts(&self) -> UsageCounts {
        let one = |hit: bool| u64::from(hit);
        UsageCounts {
            requests: 1,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cost_nanos: self.cost_nanos.unwrap_or(0),
            priced_requests: one(self.cost_nanos.is_some()),
            estimated_requests: one(self.estimated),
            failed_requests: one(self.outcome == LedgerOutcome::UpstreamError),
            cancelled_requests: one(self.outcome == LedgerOutcome::Cancelled),
            limited_requests: one(self.outcome == LedgerOutcome::Limited),
            ttfb_ms_sum: self.time_to_first_byte_ms.unwrap_or(0),
            duration_ms_sum: self.duration_ms,
        }
    }
}

/// Additive counters of an aggregate. Every field only ever grows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageCounts {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_nanos: u64,
    /// Requests whose model had a price (cost is `null` where this is 0).
    pub priced_requests: u64,
    pub estimated_requests: u64,
    pub failed_requests: u64,
    pub cancelled_requests: u64,
    pub limited_requests: u64,
    pub ttfb_ms_sum: u64,
    pub duration_ms_sum: u64,
}

impl UsageCounts {
    /// The stored attribute names, in the order of [`Self::values`].
    pub const FIELDS: [&'static str; 11] = [
        "requests",
        "promptTokens",
        "completionTokens",
        "costNanos",
        "pricedRequests",
        "estimatedRequests",
        "failedRequests",
        "cancelledRequests",
        "limitedRequests",
        "ttfbMsSum",
        "durationMsSum",
    ];

    pub fn values(&self) -> [u64; 11] {
        [
            self.requests,
            self.prompt_tokens,
            self.completion_tokens,
            self.cost_nanos,
            self.priced_requests,
            self.estimated_requests,
            self.failed_requests,
            self.cancelled_requests,
            self.limited_requests,
            self.ttfb_ms_sum,
            self.duration_ms_sum,
        ]
    }

    pub fn from_values(v: [u64; 11]) -> Self {
        Self {
            requests: v[0],
            prompt_tokens: v[1],
            completion_tokens: v[2],
            cost_nanos: v[3],
            priced_requests: v[4],
            estimated_requests: v[5],
            failed_requests: v[6],
            cancelled_requests: v[7],
            limited_requests: v[8],
            ttfb_ms_sum: v[9],
            duration_ms_sum: v[10],
        }
    }

    /// Adds `other` (saturating).
    pub fn add(&mut self, other: &Self) {
        let mut mine = self.values();
        for (a, b) in mine.iter_mut().zip(other.values()) {
            *a = a.saturating_add(b);
        }
        *self = Self::from_values(mine);
    }
}

/// One aggregate: a user's usage of one model on one path on one UTC day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub day: Date,
    pub user: UserId,
    /// The tenant the usage was attributed to (operator view only; `None`
    /// in a user's own rows and when no tenant claim is configured).
    pub tenant: Option<TenantId>,
    pub service: Service,
    pub model: String,
    pub path: ResolutionPath,
    pub counts: UsageCounts,
}

/// The usage ledger's storage.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Adds `entry` to its user's day aggregate and to the operator's
    /// per-day view, atomically per aggregate; with `retention`, also keeps
    /// the raw entry until `retention` after `entry.at`. A store may return
    /// once the entry is safely on its way (the embedded store of a
    /// long-lived server hands it to its writer thread and logs a
    /// failure), provided its own reads see it.
    async fn record_usage(
        &self,
        entry: &UsageEntry,
        retention: Option<Duration>,
    ) -> Result<(), StoreError>;

    /// Returns once every entry recorded so far is stored (nothing to do
    /// for a store whose `record_usage` returns only then).
    async fn flush_usage(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The user's aggregates for the days `from..=to` (UTC), any order;
    /// `tenant` is `None` in these rows.
    async fn user_usage(
        &self,
        user: &UserId,
        from: Date,
        to: Date,
    ) -> Result<Vec<UsageRow>, StoreError>;

    /// Every user's aggregates for the days `from..=to`, with tenants, for
    /// the operator; read day by day, never by scanning the whole store.
    async fn all_usage(&self, from: Date, to: Date) -> Result<Vec<UsageRow>, StoreError>;

    /// The user's raw entries still retained, newest first, at most `limit`.
    async fn recent_usage(
        &self,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<UsageEntry>, StoreError>;
}

/// An instant as Unix epoch milliseconds, as raw entries are keyed and kept.
pub(crate) fn epoch_ms(t: Timestamp) -> i64 {
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).unwrap_or(i64::MAX)
}

/// `YYYY-MM-DD`, the day as every backend stores it.
pub fn day_text(day: Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    )
}

/// Parses [`day_text`]'s format.
pub fn parse_day(text: &str) -> Option<Date> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = text.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let year = i32::try_from(digits(0..4)?).ok()?;
    let month = time::Month::try_from(u8::try_from(digits(5..7)?).ok()?).ok()?;
    let day = u8::try_from(digits(8..10)?).ok()?;
    Date::from_calendar_date(year, month, day).ok()
}

/// Converts a list-price cost in dollars to whole nano-dollars.
pub fn usd_to_nanos(usd: f64) -> Option<u64> {
    if !usd.is_finite() || usd < 0.0 {
        return None;
    }
    let nanos = (usd * NANOS_PER_USD).round();
    // f64 → u64 saturates; prices this large do not occur.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "finite, non-negative and rounded above"
    )]
    Some(nanos.min(u64::MAX as f64) as u64)
}

/// Nano-dollars as dollars.
#[expect(
    clippy::cast_precision_loss,
    reason = "display value; exact sums are kept as integers"
)]
pub fn nanos_to_usd(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip() {
        let day = parse_day("2026-02-28").unwrap();
        assert_eq!(day_text(day), "2026-02-28");
        for bad in ["2026-2-28", "2026-02-30", "20260228", "", "2026-02-28x"] {
            assert!(parse_day(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn costs_convert_exactly_enough() {
        assert_eq!(usd_to_nanos(0.000_000_15), Some(150));
        assert_eq!(usd_to_nanos(1.5), Some(1_500_000_000));
        assert_eq!(usd_to_nanos(-1.0), None);
        assert_eq!(usd_to_nanos(f64::NAN), None);
        assert!((nanos_to_usd(1_500_000_000) - 1.5).abs() < 1e-12);
    }

    #[test]
    fn counts_add_and_name_their_fields() {
        let mut a = UsageCounts {
            requests: 1,
            cost_nanos: 5,
            ..UsageCounts::default()
        };
        a.add(&UsageCounts::from_values([1; 11]));
        assert_eq!(a.requests, 2);
        assert_eq!(a.cost_nanos, 6);
        assert_eq!(a.duration_ms_sum, 1);
        assert_eq!(UsageCounts::from_values(a.values()), a);
        assert_eq!(PaidBy::of(ResolutionPath::TeamGateway), PaidBy::Team);
        assert_eq!(PaidBy::of(ResolutionPath::UserProvider), PaidBy::User);
        for o in LedgerOutcome::ALL {
            assert_eq!(LedgerOutcome::parse(o.as_str()), Some(o));
        }
        assert!(TenantId::new("").is_none());
        assert!(TenantId::new("a\nb").is_none());
        assert!(TenantId::new("x".repeat(129)).is_none());
    }
}
