//! Master-key rotation of the embedded store: every sealed secret is opened
//! with the old key and sealed again, with a fresh nonce and the same
//! associated data, under the new one.
//!
//! # Crash safety
//! The re-seal is one SQLite `BEGIN IMMEDIATE` transaction (synchronous
//! `FULL`), so the database is always all-old or all-new. The connection
//! uses the exclusive locking mode: while another process (a running
//! `byok-local`) has the database open, the rotation is refused instead of
//! racing it.
//!
//! When the key lives in `data_dir/master.key` ([`rotate_key_file`]), the
//! steps are, under an exclusive `flock` of the data directory:
//! 1. the new key is written to `.master.key.next.tmp` (mode 0600, fsync),
//!    renamed to `master.key.next` and the directory fsynced: the new key is
//!    durable before it seals anything;
//! 2. the rows are re-sealed in one transaction;
//! 3. `master.key.next` is renamed over `master.key` (atomic) and the
//!    directory fsynced.
//!
//! A crash anywhere leaves one of these states, which
//! [`recover_interrupted`] (run before the store opens, and before any new
//! rotation) resolves:
//! - a stale `.master.key.next.tmp` only: never used; removed;
//! - `master.key.next` and rows under the current key (or no rows): the
//!   rotation is *resumed* (re-seal, then step 3), rather than abandoned;
//! - `master.key.next` and rows already under it: step 3 is finished;
//! - resuming is impossible because some row opens under neither key and no
//!   row is under the new key yet: the new key sealed nothing, so
//!   `master.key.next` is removed and the current key stays in use (logged).
//!   With rows under the new key too, the error is returned and nothing is
//!   touched.
//!
//! When the key comes from `BYOK_MASTER_KEY`, the operator holds both keys and
//! [`rotate_master_key`] alone is used: a crash leaves the database all-old or
//! all-new, and running it again with the same two keys completes it (rows
//! already under the new key are skipped). Opening the store with the key
//! that no longer matches fails with [`StoreError::WrongMasterKey`].
//!
//! Errors name what failed, never a key, a secret or a row's plaintext.

use super::StoreError;
use super::embedded::{DB_FILE, secret_aad};
use crate::crypto::{CryptoError, KEY_FILE, KEY_LEN, MasterKey};
use aes_gcm::aead::OsRng;
use aes_gcm::aead::rand_core::RngCore;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior, params};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;
use zeroize::Zeroizing;

/// The new key of a rotation in progress, beside [`KEY_FILE`].
pub const NEXT_KEY_FILE: &str = "master.key.next";
/// Where the new key is written before it is renamed to [`NEXT_KEY_FILE`].
const NEXT_KEY_TMP: &str = ".master.key.next.tmp";
/// How long the rotation waits for the database lock before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// What a re-seal did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// Rows opened with the old key and sealed with the new one.
    pub resealed: usize,
    /// Rows already sealed with the new key (an earlier run), left as they were.
    pub already_new: usize,
}

/// What [`rotate_key_file`] did: the re-seal and the ids (not the keys) of
/// the replaced and the new master key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFileRotation {
    pub report: RekeyReport,
    pub old_key_id: String,
    pub new_key_id: String,
}

/// Re-seals every row of `secrets` in `data_dir` sealed under `old` with
/// `new`, in one transaction. Rows already under `new` are skipped, so a
/// re-run is harmless. A row under neither key ([`StoreError::WrongMasterKey`])
/// or one that does not open under `old` ([`StoreError::Decrypt`]) fails the
/// whole rotation and changes nothing. No database (or no `secrets` table)
/// means nothing to re-seal. Blocking: call it on a blocking thread.
pub fn rotate_master_key(
    data_dir: &Path,
    old: &MasterKey,
    new: &MasterKey,
) -> Result<RekeyReport, StoreError> {
    reseal(data_dir, old, new).map_err(|failure| failure.error)
}

/// Rotates the key in `data_dir/master.key` to a new random one with the
/// protocol in the module documentation; the new key is only ever written to
/// the key file. Finishes an interrupted earlier rotation first. Blocking.
pub fn rotate_key_file(data_dir: &Path) -> Result<KeyFileRotation, StoreError> {
    let _lock = lock_dir(data_dir)?;
    recover_locked(data_dir)?;
    let old = read_key(&data_dir.join(KEY_FILE))?.ok_or_else(|| {
        StoreError::backend(io::Error::new(
            io::ErrorKind::NotFound,
            "the data directory holds no master.key to rotate",
        ))
    })?;
    let new = write_next_key(data_dir)?;
    match reseal(data_dir, &old, &new) {
        Ok(report) => {
            promote_next(data_dir)?;
            tracing::info!(
                old_key_id = %old.key_id(),
                new_key_id = %new.key_id(),
                resealed = report.resealed,
                "master key rotated"
            );
            Ok(KeyFileRotation {
                report,
                old_key_id: old.key_id(),
                new_key_id: new.key_id(),
            })
        }
        Err(failure) => {
            // The new key is fresh, so nothing is under it unless this
            // transaction committed. If it surely did not, drop the key;
            // otherwise leave it for recovery, which looks at the rows.
            let unused =
                !failure.maybe_committed || matches!(rows_under(data_dir, &new.key_id()), Ok(0));
            if unused && let Err(err) = discard_next(data_dir) {
                // Harmless: the next start resumes or abandons it.
                tracing::warn!(error = %err, "the unused new master key could not be removed");
            }
            Err(failure.error)
        }
    }
}

/// Resolves a rotation of `data_dir/master.key` that a crash interrupted
/// (see the module documentation); does nothing when there is none, and
/// never creates `data_dir`. Run it before the store is opened, and only
/// when the key lives in the data directory. Blocking.
pub fn recover_interrupted(data_dir: &Path) -> Result<(), StoreError> {
    match fs::metadata(data_dir) {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(StoreError::backend(err)),
    }
    let _lock = lock_dir(data_dir)?;
    recover_locked(data_dir)
}

/// [`recover_interrupted`] with the directory lock held.
fn recover_locked(data_dir: &Path) -> Result<(), StoreError> {
    // Never renamed into place, so it sealed nothing.
    remove_if_present(&data_dir.join(NEXT_KEY_TMP))?;
    let Some(next) = read_key(&data_dir.join(NEXT_KEY_FILE))? else {
        return Ok(());
    };
    tracing::warn!(
        new_key_id = %next.key_id(),
        "an interrupted master-key rotation was found; finishing it"
    );
    let outcome = match read_key(&data_dir.join(KEY_FILE))? {
        Some(current) => rotate_master_key(data_dir, &current, &next).map(drop),
        // Only the new key is left: it must be the one every row is under.
        None => match count_rows(data_dir, &next.key_id())? {
            (total, under_next) if total == under_next => Ok(()),
            _ => Err(StoreError::WrongMasterKey),
        },
    };
    match outcome {
        Ok(()) => {
            promote_next(data_dir)?;
            tracing::info!(key_id = %next.key_id(), "master-key rotation finished");
            Ok(())
        }
        Err(err @ (StoreError::WrongMasterKey | StoreError::Decrypt))
            if rows_under(data_dir, &next.key_id())? == 0 =>
        {
            discard_next(data_dir)?;
            tracing::warn!(
                error = %err,
                "the interrupted master-key rotation cannot be finished and sealed nothing \
                 yet: it was abandoned and the current master key stays in use"
            );
            Ok(())
        }
        Err(err) => Err(err),
    }
}

/// A failed re-seal, and whether its transaction may have committed anyway
/// (only a failing `COMMIT` leaves that open).
struct ResealFailure {
    error: StoreError,
    maybe_committed: bool,
}

impl From<StoreError> for ResealFailure {
    fn from(error: StoreError) -> Self {
        Self {
            error,
            maybe_committed: false,
        }
    }
}

/// One `secrets` row as stored.
struct SealedRow {
    secret_id: String,
    version_id: String,
    user_id: String,
    service: String,
    key_id: String,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

fn reseal(data_dir: &Path, old: &MasterKey, new: &MasterKey) -> Result<RekeyReport, ResealFailure> {
    let mut report = RekeyReport::default();
    let Some(mut conn) = open_db(data_dir)? else {
        return Ok(report);
    };
    let (old_id, new_id) = (old.key_id(), new.key_id());
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_error)?;
    let rows = {
        let mut stmt = tx
            .prepare(
                "SELECT secret_id, version_id, user_id, service, master_key_id, nonce, ciphertext \
                 FROM secrets",
            )
            .map_err(db_error)?;
        stmt.query_map([], |row| {
            Ok(SealedRow {
                secret_id: row.get(0)?,
                version_id: row.get(1)?,
                user_id: row.get(2)?,
                service: row.get(3)?,
                key_id: row.get(4)?,
                nonce: row.get(5)?,
                ciphertext: row.get(6)?,
            })
        })
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(db_error)?
    };
    {
        let mut update = tx
            .prepare(
                "UPDATE secrets SET master_key_id = ?3, nonce = ?4, ciphertext = ?5 \
                 WHERE secret_id = ?1 AND version_id = ?2",
            )
            .map_err(db_error)?;
        for row in &rows {
            if row.key_id == new_id {
                report.already_new += 1;
                continue;
            }
            if row.key_id != old_id {
                return Err(StoreError::WrongMasterKey.into());
            }
            let aad = secret_aad(&row.secret_id, &row.version_id, &row.user_id, &row.service);
            let plain = old
                .open(&row.nonce, &row.ciphertext, &aad)
                .map_err(|_| StoreError::Decrypt)?;
            let sealed = new.seal(&plain, &aad).map_err(StoreError::backend)?;
            drop(plain);
            let changed = update
                .execute(params![
                    row.secret_id,
                    row.version_id,
                    new_id,
                    sealed.nonce.as_slice(),
                    sealed.ciphertext,
                ])
                .map_err(db_error)?;
            if changed != 1 {
                return Err(StoreError::Corrupt(
                    "a secrets row vanished during the re-seal".into(),
                )
                .into());
            }
            report.resealed += 1;
        }
    }
    tx.commit().map_err(|err| ResealFailure {
        error: db_error(err),
        maybe_committed: true,
    })?;
    // Best effort: move the new pages into the database file and empty the
    // WAL, which still holds the old ciphertexts.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    Ok(report)
}

/// The database of `data_dir` for a rotation, `None` if it does not exist
/// or has no `secrets` table. Exclusive locking mode: the first access fails
/// (after [`LOCK_WAIT`]) while another connection has the database open.
fn open_db(data_dir: &Path) -> Result<Option<Connection>, StoreError> {
    let path = data_dir.join(DB_FILE);
    if !path.try_exists().map_err(StoreError::backend)? {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db_error)?;
    conn.busy_timeout(LOCK_WAIT).map_err(db_error)?;
    for (pragma, value) in [
        ("locking_mode", "EXCLUSIVE"),
        ("synchronous", "FULL"),
        // Overwrite the replaced ciphertexts instead of leaving them in free pages.
        ("secure_delete", "ON"),
    ] {
        conn.pragma_update(None, pragma, value).map_err(db_error)?;
    }
    let has_secrets: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'secrets')",
            [],
            |row| row.get(0),
        )
        .map_err(db_error)?;
    Ok(has_secrets.then_some(conn))
}

/// (all rows, rows under `key_id`) of `secrets`.
fn count_rows(data_dir: &Path, key_id: &str) -> Result<(i64, i64), StoreError> {
    let Some(conn) = open_db(data_dir)? else {
        return Ok((0, 0));
    };
    conn.query_row(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE master_key_id = ?1) FROM secrets",
        [key_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .map_err(db_error)
}

fn rows_under(data_dir: &Path, key_id: &str) -> Result<i64, StoreError> {
    count_rows(data_dir, key_id).map(|(_, under)| under)
}

/// A SQLite error; a locked database gets a message that says why.
fn db_error(err: rusqlite::Error) -> StoreError {
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::backend(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "the database is in use by another process (stop byok-local first)",
            ))
        }
        _ => StoreError::backend(err),
    }
}

/// Holds an exclusive `flock` on `dir` until dropped: one rotation or
/// recovery at a time.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let handle = File::open(dir).map_err(StoreError::backend)?;
    handle.lock().map_err(StoreError::backend)?;
    Ok(handle)
}

/// Reads a key file written by [`MasterKey::load_or_create`] or
/// [`write_next_key`]; `None` if it does not exist. A file readable by group
/// or others is refused, as at start.
fn read_key(path: &Path) -> Result<Option<MasterKey>, StoreError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(StoreError::backend(CryptoError::Io(err))),
    };
    let meta = file
        .metadata()
        .map_err(|err| StoreError::backend(CryptoError::Io(err)))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(StoreError::backend(CryptoError::InsecurePermissions));
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text)
        .map_err(|err| match err.kind() {
            io::ErrorKind::InvalidData => StoreError::backend(CryptoError::InvalidKey),
            _ => StoreError::backend(CryptoError::Io(err)),
        })?;
    MasterKey::from_base64(&text)
        .map(Some)
        .map_err(StoreError::backend)
}

/// Step 1: a new random key, durable in [`NEXT_KEY_FILE`] (mode 0600).
fn write_next_key(data_dir: &Path) -> Result<MasterKey, StoreError> {
    let mut raw = Zeroizing::new([0u8; KEY_LEN]);
    OsRng.try_fill_bytes(raw.as_mut_slice()).map_err(|_| {
        StoreError::backend(io::Error::other("the operating system gave no randomness"))
    })?;
    let mut text = Zeroizing::new(STANDARD.encode(raw.as_slice()));
    text.push('\n');
    let key = MasterKey::from_base64(&text).map_err(StoreError::backend)?;
    let tmp = data_dir.join(NEXT_KEY_TMP);
    remove_if_present(&tmp)?;
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, data_dir.join(NEXT_KEY_FILE)));
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::backend(CryptoError::Io(err)));
    }
    sync_dir(data_dir)?;
    Ok(key)
}

/// Step 3: the new key replaces the old one.
fn promote_next(data_dir: &Path) -> Result<(), StoreError> {
    fs::rename(data_dir.join(NEXT_KEY_FILE), data_dir.join(KEY_FILE))
        .map_err(|err| StoreError::backend(CryptoError::Io(err)))?;
    sync_dir(data_dir)
}

/// Drops a new key that sealed nothing.
fn discard_next(data_dir: &Path) -> Result<(), StoreError> {
    remove_if_present(&data_dir.join(NEXT_KEY_FILE))?;
    sync_dir(data_dir)
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(StoreError::backend(err)),
    }
}

/// Makes renames and removals in `dir` durable. Unlike at first start, a
/// failure here is an error: the protocol depends on the order reaching disk.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ApiKey, SecretRef, Service, UserId};
    use crate::store::SecretStore;
    use crate::store::embedded::EmbeddedStore;

    /// The base64 text of a new random key (a key file's content).
    fn key_text() -> String {
        let mut raw = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut raw);
        format!("{}\n", STANDARD.encode(raw))
    }

    fn key(text: &str) -> MasterKey {
        MasterKey::from_base64(text).unwrap()
    }

    fn write_key_file(path: &Path, text: &str) {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    /// Secrets of a few users under `master` (one with a previous version),
    /// with their plaintexts.
    async fn seed(dir: &Path, master: MasterKey) -> Vec<(SecretRef, String)> {
        let store = EmbeddedStore::open(dir, master).unwrap();
        let mut stored = Vec::new();
        for (user, service, plain) in [
            ("alice", Service::OpenAi, "sk-alice-1"),
            ("alice", Service::OpenAi, "sk-alice-2"),
            ("alice", Service::Anthropic, "sk-ant-alice"),
            ("bob", Service::OpenAi, "sk-bob"),
            ("carol/odd:name ü", Service::Gateway, "vck_carol"),
        ] {
            let user = UserId::new(user).unwrap();
            let secret = store
                .put_secret(&user, service, &ApiKey::new(plain), None)
                .await
                .unwrap();
            stored.push((secret, plain.to_owned()));
        }
        stored
    }

    /// Opens the store with `master` and reads every secret back.
    async fn assert_reads_all(dir: &Path, master: MasterKey, secrets: &[(SecretRef, String)]) {
        let store = EmbeddedStore::open(dir, master).unwrap();
        for (secret, plain) in secrets {
            assert_eq!(store.get_secret(secret).await.unwrap().expose(), plain);
        }
    }

    /// A `secrets` row: (secret id, version id, key id, nonce, ciphertext).
    type RawRow = (String, String, String, Vec<u8>, Vec<u8>);

    /// Every `secrets` row, in key order.
    fn rows(dir: &Path) -> Vec<RawRow> {
        let conn = Connection::open(dir.join(DB_FILE)).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT secret_id, version_id, master_key_id, nonce, ciphertext FROM secrets \
                 ORDER BY secret_id, version_id",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn sql(dir: &Path, statement: &str) {
        Connection::open(dir.join(DB_FILE))
            .unwrap()
            .execute(statement, [])
            .unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn reseal_moves_every_row_to_the_new_key_and_reruns_change_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (a, b) = (key_text(), key_text());
        let secrets = seed(dir, key(&a)).await;
        let before = rows(dir);
        // Four secrets, one of them with a previous version.
        assert_eq!(before.len(), 5);

        let report = rotate_master_key(dir, &key(&a), &key(&b)).unwrap();
        assert_eq!(
            report,
            RekeyReport {
                resealed: 5,
                already_new: 0
            }
        );
        let after = rows(dir);
        assert_eq!(after.len(), before.len());
        for (old, new) in before.iter().zip(&after) {
            assert_eq!((&old.0, &old.1), (&new.0, &new.1));
            assert_eq!(new.2, key(&b).key_id());
            assert_ne!(old.3, new.3, "fresh nonce");
            assert_ne!(old.4, new.4);
        }
        assert_reads_all(dir, key(&b), &secrets).await;
        let err = EmbeddedStore::open(dir, key(&a)).unwrap_err();
        assert!(matches!(err, StoreError::WrongMasterKey), "{err:?}");

        // Idempotent: a re-run skips every row and rewrites nothing.
        let again = rotate_master_key(dir, &key(&a), &key(&b)).unwrap();
        assert_eq!(
            again,
            RekeyReport {
                resealed: 0,
                already_new: 5
            }
        );
        assert_eq!(rows(dir), after);
        assert_reads_all(dir, key(&b), &secrets).await;
    }

    #[tokio::test]
    async fn a_row_under_neither_key_fails_the_rotation_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (a, b) = (key_text(), key_text());
        let secrets = seed(dir, key(&a)).await;

        // Sealed under some third key.
        sql(
            dir,
            "UPDATE secrets SET master_key_id = '00112233aabbccdd' WHERE secret_id LIKE 'bob/openai/%'",
        );
        let before = rows(dir);
        let err = rotate_master_key(dir, &key(&a), &key(&b)).unwrap_err();
        assert!(matches!(err, StoreError::WrongMasterKey), "{err:?}");
        assert_eq!(rows(dir), before);

        // Labelled with the old key but not opening under it (tampered).
        sql(
            dir,
            &format!(
                "UPDATE secrets SET master_key_id = '{}' WHERE secret_id LIKE 'bob/openai/%'",
                key(&a).key_id()
            ),
        );
        sql(
            dir,
            "UPDATE secrets SET ciphertext = zeroblob(length(ciphertext)) \
             WHERE secret_id LIKE 'alice/anthropic/%'",
        );
        let before = rows(dir);
        let err = rotate_master_key(dir, &key(&a), &key(&b)).unwrap_err();
        assert!(matches!(err, StoreError::Decrypt), "{err:?}");
        assert!(!err.to_string().contains("sk-"), "{err}");
        assert_eq!(rows(dir), before);
        let readable: Vec<_> = secrets
            .into_iter()
            .filter(|(s, _)| !s.id.starts_with("alice/anthropic/"))
            .collect();
        assert_reads_all(dir, key(&a), &readable).await;
    }

    #[tokio::test]
    async fn rotate_key_file_replaces_the_key_and_leaves_no_other_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let old = MasterKey::load_or_create(dir).unwrap();
        let old_id = old.key_id();
        let secrets = seed(dir, old).await;
        let old_file = fs::read(dir.join(KEY_FILE)).unwrap();

        let done = rotate_key_file(dir).unwrap();
        assert_eq!(done.old_key_id, old_id);
        assert_ne!(done.new_key_id, old_id);
        assert_eq!(
            done.report,
            RekeyReport {
                resealed: 5,
                already_new: 0
            }
        );
        assert_ne!(fs::read(dir.join(KEY_FILE)).unwrap(), old_file);
        let mode = fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let new = MasterKey::load_or_create(dir).unwrap();
        assert_eq!(new.key_id(), done.new_key_id);
        assert!(
            !names(dir).iter().any(|n| n.contains("next")),
            "{:?}",
            names(dir)
        );
        assert_reads_all(dir, new, &secrets).await;

        // Twice in a row works too, and a data directory without a key is refused.
        let second = rotate_key_file(dir).unwrap();
        assert_eq!(second.old_key_id, done.new_key_id);
        let empty = tempfile::tempdir().unwrap();
        assert!(rotate_key_file(empty.path()).is_err());
        assert!(names(empty.path()).is_empty());
    }

    #[tokio::test]
    async fn recover_resumes_a_rotation_whose_rows_are_still_old() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (a, b) = (key_text(), key_text());
        write_key_file(&dir.join(KEY_FILE), &a);
        let secrets = seed(dir, key(&a)).await;
        // Crash after step 1, and a stale temporary file from an earlier one.
        write_key_file(&dir.join(NEXT_KEY_FILE), &b);
        write_key_file(&dir.join(NEXT_KEY_TMP), &key_text());

        recover_interrupted(dir).unwrap();
        assert_eq!(fs::read_to_string(dir.join(KEY_FILE)).unwrap(), b);
        assert!(
            !names(dir).iter().any(|n| n.contains("next")),
            "{:?}",
            names(dir)
        );
        assert!(rows(dir).iter().all(|r| r.2 == key(&b).key_id()));
        assert_reads_all(dir, MasterKey::load_or_create(dir).unwrap(), &secrets).await;
    }

    #[tokio::test]
    async fn recover_finishes_the_rename_when_rows_are_already_new() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (a, b) = (key_text(), key_text());
        write_key_file(&dir.join(KEY_FILE), &a);
        let secrets = seed(dir, key(&a)).await;
        // Crash after step 2: rows new, key file still old.
        write_key_file(&dir.join(NEXT_KEY_FILE), &b);
        rotate_master_key(dir, &key(&a), &key(&b)).unwrap();
        let resealed = rows(dir);

        recover_interrupted(dir).unwrap();
        assert_eq!(fs::read_to_string(dir.join(KEY_FILE)).unwrap(), b);
        assert!(!dir.join(NEXT_KEY_FILE).exists());
        assert_eq!(rows(dir), resealed, "nothing re-sealed twice");
        assert_reads_all(dir, MasterKey::load_or_create(dir).unwrap(), &secrets).await;

        // Same when the old key file is gone altogether.
        let c = key_text();
        write_key_file(&dir.join(NEXT_KEY_FILE), &c);
        rotate_master_key(dir, &key(&b), &key(&c)).unwrap();
        fs::remove_file(dir.join(KEY_FILE)).unwrap();
        recover_interrupted(dir).unwrap();
        assert_eq!(fs::read_to_string(dir.join(KEY_FILE)).unwrap(), c);
        assert_reads_all(dir, key(&c), &secrets).await;
    }

    #[tokio::test]
    async fn recover_abandons_a_new_key_that_sealed_nothing_and_cannot_finish() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (a, b) = (key_text(), key_text());
        write_key_file(&dir.join(KEY_FILE), &a);
        seed(dir, key(&a)).await;
        sql(
            dir,
            "UPDATE secrets SET master_key_id = '00112233aabbccdd' WHERE secret_id LIKE 'bob/openai/%'",
        );
        let before = rows(dir);

        write_key_file(&dir.join(NEXT_KEY_FILE), &b);
        recover_interrupted(dir).unwrap();
        assert!(!dir.join(NEXT_KEY_FILE).exists());
        assert_eq!(fs::read_to_string(dir.join(KEY_FILE)).unwrap(), a);
        assert_eq!(rows(dir), before);

        // A new rotation fails the same way and leaves no new key behind.
        let err = rotate_key_file(dir).unwrap_err();
        assert!(matches!(err, StoreError::WrongMasterKey), "{err:?}");
        assert!(
            !names(dir).iter().any(|n| n.contains("next")),
            "{:?}",
            names(dir)
        );
        assert_eq!(fs::read_to_string(dir.join(KEY_FILE)).unwrap(), a);
        assert_eq!(rows(dir), before);
    }

    #[tokio::test]
    async fn recover_keeps_a_new_key_that_sealed_rows_when_it_cannot_finish() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (a, b) = (key_text(), key_text());
        write_key_file(&dir.join(KEY_FILE), &a);
        seed(dir, key(&a)).await;
        write_key_file(&dir.join(NEXT_KEY_FILE), &b);
        rotate_master_key(dir, &key(&a), &key(&b)).unwrap();
        sql(
            dir,
            "UPDATE secrets SET master_key_id = '00112233aabbccdd' WHERE secret_id LIKE 'bob/openai/%'",
        );

        let err = recover_interrupted(dir).unwrap_err();
        assert!(matches!(err, StoreError::WrongMasterKey), "{err:?}");
        // Both keys stay: the new one is the only one that opens most rows.
        assert_eq!(fs::read_to_string(dir.join(NEXT_KEY_FILE)).unwrap(), b);
        assert_eq!(fs::read_to_string(dir.join(KEY_FILE)).unwrap(), a);
    }

    #[tokio::test]
    async fn nothing_to_recover_or_reseal_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");
        recover_interrupted(&missing).unwrap();
        assert!(!missing.exists());

        let dir = tmp.path().join("data");
        fs::create_dir(&dir).unwrap();
        assert_eq!(
            rotate_master_key(&dir, &MasterKey::generate(), &MasterKey::generate()).unwrap(),
            RekeyReport::default()
        );
        write_key_file(&dir.join(KEY_FILE), &key_text());
        recover_interrupted(&dir).unwrap();
        assert_eq!(names(&dir), vec![KEY_FILE.to_owned()]);

        // A key file others may read is refused, as at start.
        fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let err = rotate_key_file(&dir).unwrap_err();
        assert!(err.to_string().contains("backend"), "{err}");
        assert_eq!(names(&dir), vec![KEY_FILE.to_owned()]);
    }

    #[tokio::test]
    async fn rotation_is_refused_while_the_store_is_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (a, b) = (key_text(), key_text());
        seed(dir, key(&a)).await;
        let store = EmbeddedStore::open(dir, key(&a)).unwrap();
        let before = rows(dir);

        let err = rotate_master_key(dir, &key(&a), &key(&b)).unwrap_err();
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("in use"), "{source}");
        assert_eq!(rows(dir), before);

        drop(store);
        assert_eq!(
            rotate_master_key(dir, &key(&a), &key(&b)).unwrap().resealed,
            5
        );
    }
}
