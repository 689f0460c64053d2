//! Budgets in the embedded store: one `budgets` row per budget in
//! `usage.db` (schema version 2). Updates (reservations, settlements) of a
//! budget that exists run on the ledger's writer thread, each inside its next transaction with
//! whatever else waits there, so they never contend with ledger writes for
//! the file and many share one commit; the admin's conditional writes are
//! one immediate transaction of their own that checks the row's revision.

use super::super::Expected;
use super::super::budget::{
    Amount, BudgetChange, BudgetPage, BudgetPeriod, BudgetRecord, BudgetScope, BudgetStore,
    BudgetTerms, BudgetUnit, holds_text, parse_holds, parse_percents, percents_text,
};
use super::{EmbeddedStore, StoreError, col, corrupt, ts_from_text, ts_to_text};
use crate::domain::UserId;
use async_trait::async_trait;
use rusqlite::{OptionalExtension as _, Row, TransactionBehavior, params};

/// Schema version 2 of `usage.db`: budgets.
pub(super) const SCHEMA_V2: &str = "
CREATE TABLE budgets (
    scope_key    TEXT    NOT NULL PRIMARY KEY,
    unit         TEXT    NOT NULL,
    period       TEXT    NOT NULL,
    limit_amount INTEGER NOT NULL CHECK (limit_amount >= 0),
    pause        INTEGER NOT NULL,
    thresholds   TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL,
    updated_by   TEXT    NOT NULL,
    period_key   TEXT    NOT NULL,
    used_tokens  INTEGER NOT NULL,
    used_nanos   INTEGER NOT NULL,
    holds        TEXT    NOT NULL,
    alerted      TEXT    NOT NULL,
    revision     INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
";

const COLUMNS: &str = "scope_key, unit, period, limit_amount, pause, thresholds, updated_at, \
                       updated_by, period_key, used_tokens, used_nanos, holds, alerted, revision";

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(row: &Row<'_>, idx: usize, column: &str) -> Result<u64, StoreError> {
    u64::try_from(col::<i64>(row, idx, column)?)
        .map_err(|_| corrupt(&format!("{column} is negative")))
}

fn record_from_row(row: &Row<'_>) -> Result<BudgetRecord, StoreError> {
    let scope = BudgetScope::from_sort_key(&col::<String>(row, 0, "budgets.scope_key")?)
        .ok_or_else(|| corrupt("budgets.scope_key names no scope"))?;
    let unit = BudgetUnit::parse(&col::<String>(row, 1, "budgets.unit")?)
        .ok_or_else(|| corrupt("budgets.unit is not a unit"))?;
    let period = BudgetPeriod::parse(&col::<String>(row, 2, "budgets.period")?)
        .ok_or_else(|| corrupt("budgets.period is not a period"))?;
    let (holds, settled) = parse_holds(&col::<String>(row, 11, "budgets.holds")?)?;
    Ok(BudgetRecord {
        scope,
        terms: BudgetTerms {
            unit,
            period,
            limit: uint(row, 3, "budgets.limit_amount")?,
            pause_at_limit: col::<i64>(row, 4, "budgets.pause")? != 0,
            alert_thresholds: parse_percents(&col::<String>(row, 5, "budgets.thresholds")?)?,
        },
        updated_at: ts_from_text(
            &col::<String>(row, 6, "budgets.updated_at")?,
            "budgets.updated_at",
        )?,
        updated_by: UserId::new(col::<String>(row, 7, "budgets.updated_by")?)
            .ok_or_else(|| corrupt("budgets.updated_by is not a user id"))?,
        period_key: col(row, 8, "budgets.period_key")?,
        used: Amount {
            tokens: uint(row, 9, "budgets.used_tokens")?,
            nanos: uint(row, 10, "budgets.used_nanos")?,
        },
        holds,
        settled,
        alerted: parse_percents(&col::<String>(row, 12, "budgets.alerted")?)?,
        revision: uint(row, 13, "budgets.revision")?,
    })
}

/// The row of `key` as a record, if any.
fn read_row(conn: &rusqlite::Connection, key: &str) -> Result<Option<BudgetRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM budgets WHERE scope_key = ?1"
        ))
        .map_err(StoreError::backend)?;
    let mut rows = stmt.query([key]).map_err(StoreError::backend)?;
    match rows.next().map_err(StoreError::backend)? {
        Some(row) => Ok(Some(record_from_row(row)?)),
        None => Ok(None),
    }
}

/// Writes `r` as its row, whatever was there.
fn write_row(conn: &rusqlite::Connection, r: &BudgetRecord) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "INSERT OR REPLACE INTO budgets ({COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        ))
        .map_err(StoreError::backend)?;
    stmt.execute(params![
        r.scope.sort_key(),
        r.terms.unit.as_str(),
        r.terms.period.as_str(),
        int(r.terms.limit),
        i64::from(r.terms.pause_at_limit),
        percents_text(&r.terms.alert_thresholds),
        ts_to_text(r.updated_at)?,
        r.updated_by.as_str(),
        r.period_key,
        int(r.used.tokens),
        int(r.used.nanos),
        holds_text(&r.holds, &r.settled),
        percents_text(&r.alerted),
        int(r.revision),
    ])
    .map_err(StoreError::backend)?;
    Ok(())
}

/// [`BudgetStore::update_budget`] inside the writer's transaction `tx`.
pub(super) fn update_in(
    tx: &rusqlite::Transaction<'_>,
    scope: &BudgetScope,
    change: &BudgetChange,
) -> Result<Option<(BudgetRecord, BudgetRecord)>, StoreError> {
    let Some(before) = read_row(tx, &scope.sort_key())? else {
        return Ok(None);
    };
    let mut after = before.clone();
    change(&mut after);
    if after != before {
        after.revision = before.revision + 1;
        write_row(tx, &after)?;
    }
    Ok(Some((before, after)))
}

#[async_trait]
impl BudgetStore for EmbeddedStore {
    async fn update_budget(
        &self,
        scope: &BudgetScope,
        change: BudgetChange,
    ) -> Result<Option<(BudgetRecord, BudgetRecord)>, StoreError> {
        // Most team-path requests have no budget: one indexed read answers
        // that, without a turn in the writer's next commit.
        let key = scope.sort_key();
        let exists = self
            .run(move |inner| {
                inner
                    .usage_reads()?
                    .prepare_cached("SELECT 1 FROM budgets WHERE scope_key = ?1")
                    .and_then(|mut stmt| stmt.exists([&key]))
                    .map_err(StoreError::backend)
            })
            .await?;
        if !exists {
            return Ok(None);
        }
        self.inner
            .usage_writer
            .update_budget(scope.clone(), change)
            .await
    }

    async fn get_budget(&self, scope: &BudgetScope) -> Result<Option<BudgetRecord>, StoreError> {
        let key = scope.sort_key();
        self.run(move |inner| read_row(&*inner.usage_reads()?, &key))
            .await
    }

    async fn put_budget(
        &self,
        record: &BudgetRecord,
        expected: Expected,
    ) -> Result<(), StoreError> {
        let r = record.clone();
        self.run(move |inner| {
            let mut conn = inner.counters()?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::backend)?;
            let stored: Option<i64> = tx
                .query_row(
                    "SELECT revision FROM budgets WHERE scope_key = ?1",
                    [r.scope.sort_key()],
                    |row| row.get(0),
                )
                .optional()
                .map_err(StoreError::backend)?;
            let matches = match (expected, stored) {
                (Expected::Absent, None) => true,
                (Expected::Revision(want), Some(have)) => u64::try_from(have).ok() == Some(want),
                _ => false,
            };
            if !matches {
                return Err(StoreError::Conflict);
            }
            write_row(&tx, &r)?;
            tx.commit().map_err(StoreError::backend)
        })
        .await
    }

    async fn delete_budget(&self, scope: &BudgetScope) -> Result<Option<BudgetRecord>, StoreError> {
        let key = scope.sort_key();
        self.run(move |inner| {
            let conn = inner.counters()?;
            let mut stmt = conn
                .prepare_cached(&format!(
                    "DELETE FROM budgets WHERE scope_key = ?1 RETURNING {COLUMNS}"
                ))
                .map_err(StoreError::backend)?;
            let mut rows = stmt.query([&key]).map_err(StoreError::backend)?;
            match rows.next().map_err(StoreError::backend)? {
                Some(row) => Ok(Some(record_from_row(row)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_budgets(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<BudgetPage, StoreError> {
        let after = after.unwrap_or("").to_owned();
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        self.run(move |inner| {
            let conn = inner.counters()?;
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM budgets WHERE scope_key > ?1 \
                     ORDER BY scope_key LIMIT ?2"
                ))
                .map_err(StoreError::backend)?;
            let mut rows = stmt
                .query(params![after, fetch])
                .map_err(StoreError::backend)?;
            let mut budgets = Vec::new();
            while let Some(row) = rows.next().map_err(StoreError::backend)? {
                budgets.push(record_from_row(row)?);
            }
            let next = (budgets.len() > limit).then(|| {
                budgets.truncate(limit);
                budgets.last().map(|b| b.scope.sort_key())
            });
            Ok(BudgetPage {
                budgets,
                next: next.flatten(),
            })
        })
        .await
    }
}
