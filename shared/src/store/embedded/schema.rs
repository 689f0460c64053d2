//! `byok.db`'s schema, kept in `PRAGMA user_version`, and the in-place
//! upgrades from every earlier version.

use super::*;

/// The schema this build writes, kept in `PRAGMA user_version`.
pub(super) const SCHEMA_VERSION: i64 = 5;

/// Schema version 1. `STRICT` tables so a value of the wrong type cannot be stored.
pub(super) const SCHEMA_V1: &str = "
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

/// Schema version 4: several keys per service. Key rows gain an id (the
/// stored one becomes its service's first key, `k0`), a priority (0 for
/// it) and the health columns; the primary key becomes (user, service,
/// id), so `keys` is rebuilt. Audit events gain the key id.
const SCHEMA_V4: &str = "
CREATE TABLE keys_v4 (
    user_id                TEXT    NOT NULL,
    service                TEXT    NOT NULL,
    key_id                 TEXT    NOT NULL,
    priority               INTEGER NOT NULL CHECK (priority >= 0),
    label                  TEXT    NOT NULL,
    masked_key             TEXT    NOT NULL,
    enabled                INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    base_url               TEXT,
    created_at             TEXT    NOT NULL,
    updated_at             TEXT    NOT NULL,
    last_validated_at      TEXT,
    last_validation        TEXT,
    secret_id              TEXT    NOT NULL,
    secret_version         TEXT    NOT NULL,
    revision               INTEGER NOT NULL CHECK (revision >= 0),
    rotated_at             TEXT,
    pending_version        TEXT,
    pending_masked_key     TEXT,
    pending_staged_at      TEXT,
    pending_token          TEXT,
    last_rotation_at       TEXT,
    last_rotation_rejected TEXT,
    last_used_at           TEXT,
    cooldown_until         TEXT,
    PRIMARY KEY (user_id, service, key_id)
) STRICT, WITHOUT ROWID;
INSERT INTO keys_v4 (user_id, service, key_id, priority, label, masked_key, enabled, base_url,
                     created_at, updated_at, last_validated_at, last_validation, secret_id,
                     secret_version, revision, rotated_at, pending_version, pending_masked_key,
                     pending_staged_at, pending_token, last_rotation_at, last_rotation_rejected)
    SELECT user_id, service, 'k0', 0, label, masked_key, enabled, base_url, created_at,
           updated_at, last_validated_at, last_validation, secret_id, secret_version, revision,
           rotated_at, pending_version, pending_masked_key, pending_staged_at, pending_token,
           last_rotation_at, last_rotation_rejected FROM keys;
DROP TABLE keys;
ALTER TABLE keys_v4 RENAME TO keys;
ALTER TABLE audit_events ADD COLUMN key_id TEXT;
";

/// Schema version 5: personal API keys, one row per key found by the
/// SHA-256 of the key (never the key itself); the owner's list walks
/// (user, created).
const SCHEMA_V5: &str = "
CREATE TABLE api_tokens (
    token_hash   TEXT NOT NULL PRIMARY KEY,
    token_id     TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    tenant_id    TEXT,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT,
    last_used_at TEXT
) STRICT, WITHOUT ROWID;
CREATE UNIQUE INDEX api_tokens_by_user ON api_tokens (user_id, token_id);
CREATE INDEX api_tokens_by_created ON api_tokens (user_id, created_at);
";

/// Creates the schema in a new database, or upgrades an existing one in
/// place (one transaction), or checks its version.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(StoreError::backend)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(StoreError::backend)?;
    match version {
        0..=4 => {
            if version == 0 {
                tx.execute_batch(SCHEMA_V1).map_err(StoreError::backend)?;
            }
            if version <= 1 {
                tx.execute_batch(SCHEMA_V2).map_err(StoreError::backend)?;
            }
            if version <= 2 {
                tx.execute_batch(SCHEMA_V3).map_err(StoreError::backend)?;
            }
            if version <= 3 {
                tx.execute_batch(SCHEMA_V4).map_err(StoreError::backend)?;
            }
            tx.execute_batch(SCHEMA_V5).map_err(StoreError::backend)?;
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
