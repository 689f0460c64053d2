//! Settings and key records: the snapshot every request's resolution
//! reads, and the key routes' conditional writes.

use super::*;

const KEY_COLUMNS: &str = "user_id, service, label, masked_key, enabled, base_url, created_at, \
     updated_at, last_validated_at, last_validation, secret_id, secret_version, revision, \
     rotated_at, pending_version, pending_masked_key, pending_staged_at, pending_token, \
     last_rotation_at, last_rotation_rejected, key_id, priority, last_used_at, cooldown_until";

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
    let id = KeyId::parse(&col::<String>(row, 20, "keys.key_id")?)
        .ok_or_else(|| corrupt("keys.key_id is not a key id"))?;
    let priority = u32::try_from(col::<i64>(row, 21, "keys.priority")?)
        .map_err(|_| corrupt("keys.priority is out of range"))?;
    Ok(KeyRecord {
        user,
        service,
        id,
        priority,
        last_used_at: opt_ts(22, "keys.last_used_at")?,
        cooldown_until: opt_ts(23, "keys.cooldown_until")?,
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
    priority: i64,
    last_used_at: Option<String>,
    cooldown_until: Option<String>,
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
            priority: i64::from(record.priority),
            last_used_at: record.last_used_at.map(ts_to_text).transpose()?,
            cooldown_until: record.cooldown_until.map(ts_to_text).transpose()?,
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
    id: &KeyId,
) -> Result<Option<KeyRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE user_id = ?1 AND service = ?2 AND key_id = ?3"
        ))
        .map_err(StoreError::backend)?;
    let mut rows = stmt
        .query(params![user.as_str(), service.as_str(), id.as_str()])
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
        id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let (user, id) = (user.clone(), id.clone());
        self.run(move |inner| {
            let conn = inner.conn()?;
            select_key(&conn, &user, service, &id)
        })
        .await
    }

    async fn mark_key(
        &self,
        user: &UserId,
        service: Service,
        id: &KeyId,
        mark: KeyMark,
    ) -> Result<(), StoreError> {
        let (user, id) = (user.clone(), id.clone());
        self.run(move |inner| {
            let (sql, at) = match mark {
                KeyMark::Used(at) => ("UPDATE keys SET last_used_at = ?4", at),
                KeyMark::CoolDown(until) => ("UPDATE keys SET cooldown_until = ?4", until),
                KeyMark::Refused(at) => (
                    "UPDATE keys SET last_validation = 'invalid', last_validated_at = ?4",
                    at,
                ),
            };
            let at = ts_to_text(at)?;
            inner
                .conn()?
                .execute(
                    &format!("{sql} WHERE user_id = ?1 AND service = ?2 AND key_id = ?3"),
                    params![user.as_str(), service.as_str(), id.as_str(), at],
                )
                .map_err(StoreError::backend)?;
            Ok(())
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
            let (user_id, service, key_id) = (r.user.as_str(), r.service.as_str(), r.id.as_str());
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
                &key_id,
                &p.priority,
                &p.last_used_at,
                &p.cooldown_until,
            ];
            let changed = match expected {
                Expected::Absent => tx.execute(
                    &format!(
                        "INSERT INTO keys ({KEY_COLUMNS}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, \
                         ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24) \
                         ON CONFLICT (user_id, service, key_id) DO NOTHING"
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
                         last_rotation_at = ?19, last_rotation_rejected = ?20, priority = ?22, \
                         last_used_at = ?23, cooldown_until = ?24 \
                         WHERE user_id = ?1 AND service = ?2 AND key_id = ?21 AND revision = ?25",
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
        id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let (user, id) = (user.clone(), id.clone());
        self.run(move |inner| {
            let mut conn = inner.conn()?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::backend)?;
            // A record that cannot be read back is reported and left in place.
            let Some(record) = select_key(&tx, &user, service, &id)? else {
                return Ok(None);
            };
            tx.execute(
                "DELETE FROM keys WHERE user_id = ?1 AND service = ?2 AND key_id = ?3",
                params![user.as_str(), service.as_str(), id.as_str()],
            )
            .map_err(StoreError::backend)?;
            tx.commit().map_err(StoreError::backend)?;
            Ok(Some(record))
        })
        .await
    }

    async fn put_settings(
        &self,
        user: &UserId,
        settings: Settings,
    ) -> Result<Settings, StoreError> {
        let user = user.clone();
        self.run(move |inner| {
            let now = ts_to_text(domain::now())?;
            let mut conn = inner.conn()?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::backend)?;
            let before = read_settings(&tx, &user)?;
            tx.execute(
                "INSERT INTO settings (user_id, allow_gateway_fallback, updated_at) \
                     VALUES (?1, ?2, ?3) \
                     ON CONFLICT (user_id) DO UPDATE SET \
                     allow_gateway_fallback = excluded.allow_gateway_fallback, \
                     updated_at = excluded.updated_at",
                params![user.as_str(), settings.allow_gateway_fallback, now],
            )
            .map_err(StoreError::backend)?;
            tx.commit().map_err(StoreError::backend)?;
            Ok(before)
        })
        .await
    }
    async fn scan_keys(&self, after: Option<&str>, limit: usize) -> Result<KeyPage, StoreError> {
        let after = after
            .map(|cursor| {
                serde_json::from_str::<(String, String, String)>(cursor)
                    .map_err(|_| corrupt("scan cursor is not a [user, service, key id] triple"))
            })
            .transpose()?;
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        self.run(move |inner| {
            let conn = inner.conn()?;
            let (user, service, key_id) = after.unwrap_or_default();
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM keys WHERE (user_id, service, key_id) > (?1, ?2, ?3) \
                     ORDER BY user_id, service, key_id LIMIT ?4"
                ))
                .map_err(StoreError::backend)?;
            let mut rows = stmt
                .query(params![user, service, key_id, limit])
                .map_err(StoreError::backend)?;
            let mut page = KeyPage::default();
            let mut read = 0;
            let mut last: Option<(String, String, String)> = None;
            while let Some(row) = rows.next().map_err(StoreError::backend)? {
                read += 1;
                last = Some((
                    col(row, 0, "keys.user_id")?,
                    col(row, 1, "keys.service")?,
                    col(row, 20, "keys.key_id")?,
                ));
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

/// The user's saved settings, or the defaults.
fn read_settings(conn: &Connection, user: &UserId) -> Result<Settings, StoreError> {
    let allow: Option<i64> = conn
        .prepare_cached("SELECT allow_gateway_fallback FROM settings WHERE user_id = ?1")
        .and_then(|mut stmt| stmt.query_row([user.as_str()], |row| row.get(0)).optional())
        .map_err(StoreError::backend)?;
    Ok(match allow {
        Some(v) => Settings {
            allow_gateway_fallback: bool_from_int(v, "settings.allow_gateway_fallback")?,
        },
        None => Settings::default(),
    })
}

/// Settings and keys of one user, from one read transaction (the same snapshot).
fn read_snapshot(conn: &mut Connection, user: &UserId) -> Result<UserSnapshot, StoreError> {
    let tx = conn.transaction().map_err(StoreError::backend)?;
    let settings = read_settings(&tx, user)?;
    let mut keys = Vec::new();
    {
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM keys WHERE user_id = ?1 ORDER BY service, priority"
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
