//! The embedded store: settings, key metadata and sealed secrets in one
//! SQLite file, for `byok-local` and single-host deployments.
//!
//! One connection behind a mutex serves every call on the blocking thread
//! pool. Secrets are sealed with AES-256-GCM under the [`MasterKey`] before
//! they reach SQLite; the associated data binds each ciphertext to its row
//! (secret id, version id, user, service), so a ciphertext copied or moved to
//! another row fails to open.
//!
//! # Secret versions
//! Each (user, service) has one secret id (`{user}/{service}`: services never
//! contain `/`, so the id is unambiguous) and any number of versions, each
//! with a stage. [`SecretStore::put_secret`] runs in one transaction: every
//! row of the secret that is not `current` is deleted unless the key's
//! metadata still points at it, the `current` row becomes `previous`, and the
//! new version is inserted as `current`. So one `current` and at most one
//! `previous` exist (two partial unique indexes enforce it), plus, only after
//! a replacement that crashed between its secret and metadata writes, the
//! `deprecated` version the metadata still names: metadata never points at a
//! missing secret. The stage `pending` is reserved for rotation.
//! Each row records the id of the master key that sealed it
//! ([`MasterKey::key_id`]) so master-key rotation can find rows to re-seal.
//!
//! # Rate counters and the audit log
//! Schema version 2 adds `rate_counters` (one row per user, action and
//! fixed window; [`RateLimitStore::hit`] is one `BEGIN IMMEDIATE`
//! transaction: prune rows whose window ended over a minute ago, then an upsert that adds
//! one only while the count is below the limit) and `audit_events` (keyed by
//! user and time-ordered id, listed newest first). A version 1 file is
//! upgraded in place when opened.
//!
//! # Usage ledger and rate counters
//! Metering data lives in a file of its own, `usage.db` beside `byok.db`
//! (see [`usage`]): the usage ledger and, since the ledger came, the rate
//! counters (the `rate_counters` table of `byok.db` is no longer written).
//! Neither has anything to commit together with keys; a write to `byok.db`
//! from another connection would invalidate the page cache that the next
//! request's resolution reads from (SQLite drops a connection's cached pages
//! whenever another connection has committed to the same file); and
//! metering commits need not wait for the disk as key writes do.

use super::audit::{self, AuditAction, AuditCursor, AuditEvent, AuditId, AuditPage, AuditStore};
use super::ratelimit::{RateAction, RateDecision, RateLimitStore, Window};
use super::rotation::{ListedSecret, RotationStore, SecretVersions};
use super::{Expected, KeyPage, MetadataStore, SecretStore, StoreError, UserSnapshot};
use crate::crypto::{self, MasterKey};
use crate::domain::{
    self, ApiKey, KeyRecord, PendingKey, RotationOutcome, RotationRejection, SecretRef, Service,
    Settings, Timestamp, UserId, ValidationResult,
};
use async_trait::async_trait;
use rusqlite::types::FromSql;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use std::fmt;
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use time::UtcOffset;
use time::format_description::well_known::Rfc3339;

mod budget;
mod usage;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "byok.db";

/// The schema this build writes, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 3;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a rate counter is kept after its window ends before a later hit
/// prunes it: room for callers whose clocks lag.
const RATE_PRUNE_MARGIN_MS: i64 = 60_000;

/// Schema version 1. `STRICT` tables so a value of the wrong type cannot be stored.
const SCHEMA_V1: &str = "
CREATE TABLE settings (
    user_id                TEXT    NOT NULL PRIMARY KEY,
    allow_gateway_fallback INTEGER NOT NULL CHECK (allow_gateway_fallback IN (0, 1)),
    updated_at             TEXT    NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE keys (
    user_id           TEXT    NOT NULL,
    service           TEXT    NOT NULL,
    label             TEXT    NOT NULL,
    masked_key        TEXT    NOT NULL,
    enabled           INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    base_url          TEXT,
    created_at        TEXT    NOT NULL,
    updated_at        TEXT    NOT NULL,
    last_validated_at TEXT,
    last_validation   TEXT,
    secret_id         TEXT    NOT NULL,
    secret_version    TEXT    NOT NULL,
    revision          INTEGER NOT NULL CHECK (revision >= 0),
    PRIMARY KEY (user_id, service)
) STRICT, WITHOUT ROWID;

CREATE TABLE secrets (
    secret_id     TEXT NOT NULL,
    version_id    TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    service       TEXT NOT NULL,
    stage         TEXT NOT NULL
                  CHECK (stage IN ('current', 'previous', 'pending', 'deprecated')),
    master_key_id TEXT NOT NULL,
    nonce         BLOB NOT NULL,
    ciphertext    BLOB NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (secret_id, version_id)
) STRICT, WITHOUT ROWID;

CREATE UNIQUE INDEX secrets_one_current ON secrets (secret_id) WHERE stage = 'current';
CREATE UNIQUE INDEX secrets_one_previous ON secrets (secret_id) WHERE stage = 'previous';
";

/// Schema version 2: rate-limit counters and the audit log. Neither is read
/// by `load_user`. A counter row lives until its window ends plus a margin
/// (`expires_ms`, epoch milliseconds), then later hits prune it. Audit rows are keyed by
/// (user, id), which is also the index listing walks backwards.
const SCHEMA_V2: &str = "
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

CREATE TABLE audit_events (
    user_id    TEXT NOT NULL,
    id         TEXT NOT NULL,
    at         TEXT NOT NULL,
    action     TEXT NOT NULL,
    service    TEXT NOT NULL,
    result     TEXT,
    request_id TEXT NOT NULL,
    PRIMARY KEY (user_id, id)
) STRICT, WITHOUT ROWID;
";

/// Schema version 3: rotation. Key rows gain the rotation columns (all
/// NULL when unset); secrets gain the stage `staged` (a replacement key the
/// user staged, at most one per secret, served by nothing) and at most one
/// `pending` row per secret (the version a rotation is testing). SQLite cannot
/// change a CHECK constraint in place, so `secrets` is rebuilt.
const SCHEMA_V3: &str = "
ALTER TABLE keys ADD COLUMN rotated_at TEXT;
ALTER TABLE keys ADD COLUMN pending_version TEXT;
ALTER TABLE keys ADD COLUMN pending_masked_key TEXT;
ALTER TABLE keys ADD COLUMN pending_staged_at TEXT;
ALTER TABLE keys ADD COLUMN pending_token TEXT;
ALTER TABLE keys ADD COLUMN last_rotation_at TEXT;
ALTER TABLE keys ADD COLUMN last_rotation_rejected TEXT;

CREATE TABLE secrets_v3 (
    secret_id     TEXT NOT NULL,
    version_id    TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    service       TEXT NOT NULL,
    stage         TEXT NOT NULL
                  CHECK (stage IN ('current', 'previous', 'pending', 'staged', 'deprecated')),
    master_key_id TEXT NOT NULL,
    nonce         BLOB NOT NULL,
    ciphertext    BLOB NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (secret_id, version_id)
) STRICT, WITHOUT ROWID;
INSERT INTO secrets_v3 (secret_id, version_id, user_id, service, stage, master_key_id, nonce,
                        ciphertext, created_at)
    SELECT secret_id, version_id, user_id, service, stage, master_key_id, nonce, ciphertext,
           created_at FROM secrets;
DROP TABLE secrets;
ALTER TABLE secrets_v3 RENAME TO secrets;
CREATE UNIQUE INDEX secrets_one_current ON secrets (secret_id) WHERE stage = 'current';
CREATE UNIQUE INDEX secrets_one_previous ON secrets (secret_id) WHERE stage = 'previous';
CREATE UNIQUE INDEX secrets_one_pending ON secrets (secret_id) WHERE stage = 'pending';
CREATE UNIQUE INDEX secrets_one_staged ON secrets (secret_id) WHERE stage = 'staged';
";

const KEY_COLUMNS: &str = "user_id, service, label, masked_key, enabled, base_url, created_at, \
     updated_at, last_validated_at, last_validation, secret_id, secret_version, revision, \
     rotated_at, pending_version, pending_masked_key, pending_staged_at, pending_token, \
     last_rotation_at, last_rotation_rejected";

/// Settings, key records and secrets of every user in one SQLite file.
/// Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    db_path: PathBuf,
}

struct Inner {
    conn: Mutex<Connection>,
    /// The usage ledger's file: a connection for reports, and the writer
    /// thread with a connection of its own.
    usage_reads: Mutex<Connection>,
    usage_writer: usage::UsageWriter,
    /// Request-rate counters (in usage.db too).
    counters: Mutex<Connection>,
    master: MasterKey,
    master_key_id: String,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("db_path", &self.db_path)
            .field("master_key_id", &self.inner.master_key_id)
            .finish()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) `data_dir/byok.db`: creates `data_dir` with mode
    /// 0700 if missing, makes the database file 0600 (SQLite gives its
    /// `-wal`/`-shm` files the same mode), enables WAL and foreign keys, and
    /// creates or checks the schema.
    pub fn open(data_dir: &Path, master: MasterKey) -> Result<Self, StoreError> {
        if !data_dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(data_dir)
                .map_err(StoreError::backend)?;
        }
        let db_path = data_dir.join(DB_FILE);
        create_private(&db_path)?;

        let mut conn = Connection::open(&db_path).map_err(StoreError::backend)?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(StoreError::backend)?;
        let journal: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(StoreError::backend)?;
        if !journal.eq_ignore_ascii_case("wal") {
            return Err(StoreError::backend(io::Error::other(
                "SQLite refused the WAL journal mode",
            )));
        }
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(StoreError::backend)?;
        // Overwrite deleted content (old ciphertexts) instead of leaving it in free pages.
        conn.pragma_update(None, "secure_delete", true)
            .map_err(StoreError::backend)?;
        migrate(&mut conn)?;
        let (usage_reads, counters, usage_writer) = usage::open(data_dir)?;

        let master_key_id = master.key_id();
        // Refuse a master key that opens none of the stored secrets: starting
        // would only turn every later use of a key into an error.
        let (total, ours): (i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE master_key_id = ?1) FROM secrets",
                [&master_key_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(StoreError::backend)?;
        if total > 0 && ours == 0 {
            return Err(StoreError::WrongMasterKey);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                usage_reads: Mutex::new(usage_reads),
                usage_writer,
                counters: Mutex::new(counters),
                master,
                master_key_id,
            }),
            db_path,
        })
    }

    /// Where the database file is.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// Runs `f` on the blocking thread pool.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(StoreError::backend)?
    }
}

impl Inner {
    fn conn(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        lock(&self.conn, "database")
    }

    fn counters(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        lock(&self.counters, "counters")
    }

    fn usage_reads(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        lock(&self.usage_reads, "usage")
    }
}

/// Locks one of the store's connections; a poisoned lock is an error, not a panic.
fn lock<'a>(
    conn: &'a Mutex<Connection>,
    which: &str,
) -> Result<MutexGuard<'a, Connection>, StoreError> {
    conn.lock().map_err(|_| {
        StoreError::Corrupt(format!(
            "the {which} connection lock was poisoned by a panic"
        ))
    })
}

/// Creates `path` (if missing) readable by its owner only, before SQLite
/// opens it, so a database file is never readable by others.
fn create_private(path: &Path) -> Result<(), StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(StoreError::backend)?;
    std::fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(StoreError::backend)
}

/// Creates the schema in a new database, or checks an existing one's version.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(StoreError::backend)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(StoreError::backend)?;
    match version {
        0..=2 => {
            if version == 0 {
                tx.execute_batch(SCHEMA_V1).map_err(StoreError::backend)?;
            }
            if version <= 1 {
                tx.execute_batch(SCHEMA_V2).map_err(StoreError::backend)?;
            }
            tx.execute_batch(SCHEMA_V3).map_err(StoreError::backend)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(StoreError::backend)?;
        }
        SCHEMA_VERSION => {}
        other => {
            return Err(StoreError::Corrupt(format!(
                "database schema version {other} is not supported by this build \
                 (it knows version {SCHEMA_VERSION})"
            )));
        }
    }
    tx.commit().map_err(StoreError::backend)
}

/// The secret id of (user, service).
fn secret_id(user: &UserId, service: Service) -> String {
    format!("{user}/{service}")
}

/// Associated data binding a ciphertext to its row. User ids hold no control
/// characters and version ids are fixed-length hex, so the encoding is unambiguous.
pub(crate) fn secret_aad(secret_id: &str, version_id: &str, user: &str, service: &str) -> Vec<u8> {
    format!("byok:v1:{secret_id}:{version_id}\0{user}\0{service}").into_bytes()
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn ts_to_text(t: Timestamp) -> Result<String, StoreError> {
    t.checked_to_offset(UtcOffset::UTC)
        .unwrap_or(t)
        .format(&Rfc3339)
        .map_err(StoreError::backend)
}

fn ts_from_text(text: &str, column: &str) -> Result<Timestamp, StoreError> {
    Timestamp::parse(text, &Rfc3339)
        .map_err(|_| StoreError::Corrupt(format!("{column} is not an RFC 3339 timestamp")))
}

fn bool_from_int(value: i64, column: &str) -> Result<bool, StoreError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(StoreError::Corrupt(format!("{column} is not 0 or 1"))),
    }
}

/// Column `idx` of `row`; a value of the wrong type is a corrupt item, not a backend failure.
fn col<T: FromSql>(row: &Row<'_>, idx: usize, column: &str) -> Result<T, StoreError> {
    row.get(idx).map_err(|err| match err {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => {
            StoreError::Corrupt(format!("{column} has a value of the wrong type"))
        }
        other => StoreError::backend(other),
    })
}

/// A `keys` row (selected as [`KEY_COLUMNS`]) as a record.
fn key_from_row(row: &Row<'_>) -> Result<KeyRecord, StoreError> {
    let user = UserId::new(col::<String>(row, 0, "keys.user_id")?)
        .ok_or_else(|| corrupt("keys.user_id is not a valid user id"))?;
    let service = col::<String>(row, 1, "keys.service")?
        .parse::<Service>()
        .map_err(|_| corrupt("keys.service names no known service"))?;
    let last_validated_at = col::<Option<String>>(row, 8, "keys.last_validated_at")?
        .map(|t| ts_from_text(&t, "keys.last_validated_at"))
        .transpose()?;
    let last_validation = col::<Option<String>>(row, 9, "keys.last_validation")?
        .map(|v| {
            ValidationResult::parse(&v)
                .ok_or_else(|| corrupt("keys.last_validation is not a known result"))
        })
        .transpose()?;
    let revision = u64::try_from(col::<i64>(row, 12, "keys.revision")?)
        .map_err(|_| corrupt("keys.revision is negative"))?;
    let opt_ts = |idx: usize, column: &str| -> Result<Option<Timestamp>, StoreError> {
        col::<Option<String>>(row, idx, column)?
            .map(|t| ts_from_text(&t, column))
            .transpose()
    };
    let rotated_at = opt_ts(13, "keys.rotated_at")?;
    let pending = match col::<Option<String>>(row, 14, "keys.pending_version")? {
        None => None,
        Some(version) => Some(PendingKey {
            version,
            masked_key: col::<Option<String>>(row, 15, "keys.pending_masked_key")?
                .ok_or_else(|| corrupt("keys.pending_masked_key is missing"))?,
            staged_at: opt_ts(16, "keys.pending_staged_at")?
                .ok_or_else(|| corrupt("keys.pending_staged_at is missing"))?,
            token: col(row, 17, "keys.pending_token")?,
        }),
    };
    let last_rotation = match opt_ts(18, "keys.last_rotation_at")? {
        None => None,
        Some(at) => Some(RotationOutcome {
            at,
            rejected: col::<Option<String>>(row, 19, "keys.last_rotation_rejected")?
                .map(|r| {
                    RotationRejection::parse(&r)
                        .ok_or_else(|| corrupt("keys.last_rotation_rejected is not a known reason"))
                })
                .transpose()?,
        }),
    };
    Ok(KeyRecord {
        user,
        service,
        label: col(row, 2, "keys.label")?,
        masked_key: col(row, 3, "keys.masked_key")?,
        enabled: bool_from_int(col(row, 4, "keys.enabled")?, "keys.enabled")?,
        base_url: col(row, 5, "keys.base_url")?,
        created_at: ts_from_text(
            &col::<String>(row, 6, "keys.created_at")?,
            "keys.created_at",
        )?,
        updated_at: ts_from_text(
            &col::<String>(row, 7, "keys.updated_at")?,
            "keys.updated_at",
        )?,
        last_validated_at,
        last_validation,
        secret: SecretRef {
            id: col(row, 10, "keys.secret_id")?,
            version: col(row, 11, "keys.secret_version")?,
        },
        revision,
        rotated_at,
        pending,
        last_rotation,
    })
}

/// A record as the SQL values of [`KEY_COLUMNS`], in order.
struct KeyParams {
    created_at: String,
    updated_at: String,
    last_validated_at: Option<String>,
    revision: i64,
    rotated_at: Option<String>,
    pending_staged_at: Option<String>,
    last_rotation_at: Option<String>,
}

impl KeyParams {
    fn of(record: &KeyRecord) -> Result<Self, StoreError> {
        Ok(Self {
            created_at: ts_to_text(record.created_at)?,
            updated_at: ts_to_text(record.updated_at)?,
            last_validated_at: record.last_validated_at.map(ts_to_text).transpose()?,
            rotated_at: record.rotated_at.map(ts_to_text).transpose()?,
            pending_staged_at: record
                .pending
                .as_ref()
                .map(|p| ts_to_text(p.staged_at))
                .transpose()?,
            last_rotation_at: record.last_rotation.map(|o| ts_to_text(o.at)).transpose()?,
            revision: i64::try_from(record.revision).map_err(|_| {
                StoreError::backend(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "key revision exceeds the storable range",
                ))
            })?,
        })
    }
}

/// Reads one record inside a connection or transaction.
fn select_key(
    conn: &Connection,
    user: &UserId,
    service: Service,
) -> Result<Option<KeyRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE user_id = ?1 AND service = ?2"
        ))
        .map_err(StoreError::backend)?;
    let mut rows = stmt
        .query(params![user.as_str(), service.as_str()])
        .map_err(StoreError::backend)?;
    match rows.next().map_err(StoreError::backend)? {
        Some(row) => key_from_row(row).map(Some),
        None => Ok(None),
    }
}

#[async_trait]
impl MetadataStore for EmbeddedStore {
    async fn load_user(&self, user: &UserId) -> Result<UserSnapshot, StoreError> {
        // The hot path of every request: when the connection is free, this
        // short read (a few rows from SQLite's page cache) runs in place;
        // handing it to the blocking pool and back would cost more than the
        // read. A busy connection (a write in progress) is waited for on the
        // blocking pool, never on this thread.
        if let Ok(mut conn) = self.inner.conn.try_lock() {
            return read_snapshot(&mut conn, user);
        }
        let user = user.clone();
        self.run(move |inner| read_snapshot(&mut *inner.conn()?, &user))
            .await
    }

    async fn get_key(
        &self,
        user: &UserId,
        service: Service,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let user = user.clone();
        self.run(move |inner| {
            let conn = inner.conn()?;
            select_key(&conn, &user, service)
        })
        .await
    }

    async fn put_key(&self, record: &KeyRecord, expected: Expected) -> Result<(), StoreError> {
        let record = record.clone();
        self.run(move |inner| {
            let p = KeyParams::of(&record)?;
            let r = &record;
            let mut conn = inner.conn()?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::backend)?;
            let (user_id, service) = (r.user.as_str(), r.service.as_str());
            let status = r.last_validation.map(ValidationResult::as_str);
            let pending_version = r.pending.as_ref().map(|p| p.version.as_str());
            let pending_masked = r.pending.as_ref().map(|p| p.masked_key.as_str());
            let pending_token = r.pending.as_ref().and_then(|p| p.token.as_deref());
            let rejected = r
                .last_rotation
                .and_then(|o| o.rejected)
                .map(RotationRejection::as_str);
            let mut values: Vec<&dyn rusqlite::ToSql> = vec![
                &user_id,
                &service,
                &r.label,
                &r.masked_key,
                &r.enabled,
                &r.base_url,
                &p.created_at,
                &p.updated_at,
                &p.last_validated_at,
                &status,
                &r.secret.id,
                &r.secret.version,
                &p.revision,
                &p.rotated_at,
                &pending_version,
                &pending_masked,
                &p.pending_staged_at,
                &pending_token,
                &p.last_rotation_at,
                &rejected,
            ];
            let changed = match expected {
                Expected::Absent => tx.execute(
                    &format!(
                        "INSERT INTO keys ({KEY_COLUMNS}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, \
                         ?14, ?15, ?16, ?17, ?18, ?19, ?20) \
                         ON CONFLICT (user_id, service) DO NOTHING"
                    ),
                    values.as_slice(),
                ),
                Expected::Revision(stored) => {
                    // No stored revision can exceed i64::MAX, so such an expectation never matches.
                    let Ok(stored) = i64::try_from(stored) else {
                        return Err(StoreError::Conflict);
                    };
                    values.push(&stored);
                    tx.execute(
                        "UPDATE keys SET label = ?3, masked_key = ?4, enabled = ?5, base_url = ?6, \
                         created_at = ?7, updated_at = ?8, last_validated_at = ?9, \
                         last_validation = ?10, secret_id = ?11, secret_version = ?12, \
                         revision = ?13, rotated_at = ?14, pending_version = ?15, \
                         pending_masked_key = ?16, pending_staged_at = ?17, pending_token = ?18, \
                         last_rotation_at = ?19, last_rotation_rejected = ?20 \
                         WHERE user_id = ?1 AND service = ?2 AND revision = ?21",
                        values.as_slice(),
                    )
                }
            }
            .map_err(StoreError::backend)?;
            if changed != 1 {
                // Dropping the transaction rolls it back; nothing was changed anyway.
                return Err(StoreError::Conflict);
            }
            tx.commit().map_err(StoreError::backend)
        })
        .await
    }

    async fn delete_key(
        &self,
        user: &UserId,
        service: Service,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let user = user.clone();
        self.run(move |inner| {
            let mut conn = inner.conn()?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::backend)?;
            // A record that cannot be read back is reported and left in place.
            let Some(record) = select_key(&tx, &user, service)? else {
                return Ok(None);
            };
            tx.execute(
                "DELETE FROM keys WHERE user_id = ?1 AND service = ?2",
                params![user.as_str(), service.as_str()],
            )
            .map_err(StoreError::backend)?;
            tx.commit().map_err(StoreError::backend)?;
            Ok(Some(record))
        })
        .await
    }

    async fn put_settings(&self, user: &UserId, settings: Settings) -> Result<(), StoreError> {
        let user = user.clone();
        self.run(move |inner| {
            let now = ts_to_text(domain::now())?;
            inner
                .conn()?
                .execute(
                    "INSERT INTO settings (user_id, allow_gateway_fallback, updated_at) \
                     VALUES (?1, ?2, ?3) \
                     ON CONFLICT (user_id) DO UPDATE SET \
                     allow_gateway_fallback = excluded.allow_gateway_fallback, \
                     updated_at = excluded.updated_at",
                    params![user.as_str(), settings.allow_gateway_fallback, now],
                )
                .map_err(StoreError::backend)?;
            Ok(())
        })
        .await
    }
    async fn scan_keys(&self, after: Option<&str>, limit: usize) -> Result<KeyPage, StoreError> {
        let after = after
            .map(|cursor| {
                serde_json::from_str::<(String, String)>(cursor)
                    .map_err(|_| corrupt("scan cursor is not a [user, service] pair"))
            })
            .transpose()?;
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        self.run(move |inner| {
            let conn = inner.conn()?;
            let (user, service) = after.unwrap_or_default();
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM keys WHERE (user_id, service) > (?1, ?2) \
                     ORDER BY user_id, service LIMIT ?3"
                ))
                .map_err(StoreError::backend)?;
            let mut rows = stmt
                .query(params![user, service, limit])
                .map_err(StoreError::backend)?;
            let mut page = KeyPage::default();
            let mut read = 0;
            let mut last: Option<(String, String)> = None;
            while let Some(row) = rows.next().map_err(StoreError::backend)? {
                read += 1;
                last = Some((col(row, 0, "keys.user_id")?, col(row, 1, "keys.service")?));
                match key_from_row(row) {
                    Ok(record) => page.keys.push(record),
                    // One bad row must not stop an operator job over every user.
                    Err(err) => tracing::warn!(error = %err, "scan skipped an unreadable key row"),
                }
            }
            if read >= limit
                && let Some(last) = last
            {
                page.next = Some(serde_json::to_string(&last).map_err(StoreError::backend)?);
            }
            Ok(page)
        })
        .await
    }
}

#[async_trait]
impl SecretStore for EmbeddedStore {
    async fn put_secret(
        &self,
        user: &UserId,
        service: Service,
        key: &ApiKey,
    ) -> Result<SecretRef, StoreError> {
        let user = user.clone();
        let key = key.clone();
        self.run(move |inner| {
            let id = secret_id(&user, service);
            let version = crypto::random_hex::<16>().map_err(StoreError::backend)?;
            let aad = secret_aad(&id, &version, user.as_str(), service.as_str());
            let sealed = inner
                .master
                .seal(key.expose().as_bytes(), &aad)
                .map_err(StoreError::backend)?;
            drop(key);
            let now = ts_to_text(domain::now())?;

            let mut conn = inner.conn()?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::backend)?;
            // Older versions go, except one the metadata still points at (a
            // replacement that crashed before its metadata write): it stays,
            // as `deprecated`, until a later put finds it unreferenced.
            tx.execute(
                "DELETE FROM secrets WHERE secret_id = ?1 AND stage <> 'current' \
                 AND version_id NOT IN (SELECT secret_version FROM keys WHERE secret_id = ?1)",
                [&id],
            )
            .map_err(StoreError::backend)?;
            tx.execute(
                "UPDATE secrets SET stage = 'deprecated' WHERE secret_id = ?1 AND stage = 'previous'",
                [&id],
            )
            .map_err(StoreError::backend)?;
            tx.execute(
                "UPDATE secrets SET stage = 'previous' WHERE secret_id = ?1 AND stage = 'current'",
                [&id],
            )
            .map_err(StoreError::backend)?;
            tx.execute(
                "INSERT INTO secrets (secret_id, version_id, user_id, service, stage, \
                 master_key_id, nonce, ciphertext, created_at) \
                 VALUES (?1, ?2, ?3, ?4, 'current', ?5, ?6, ?7, ?8)",
                params![
                    id,
                    version,
                    user.as_str(),
                    service.as_str(),
                    inner.master_key_id,
                    sealed.nonce.as_slice(),
                    sealed.ciphertext,
                    now,
                ],
            )
            .map_err(StoreError::backend)?;
            tx.commit().map_err(StoreError::backend)?;
            Ok(SecretRef { id, version })
        })
        .await
    }

    async fn get_secret(&self, secret: &SecretRef) -> Result<ApiKey, StoreError> {
        let secret = secret.clone();
        self.run(move |inner| inner.read_version(&secret.id, &secret.version, None))
            .await
    }

    async fn delete_secret(&self, user: &UserId, service: Service) -> Result<(), StoreError> {
        let id = secret_id(user, service);
        self.run(move |inner| {
            inner
                .conn()?
                .execute("DELETE FROM secrets WHERE secret_id = ?1", [&id])
                .map_err(StoreError::backend)?;
            Ok(())
        })
        .await
    }
}

impl Inner {
    /// Seals `key` for the row (`id`, `version`) of (user, service).
    fn seal(
        &self,
        id: &str,
        version: &str,
        user: &str,
        service: &str,
        key: &ApiKey,
    ) -> Result<crypto::Sealed, StoreError> {
        self.master
            .seal(
                key.expose().as_bytes(),
                &secret_aad(id, version, user, service),
            )
            .map_err(StoreError::backend)
    }

    /// The value of version `version` of secret `id` (only while its stage
    /// is `stage`, if given); [`StoreError::SecretNotFound`] if there is none.
    fn read_version(
        &self,
        id: &str,
        version: &str,
        stage: Option<&str>,
    ) -> Result<ApiKey, StoreError> {
        let (user, service, master_key_id, nonce, ciphertext): (
            String,
            String,
            String,
            Vec<u8>,
            Vec<u8>,
        ) = self
            .conn()?
            .prepare_cached(
                "SELECT user_id, service, master_key_id, nonce, ciphertext FROM secrets \
                 WHERE secret_id = ?1 AND version_id = ?2 AND (?3 IS NULL OR stage = ?3)",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![id, version, stage], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })
                .optional()
            })
            .map_err(StoreError::backend)?
            .ok_or(StoreError::SecretNotFound)?;
        if master_key_id != self.master_key_id {
            return Err(StoreError::Decrypt);
        }
        let aad = secret_aad(id, version, &user, &service);
        let plain = self
            .master
            .open(&nonce, &ciphertext, &aad)
            .map_err(|_| StoreError::Decrypt)?;
        let text =
            std::str::from_utf8(&plain).map_err(|_| corrupt("a secret is not UTF-8 text"))?;
        Ok(ApiKey::new(text))
    }
}

/// Inserts a sealed row.
#[expect(clippy::too_many_arguments, reason = "one column each")]
fn insert_secret_row(
    tx: &Connection,
    inner: &Inner,
    id: &str,
    version: &str,
    user: &str,
    service: &str,
    stage: &str,
    key: &ApiKey,
) -> Result<(), StoreError> {
    let sealed = inner.seal(id, version, user, service, key)?;
    let now = ts_to_text(domain::now())?;
    tx.execute(
        "INSERT INTO secrets (secret_id, version_id, user_id, service, stage, \
         master_key_id, nonce, ciphertext, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            id,
            version,
            user,
            service,
            stage,
            inner.master_key_id,
            sealed.nonce.as_slice(),
            sealed.ciphertext,
            now,
        ],
    )
    .map_err(StoreError::backend)?;
    Ok(())
}

/// The owner of secret `id`, from any of its rows.
fn secret_owner(tx: &Connection, id: &str) -> Result<(String, String), StoreError> {
    tx.query_row(
        "SELECT user_id, service FROM secrets WHERE secret_id = ?1 LIMIT 1",
        [id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .optional()
    .map_err(StoreError::backend)?
    .ok_or(StoreError::SecretNotFound)
}

/// The stage of row (`id`, `version`), if the row exists.
fn row_stage(tx: &Connection, id: &str, version: &str) -> Result<Option<String>, StoreError> {
    tx.query_row(
        "SELECT stage FROM secrets WHERE secret_id = ?1 AND version_id = ?2",
        [id, version],
        |row| row.get(0),
    )
    .optional()
    .map_err(StoreError::backend)
}

#[async_trait]
impl RotationStore for EmbeddedStore {
    async fn stage(
        &self,
        user: &UserId,
        service: Service,
        key: &ApiKey,
    ) -> Result<SecretRef, StoreError> {
        let (user, key) = (user.clone(), key.clone());
        self.run(move |inner| {
            let id = secret_id(&user, service);
            let version = crypto::random_hex::<16>().map_err(StoreError::backend)?;
            let mut conn = inner.conn()?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::backend)?;
            let has_current: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM secrets WHERE secret_id = ?1 AND stage = 'current')",
                    [&id],
                    |row| row.get(0),
                )
                .map_err(StoreError::backend)?;
            if !has_current {
                return Err(StoreError::SecretNotFound);
            }
            tx.execute(
                "DELETE FROM secrets WHERE secret_id = ?1 AND stage = 'staged'",
                [&id],
            )
            .map_err(StoreError::backend)?;
            insert_secret_row(
                &tx,
                inner,
                &id,
                &version,
                user.as_str(),
                service.as_str(),
                "staged",
                &key,
            )?;
            tx.commit().map_err(StoreError::backend)?;
            Ok(SecretRef { id, version })
        })
        .await
    }

    async fn describe(&self, secret_id: &str) -> Result<SecretVersions, StoreError> {
        let id = secret_id.to_owned();
        self.run(move |inner| {
            let conn = inner.conn()?;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT version_id, user_id, service, stage FROM secrets WHERE secret_id = ?1",
                )
                .map_err(StoreError::backend)?;
            let rows = stmt
                .query_map([&id], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                })
                .map_err(StoreError::backend)?;
            let mut found: Option<SecretVersions> = None;
            for row in rows {
                let (version, user, service, stage) = row.map_err(StoreError::backend)?;
                let versions = match &mut found {
                    Some(v) => v,
                    None => found.insert(SecretVersions {
                        id: id.clone(),
                        user: UserId::new(user)
                            .ok_or_else(|| corrupt("secrets.user_id is not a valid user id"))?,
                        service: service
                            .parse()
                            .map_err(|_| corrupt("secrets.service names no known service"))?,
                        current: None,
                        pending: None,
                        staged: None,
                    }),
                };
                match stage.as_str() {
                    "current" => versions.current = Some(version),
                    "pending" => versions.pending = Some(version),
                    "staged" => versions.staged = Some(version),
                    _ => {}
                }
            }
            found.ok_or(StoreError::SecretNotFound)
        })
        .await
    }

    async fn put_pending(
        &self,
        secret_id: &str,
        token: &str,
        key: &ApiKey,
    ) -> Result<(), StoreError> {
        let (id, token, key) = (secret_id.to_owned(), token.to_owned(), key.clone());
        self.run(move |inner| {
            let mut conn = inner.conn()?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::backend)?;
            if row_stage(&tx, &id, &token)?.is_some() {
                // Written by an earlier attempt (and maybe promoted since).
                return Ok(());
            }
            let (user, service) = secret_owner(&tx, &id)?;
            tx.execute(
                "DELETE FROM secrets WHERE secret_id = ?1 AND stage = 'pending'",
                [&id],
            )
            .map_err(StoreError::backend)?;
            insert_secret_row(&tx, inner, &id, &token, &user, &service, "pending", &key)?;
            tx.commit().map_err(StoreError::backend)
        })
        .await
    }

    async fn get_pending(&self, secret_id: &str, token: &str) -> Result<ApiKey, StoreError> {
        let (id, token) = (secret_id.to_owned(), token.to_owned());
        self.run(move |inner| inner.read_version(&id, &token, Some("pending")))
            .await
    }

    async fn promote(&self, secret_id: &str, token: &str) -> Result<(), StoreError> {
        let (id, token) = (secret_id.to_owned(), token.to_owned());
        self.run(move |inner| {
            let mut conn = inner.conn()?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::backend)?;
            match row_stage(&tx, &id, &token)?.as_deref() {
                Some("current") => {}
                Some("pending") => {
                    // As in `put_secret`: older rows go unless metadata still
                    // points at one; current becomes previous.
                    tx.execute(
                        "DELETE FROM secrets WHERE secret_id = ?1 AND version_id <> ?2 \
                         AND stage NOT IN ('current', 'pending') \
                         AND version_id NOT IN (SELECT secret_version FROM keys WHERE secret_id = ?1)",
                        [&id, &token],
                    )
                    .map_err(StoreError::backend)?;
                    for sql in [
                        "UPDATE secrets SET stage = 'deprecated' WHERE secret_id = ?1 AND stage IN ('previous', 'staged')",
                        "UPDATE secrets SET stage = 'previous' WHERE secret_id = ?1 AND stage = 'current'",
                    ] {
                        tx.execute(sql, [&id]).map_err(StoreError::backend)?;
                    }
                    tx.execute(
                        "UPDATE secrets SET stage = 'current' WHERE secret_id = ?1 AND version_id = ?2",
                        [&id, &token],
                    )
                    .map_err(StoreError::backend)?;
                }
                _ => return Err(StoreError::SecretNotFound),
            }
            tx.execute(
                "DELETE FROM secrets WHERE secret_id = ?1 AND stage IN ('pending', 'staged')",
                [&id],
            )
            .map_err(StoreError::backend)?;
            tx.commit().map_err(StoreError::backend)
        })
        .await
    }

    async fn discard(
        &self,
        secret_id: &str,
        token: Option<&str>,
        staged: bool,
    ) -> Result<(), StoreError> {
        let (id, token) = (secret_id.to_owned(), token.map(str::to_owned));
        self.run(move |inner| {
            let mut conn = inner.conn()?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::backend)?;
            tx.execute(
                "DELETE FROM secrets WHERE secret_id = ?1 AND stage = 'pending' \
                 AND (?2 IS NULL OR version_id = ?2)",
                params![id, token],
            )
            .map_err(StoreError::backend)?;
            if staged {
                tx.execute(
                    "DELETE FROM secrets WHERE secret_id = ?1 AND stage = 'staged'",
                    [&id],
                )
                .map_err(StoreError::backend)?;
            }
            tx.commit().map_err(StoreError::backend)
        })
        .await
    }

    async fn list_secrets(&self) -> Result<Vec<ListedSecret>, StoreError> {
        self.run(|inner| {
            let conn = inner.conn()?;
            let mut stmt = conn
                .prepare(
                    "SELECT secret_id, MIN(user_id), MIN(service), MAX(created_at) \
                     FROM secrets GROUP BY secret_id ORDER BY secret_id",
                )
                .map_err(StoreError::backend)?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                })
                .map_err(StoreError::backend)?;
            let mut listed = Vec::new();
            for row in rows {
                let (id, user, service, changed) = row.map_err(StoreError::backend)?;
                listed.push(ListedSecret {
                    id,
                    owner: UserId::new(user).zip(service.parse::<Service>().ok()),
                    changed_at: Some(ts_from_text(&changed, "secrets.created_at")?),
                });
            }
            Ok(listed)
        })
        .await
    }

    async fn delete_by_id(&self, secret_id: &str) -> Result<(), StoreError> {
        let id = secret_id.to_owned();
        self.run(move |inner| {
            inner
                .conn()?
                .execute("DELETE FROM secrets WHERE secret_id = ?1", [&id])
                .map_err(StoreError::backend)?;
            Ok(())
        })
        .await
    }
}

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

/// An `audit_events` row (id, at, action, service, result, request_id) of `user`.
fn audit_from_row(user: &UserId, row: &Row<'_>) -> Result<AuditEvent, StoreError> {
    let id = AuditId::parse(&col::<String>(row, 0, "audit_events.id")?)
        .ok_or_else(|| corrupt("audit_events.id is not an audit id"))?;
    let action = AuditAction::parse(&col::<String>(row, 2, "audit_events.action")?)
        .ok_or_else(|| corrupt("audit_events.action is not a known action"))?;
    // An empty service: an event about no key (budgets).
    let service = match col::<String>(row, 3, "audit_events.service")? {
        text if text.is_empty() => None,
        text => Some(
            text.parse::<Service>()
                .map_err(|_| corrupt("audit_events.service names no known service"))?,
        ),
    };
    Ok(AuditEvent {
        id,
        user: user.clone(),
        at: ts_from_text(
            &col::<String>(row, 1, "audit_events.at")?,
            "audit_events.at",
        )?,
        action,
        service,
        result: col(row, 4, "audit_events.result")?,
        request_id: col(row, 5, "audit_events.request_id")?,
    })
}

#[async_trait]
impl AuditStore for EmbeddedStore {
    async fn append(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let event = event.clone();
        self.run(move |inner| {
            let at = ts_to_text(event.at)?;
            let changed = inner
                .conn()?
                .execute(
                    "INSERT INTO audit_events \
                     (user_id, id, at, action, service, result, request_id) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (user_id, id) DO NOTHING",
                    params![
                        event.user.as_str(),
                        event.id.as_str(),
                        at,
                        event.action.as_str(),
                        event.service.map_or("", Service::as_str),
                        event.result,
                        event.request_id,
                    ],
                )
                .map_err(StoreError::backend)?;
            if changed == 1 {
                Ok(())
            } else {
                Err(StoreError::Conflict)
            }
        })
        .await
    }

    async fn list(
        &self,
        user: &UserId,
        cursor: Option<&AuditCursor>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        let user = user.clone();
        // Ids start with a digit, so "~" sorts after every one of them.
        let before = cursor.map_or_else(|| "~".to_owned(), |c| c.id().as_str().to_owned());
        let limit = audit::page_limit(limit);
        self.run(move |inner| {
            let conn = inner.conn()?;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, at, action, service, result, request_id FROM audit_events \
                     WHERE user_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
                )
                .map_err(StoreError::backend)?;
            let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
            let mut rows = stmt
                .query(params![user.as_str(), before, fetch])
                .map_err(StoreError::backend)?;
            let mut events = Vec::with_capacity(limit + 1);
            while let Some(row) = rows.next().map_err(StoreError::backend)? {
                events.push(audit_from_row(&user, row)?);
            }
            Ok(audit::into_page(events, limit))
        })
        .await
    }
}

/// Settings and keys of one user, from one read transaction (the same snapshot).
fn read_snapshot(conn: &mut Connection, user: &UserId) -> Result<UserSnapshot, StoreError> {
    let tx = conn.transaction().map_err(StoreError::backend)?;
    let allow: Option<i64> = tx
        .prepare_cached("SELECT allow_gateway_fallback FROM settings WHERE user_id = ?1")
        .and_then(|mut stmt| stmt.query_row([user.as_str()], |row| row.get(0)).optional())
        .map_err(StoreError::backend)?;
    let settings = match allow {
        Some(v) => Settings {
            allow_gateway_fallback: bool_from_int(v, "settings.allow_gateway_fallback")?,
        },
        None => Settings::default(),
    };
    let mut keys = Vec::new();
    {
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM keys WHERE user_id = ?1 ORDER BY service"
            ))
            .map_err(StoreError::backend)?;
        let mut rows = stmt.query([user.as_str()]).map_err(StoreError::backend)?;
        while let Some(row) = rows.next().map_err(StoreError::backend)? {
            keys.push(key_from_row(row)?);
        }
    }
    tx.commit().map_err(StoreError::backend)?;
    Ok(UserSnapshot { settings, keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    fn record(user: &UserId, service: Service, secret: SecretRef) -> KeyRecord {
        let now = domain::now();
        KeyRecord {
            user: user.clone(),
            service,
            label: "work".into(),
            masked_key: "sk-...cdef".into(),
            enabled: true,
            base_url: None,
            created_at: now,
            updated_at: now,
            last_validated_at: None,
            last_validation: None,
            secret,
            revision: 1,
            rotated_at: None,
            pending: None,
            last_rotation: None,
        }
    }

    fn open(dir: &Path) -> EmbeddedStore {
        EmbeddedStore::open(dir, MasterKey::generate()).unwrap()
    }

    fn raw(store: &EmbeddedStore) -> Connection {
        Connection::open(store.db_path()).unwrap()
    }

    #[tokio::test]
    async fn open_creates_private_files_and_schema() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let store = open(&dir);
        assert_eq!(store.db_path(), dir.join(DB_FILE));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir) & 0o077, 0);
        assert_eq!(mode(store.db_path()), 0o600);
        store
            .put_secret(&user("u"), Service::OpenAi, &ApiKey::new("sk-x"))
            .await
            .unwrap();
        let wal = dir.join(format!("{DB_FILE}-wal"));
        assert_eq!(mode(&wal), 0o600);

        let conn = raw(&store);
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let journal: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        drop(conn);
        let printed = format!("{store:?}");
        assert!(printed.contains("EmbeddedStore"), "{printed}");
        drop(store);

        // Reopening keeps the schema and data; a master key other than the
        // one that sealed the secrets is refused at open.
        let dir = tmp.path().join("reopen");
        let key_b64 = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        let key = || MasterKey::from_base64(key_b64).unwrap();
        let store = EmbeddedStore::open(&dir, key()).unwrap();
        let secret = store
            .put_secret(&user("u"), Service::OpenAi, &ApiKey::new("sk-y"))
            .await
            .unwrap();
        drop(store);
        let store = EmbeddedStore::open(&dir, key()).unwrap();
        assert_eq!(store.get_secret(&secret).await.unwrap().expose(), "sk-y");
        drop(store);
        let err = EmbeddedStore::open(&dir, MasterKey::generate()).unwrap_err();
        assert!(matches!(err, StoreError::WrongMasterKey), "{err:?}");
    }

    #[tokio::test]
    async fn upgrades_a_version_1_database_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(tmp.path().join(DB_FILE)).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO settings VALUES ('old-user', 0, '2025-01-01T00:00:00Z')",
                [],
            )
            .unwrap();
        }
        let store = open(tmp.path());
        let version: i64 = raw(&store)
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let snap = store.load_user(&user("old-user")).await.unwrap();
        assert!(!snap.settings.allow_gateway_fallback);
        let d = store
            .hit(
                &user("old-user"),
                RateAction::Validate,
                1,
                Duration::from_secs(60),
                domain::now(),
            )
            .await
            .unwrap();
        assert!(d.allowed);
    }

    #[tokio::test]
    async fn ended_rate_windows_are_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let t0 = Timestamp::from_unix_timestamp(1_900_000_020).unwrap();
        let minute = Duration::from_secs(60);
        let count = || -> i64 {
            Connection::open(tmp.path().join(usage::USAGE_DB_FILE))
                .unwrap()
                .query_row("SELECT count(*) FROM rate_counters", [], |r| r.get(0))
                .unwrap()
        };
        for u in ["a", "b"] {
            store
                .hit(&user(u), RateAction::Validate, 5, minute, t0)
                .await
                .unwrap();
        }
        assert_eq!(count(), 2);
        // Within the margin after the window, the old rows stay.
        let t1 = t0 + time::Duration::seconds(90);
        store
            .hit(&user("a"), RateAction::Validate, 5, minute, t1)
            .await
            .unwrap();
        assert_eq!(count(), 3);
        // Past it, any hit prunes them.
        let t2 = t0 + time::Duration::seconds(121);
        store
            .hit(&user("c"), RateAction::Validate, 5, minute, t2)
            .await
            .unwrap();
        assert_eq!(count(), 2);
    }

    #[tokio::test]
    async fn metering_syncs_lazily_and_keys_sync_every_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let sync = |conn: &Connection| -> i64 {
            conn.pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap()
        };
        assert_eq!(sync(&store.inner.conn().unwrap()), 2, "byok.db: FULL");
        assert_eq!(
            sync(&store.inner.counters().unwrap()),
            1,
            "usage.db: NORMAL"
        );
        assert_eq!(sync(&store.inner.usage_reads.lock().unwrap()), 1);
        let mode = std::fs::metadata(tmp.path().join(usage::USAGE_DB_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn refuses_unknown_schema_version() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        raw(&store).pragma_update(None, "user_version", 7).unwrap();
        drop(store);
        let err = EmbeddedStore::open(tmp.path(), MasterKey::generate()).unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt(ref m) if m.contains('7')),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn keeps_only_current_and_previous_versions() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let u = user("odd/user:name ü");
        let mut refs = Vec::new();
        for i in 0..4 {
            let key = ApiKey::new(format!("sk-version-{i}"));
            refs.push(store.put_secret(&u, Service::Gateway, &key).await.unwrap());
        }
        assert!(refs.iter().all(|r| r.id == "odd/user:name ü/gateway"));
        let conn = raw(&store);
        let mut stmt = conn
            .prepare("SELECT version_id, stage FROM secrets ORDER BY stage")
            .unwrap();
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (refs[3].version.clone(), "current".to_owned()),
                (refs[2].version.clone(), "previous".to_owned()),
            ]
        );
        assert!(matches!(
            store.get_secret(&refs[1]).await,
            Err(StoreError::SecretNotFound)
        ));
        assert_eq!(
            store.get_secret(&refs[2]).await.unwrap(),
            ApiKey::new("sk-version-2")
        );
        assert_eq!(refs[3].version.len(), 32);
    }

    #[tokio::test]
    async fn corrupt_rows_are_reported_not_panicked_on() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let u = user("u1");
        let secret = store
            .put_secret(&u, Service::OpenAi, &ApiKey::new("sk-canary-corrupt"))
            .await
            .unwrap();
        store
            .put_key(&record(&u, Service::OpenAi, secret), Expected::Absent)
            .await
            .unwrap();
        let conn = raw(&store);

        conn.execute("UPDATE keys SET created_at = 'yesterday'", [])
            .unwrap();
        let err = store.load_user(&u).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt(ref m) if m.contains("created_at")),
            "{err:?}"
        );
        // A record that cannot be read back is not deleted.
        assert!(store.delete_key(&u, Service::OpenAi).await.is_err());
        assert_eq!(
            conn.query_row("SELECT count(*) FROM keys", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            1
        );

        conn.execute(
            "UPDATE keys SET created_at = updated_at, service = 'mistral'",
            [],
        )
        .unwrap();
        let err = store.load_user(&u).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt(ref m) if m.contains("service")),
            "{err:?}"
        );
        assert!(!err.to_string().contains("canary"));

        conn.execute(
            "UPDATE keys SET service = 'openai', last_validation = 'maybe'",
            [],
        )
        .unwrap();
        let err = store.get_key(&u, Service::OpenAi).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    }

    #[tokio::test]
    async fn moved_ciphertext_does_not_open() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let a = store
            .put_secret(&user("alice"), Service::OpenAi, &ApiKey::new("sk-alice"))
            .await
            .unwrap();
        let b = store
            .put_secret(&user("bob"), Service::OpenAi, &ApiKey::new("sk-bob"))
            .await
            .unwrap();
        // Give bob's row alice's nonce and ciphertext.
        raw(&store)
            .execute(
                "UPDATE secrets SET (nonce, ciphertext) = \
                 (SELECT nonce, ciphertext FROM secrets WHERE secret_id = ?1) \
                 WHERE secret_id = ?2",
                params![a.id, b.id],
            )
            .unwrap();
        assert!(matches!(
            store.get_secret(&b).await,
            Err(StoreError::Decrypt)
        ));
        assert_eq!(store.get_secret(&a).await.unwrap(), ApiKey::new("sk-alice"));
    }

    #[tokio::test]
    async fn poisoned_lock_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let inner = Arc::clone(&store.inner);
        let _ = std::thread::spawn(move || {
            let _guard = inner.conn.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        let err = store.load_user(&user("u")).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    }
}
