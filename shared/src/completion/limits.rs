//! Per-user request limits on completions, counted in the store so they
//! hold across every instance (Lambda or not): one window a minute for all
//! of a user's completions (`BYOK_REQUESTS_PER_MINUTE`, off by default) and
//! one for completions the operator pays for (`BYOK_TEAM_REQUESTS_PER_MINUTE`).
//! A refused request never reaches an upstream.

use crate::domain::{UserId, now};
use crate::store::{RateAction, RateLimitStore, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// Both limits count per user per minute.
const WINDOW: Duration = Duration::from_secs(60);

/// The request limits and the store their counters live in.
#[derive(Clone)]
pub struct RequestLimits {
    store: Option<Arc<dyn RateLimitStore>>,
    /// Completions per minute on any path; `None`: unlimited.
    pub per_minute: Option<u32>,
    /// Completions per minute on team paths; `None`: unlimited.
    pub team_per_minute: Option<u32>,
}

/// Where a user stands against one limit (OpenAI's `x-ratelimit-*` headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateStatus {
    pub limit: u32,
    pub remaining: u32,
    /// Until the window starts over.
    pub reset_after: Duration,
}

impl RateStatus {
    /// The status that binds first: the one with fewer requests left.
    pub fn tighter(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.remaining < a.remaining { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

/// A refused request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub status: RateStatus,
    pub retry_after_secs: u64,
}

impl RequestLimits {
    /// No limits.
    pub fn none() -> Self {
        Self {
            store: None,
            per_minute: None,
            team_per_minute: None,
        }
    }

    /// Limits counted in `store`.
    pub fn new(
        store: Arc<dyn RateLimitStore>,
        per_minute: Option<u32>,
        team_per_minute: Option<u32>,
    ) -> Self {
        Self {
            store: Some(store),
            per_minute,
            team_per_minute,
        }
    }

    /// Counts one request of `user` against the all-paths limit, or with
    /// `team` the team limit: `Ok(Ok(status))` when admitted (`None` when no
    /// such limit is set), `Ok(Err(_))` when refused.
    pub(crate) async fn admit(
        &self,
        user: &UserId,
        team: bool,
    ) -> Result<Result<Option<RateStatus>, Refused>, StoreError> {
        let (limit, action) = if team {
            (self.team_per_minute, RateAction::TeamCompletion)
        } else {
            (self.per_minute, RateAction::Completion)
        };
        let (Some(limit), Some(store)) = (limit, &self.store) else {
            return Ok(Ok(None));
        };
        let decision = store.hit(user, action, limit, WINDOW, now()).await?;
        let status = RateStatus {
            limit,
            remaining: decision.remaining,
            reset_after: decision.reset_after,
        };
        if decision.allowed {
            return Ok(Ok(Some(status)));
        }
        tracing::info!(action = action.as_str(), limit, "completion rate limited");
        Ok(Err(Refused {
            status,
            retry_after_secs: decision.retry_after_secs(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "local")]
    #[tokio::test]
    async fn both_limits_count_separately_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::embedded::EmbeddedStore::open(
            dir.path(),
            crate::crypto::MasterKey::generate(),
        )
        .unwrap();
        let limits = RequestLimits::new(Arc::new(store), Some(2), Some(1));
        let user = UserId::new("limited").unwrap();
        let other = UserId::new("other").unwrap();
        let first = limits.admit(&user, false).await.unwrap().unwrap().unwrap();
        assert_eq!((first.limit, first.remaining), (2, 1));
        assert!(limits.admit(&user, true).await.unwrap().is_ok());
        assert!(limits.admit(&user, false).await.unwrap().is_ok());
        let refused = limits.admit(&user, false).await.unwrap().unwrap_err();
        assert_eq!(refused.status.remaining, 0);
        assert!((1..=60).contains(&refused.retry_after_secs));
        assert!(
            limits.admit(&user, true).await.unwrap().is_err(),
            "team limit 1"
        );
        assert!(
            limits.admit(&other, false).await.unwrap().is_ok(),
            "per user"
        );
        let none = RequestLimits::none();
        assert_eq!(none.admit(&user, true).await.unwrap().unwrap(), None);
    }

    #[test]
    fn the_tighter_status_has_fewer_left() {
        let s = |remaining| RateStatus {
            limit: 10,
            remaining,
            reset_after: Duration::ZERO,
        };
        assert_eq!(RateStatus::tighter(None, None), None);
        assert_eq!(RateStatus::tighter(Some(s(3)), None), Some(s(3)));
        assert_eq!(RateStatus::tighter(None, Some(s(3))), Some(s(3)));
        assert_eq!(RateStatus::tighter(Some(s(5)), Some(s(2))), Some(s(2)));
        assert_eq!(RateStatus::tighter(Some(s(1)), Some(s(2))), Some(s(1)));
    }
}
