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
use super::{Expected, KeyMark, KeyPage, MetadataStore, SecretStore, StoreError, UserSnapshot};
use crate::crypto::{self, MasterKey};
use crate::domain::{
    self, ApiKey, KeyId, KeyRecord, PendingKey, RotationOutcome, RotationRejection, SecretRef,
    Service, Settings, Timestamp, UserId, ValidationResult,
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

mod api_tokens;
mod audit_log;
mod budget;
mod keys;
mod ratelimit;
mod schema;
mod secrets;
mod usage;
use schema::migrate;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "byok.db";

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a rate counter is kept after its window ends before a later hit
/// prunes it: room for callers whose clocks lag.
const RATE_PRUNE_MARGIN_MS: i64 = 60_000;

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
    ///
    /// Processes opening one data directory at the same moment (functions
    /// sharing a local store) can find it busy in ways SQLite does not wait
    /// out: switching to WAL and creating the schema need a lock another
    /// opener may hold, and SQLite refuses at once rather than risk a
    /// deadlock. Such an open is tried again, for up to about five seconds.
    pub fn open(data_dir: &Path, master: MasterKey) -> Result<Self, StoreError> {
        const ATTEMPTS: u32 = 50;
        let mut attempt = 1;
        loop {
            match Self::open_once(data_dir, master.duplicate()) {
                Err(err) if attempt < ATTEMPTS && is_busy(&err) => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                opened => return opened,
            }
        }
    }

    fn open_once(data_dir: &Path, master: MasterKey) -> Result<Self, StoreError> {
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

    /// Ledger writes return once handed to the writer thread, which
    /// commits them in batches (for a long-lived server whose reads and
    /// shutdown flush; see [`usage`]).
    pub fn defer_ledger_commits(&self) {
        self.inner.usage_writer.defer_commits();
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

/// Whether `err` is SQLite saying the database is busy or locked.
fn is_busy(err: &StoreError) -> bool {
    let StoreError::Backend(source) = err else {
        return false;
    };
    source
        .downcast_ref::<rusqlite::Error>()
        .and_then(rusqlite::Error::sqlite_error_code)
        .is_some_and(|code| {
            matches!(
                code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            )
        })
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

/// The secret id of (user, service).
/// A new secret's id: `{user}/{service}/{random}`, never one an earlier
/// secret had (data written before secrets were per key used
/// `{user}/{service}`; those ids stay valid).
fn new_secret_id(user: &UserId, service: Service) -> Result<String, StoreError> {
    let unique = crypto::random_hex::<16>().map_err(StoreError::backend)?;
    Ok(format!("{user}/{service}/{unique}"))
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

#[cfg(test)]
mod tests {
    use super::schema::{SCHEMA_V1, SCHEMA_VERSION};
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    fn record(user: &UserId, service: Service, secret: SecretRef) -> KeyRecord {
        let now = domain::now();
        KeyRecord {
            user: user.clone(),
            service,
            id: KeyId::first(),
            priority: 0,
            last_used_at: None,
            cooldown_until: None,
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
            .put_secret(&user("u"), Service::OpenAi, &ApiKey::new("sk-x"), None)
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
            .put_secret(&user("u"), Service::OpenAi, &ApiKey::new("sk-y"), None)
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
            let into: Option<&SecretRef> = refs.last();
            let secret = store.put_secret(&u, Service::Gateway, &key, into);
            refs.push(secret.await.unwrap());
        }
        assert!(refs.iter().all(|r| r.id == refs[0].id));
        assert!(refs[0].id.starts_with("odd/user:name ü/gateway/"));
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
            .put_secret(&u, Service::OpenAi, &ApiKey::new("sk-canary-corrupt"), None)
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
        assert!(
            store
                .delete_key(&u, Service::OpenAi, &KeyId::first())
                .await
                .is_err()
        );
        assert_eq!(
            conn.query_row("SELECT count(*) FROM keys", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            1
        );

        conn.execute(
            "UPDATE keys SET created_at = updated_at, service = 'mistralai'",
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
        let err = store
            .get_key(&u, Service::OpenAi, &KeyId::first())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    }

    #[tokio::test]
    async fn moved_ciphertext_does_not_open() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let a = store
            .put_secret(
                &user("alice"),
                Service::OpenAi,
                &ApiKey::new("sk-alice"),
                None,
            )
            .await
            .unwrap();
        let b = store
            .put_secret(&user("bob"), Service::OpenAi, &ApiKey::new("sk-bob"), None)
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
