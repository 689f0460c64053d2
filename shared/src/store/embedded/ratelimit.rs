//! Rate counters in `usage.db`: one fixed-window counter per user, action
//! and window, counted in one immediate transaction.

use super::*;

#[async_trait]
impl RateLimitStore for EmbeddedStore {
    async fn hit(
        &self,
        user: &UserId,
        action: RateAction,
        limit: u32,
        window: Duration,
        now: Timestamp,
    ) -> Result<RateDecision, StoreError> {
        let w = Window::containing(window, now)?;
        if limit == 0 {
            return Ok(w.decision(limit, None));
        }
        let user = user.clone();
        self.run(move |inner| {
            // Counters live in usage.db (metering data, synced lazily: see
            // [`usage`]), so a hit never waits on a sync of the keys' file.
            let mut conn = inner.counters()?;
            // The connection mutex serialises callers of this process; the
            // immediate transaction serialises other processes on the file.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::backend)?;
            // Opportunistic pruning of windows that ended more than a margin
            // ago (a caller whose `now` lags slightly still finds its counter).
            tx.execute(
                "DELETE FROM rate_counters WHERE expires_ms <= ?1",
                [w.now_ms],
            )
            .map_err(StoreError::backend)?;
            // Counts the hit unless the window is full; no row back means refused.
            let count: Option<i64> = tx
                .query_row(
                    "INSERT INTO rate_counters \
                     (user_id, action, window_ms, window_start_ms, count, expires_ms) \
                     VALUES (?1, ?2, ?3, ?4, 1, ?5) \
                     ON CONFLICT (user_id, action, window_ms, window_start_ms) \
                     DO UPDATE SET count = count + 1 WHERE count < ?6 \
                     RETURNING count",
                    params![
                        user.as_str(),
                        action.as_str(),
                        w.len_ms,
                        w.start_ms,
                        w.end_ms.saturating_add(RATE_PRUNE_MARGIN_MS),
                        i64::from(limit)
                    ],
                    |row| row.get(0),
                )
                .optional()
                .map_err(StoreError::backend)?;
            tx.commit().map_err(StoreError::backend)?;
            let counted = count
                .map(|c| u64::try_from(c).map_err(|_| corrupt("rate_counters.count is negative")))
                .transpose()?;
            Ok(w.decision(limit, counted))
        })
        .await
    }
}
