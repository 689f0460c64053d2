//! Rate limiting that holds across instances (SPEC §8: validation is limited
//! per user, e.g. 5 per minute, whichever Lambda instance serves the call).
//!
//! The limiter is a fixed-window counter kept in the store, so every
//! instance sharing the store shares the count: a window of length `window`
//! starts at every multiple of `window` since the Unix epoch, and a hit is
//! allowed only while the window's count stays at or below the limit. This
//! module holds the trait and the window arithmetic both backends share;
//! [`super::embedded`] and [`super::dynamo`] implement it.

use super::StoreError;
use crate::domain::{Timestamp, UserId};
use async_trait::async_trait;
use std::time::Duration;

/// What is being limited. Each action has counters of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RateAction {
    /// Checking a key against its provider (validation, and staging a
    /// replacement key for rotation, which checks it too).
    Validate,
    /// Any chat completion (`BYOK_REQUESTS_PER_MINUTE`).
    Completion,
    /// A chat completion on a team path (`BYOK_TEAM_REQUESTS_PER_MINUTE`).
    TeamCompletion,
}

impl RateAction {
    /// Every action.
    pub const ALL: [Self; 3] = [Self::Validate, Self::Completion, Self::TeamCompletion];

    /// The stored name of the action (part of counter keys; never change it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validate => "validate",
            Self::Completion => "completion",
            Self::TeamCompletion => "team_completion",
        }
    }
}

impl std::fmt::Display for RateAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one [`RateLimitStore::hit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the hit is within the limit. Only allowed hits are counted:
    /// a refused hit leaves the window's count at the limit.
    pub allowed: bool,
    /// Hits still allowed in this window after this one.
    pub remaining: u32,
    /// Zero when allowed; when refused, the time until the window ends.
    pub retry_after: Duration,
    /// The time until the window ends (and the count starts over).
    pub reset_after: Duration,
}

impl RateDecision {
    /// [`Self::retry_after`] in whole seconds, rounded up, at least 1: the
    /// `Retry-After` of a refused hit.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_millis().div_ceil(1000);
        u64::try_from(secs).unwrap_or(u64::MAX).max(1)
    }
}

/// Fixed-window counters shared by every instance using the store.
#[async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Counts one hit of `action` for `user` in the fixed window of length
    /// `window` containing `now`; allowed only while the window's count stays
    /// ≤ `limit`. A refused hit is `Ok` with `allowed: false`, not an error.
    /// `window` must be at least one millisecond (sub-millisecond parts are
    /// ignored); a `limit` of 0 refuses every hit.
    async fn hit(
        &self,
        user: &UserId,
        action: RateAction,
        limit: u32,
        window: Duration,
        now: Timestamp,
    ) -> Result<RateDecision, StoreError>;
}

/// The fixed window containing an instant, in Unix epoch milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    /// Window length.
    pub len_ms: i64,
    /// First millisecond of the window.
    pub start_ms: i64,
    /// First millisecond after the window.
    pub end_ms: i64,
    /// The instant the window was computed for.
    pub now_ms: i64,
}

impl Window {
    /// The window of length `window` containing `now`.
    pub fn containing(window: Duration, now: Timestamp) -> Result<Self, StoreError> {
        let invalid = |what: &str| {
            StoreError::backend(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("rate limit {what}"),
            ))
        };
        let len_ms = i64::try_from(window.as_millis())
            .ok()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| invalid("window must be between 1 ms and i64::MAX ms"))?;
        let now_ms = i64::try_from(now.unix_timestamp_nanos().div_euclid(1_000_000))
            .map_err(|_| invalid("instant is out of range"))?;
        let start_ms = now_ms.div_euclid(len_ms) * len_ms;
        let end_ms = start_ms
            .checked_add(len_ms)
            .ok_or_else(|| invalid("window ends out of range"))?;
        Ok(Self {
            len_ms,
            start_ms,
            end_ms,
            now_ms,
        })
    }

    /// Time from `now` to the end of the window.
    pub fn reset_after(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.end_ms - self.now_ms).unwrap_or(0))
    }

    /// The decision once the window's count after this hit is known:
    /// `Some(count)` if the hit was counted, `None` if it was refused.
    pub fn decision(&self, limit: u32, counted: Option<u64>) -> RateDecision {
        let reset_after = self.reset_after();
        match counted {
            Some(count) => RateDecision {
                allowed: true,
                remaining: u32::try_from(u64::from(limit).saturating_sub(count))
                    .unwrap_or(u32::MAX),
                retry_after: Duration::ZERO,
                reset_after,
            },
            None => RateDecision {
                allowed: false,
                remaining: 0,
                retry_after: reset_after,
                reset_after,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::format_description::well_known::Rfc3339;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text, &Rfc3339).unwrap()
    }

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        let w =
            Window::containing(Duration::from_secs(60), at("2025-01-02T03:04:05.678Z")).unwrap();
        assert_eq!(w.start_ms % 60_000, 0);
        assert_eq!(w.end_ms - w.start_ms, 60_000);
        assert_eq!(w.now_ms - w.start_ms, 5_678);
        assert_eq!(w.reset_after(), Duration::from_millis(54_322));

        let before =
            Window::containing(Duration::from_secs(60), at("1969-12-31T23:59:30Z")).unwrap();
        assert_eq!(before.start_ms, -60_000);
        assert_eq!(before.end_ms, 0);

        assert!(
            Window::containing(Duration::from_micros(999), at("2025-01-01T00:00:00Z")).is_err()
        );
    }

    #[test]
    fn decisions() {
        let w = Window::containing(Duration::from_secs(10), at("2025-01-01T00:00:04Z")).unwrap();
        let d = w.decision(5, Some(2));
        assert!(d.allowed);
        assert_eq!(d.remaining, 3);
        assert_eq!(d.retry_after, Duration::ZERO);
        let d = w.decision(5, None);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(6));
        assert_eq!(RateAction::Validate.as_str(), "validate");
    }
}
