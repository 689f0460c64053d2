//! Sealed secrets and their versions: the secret store, and the staging
//! labels rotation moves between versions.

use super::*;

#[async_trait]
impl SecretStore for EmbeddedStore {
    async fn put_secret(
        &self,
        user: &UserId,
        service: Service,
        key: &ApiKey,
        into: Option<&SecretRef>,
    ) -> Result<SecretRef, StoreError> {
        let user = user.clone();
        let key = key.clone();
        let into = into.map(|secret| secret.id.clone());
        self.run(move |inner| {
            let (id, existing) = match into {
                Some(id) => (id, true),
                None => (new_secret_id(&user, service)?, false),
            };
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
            // An existing secret without a current version is gone.
            if existing && !has_current(&tx, &id)? {
                return Err(StoreError::SecretNotFound);
            }
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

    async fn delete_secret(&self, secret: &SecretRef) -> Result<(), StoreError> {
        self.delete_by_id(&secret.id).await
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

/// Whether secret `id` has a current version (exists, and is not deleted).
fn has_current(tx: &Connection, id: &str) -> Result<bool, StoreError> {
    tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM secrets WHERE secret_id = ?1 AND stage = 'current')",
        [id],
        |row| row.get(0),
    )
    .map_err(StoreError::backend)
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
    async fn stage(&self, secret_id: &str, key: &ApiKey) -> Result<SecretRef, StoreError> {
        let (id, key) = (secret_id.to_owned(), key.clone());
        self.run(move |inner| {
            let version = crypto::random_hex::<16>().map_err(StoreError::backend)?;
            let mut conn = inner.conn()?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::backend)?;
            if !has_current(&tx, &id)? {
                return Err(StoreError::SecretNotFound);
            }
            let (user, service) = secret_owner(&tx, &id)?;
            tx.execute(
                "DELETE FROM secrets WHERE secret_id = ?1 AND stage = 'staged'",
                [&id],
            )
            .map_err(StoreError::backend)?;
            insert_secret_row(&tx, inner, &id, &version, &user, &service, "staged", &key)?;
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
