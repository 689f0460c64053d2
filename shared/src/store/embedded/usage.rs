//! The embedded store's metering file, `usage.db` beside `byok.db` (0600,
//! WAL): the usage ledger, the rate counters and (schema version 2) the
//! budgets ([`super::budget`]). Its connections run with
//! `synchronous=NORMAL`: a commit is atomic and survives a crash of the
//! process, but is synced to disk with the next checkpoint rather than at
//! once (a power loss can lose the last moments of metering, never a key:
//! `byok.db` syncs every commit). That keeps a disk sync off every
//! completion. `rate_counters` is the table `byok.db` had (see
//! [`super::super::ratelimit`]). `usage_daily` holds one row per user, UTC day, service, model, path
//! and tenant, upserted in one statement per entry (counters add to what is
//! there; indexed by day for the operator's view); `usage_requests` holds
//! raw entries with an expiry, pruned at most once a minute by later writes.
//!
//! Writes go to one writer thread that owns the ledger's own connection and
//! commits whatever is waiting in one immediate transaction (group commit).
//! By default each caller waits until its entry is committed. A long-lived
//! server (byok-local, [`EmbeddedStore::defer_ledger_commits`]) instead hands
//! an entry to the writer and does not wait: the writer lets entries gather
//! for up to [`ENTRY_LINGER`] before it commits them, so even one request at
//! a time shares its commit with the next ones instead of paying a commit
//! each (a commit was about a quarter of the CPU of a proxied request).
//! Every read of the ledger first has the writer commit what it holds, so
//! the process reads its own writes, and the server flushes before it
//! exits. A process that may be frozen or read by another right after a
//! response (a Lambda function, a command) keeps the default. Budget
//! changes are urgent (a request waits on its reservation): one wakes the
//! writer at once and commits with whatever entries wait. If a batch
//! fails, its jobs are retried one by one, so each caller gets its own
//! outcome and a failed entry nobody waits for is logged alone.

use super::super::budget::{BudgetChange, BudgetRecord, BudgetScope};
use super::super::usage::{
    LedgerOutcome, TenantId, UsageCounts, UsageEntry, UsageRow, UsageStore, day_text, epoch_ms,
    parse_day,
};
use super::{BUSY_TIMEOUT, EmbeddedStore, StoreError, bool_from_int, col, corrupt};
use crate::domain::ResolutionPath;
use crate::domain::{Service, UserId};
use async_trait::async_trait;
use rusqlite::{Connection, Row, TransactionBehavior, params};
use std::path::Path;
use std::time::Duration;
use time::Date;

/// Counter columns of `usage_daily`, in [`UsageCounts::values`] order.
const COUNT_COLUMNS: [&str; 11] = [
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cost_nanos",
    "priced_requests",
    "estimated_requests",
    "failed_requests",
    "cancelled_requests",
    "limited_requests",
    "ttfb_ms_sum",
    "duration_ms_sum",
];

/// File name of the ledger's database inside the data directory.
pub const USAGE_DB_FILE: &str = "usage.db";

/// The ledger's schema, kept in `PRAGMA user_version`.
const USAGE_SCHEMA_VERSION: i64 = 2;

/// Schema version 1. Day aggregates are keyed by user first (a user's month
/// is one index range) and indexed by day (the operator's view reads a range
/// of days); raw entries expire.
const USAGE_SCHEMA_V1: &str = "
CREATE TABLE usage_daily (
    user_id            TEXT    NOT NULL,
    day                TEXT    NOT NULL,
    service            TEXT    NOT NULL,
    model              TEXT    NOT NULL,
    path               TEXT    NOT NULL,
    tenant             TEXT    NOT NULL,
    requests           INTEGER NOT NULL,
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    cost_nanos         INTEGER NOT NULL,
    priced_requests    INTEGER NOT NULL,
    estimated_requests INTEGER NOT NULL,
    failed_requests    INTEGER NOT NULL,
    cancelled_requests INTEGER NOT NULL,
    limited_requests   INTEGER NOT NULL,
    ttfb_ms_sum        INTEGER NOT NULL,
    duration_ms_sum    INTEGER NOT NULL,
    PRIMARY KEY (user_id, day, service, model, path, tenant)
) STRICT, WITHOUT ROWID;
CREATE INDEX usage_daily_by_day ON usage_daily (day);

CREATE TABLE usage_requests (
    user_id           TEXT    NOT NULL,
    at_ms             INTEGER NOT NULL,
    request_id        TEXT    NOT NULL,
    attempt           INTEGER NOT NULL,
    tenant            TEXT,
    service           TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    path              TEXT    NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_nanos        INTEGER,
    estimated         INTEGER NOT NULL,
    outcome           TEXT    NOT NULL,
    error_code        TEXT,
    stream            INTEGER NOT NULL,
    fallback          INTEGER NOT NULL,
    ttfb_ms           INTEGER,
    duration_ms       INTEGER NOT NULL,
    expires_ms        INTEGER NOT NULL,
    PRIMARY KEY (user_id, at_ms, request_id, attempt)
) STRICT, WITHOUT ROWID;
CREATE INDEX usage_requests_expiry ON usage_requests (expires_ms);

CREATE TABLE rate_counters (
    user_id         TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    window_ms       INTEGER NOT NULL CHECK (window_ms > 0),
    window_start_ms INTEGER NOT NULL,
    count           INTEGER NOT NULL CHECK (count >= 0),
    expires_ms      INTEGER NOT NULL,
    PRIMARY KEY (user_id, action, window_ms, window_start_ms)
) STRICT, WITHOUT ROWID;
CREATE INDEX rate_counters_expiry ON rate_counters (expires_ms);
";

/// Opens (or creates) `data_dir/usage.db` private to the owner, in WAL mode,
/// with its schema: a connection for reports, one for rate counters, and
/// the ledger's writer thread.
pub(super) fn open(data_dir: &Path) -> Result<(Connection, Connection, UsageWriter), StoreError> {
    let path = data_dir.join(USAGE_DB_FILE);
    super::create_private(&path)?;
    let connect = || -> Result<Connection, StoreError> {
        let conn = Connection::open(&path).map_err(StoreError::backend)?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(StoreError::backend)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(StoreError::backend)?;
        Ok(conn)
    };
    let mut reads = connect()?;
    let journal: String = reads
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(StoreError::backend)?;
    if !journal.eq_ignore_ascii_case("wal") {
        return Err(StoreError::backend(std::io::Error::other(
            "SQLite refused the WAL journal mode for usage.db",
        )));
    }
    let tx = reads
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(StoreError::backend)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(StoreError::backend)?;
    match version {
        0 | 1 => {
            if version == 0 {
                tx.execute_batch(USAGE_SCHEMA_V1)
                    .map_err(StoreError::backend)?;
            }
            tx.execute_batch(super::budget::SCHEMA_V2)
                .map_err(StoreError::backend)?;
            tx.pragma_update(None, "user_version", USAGE_SCHEMA_VERSION)
                .map_err(StoreError::backend)?;
        }
        USAGE_SCHEMA_VERSION => {}
        other => {
            return Err(StoreError::Corrupt(format!(
                "usage.db schema version {other} is not supported by this build \
                 (it knows version {USAGE_SCHEMA_VERSION})"
            )));
        }
    }
    tx.commit().map_err(StoreError::backend)?;
    let writer = UsageWriter::start(connect()?)?;
    Ok((reads, connect()?, writer))
}

/// How often expired raw entries are pruned (at most).
const PRUNE_EVERY_MS: i64 = 60_000;

/// Most entries committed in one transaction.
const MAX_BATCH: usize = 512;

/// How long the writer lets ledger entries gather before committing them
/// (unless something urgent arrives first). Reads never see the delay (they
/// flush first); a crash of the process can lose at most this much of the
/// ledger, as it could lose entries still on their way to the writer.
pub(super) const ENTRY_LINGER: Duration = Duration::from_millis(5);

/// The outcome of a budget update: the record before and after it.
type BudgetUpdate = Option<(BudgetRecord, BudgetRecord)>;

/// One write waiting for the writer, and where its outcome goes.
enum Job {
    /// A ledger entry, with its caller if it waits (else a failure is
    /// logged).
    Entry {
        entry: UsageEntry,
        retention: Option<Duration>,
        done: Option<tokio::sync::oneshot::Sender<Result<(), StoreError>>>,
    },
    /// A budget change (see [`super::budget`]).
    Budget {
        scope: BudgetScope,
        change: BudgetChange,
        done: tokio::sync::oneshot::Sender<Result<BudgetUpdate, StoreError>>,
    },
    /// A read wants everything before it committed.
    Flush {
        done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
    },
}

impl Job {
    /// Whether the writer should commit this job without letting others
    /// gather: somebody is waiting for it.
    fn is_urgent(&self) -> bool {
        !matches!(self, Job::Entry { done: None, .. })
    }

    /// Answers the caller with `outcome` (a budget job with its own result);
    /// an entry's failure is logged.
    fn answer(self, outcome: Result<Option<BudgetUpdate>, StoreError>) {
        match self {
            Job::Entry {
                done: Some(done), ..
            } => {
                let _ = done.send(outcome.map(|_| ()));
            }
            Job::Entry {
                entry, done: None, ..
            } => {
                if let Err(err) = outcome {
                    tracing::error!(
                        target: "byok::usage",
                        request_id = entry.request_id.as_str(),
                        error = %err,
                        "usage not recorded in the ledger"
                    );
                }
            }
            Job::Budget { done, .. } => {
                let _ = done.send(outcome.map(Option::flatten));
            }
            Job::Flush { done } => {
                let _ = done.send(outcome.map(|_| ()));
            }
        }
    }
}

/// The handle of the ledger's writer thread; the thread commits what it
/// holds and ends when the handle (the store) is dropped.
pub(super) struct UsageWriter {
    jobs: std::sync::mpsc::Sender<Job>,
    /// Entries are handed over without waiting for their commit.
    deferred: std::sync::atomic::AtomicBool,
    /// The writer thread, unparked when an urgent job arrives while it lets
    /// entries gather.
    thread: std::thread::Thread,
}

impl UsageWriter {
    /// Starts the writer thread on `conn`.
    pub(super) fn start(conn: rusqlite::Connection) -> Result<Self, StoreError> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let handle = std::thread::Builder::new()
            .name("byok-usage-writer".to_owned())
            .spawn(move || run_writer(conn, &queue))
            .map_err(StoreError::backend)?;
        Ok(Self {
            jobs,
            deferred: std::sync::atomic::AtomicBool::new(false),
            thread: handle.thread().clone(),
        })
    }

    /// From now on, [`Self::write`] returns once the entry is handed over.
    pub(super) fn defer_commits(&self) {
        self.deferred
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes `entry`: waits for its commit, or (deferred) hands it to the
    /// writer, which commits it within [`ENTRY_LINGER`] and logs a failure.
    async fn write(
        &self,
        entry: UsageEntry,
        retention: Option<Duration>,
    ) -> Result<(), StoreError> {
        if self.deferred.load(std::sync::atomic::Ordering::Relaxed) {
            return self
                .jobs
                .send(Job::Entry {
                    entry,
                    retention,
                    done: None,
                })
                .map_err(|_| writer_gone());
        }
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.send_urgent(Job::Entry {
            entry,
            retention,
            done: Some(done),
        })?;
        outcome.await.map_err(|_| writer_gone())?
    }

    /// Sends an urgent job and wakes the writer if it is letting entries
    /// gather (the job is already queued when it looks).
    fn send_urgent(&self, job: Job) -> Result<(), StoreError> {
        self.jobs.send(job).map_err(|_| writer_gone())?;
        self.thread.unpark();
        Ok(())
    }

    /// Returns once everything handed to the writer before it is committed.
    pub(super) async fn flush(&self) -> Result<(), StoreError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.send_urgent(Job::Flush { done })?;
        outcome.await.map_err(|_| writer_gone())?
    }

    /// Applies `change` to the budget of `scope` in the writer's next
    /// transaction (with whatever else is waiting).
    pub(super) async fn update_budget(
        &self,
        scope: BudgetScope,
        change: BudgetChange,
    ) -> Result<BudgetUpdate, StoreError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.send_urgent(Job::Budget {
            scope,
            change,
            done,
        })?;
        outcome.await.map_err(|_| writer_gone())?
    }
}

fn writer_gone() -> StoreError {
    StoreError::backend(std::io::Error::other("the usage writer has stopped"))
}

/// The writer thread: waits for a job; unless it is urgent, lets entries
/// gather for up to [`ENTRY_LINGER`] (or until an urgent job or a full
/// batch arrives); then takes everything waiting, commits it together and
/// answers each caller.
fn run_writer(mut conn: rusqlite::Connection, queue: &std::sync::mpsc::Receiver<Job>) {
    let mut last_prune_ms = i64::MIN;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        let mut urgent = batch.iter().any(Job::is_urgent);
        let deadline = std::time::Instant::now() + ENTRY_LINGER;
        loop {
            match queue.try_recv() {
                Ok(job) => {
                    urgent |= job.is_urgent();
                    batch.push(job);
                    if batch.len() >= MAX_BATCH {
                        break;
                    }
                }
                // The store is gone: commit what is here and stop after it.
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    let now = std::time::Instant::now();
                    if urgent || now >= deadline {
                        break;
                    }
                    // Sends of entries do not wake a parked thread; an
                    // urgent send unparks it (a stale unpark only ends one
                    // wait early).
                    std::thread::park_timeout(deadline - now);
                }
            }
        }
        let now_ms = epoch_ms(crate::domain::now());
        let prune = now_ms.saturating_sub(last_prune_ms) >= PRUNE_EVERY_MS;
        match commit(&mut conn, &batch, prune.then_some(now_ms)) {
            Ok(outcomes) => {
                if prune {
                    last_prune_ms = now_ms;
                }
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    job.answer(Ok(outcome));
                }
            }
            Err(err) if batch.len() == 1 => {
                if let Some(job) = batch.pop() {
                    job.answer(Err(err));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, jobs = batch.len(), "usage batch failed; writing its jobs one by one");
                for job in batch {
                    let outcome = commit(&mut conn, std::slice::from_ref(&job), None)
                        .map(|mut one| one.pop().flatten());
                    job.answer(outcome);
                }
            }
        }
    }
}

/// Writes `jobs` in one immediate transaction (budget changes in their
/// order, each on the budget as the ones before it left it); with
/// `prune_at`, also removes raw entries expired by then. One outcome per
/// job: a budget job's update, `None` for an entry.
fn commit(
    conn: &mut rusqlite::Connection,
    jobs: &[Job],
    prune_at: Option<i64>,
) -> Result<Vec<Option<BudgetUpdate>>, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(StoreError::backend)?;
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut entries = Vec::new();
    for job in jobs {
        match job {
            Job::Entry {
                entry, retention, ..
            } => {
                entries.push((entry, *retention));
                outcomes.push(None);
            }
            Job::Flush { .. } => outcomes.push(None),
            Job::Budget { scope, change, .. } => {
                outcomes.push(Some(super::budget::update_in(&tx, scope, change)?));
            }
        }
    }
    // Entries of one aggregate row are added up first: one upsert per row.
    let mut rows: Vec<(&UsageEntry, UsageCounts)> = Vec::new();
    for (entry, retention) in entries {
        let same_row = |(e, _): &&mut (&UsageEntry, UsageCounts)| {
            e.user == entry.user
                && e.day() == entry.day()
                && e.service == entry.service
                && e.model == entry.model
                && e.path == entry.path
                && e.tenant == entry.tenant
        };
        match rows.iter_mut().find(same_row) {
            Some((_, counts)) => counts.add(&entry.counts()),
            None => rows.push((entry, entry.counts())),
        }
        if let Some(retention) = retention {
            insert_raw(&tx, entry, retention)?;
        }
    }
    for (entry, counts) in rows {
        upsert_row(&tx, entry, &counts)?;
    }
    if let Some(now_ms) = prune_at {
        tx.execute(
            "DELETE FROM usage_requests WHERE expires_ms <= ?1",
            [now_ms],
        )
        .map_err(StoreError::backend)?;
    }
    tx.commit().map_err(StoreError::backend)?;
    Ok(outcomes)
}

/// Adds `counts` to the aggregate row of `entry`.
fn upsert_row(
    tx: &rusqlite::Transaction<'_>,
    entry: &UsageEntry,
    counts: &UsageCounts,
) -> Result<(), StoreError> {
    let c = counts.values().map(int);
    let tenant = entry.tenant.as_ref().map_or("", TenantId::as_str);
    tx.prepare_cached(&UPSERT_SQL)
        .and_then(|mut stmt| {
            stmt.execute(params![
                entry.user.as_str(),
                day_text(entry.day()),
                entry.service.as_str(),
                entry.model,
                entry.path.as_str(),
                tenant,
                c[0],
                c[1],
                c[2],
                c[3],
                c[4],
                c[5],
                c[6],
                c[7],
                c[8],
                c[9],
                c[10],
            ])
        })
        .map_err(StoreError::backend)?;
    Ok(())
}

/// The raw row of one entry, kept for `retention`.
fn insert_raw(
    tx: &rusqlite::Transaction<'_>,
    entry: &UsageEntry,
    retention: Duration,
) -> Result<(), StoreError> {
    let at_ms = epoch_ms(entry.at);
    let keep_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    tx.prepare_cached(&INSERT_REQUEST_SQL)
        .and_then(|mut stmt| {
            stmt.execute(params![
                entry.user.as_str(),
                at_ms,
                entry.request_id,
                i64::from(entry.attempt),
                entry.tenant.as_ref().map(TenantId::as_str),
                entry.service.as_str(),
                entry.model,
                entry.path.as_str(),
                int(entry.prompt_tokens),
                int(entry.completion_tokens),
                entry.cost_nanos.map(int),
                i64::from(entry.estimated),
                entry.outcome.as_str(),
                entry.error_code,
                i64::from(entry.stream),
                i64::from(entry.fallback),
                entry.time_to_first_byte_ms.map(int),
                int(entry.duration_ms),
                at_ms.saturating_add(keep_ms),
            ])
        })
        .map_err(StoreError::backend)?;
    Ok(())
}

/// The upsert adding one entry to its aggregate row (built once).
static UPSERT_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(upsert_sql);

/// The insert of one raw entry (built once).
static INSERT_REQUEST_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO usage_requests ({REQUEST_COLUMNS}, expires_ms) VALUES \
         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19) \
         ON CONFLICT DO NOTHING"
    )
});

fn upsert_sql() -> String {
    let columns = COUNT_COLUMNS.join(", ");
    let values: Vec<String> = (7..7 + COUNT_COLUMNS.len())
        .map(|i| format!("?{i}"))
        .collect();
    let adds: Vec<String> = COUNT_COLUMNS
        .iter()
        .map(|c| format!("{c} = {c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO usage_daily (user_id, day, service, model, path, tenant, {columns}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, {}) \
         ON CONFLICT (user_id, day, service, model, path, tenant) DO UPDATE SET {}",
        values.join(", "),
        adds.join(", ")
    )
}

/// A u64 as SQLite's i64 (saturating: counters never reach it).
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(row: &Row<'_>, idx: usize, column: &str) -> Result<u64, StoreError> {
    u64::try_from(col::<i64>(row, idx, column)?)
        .map_err(|_| corrupt(&format!("{column} is negative")))
}

/// A row of (day, user, tenant, service, model, path, counters…).
fn usage_row(row: &Row<'_>, with_tenant: bool) -> Result<UsageRow, StoreError> {
    let day = parse_day(&col::<String>(row, 0, "usage_daily.day")?)
        .ok_or_else(|| corrupt("usage_daily.day is not a day"))?;
    let user = UserId::new(col::<String>(row, 1, "usage_daily.user_id")?)
        .ok_or_else(|| corrupt("usage_daily.user_id is not a user id"))?;
    let tenant = col::<String>(row, 2, "usage_daily.tenant")?;
    let service = col::<String>(row, 3, "usage_daily.service")?
        .parse::<Service>()
        .map_err(|_| corrupt("usage_daily.service names no known service"))?;
    let model = col::<String>(row, 4, "usage_daily.model")?;
    let path = ResolutionPath::parse(&col::<String>(row, 5, "usage_daily.path")?)
        .ok_or_else(|| corrupt("usage_daily.path names no path"))?;
    let mut values = [0u64; 11];
    for (i, value) in values.iter_mut().enumerate() {
        *value = uint(row, 6 + i, COUNT_COLUMNS[i])?;
    }
    Ok(UsageRow {
        day,
        user,
        tenant: if with_tenant {
            TenantId::new(tenant)
        } else {
            None
        },
        service,
        model,
        path,
        counts: UsageCounts::from_values(values),
    })
}

/// A `usage_requests` row as an entry.
fn entry_from_row(row: &Row<'_>) -> Result<UsageEntry, StoreError> {
    let at_ms: i64 = col(row, 1, "usage_requests.at_ms")?;
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
        .map_err(|_| corrupt("usage_requests.at_ms is out of range"))?;
    let opt_uint = |idx: usize, column: &str| -> Result<Option<u64>, StoreError> {
        col::<Option<i64>>(row, idx, column)?
            .map(|v| u64::try_from(v).map_err(|_| corrupt(&format!("{column} is negative"))))
            .transpose()
    };
    Ok(UsageEntry {
        user: UserId::new(col::<String>(row, 0, "usage_requests.user_id")?)
            .ok_or_else(|| corrupt("usage_requests.user_id is not a user id"))?,
        at,
        request_id: col(row, 2, "usage_requests.request_id")?,
        attempt: u32::try_from(col::<i64>(row, 3, "usage_requests.attempt")?)
            .map_err(|_| corrupt("usage_requests.attempt is out of range"))?,
        tenant: col::<Option<String>>(row, 4, "usage_requests.tenant")?.and_then(TenantId::new),
        service: col::<String>(row, 5, "usage_requests.service")?
            .parse::<Service>()
            .map_err(|_| corrupt("usage_requests.service names no known service"))?,
        model: col(row, 6, "usage_requests.model")?,
        path: ResolutionPath::parse(&col::<String>(row, 7, "usage_requests.path")?)
            .ok_or_else(|| corrupt("usage_requests.path names no path"))?,
        prompt_tokens: uint(row, 8, "usage_requests.prompt_tokens")?,
        completion_tokens: uint(row, 9, "usage_requests.completion_tokens")?,
        cost_nanos: opt_uint(10, "usage_requests.cost_nanos")?,
        estimated: bool_from_int(col(row, 11, "usage_requests.estimated")?, "estimated")?,
        outcome: LedgerOutcome::parse(&col::<String>(row, 12, "usage_requests.outcome")?)
            .ok_or_else(|| corrupt("usage_requests.outcome is not an outcome"))?,
        error_code: col(row, 13, "usage_requests.error_code")?,
        stream: bool_from_int(col(row, 14, "usage_requests.stream")?, "stream")?,
        fallback: bool_from_int(col(row, 15, "usage_requests.fallback")?, "fallback")?,
        time_to_first_byte_ms: opt_uint(16, "usage_requests.ttfb_ms")?,
        duration_ms: uint(row, 17, "usage_requests.duration_ms")?,
    })
}

const REQUEST_COLUMNS: &str = "user_id, at_ms, request_id, attempt, tenant, service, model, path, \
     prompt_tokens, completion_tokens, cost_nanos, estimated, outcome, error_code, stream, \
     fallback, ttfb_ms, duration_ms";

#[async_trait]
impl UsageStore for EmbeddedStore {
    async fn record_usage(
        &self,
        entry: &UsageEntry,
        retention: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.inner
            .usage_writer
            .write(entry.clone(), retention)
            .await
    }

    async fn flush_usage(&self) -> Result<(), StoreError> {
        self.inner.usage_writer.flush().await
    }

    async fn user_usage(
        &self,
        user: &UserId,
        from: Date,
        to: Date,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let user = user.clone();
        let sums: Vec<String> = COUNT_COLUMNS.iter().map(|c| format!("SUM({c})")).collect();
        let sql = format!(
            "SELECT day, user_id, '', service, model, path, {} FROM usage_daily \
             WHERE user_id = ?1 AND day BETWEEN ?2 AND ?3 \
             GROUP BY day, service, model, path",
            sums.join(", ")
        );
        self.inner.usage_writer.flush().await?;
        self.run(move |inner| {
            let conn = inner.usage_reads()?;
            let mut stmt = conn.prepare_cached(&sql).map_err(StoreError::backend)?;
            let mut rows = stmt
                .query(params![user.as_str(), day_text(from), day_text(to)])
                .map_err(StoreError::backend)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(StoreError::backend)? {
                out.push(usage_row(row, false)?);
            }
            Ok(out)
        })
        .await
    }

    async fn all_usage(&self, from: Date, to: Date) -> Result<Vec<UsageRow>, StoreError> {
        let sql = format!(
            "SELECT day, user_id, tenant, service, model, path, {} FROM usage_daily \
             WHERE day BETWEEN ?1 AND ?2",
            COUNT_COLUMNS.join(", ")
        );
        self.inner.usage_writer.flush().await?;
        self.run(move |inner| {
            let conn = inner.usage_reads()?;
            let mut stmt = conn.prepare_cached(&sql).map_err(StoreError::backend)?;
            let mut rows = stmt
                .query(params![day_text(from), day_text(to)])
                .map_err(StoreError::backend)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(StoreError::backend)? {
                out.push(usage_row(row, true)?);
            }
            Ok(out)
        })
        .await
    }

    async fn recent_usage(
        &self,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<UsageEntry>, StoreError> {
        let user = user.clone();
        let now_ms = epoch_ms(crate::domain::now());
        self.inner.usage_writer.flush().await?;
        self.run(move |inner| {
            let conn = inner.usage_reads()?;
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {REQUEST_COLUMNS} FROM usage_requests \
                     WHERE user_id = ?1 AND expires_ms > ?2 \
                     ORDER BY at_ms DESC, request_id DESC, attempt DESC LIMIT ?3"
                ))
                .map_err(StoreError::backend)?;
            let mut rows = stmt
                .query(params![
                    user.as_str(),
                    now_ms,
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ])
                .map_err(StoreError::backend)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(StoreError::backend)? {
                out.push(entry_from_row(row)?);
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use crate::store::LedgerOutcome;

    fn entry(user: &UserId, request_id: &str) -> UsageEntry {
        UsageEntry {
            user: user.clone(),
            tenant: None,
            at: crate::domain::now(),
            request_id: request_id.to_owned(),
            attempt: 0,
            service: Service::OpenAi,
            model: "openai/gpt-4o-mini".to_owned(),
            path: ResolutionPath::UserProvider,
            prompt_tokens: 3,
            completion_tokens: 4,
            cost_nanos: None,
            estimated: false,
            outcome: LedgerOutcome::Ok,
            error_code: None,
            stream: false,
            fallback: false,
            time_to_first_byte_ms: Some(1),
            duration_ms: 2,
        }
    }

    /// Raw entries of `user` as another connection (another process) sees
    /// the file, without asking the writer to flush.
    fn raw_count(dir: &Path, user: &UserId) -> i64 {
        let conn = Connection::open(dir.join(USAGE_DB_FILE)).unwrap();
        conn.query_row(
            "SELECT COUNT(*) FROM usage_requests WHERE user_id = ?1",
            [user.as_str()],
            |row| row.get(0),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn entries_are_committed_without_a_reader_and_flushed_for_one() {
        let tmp = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(tmp.path(), MasterKey::generate()).unwrap();
        let keep = Some(Duration::from_secs(3600));

        // By default a write returns once committed, for any reader.
        let user = UserId::new("eager").unwrap();
        store.record_usage(&entry(&user, "e1"), keep).await.unwrap();
        assert_eq!(raw_count(tmp.path(), &user), 1);

        store.defer_ledger_commits();

        // Left alone, the writer commits within its linger.
        let user = UserId::new("linger").unwrap();
        store.record_usage(&entry(&user, "r1"), keep).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while raw_count(tmp.path(), &user) < 1 {
            assert!(std::time::Instant::now() < deadline, "never committed");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }

        // A flush returns only once everything handed over before it is on
        // the file, for any reader.
        let user = UserId::new("flushed").unwrap();
        for i in 0..20 {
            store
                .record_usage(&entry(&user, &format!("f{i}")), keep)
                .await
                .unwrap();
        }
        store.flush_usage().await.unwrap();
        assert_eq!(raw_count(tmp.path(), &user), 20);

        // The store's own reads see their writes at once.
        let user = UserId::new("own-read").unwrap();
        store.record_usage(&entry(&user, "o1"), keep).await.unwrap();
        assert_eq!(store.recent_usage(&user, 10).await.unwrap().len(), 1);
    }
}
