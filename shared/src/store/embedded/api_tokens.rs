//! Personal API keys: one `api_tokens` row per key (schema version 5),
//! keyed by the key's hash, so authenticating a request is one
//! primary-key read; the owner's list walks the (user, created) index.

use super::*;
use crate::domain::{ApiTokenId, ApiTokenRecord, TenantId, TokenHash};
use crate::store::api_tokens::ApiTokenStore;

const COLUMNS: &str =
    "token_hash, token_id, user_id, tenant_id, name, prefix, created_at, expires_at, last_used_at";

fn token_from_row(row: &Row<'_>) -> Result<ApiTokenRecord, StoreError> {
    let opt_ts = |idx, column| -> Result<Option<Timestamp>, StoreError> {
        col::<Option<String>>(row, idx, column)?
            .map(|t| ts_from_text(&t, column))
            .transpose()
    };
    Ok(ApiTokenRecord {
        hash: TokenHash::from_hex(&col::<String>(row, 0, "api_tokens.token_hash")?)
            .ok_or_else(|| corrupt("api_tokens.token_hash is not a SHA-256 in hex"))?,
        id: ApiTokenId::parse(&col::<String>(row, 1, "api_tokens.token_id")?)
            .ok_or_else(|| corrupt("api_tokens.token_id is not a token id"))?,
        user: UserId::new(col::<String>(row, 2, "api_tokens.user_id")?)
            .ok_or_else(|| corrupt("api_tokens.user_id is not a user id"))?,
        tenant: col::<Option<String>>(row, 3, "api_tokens.tenant_id")?
            .map(|t| TenantId::new(t).ok_or_else(|| corrupt("api_tokens.tenant_id")))
            .transpose()?,
        name: col(row, 4, "api_tokens.name")?,
        prefix: col(row, 5, "api_tokens.prefix")?,
        created_at: ts_from_text(
            &col::<String>(row, 6, "api_tokens.created_at")?,
            "api_tokens.created_at",
        )?,
        expires_at: opt_ts(7, "api_tokens.expires_at")?,
        last_used_at: opt_ts(8, "api_tokens.last_used_at")?,
    })
}

#[async_trait]
impl ApiTokenStore for EmbeddedStore {
    async fn create_token(&self, record: &ApiTokenRecord) -> Result<(), StoreError> {
        let record = record.clone();
        self.run(move |inner| {
            let opt_ts = |t: Option<Timestamp>| t.map(ts_to_text).transpose();
            let changed = inner
                .conn()?
                .execute(
                    &format!(
                        "INSERT INTO api_tokens ({COLUMNS}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING"
                    ),
                    params![
                        record.hash.to_hex(),
                        record.id.as_str(),
                        record.user.as_str(),
                        record.tenant.as_ref().map(TenantId::as_str),
                        record.name,
                        record.prefix,
                        ts_to_text(record.created_at)?,
                        opt_ts(record.expires_at)?,
                        opt_ts(record.last_used_at)?,
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

    async fn list_tokens(&self, user: &UserId) -> Result<Vec<ApiTokenRecord>, StoreError> {
        let user = user.clone();
        self.run(move |inner| {
            let conn = inner.conn()?;
            let mut statement = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM api_tokens WHERE user_id = ?1 \
                     ORDER BY created_at, token_id"
                ))
                .map_err(StoreError::backend)?;
            let mut rows = statement
                .query(params![user.as_str()])
                .map_err(StoreError::backend)?;
            let mut tokens = Vec::new();
            while let Some(row) = rows.next().map_err(StoreError::backend)? {
                tokens.push(token_from_row(row)?);
            }
            Ok(tokens)
        })
        .await
    }

    async fn find_token(&self, hash: &TokenHash) -> Result<Option<ApiTokenRecord>, StoreError> {
        let hash = hash.to_hex();
        self.run(move |inner| {
            let conn = inner.conn()?;
            let mut statement = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM api_tokens WHERE token_hash = ?1"
                ))
                .map_err(StoreError::backend)?;
            let mut rows = statement
                .query(params![hash])
                .map_err(StoreError::backend)?;
            match rows.next().map_err(StoreError::backend)? {
                Some(row) => token_from_row(row).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn delete_token(
        &self,
        user: &UserId,
        id: &ApiTokenId,
    ) -> Result<Option<ApiTokenRecord>, StoreError> {
        let (user, id) = (user.clone(), id.clone());
        self.run(move |inner| {
            let conn = inner.conn()?;
            let mut statement = conn
                .prepare_cached(&format!(
                    "DELETE FROM api_tokens WHERE user_id = ?1 AND token_id = ?2 \
                     RETURNING {COLUMNS}"
                ))
                .map_err(StoreError::backend)?;
            let mut rows = statement
                .query(params![user.as_str(), id.as_str()])
                .map_err(StoreError::backend)?;
            match rows.next().map_err(StoreError::backend)? {
                Some(row) => token_from_row(row).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn mark_token_used(
        &self,
        user: &UserId,
        id: &ApiTokenId,
        hash: &TokenHash,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let (user, id, hash) = (user.clone(), id.clone(), hash.to_hex());
        self.run(move |inner| {
            inner
                .conn()?
                .execute(
                    "UPDATE api_tokens SET last_used_at = ?4 \
                     WHERE token_hash = ?1 AND user_id = ?2 AND token_id = ?3",
                    params![hash, user.as_str(), id.as_str(), ts_to_text(at)?],
                )
                .map_err(StoreError::backend)?;
            Ok(())
        })
        .await
    }
}
